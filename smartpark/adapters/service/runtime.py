"""The service runtime: connects the enabled device adapters to the core and runs the background jobs.

* Plate reads arrive on each recognizer's own thread (HTTP handler, MQTT network thread, alert stream). The
  :class:`LaneDispatcher` keeps the reads of one lane in order with a per-lane lock and runs the decision
  right there: it is fast (one transaction, one gate command) and it means a read is acknowledged to its
  device (HTTP 200, MQTT PUBACK) only after it was decided and recorded, so a crash loses no read.
* Device health from cameras, gates and sensors goes to ``ParkingService.device_health``.
* Payment channels hand their verified callbacks to ``PaymentService.handle_event`` (``on_payment``).
* Jobs: on one thread the daily visitor purge (PIPL retention), the overtime scan, the lot-full fan-out and
  periodic health checks of adapters that expose ``check_health()``; on a second thread the jobs that call
  providers -- the outbox worker every second (notifications, :mod:`smartpark.core.delivery`) and payment
  reconciliation every 30 s (attempts stuck in ``paying``, refunds still processing).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)


class LaneWorkers:
    """One worker thread per lane for gate commands: a lane's commands run in order, lanes run side by side,
    and the device's thread goes on to the next read instead of waiting for the controller's acknowledgement."""

    def __init__(self) -> None:
        self._queues: dict[str, queue.SimpleQueue] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __call__(self, lane: str, job: Callable[[], None]) -> None:
        q = self._queues.get(lane)
        if q is None:
            with self._lock:
                q = self._queues.get(lane)
                if q is None:
                    q = self._queues[lane] = queue.SimpleQueue()
                    t = threading.Thread(target=self._run, args=(lane, q), name=f"gate-{lane}", daemon=True)
                    self._threads.append(t)
                    t.start()
        q.put(job)

    @staticmethod
    def _run(lane: str, q: queue.SimpleQueue) -> None:
        while (job := q.get()) is not None:
            try:
                job()
            except Exception:  # noqa: BLE001 - the next command must still run
                log.exception("gate command for lane %s failed", lane)

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop."""
        with self._lock:
            for q in self._queues.values():
                q.put(None)
            threads, self._threads, self._queues = self._threads, [], {}
        for t in threads:
            t.join(timeout)


class LaneDispatcher:
    """The sink handed to recognizers and sensors."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self.spaces: dict[str, bool] = {}
        self.errors = 0
        self._batcher: _Batcher | None = None

    def lane_lock(self, lane: str) -> threading.Lock:
        """The lock that keeps one lane's work in order: plate reads here, and the HTTP API's actions at a lane
        (manual open, confirming a read, admitting a visitor) take it too."""
        with self._guard:
            return self._locks[lane]

    _lane_lock = lane_lock

    # RecognizerSink
    def plate_read(self, read: Any) -> None:
        with self._lane_lock(read.lane):
            try:
                self._app.parking.handle_read(read, background_gate=True)
            except Exception:  # noqa: BLE001 - a failing decision must never kill a device thread
                self.errors += 1
                log.exception("decision failed for a read on lane %s", read.lane)
                raise

    # Reads whose acknowledgement can wait (the MQTT relay): decided in batches, one transaction per batch
    def plate_read_deferred(self, read: Any, done: Callable[[], None]) -> None:
        """Queue a read; ``done()`` is called once it has been decided (then the device's message is acked)."""
        if self._batcher is None:
            with self._guard:
                if self._batcher is None:
                    self._batcher = _Batcher(self._app)
        self._batcher.put(read, done)

    def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.stop()

    def device_health(self, health: Any) -> None:
        try:
            self._app.parking.device_health(health)
        except Exception:  # noqa: BLE001
            log.exception("recording health of %s failed", getattr(health, "device", "?"))

    # SensorSink
    def space_reading(self, reading: Any) -> None:
        self.spaces[reading.space] = reading.occupied
        try:
            self._app.parking.space_reading(reading)
        except Exception:  # noqa: BLE001 - never kill a sensor's thread
            log.exception("space reading for %s failed", getattr(reading, "space", "?"))


class _Batcher:
    """One thread that decides queued reads in batches (group commit): while one batch is being decided, the
    next one gathers, so under load many reads share one commit; at low rates a batch is a single read. Reads
    are decided in the order they arrived, so a lane's reads stay in order."""

    MAX = 256

    def __init__(self, app: Any) -> None:
        self._app = app
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="decide-reads", daemon=True)
        self._thread.start()

    def put(self, read: Any, done: Callable[[], None]) -> None:
        self._q.put((read, done))

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            batch = [item]
            while len(batch) < self.MAX:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                batch.append(nxt)
            try:
                self._app.parking.handle_reads([r for r, _ in batch], background_gate=True)
            except Exception:  # noqa: BLE001 - logged; the reads are acknowledged all the same (like a 500)
                log.exception("deciding a batch of %d reads failed", len(batch))
            for _, done in batch:
                try:
                    done()
                except Exception:  # noqa: BLE001
                    log.exception("acknowledging a read failed")

    def stop(self, timeout: float = 10.0) -> None:
        """Decide what is queued, then stop."""
        self._q.put(None)
        self._thread.join(timeout)


