"""The service runtime's lane workers: gate commands leave the device's thread, lanes do not wait on each other."""

import tempfile
import threading
import time
import unittest

from smartpark.adapters.service.runtime import LaneWorkers, Runtime
from smartpark.bootstrap import bootstrap
from smartpark.core import events as ev
from smartpark.testing.fakes import FakeClock, FakeGate, FakeRecognizer, InMemoryStore
from smartpark.testing.samples import SAMPLE_TIME, sample_id_number, sample_phone


class StuckGate(FakeGate):
    """Lane in-1's controller hangs (until released); the others answer at once."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.release = threading.Event()

    def open(self, lane, reason):
        if lane == "in-1":
            self.release.wait(5)
        return super().open(lane, reason)


class LaneWorkersTests(unittest.TestCase):
    def test_jobs_of_a_lane_run_in_order_and_stop_drains(self):
        workers, seen = LaneWorkers(), []
        for i in range(50):
            workers("a" if i % 2 else "b", lambda i=i: seen.append(i))
        workers.stop()
        self.assertEqual([i for i in seen if i % 2], list(range(1, 50, 2)))
        self.assertEqual(len(seen), 50)

    def test_a_failing_job_does_not_stop_the_lane(self):
        workers, seen = LaneWorkers(), []
        with self.assertLogs("smartpark.adapters.service.runtime", "ERROR"):
            workers("a", lambda: 1 / 0)
            workers("a", lambda: seen.append("next"))
            workers.stop()
        self.assertEqual(seen, ["next"])


class RuntimeTests(unittest.TestCase):
    def test_a_hung_gate_does_not_hold_up_other_lanes(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        gate = StuckGate(lanes=["in-1", "in-2", "out-1"])
        camera = FakeRecognizer()
        config = {"data_dir": tmp.name, "lot": {"lanes": [{"id": "in-1", "name": "一号入口", "direction": "in"},
                                                          {"id": "in-2", "name": "二号入口", "direction": "in"},
                                                          {"id": "out-1", "name": "出口", "direction": "out"}]},
                  "plugins": {"enabled": []}}
        app = bootstrap(config, overrides={"store": InMemoryStore(), "clock": FakeClock(SAMPLE_TIME),
                                           "gates": {"g": gate}, "recognizers": {"cam": camera}, "sensors": {}})
        for n, plate in enumerate(["京A11111", "京A22222"], start=1):
            app.residents.register_owner(name=f"业主{n}", id_number=str(sample_id_number(n)),
                                         phone=str(sample_phone(n)), plates=[plate], actor="t")
        recorded = []
        app.bus.subscribe(ev.DecisionRecorded, recorded.append)
        runtime = Runtime(app)
        runtime.start()
        self.addCleanup(runtime.stop)
        t = time.monotonic()
        camera.emit("in-1", "京A11111")  # its controller hangs
        camera.emit("in-2", "京A22222")  # must not wait for it
        deadline = time.monotonic() + 2
        while not any(c.lane == "in-2" for c in gate.commands) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.assertTrue(any(c.lane == "in-2" and c.command == "open" for c in gate.commands))
        self.assertLess(time.monotonic() - t, 1.0, "lane in-2 waited for lane in-1's controller")
        gate.release.set()
        runtime.stop()
        self.assertEqual(sorted(d.lane for d in recorded), ["in-1", "in-2"])
        self.assertTrue(all(d.gate_ok for d in recorded))
