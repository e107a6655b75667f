"""Exactly once across a crash: `smartpark notifications send --loop` killed with SIGKILL mid-send and restarted.

A real SQLite store in a temporary folder holds N queued SMS messages; the loopback Aliyun SMS sandbox runs in the
test process and verifies the real SDK's signatures. The sandbox records message k and then does not answer
(as if the process died between Aliyun accepting the SMS and us recording it), the test kills the worker with
SIGKILL while it waits, restarts it, and waits for the queue to drain. Message k is in doubt (``sending`` with
an expired lease): the restarted worker asks Aliyun (QuerySendDetails by OutId) instead of sending it again. The
second test stalls *before* the sandbox records message k: then Aliyun has no record and k is sent again, once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import unittest
from collections import Counter
from datetime import timedelta
from pathlib import Path

from smartpark.bootstrap import bootstrap
from smartpark.core.outbox import MessageState, OutboxMessage
from smartpark.testing.aliyun_sms_sandbox import AliyunSmsSandbox
from smartpark.testing.harness import wait_for
from smartpark.testing.samples import sample_phone
from smartpark.testing.toml_writer import to_toml

N = 20
K = 8  # the message the sandbox records and then stalls on
SECRET_ENV = "SMARTPARK_TEST_SMS_SECRET"


class DeliveryCrashTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="smartpark-delivery-")
        self.root = Path(self.dir.name)
        self.sandbox = AliyunSmsSandbox(templates={"SMS_465000001": ["plate"]}).start()
        self.env = {**os.environ, "NO_COLOR": "1", "SMARTPARK_CONFIG": str(self.root / "plugins.toml"),
                    SECRET_ENV: self.sandbox.access_key_secret}
        for name in ("SMARTPARK_DATA_KEY", "SMARTPARK_DATA_INDEX_KID"):
            self.env.pop(name, None)
        os.environ[SECRET_ENV] = self.sandbox.access_key_secret  # the test's own bootstrap reads it too
        config = {
            "data_dir": "data",
            "notifications": {"quiet_hours": "", "rate_limit_per_hour": 0},
            "plugins": {
                "enabled": ["storage_sqlite", "sms_aliyun"],
                "sms_aliyun": {
                    "access_key_id": self.sandbox.access_key_id, "access_key_secret": {"env": SECRET_ENV},
                    "sign_name": "测试小区", "endpoint": self.sandbox.endpoint, "protocol": "http",
                    "connect_timeout_seconds": 1.0, "read_timeout_seconds": 1.0,
                    "templates": {"entry_reminder": "SMS_465000001"},
                },
            },
        }
        (self.root / "plugins.toml").write_text(to_toml(config), encoding="utf-8")
        self.log = self.root / "worker.log"
        self.proc: subprocess.Popen | None = None
        self.ids = self._queue()

    def tearDown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.sandbox.stop()
        os.environ.pop(SECRET_ENV, None)
        self.dir.cleanup()

    def _queue(self) -> list[str]:
        app = bootstrap(self.root / "plugins.toml")
        ids = []
        try:
            now = app.clock.now()
            with app.store.unit_of_work() as uow:
                for n in range(1, N + 1):
                    m = OutboxMessage.create(
                        dedupe_key=f"crash-test:{n}", kind="entry_reminder", recipient_kind="owner",
                        recipient_id=f"owner-{n}", channel="sms", address=sample_phone(n).value,
                        params={"plate": f"京A{n:05d}"}, text=f"您的车辆京A{n:05d}已入场",
                        at=now + timedelta(milliseconds=n))  # the worker takes the oldest first
                    self.assertTrue(uow.outbox.add(m))
                    ids.append(m.id)
        finally:
            app.close()
        return ids

    def _states(self) -> dict[str, MessageState]:
        app = bootstrap(self.root / "plugins.toml")
        try:
            with app.store.unit_of_work() as uow:
                return {i: uow.outbox.get(i).state for i in self.ids}
        finally:
            app.close()

    def start_worker(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smartpark", "notifications", "send", "--loop", "--interval", "0.2"],
                cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return True

    def crash_and_restart(self, *, recorded: bool) -> None:
        """Stall on message k (after or before the sandbox recorded it), kill -9 the worker, restart it, drain."""
        if recorded:
            self.sandbox.stall_after_record(1, skip=K - 1)
        else:
            self.sandbox.stall_before_record(1, skip=K - 1)
        self.start_worker()
        wait_for(lambda: self.alive() and self.sandbox.stalled.is_set(), 60, "the sandbox to stall on message k")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.sandbox.release()

        accepted_at_kill = [s.out_id for s in self.sandbox.accepted]
        self.assertEqual(self.ids[:K] if recorded else self.ids[:K - 1], accepted_at_kill)  # oldest first
        states = self._states()
        self.assertEqual(MessageState.SENDING, states[self.ids[K - 1]])  # in doubt
        self.assertTrue(all(states[i] is MessageState.SENT for i in self.ids[:K - 1]))
        self.assertTrue(all(states[i] is MessageState.PENDING for i in self.ids[K:]))

        self.start_worker()
        wait_for(lambda: self.alive() and all(s is MessageState.SENT for s in self._states().values()), 90,
                 "every message to be sent", interval=0.5)
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(0, self.proc.wait(20), self.log.read_text()[-3000:])

        counts = Counter(s.out_id for s in self.sandbox.accepted)
        self.assertEqual(set(self.ids), set(counts))
        self.assertEqual({1}, set(counts.values()), f"sent more than once: {[i for i, c in counts.items() if c > 1]}")
        self.assertGreaterEqual(self.sandbox.queries, 1)  # the in-doubt message was looked up first
        app = bootstrap(self.root / "plugins.toml")
        try:
            with app.store.unit_of_work() as uow:
                k = uow.outbox.get(self.ids[K - 1])
                others = [uow.outbox.get(i) for i in self.ids if i != self.ids[K - 1]]
        finally:
            app.close()
        self.assertTrue(all(m.vendor_message_id for m in others))
        log = self.log.read_text()
        if recorded:  # found at Aliyun by OutId: not sent again
            self.assertIn("QuerySendDetails", k.detail)
            self.assertEqual(1, k.attempts)
            self.assertIn("was found at the provider: sent", log)
        else:  # Aliyun never had it: sent again, once
            self.assertEqual(2, k.attempts)
            self.assertTrue(k.vendor_message_id)
            self.assertIn("was not received by the provider; it will be sent again", log)

    def test_killed_after_the_provider_took_the_message(self) -> None:
        self.crash_and_restart(recorded=True)

    def test_killed_before_the_provider_took_the_message(self) -> None:
        self.crash_and_restart(recorded=False)


if __name__ == "__main__":
    unittest.main()