class Jobs:
    """Background jobs on one thread: each job runs every ``interval`` (monotonic), first after ``first``."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._jobs: list[list[Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, interval: timedelta, fn: Callable[[], Any], *, name: str, first: timedelta | None = None) -> None:
        self._jobs.append([name, interval.total_seconds(), fn, (first or interval).total_seconds()])

    def start(self) -> None:
        base = self._clock.monotonic()
        for job in self._jobs:
            job[3] += base
        self._thread = threading.Thread(target=self._run, name="smartpark-jobs", daemon=True)
        self._thread.start()

    def run_due(self) -> None:
        now = self._clock.monotonic()
        for job in self._jobs:
            name, interval, fn, due = job
            if now >= due:
                job[3] = now + interval
                try:
                    fn()
                except Exception:  # noqa: BLE001 - keep the other jobs running
                    log.exception("job %s failed", name)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.run_due()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)


class Runtime:
    """Start and stop everything the service runs besides its HTTP server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.dispatcher = LaneDispatcher(app)
        self.jobs = Jobs(app.clock)
        # jobs that call providers (SMS, WeChat, payment queries) on a thread of their own: a slow gateway must
        # not hold up the health checks and the device watchdogs
        self.providers = Jobs(app.clock)
        self.lane_workers = LaneWorkers()
        self.started_at: datetime | None = None
        self._started: list[Any] = []

    def start(self) -> None:
        app = self.app
        app.parking.run_gate_commands_with(self.lane_workers)  # builds the core, store and gates first
        for gate in app.gates.values():
            if hasattr(gate, "on_health"):
                gate.on_health = self.dispatcher.device_health
        channels = app.payment_channels
        if channels:
            payments = app.payments
            for name, channel in channels.items():
                if hasattr(channel, "on_payment"):
                    channel.on_payment = payments.handle_event  # the notify route hands verified events here
                    log.info("payment channel %s ready", name)
            self.providers.every(timedelta(seconds=30), payments.reconcile, name="reconcile payments",
                                 first=timedelta(seconds=10))
        for name, recognizer in app.recognizers.items():
            log.info("starting recognizer %s", name)
            recognizer.start(self.dispatcher)
            self._started.append(recognizer)
        for name, sensor in app.sensors.items():
            log.info("starting sensor %s", name)
            sensor.start(self.dispatcher)
            self._started.append(sensor)
        self.jobs.every(timedelta(days=1), self._purge, name="purge visitors", first=timedelta(minutes=1))
        # built now, with the notifiers: a notifier's bad settings stop the start instead of failing every pass
        log.info("delivering notifications on: %s", ", ".join(app.outbox_worker.channels) or "no channel")
        self.providers.every(timedelta(seconds=1), self._deliver, name="deliver notifications",
                             first=timedelta(seconds=1))
        if app.config.notifications.enabled:  # what goes into the outbox: overtime warnings, the lot-full fan-out
            notifications = app.notifications
            self.jobs.every(timedelta(seconds=30), notifications.check_overtime, name="overtime warnings",
                            first=timedelta(seconds=15))
            self.jobs.every(timedelta(seconds=5), notifications.expand_lot_full, name="lot-full notifications")
        for adapter in [*app.recognizers.values(), *app.sensors.values()]:
            if hasattr(adapter, "check_health"):
                self.jobs.every(timedelta(seconds=5), adapter.check_health, name=f"health {adapter.name}")
        self.jobs.start()
        self.providers.start()
        self.started_at = app.clock.now()

    def _deliver(self) -> None:
        """One outbox pass: in-doubt messages, then what is due (claimed one by one, so instances share the work)."""
        report = self.app.outbox_worker.run_once()
        if report.worked:
            log.debug("outbox pass: %s", report)

    def _purge(self) -> None:
        removed = self.app.residents.purge_visitors(actor="system:purge")
        if removed:
            log.info("purged %d visitor records past retention", removed)

    def stop(self) -> None:
        self.jobs.stop()
        self.providers.stop()
        while self._started:
            adapter = self._started.pop()
            try:
                adapter.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping %r failed", adapter)
        self.dispatcher.stop()  # after the devices: decide what they queued
        self.lane_workers.stop()  # then the last reads' gate commands still go out
        self.app.parking.run_gate_commands_with(None)

    def http_routes(self) -> list[Any]:
        """Routes that adapters (cameras' listening mode, payment callbacks) want mounted."""
        routes = []
        for group in (self.app.recognizers, self.app.payment_channels, self.app.sensors):
            for adapter in group.values():
                if hasattr(adapter, "http_routes"):
                    routes.extend(adapter.http_routes())
        return routes
