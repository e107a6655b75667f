"""Two real service instances on one PostgreSQL schema and one Mosquitto: nothing doubled, nothing lost.

Two ``smartpark serve`` processes run from two plugins.toml files that differ only in the HTTP port, the data
folder and the MQTT client id (as two hosts would: the default client id is derived from the host name); both use
``storage_postgres`` on the same fresh schema, the same data key (``SMARTPARK_DATA_KEY``), and ``camera_hikvision``
relaying from the machine's Mosquitto with ``mqtt.shared_group``: every camera topic is an MQTT v5 shared
subscription ``$share/<group>/...`` and each QoS 1 event goes to one of the two. One gate simulator serves both:
a lane's barrier controller is one TCP device, and the simulator (like a real controller) accepts several
connections and de-duplicates requests by id across them (the clients' request ids carry a random per-instance
prefix, so two instances never collide).

The traffic: 5,000 plate reads on 50 lanes (25 entries, 25 exits) from 400 cars (owners, and registered visitors
whose exits create orders), round after round (every car enters, then every car leaves), with duplicates mixed
in: the same event re-sent by the relay (same event id), and the same car read again at once (new event id, same
lane). Both kinds usually land on the *other* instance (a shared subscription hands a topic's messages round
robin), which has not seen the first one, so only the database can keep them from making a second stay.

Half-way through, one instance is killed with ``kill -9`` while reads keep coming. The survivor goes on deciding
what the broker hands it. Mosquitto keeps the dead member's unacknowledged reads, and a share of the new ones, in
the dead member's persistent session (measured: it does not hand them to the other member; when the session
expires they are dropped); so the killed instance is restarted with the same client id, as ``systemd``'s
``Restart=always`` does (docs/scaling.md), and its session drains. Then the database is checked:

* every read was decided (nothing lost);
* no read event made two stays, no read event closed two, every stay was opened by exactly one read;
* each plate's stays do not overlap, at most one is open;
* at most one open order per stay, one creation transition per order, no order transition recorded twice;
* duplicates were recorded as repeats (or, a car read again at once on the same instance, dropped by the
  camera adapter's same-plate window), never as new stays;
* a visitor's WeChat Pay notification (the sandbox's, signed) POSTed to both instances at the same moment, and
  again: answered 200 by both every time, one PAID transition, one attempt paid;
* the notifications both instances' outbox workers sent (Aliyun SMS sandbox): one per dedupe key, each accepted
  by the provider once.

``BrokerDeadMemberTest`` pins down the broker behaviour this deployment relies on (docs/scaling.md): a dead
shared-subscription member's unacknowledged messages, and its share of new ones, wait in its session; the member
back with the same client id gets them; when the session expires they are discarded, not re-routed.
"""

from __future__ import annotations

import base64
import http.client
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from smartpark.adapters.camera_hikvision.simulator import build_alert_xml
from smartpark.adapters.gate_tcp.simulator import GateSimulator
from smartpark.adapters.pay_wechat.channel import NOTIFY_PATH
from smartpark.bootstrap import bootstrap
from smartpark.core.notify import KINDS
from smartpark.infra.mqtt import BrokerSettings, MqttConnection
from smartpark.testing.aliyun_sms_sandbox import AliyunSmsSandbox
from smartpark.testing.harness import free_port, wait_for
from smartpark.testing.samples import sample_id_number, sample_phone
from smartpark.testing.toml_writer import to_toml
from smartpark.testing.wechatpay_sandbox import WeChatPaySandbox

DSN = os.environ.get("SMARTPARK_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
PAIRS = 25  # lanes in-01..in-25 and out-01..out-25
OWNERS, VISITORS = 360, 40
READS = 5000
RATE = 110.0  # reads/s published (both instances keep up on a busy 2-core machine)
KILL_AT, RESTART_AFTER = 2000, 600  # kill one instance after this many reads; restart it this many reads later
ADMIT = {"owner", "visitor_returning", "visitor_registered"}  # decisions that open a stay (direction "in")
RELEASE = {"owner", "free", "paid"}  # decisions that close a stay (direction "out")
CLOCK_SLACK = timedelta(seconds=2)  # see "each plate's stays" below; a car's next read comes ~4 s later


def owner_plate(n: int) -> str:
    return f"京A{n:05d}"


def visitor_plate(n: int) -> str:
    return f"沪B{n:05d}"


class Read:
    """One message of the relay. The ISAPI body is made when it is first published (the camera's time is the
    time of the read, as on a real camera); a resend publishes its original's body again, byte for byte."""

    __slots__ = ("camera", "lane", "plate", "event_id", "kind", "original", "_body")

    def __init__(self, lane: str, plate: str, event_id: str, kind: str, original: Read | None = None) -> None:
        self.camera, self.lane, self.plate, self.event_id, self.kind = f"cam-{lane}", lane, plate, event_id, kind
        self.original, self._body = original, None

    def body(self) -> bytes:
        if self.original is not None:
            return self.original.body()
        if self._body is None:
            self._body = build_alert_xml(self.plate, event_id=self.event_id, confidence=0.99)[1]
        return self._body


def traffic(seed: int = 7) -> list[Read]:
    """5,000 reads: rounds of every car entering, then every car leaving (each car keeps its lane pair), with
    ~6 % of reads re-sent with the same event id and ~6 % read again at once with a new id, 1-3 reads later."""
    rng = random.Random(seed)
    cars = [owner_plate(n) for n in range(1, OWNERS + 1)] + [visitor_plate(n) for n in range(1, VISITORS + 1)]
    pair = {plate: 1 + i % PAIRS for i, plate in enumerate(cars)}
    out: list[Read] = []
    rnd = 0
    while len(out) < READS:
        direction = "in" if rnd % 2 == 0 else "out"
        order = cars[:]
        rng.shuffle(order)
        for plate in order:
            lane = f"{direction}-{pair[plate]:02d}"
            eid = f"r{rnd}-{direction}-{plate[-6:]}-{uuid.uuid4().hex[:6]}"
            first = Read(lane, plate, eid, "original")
            out.append(first)
            roll = rng.random()
            if roll < 0.06:
                out.append(Read(lane, plate, eid, "resend", first))  # the relay sends the same event again
            elif roll < 0.12:
                out.append(Read(lane, plate, eid + "-again", "reread"))  # the camera reads the car again
            if len(out) >= READS:
                break
        rnd += 1
    # a duplicate comes 1-3 reads after its first copy (a relay resend, a second read a moment later)
    for i in range(len(out) - 1, 0, -1):
        if out[i].kind != "original":
            j = min(len(out) - 1, i + rng.randint(0, 2))
            out.insert(j, out.pop(i))
    return out[:READS]


class Instance:
    """One ``smartpark serve`` process with its own plugins.toml."""

    def __init__(self, root: Path, name: str, config: dict, env: dict) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir()
        self.http_port = free_port()
        config = {**config, "data_dir": str(self.dir / "data")}
        plugins = dict(config["plugins"])
        plugins["service"] = {"host": "127.0.0.1", "port": self.http_port}
        cam = dict(plugins["camera_hikvision"])
        cam["mqtt"] = {**cam["mqtt"], "client_id": f"{cam['mqtt']['client_id']}-{name}"}
        plugins["camera_hikvision"] = cam
        config["plugins"] = plugins
        self.config_path = self.dir / "plugins.toml"
        self.config_path.write_text(to_toml(config), encoding="utf-8")
        self.env = {**env, "SMARTPARK_CONFIG": str(self.config_path)}
        self.log = self.dir / "service.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "smartpark", "serve"], cwd=self.dir, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 60) -> None:
        wait_for(self.healthy, timeout, f"{self.name} to answer /healthz (log: {self.log})")

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"{self.name} exited with {code}:\n{self.log_tail()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def problems(self, n: int = 30) -> str:
        """The log's warnings and errors (last ``n`` lines)."""
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        keep = [x for x in lines if ("WARNING" in x or "ERROR" in x or "Traceback" in x or x.startswith(" "))
                and "smartpark.core.notify" not in x]
        return "\n".join(keep[-n:])

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return "(no log)"


class Deployment:
    """The schema, the data key, the gate simulator, two instances and a camera relay publisher."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="smartpark-two-")
        self.root = Path(self.tmp.name)
        self.schema = f"t_two_{uuid.uuid4().hex[:12]}"
        self.prefix = f"two-{uuid.uuid4().hex[:8]}"
        self.lanes = [f"in-{i:02d}" for i in range(1, PAIRS + 1)] + [f"out-{i:02d}" for i in range(1, PAIRS + 1)]
        self.sim = GateSimulator("127.0.0.1", 0, self.lanes, move_time_s=0.0, heartbeat_s=1.0, controller="gates",
                                 dedup_ttl_s=5.0).start()
        self.wechatpay = WeChatPaySandbox().start()
        self.sms = AliyunSmsSandbox().start()
        # the secrets, as plugins.toml wants them: environment variables (of the instances and of this process,
        # whose bootstrap() registers the cars and starts a payment)
        self.secrets = {"SMARTPARK_DATA_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                        "TWO_WECHATPAY_V3_KEY": self.wechatpay.apiv3_key,
                        "TWO_SMS_SECRET": self.sms.access_key_secret}
        self.env = {**os.environ, **self.secrets, "NO_COLOR": "1"}
        self.env.pop("SMARTPARK_DATA_INDEX_KID", None)
        self.config = {
            "lot": {"name": "两实例测试", "capacity": 100_000, "timezone": "Asia/Shanghai",
                    "lanes": [{"id": lane, "name": lane, "direction": lane[:lane.index("-")]} for lane in self.lanes]},
            "gate": {"repeat_window_seconds": 60},
            "tariff": {"free_minutes": 0, "unit_minutes": 60, "unit_fee": 300},  # a visitor's exit costs 3 yuan
            "notifications": {"rate_limit_per_hour": 0},
            "plugins": {
                "enabled": ["storage_postgres", "gate_tcp", "camera_hikvision", "pay_wechat", "sms_aliyun",
                            "service"],
                # the public notify URL reaches either instance (a load balancer); the test posts to both
                "pay_wechat": self.wechatpay.plugin_settings("http://127.0.0.1:8080" + NOTIFY_PATH,
                                                             api_v3_key_env="TWO_WECHATPAY_V3_KEY"),
                "sms_aliyun": {"access_key_id": self.sms.access_key_id, "access_key_secret": {"env": "TWO_SMS_SECRET"},
                               "sign_name": "两实例测试", "endpoint": self.sms.endpoint, "protocol": "http",
                               "templates": {k: f"SMS_46500{i:03d}" for i, k in enumerate(KINDS, 1)}},
                "storage_postgres": {"dsn": DSN, "schema": self.schema, "pool_max_size": 4},
                "gate_tcp": {"controllers": [{"id": "gates", "host": "127.0.0.1", "port": self.sim.port,
                                              "lanes": self.lanes}]},
                "camera_hikvision": {
                    "cameras": [{"id": f"cam-{lane}", "lane": lane} for lane in self.lanes],
                    "save_pictures": False, "offline_after_seconds": 0, "dedupe_seconds": 1.0,
                    "mqtt": {"enabled": True, "port": 1883, "client_id": self.prefix, "shared_group": "lot",
                             "topic": f"{self.prefix}/cameras/{{camera}}/events"},
                },
            },
        }
        self.instances = [Instance(self.root, name, self.config, self.env) for name in ("a", "b")]
        self.publisher = MqttConnection(BrokerSettings(port=1883), f"{self.prefix}-pub", persistent=False)
        self.publisher.client.max_inflight_messages_set(200)
        if not self.publisher.start(wait=10):
            self.publisher.stop()
            self.sim.stop()
            self.wechatpay.stop()
            self.sms.stop()
            self.tmp.cleanup()
            raise AssertionError("the publisher could not connect to Mosquitto at 127.0.0.1:1883")
        # this process's bootstrap() (registering the cars, starting a payment) reads them too; close() restores
        self.saved_env = {k: os.environ.get(k) for k in (*self.secrets, "SMARTPARK_DATA_INDEX_KID")}
        os.environ.update(self.secrets)
        os.environ.pop("SMARTPARK_DATA_INDEX_KID", None)

    def register(self) -> None:
        """Owners and visitors, through the service layer (the first bootstrap also migrates the schema)."""
        app = bootstrap(self.instances[0].config_path)
        try:
            for n in range(1, OWNERS + 1):
                app.residents.register_owner(name=f"业主{n}", id_number=str(sample_id_number(n)),
                                             phone=str(sample_phone(n)), plates=[owner_plate(n)], actor="test")
            for n in range(1, VISITORS + 1):
                app.residents.register_visitor(name=f"访客{n}", id_number=str(sample_id_number(10_000 + n)),
                                               phone=str(sample_phone(10_000 + n)), plate=visitor_plate(n),
                                               consent=True, actor="test")
        finally:
            app.close()

    def start_payment(self, order_id: str) -> str:
        """The exit display asks for a WeChat Pay QR code (as either instance would); the out_trade_no."""
        app = bootstrap(self.instances[0].config_path)
        try:
            return app.payments.pay_order(order_id, "wechat", actor="test").out_trade_no
        finally:
            app.close()

    def notify_both(self, headers: dict, body: bytes) -> list[int]:
        """The same signed WeChat Pay notification POSTed to both instances at the same moment."""
        import threading

        results: list[int] = []
        gate = threading.Barrier(2)

        def post(inst: Instance) -> None:
            gate.wait()
            conn = http.client.HTTPConnection("127.0.0.1", inst.http_port, timeout=10)
            conn.request("POST", NOTIFY_PATH, body=body, headers=headers)
            results.append(conn.getresponse().status)

        threads = [threading.Thread(target=post, args=(inst,)) for inst in self.instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        return results

    def publish(self, read: Read) -> None:
        self.publisher.publish(f"{self.prefix}/cameras/{read.camera}/events", read.body(), qos=1)

    def rows(self, query: str, *args) -> list[tuple]:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            return conn.execute(query, args).fetchall()

    def decided_ids(self) -> set[str]:
        return {r[0] for r in self.rows("SELECT DISTINCT read_event_id FROM decisions WHERE read_event_id IS NOT NULL")}

    def close(self) -> None:
        try:
            for inst in self.instances:
                inst.terminate()
        finally:
            self.publisher.stop()
            self.sim.stop()
            self.wechatpay.stop()
            self.sms.stop()
            for k, v in self.saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            with psycopg.connect(DSN, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))
            self.tmp.cleanup()


class TwoInstancesTest(unittest.TestCase):
    def test_two_instances_5000_reads_with_duplicates_and_a_kill(self):
        dep = Deployment()
        self.addCleanup(dep.close)
        dep.register()
        a, b = dep.instances
        for inst in (a, b):
            inst.start()
        for inst in (a, b):
            inst.wait_healthy()
        wait_for(lambda: dep.sim.connections >= 2, 30, "both instances' gate adapters to connect to the controller")
        reads = traffic()
        # a message published before any member of the group has subscribed reaches no one: wait for both relays
        # to connect (they subscribe right after CONNACK), and a moment for the SUBACKs
        for inst in (a, b):
            wait_for(lambda inst=inst: "MQTT relay connected" in inst.log_tail(100_000), 30,
                     f"{inst.name}'s camera relay to connect")
        time.sleep(0.5)

        t0 = time.monotonic()
        interval = 1.0 / RATE
        killed_at = restarted_at = None
        for i, read in enumerate(reads):
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if i == KILL_AT:
                b.kill9()
                killed_at = datetime.now(UTC)
            if i == KILL_AT + RESTART_AFTER:
                restarted_at = datetime.now(UTC)
                b.start()  # as systemd's Restart=always would: same plugins.toml, same client id
            dep.publish(read)
        published = time.monotonic() - t0
        b.wait_healthy()

        must = {r.event_id for r in reads if r.kind in ("original", "resend")}
        optional = {r.event_id for r in reads if r.kind == "reread"}
        deadline = time.monotonic() + 120
        while (missing := must - dep.decided_ids()) and time.monotonic() < deadline:
            time.sleep(0.5)
        if missing:
            where = Counter("after the kill" if reads.index(r) >= KILL_AT else "before the kill"
                            for r in reads if r.event_id in missing)
            self.fail(f"{len(missing)} reads never decided ({dict(where)}), e.g. {sorted(missing)[:5]}\n"
                      + "\n".join(f"--- {i.name} ---\n{i.problems()}" for i in dep.instances))
        settle = time.monotonic() - t0
        time.sleep(1.0)  # late copies (a redelivered read whose PUBACK died with the killed process)

        # a visitor pays at the exit; WeChat Pay's signed notification reaches both instances at the same moment,
        # then comes again (WeChat resends until it is answered: same notification id, fresh signature)
        order_id = dep.rows("SELECT id FROM orders WHERE state = 'created' ORDER BY seq LIMIT 1")[0][0]
        out_trade_no = dep.start_payment(order_id)
        answers = dep.notify_both(*dep.wechatpay.pay(out_trade_no))
        answers += dep.notify_both(*dep.wechatpay.notification(out_trade_no))
        # the notifications both outbox workers send: wait until nothing is due or being sent
        wait_for(lambda: not dep.rows("SELECT 1 FROM outbox WHERE state IN ('pending', 'sending', 'retrying')"),
                 60, "the outbox workers to send every queued notification")

        decisions = dep.rows("SELECT read_event_id, lane, direction, outcome, reason, session_id, order_id, at"
                             " FROM decisions WHERE read_event_id IS NOT NULL ORDER BY seq")
        sessions = dep.rows("SELECT id, plate_bidx, entered_at, exited_at, holder_kind FROM parking_sessions")
        orders = dep.rows("SELECT id, session_id, state FROM orders")
        transitions = dep.rows("SELECT order_id, position, to_state FROM order_transitions")
        sent_ids = {r.event_id for r in reads}

        problems: dict[str, list] = defaultdict(list)

        # payment: one PAID transition, one attempt paid, both instances answered SUCCESS (200) every time
        if answers != [200, 200, 200, 200]:
            problems["payment notification answers"].append(answers)
        paid = dep.rows("SELECT position FROM order_transitions WHERE order_id = %s AND to_state = 'paid'", order_id)
        if len(paid) != 1:
            problems["PAID transitions of the paid order"].append(len(paid))
        attempts = dep.rows("SELECT state FROM payment_attempts WHERE subject_id = %s", order_id)
        if [a[0] for a in attempts] != ["paid"]:
            problems["payment attempts of the paid order"].append(attempts)
        if dep.rows("SELECT state FROM orders WHERE id = %s", order_id) != [("paid",)]:
            problems["the paid order's state"].append(dep.rows("SELECT state FROM orders WHERE id = %s", order_id))

        # messages: one per fact (dedupe key), each accepted by the SMS provider once
        outbox = dep.rows("SELECT id, dedupe_key, state FROM outbox")
        problems["outbox dedupe keys queued twice"] += [
            k for k, n in Counter(m[1] for m in outbox).items() if n > 1]
        accepted = Counter(m.out_id for m in dep.sms.accepted)
        problems["messages the provider got more than once"] += [k for k, n in accepted.items() if n > 1]
        sent = {m[0] for m in outbox if m[2] == "sent"}
        if set(accepted) != sent:
            problems["sent messages != messages the provider got"].append((len(sent), len(accepted)))
        if not any(m[1].startswith("paid:") for m in outbox):
            problems["no payment receipt message queued"].append(len(outbox))

        # nothing lost, nothing invented
        decided = {d[0] for d in decisions}
        problems["reads never decided"] += sorted(must - decided)
        problems["decisions for reads nobody sent"] += sorted(decided - sent_ids)

        # no read event made two stays or closed two; every stay was opened by exactly one read
        opened_by: dict[str, set[str]] = defaultdict(set)
        closed_by: dict[str, set[str]] = defaultdict(set)
        sessions_of_event: dict[str, set[str]] = defaultdict(set)
        closes_of_event: dict[str, set[str]] = defaultdict(set)
        for eid, _lane, direction, _outcome, reason, session_id, _order, _at in decisions:
            if direction == "in" and reason in ADMIT:
                opened_by[session_id].add(eid)
                sessions_of_event[eid].add(session_id)
            if direction == "out" and reason in RELEASE and session_id:
                closed_by[session_id].add(eid)
                closes_of_event[eid].add(session_id)
        problems["read events that opened two stays"] += [e for e, x in sessions_of_event.items() if len(x) > 1]
        problems["read events that closed two stays"] += [e for e, x in closes_of_event.items() if len(x) > 1]
        problems["stays closed by two reads"] += [x for x, e in closed_by.items() if len(e) > 1]
        problems["stays not opened by exactly one read"] += [x[0] for x in sessions if len(opened_by[x[0]]) != 1]

        # each plate's stays: one after the other, at most one open. Two instances decide one car's reads
        # concurrently (and a dead instance's reads are decided late, from its session), so a stay may carry an
        # entry time a little before the exit time of the stay it follows (measured here: up to 0.23 s; an entry
        # now takes its time after the lock on the car's open stay, which removed the lock-wait cause but not
        # every one). The schema's one-open-stay-per-plate index makes a real overlap impossible; CLOCK_SLACK
        # allows for the timestamps
        slack: list[float] = []
        by_plate: dict[str, list[tuple]] = defaultdict(list)
        for x in sessions:
            by_plate[x[1]].append(x)
        for stays in by_plate.values():
            stays.sort(key=lambda x: x[2])
            if sum(1 for x in stays if x[3] is None) > 1:
                problems["plates with two open stays"].append(stays[0][1])
            for prev, nxt in zip(stays, stays[1:], strict=False):
                if prev[3] is None:
                    problems["an earlier stay left open under a later one"].append((prev[0], nxt[0]))
                elif prev[3] > nxt[2]:
                    slack.append((prev[3] - nxt[2]).total_seconds())
                    if prev[3] - nxt[2] > CLOCK_SLACK:
                        problems["overlapping stays of one plate"].append((prev[0], nxt[0], slack[-1]))

        # orders: at most one open per stay, each created once, no transition recorded twice
        open_orders = Counter(o[1] for o in orders if o[2] in ("created", "paying"))
        problems["stays with two open orders"] += [x for x, n in open_orders.items() if n > 1]
        created = Counter(t[0] for t in transitions if t[1] == 0)
        problems["orders not created exactly once"] += [o[0] for o in orders if created[o[0]] != 1]
        problems["order transitions recorded twice"] += [
            k for k, n in Counter((t[0], t[1]) for t in transitions).items() if n > 1]
        if not orders:
            problems["no visitor exit created an order"].append(len(orders))

        # a read event delivered again (the other instance's copy, a late redelivery) is decided as a repeat;
        # two instances deciding one event at the very same moment may both hold a visitor at the pay station,
        # pointing at the same stay and order (nothing changed), and nothing else
        first_of: dict[str, tuple] = {}
        for d in decisions:
            first = first_of.setdefault(d[0], d)
            if first is d or d[4] in ("repeat_read", "repeat_event"):
                continue
            if not (d[3] == "hold" and d[4] == first[4] and (d[5], d[6]) == (first[5], first[6])):
                problems["a read event decided twice, not as a repeat"].append((d[0], first[4], d[4]))

        # the survivor went on deciding while the other was dead
        assert killed_at is not None and restarted_at is not None
        alone = [d for d in decisions if killed_at < d[7] < restarted_at]
        if len(alone) < RESTART_AFTER // 4:
            problems["the survivor did not go on while the other was dead"].append(len(alone))

        # duplicates: decided as repeats, never as a new stay (checked above); how they were recorded
        per_event = Counter(d[0] for d in decisions)
        kinds = {r.event_id: r.kind for r in reads}
        stats = {
            "reads published": len(reads), "publish seconds": round(published, 1),
            "all decided after (s)": round(settle, 1), "decisions": len(decisions),
            "event ids decided more than once": sum(1 for n in per_event.values() if n > 1),
            "reasons of the 2nd+ decisions of an event": dict(Counter(
                d[4] for i, d in enumerate(decisions) if d[0] in {e for e in per_event if per_event[e] > 1}
                and any(x[0] == d[0] for x in decisions[:i]))),
            "rereads dropped by a camera window": len(optional - decided),
            "resends": sum(1 for k in kinds.values() if k == "resend"),
            "stays": len(sessions), "open stays": sum(1 for x in sessions if x[3] is None),
            "orders": len(orders), "gate opens": len(dep.sim.executed("open")),
            "decided while one instance was dead": len(alone),
            "stays entered before the previous one's exit time (s)": sorted(slack),
            "outbox messages": dict(Counter(m[2] for m in outbox)),
            "outbox kinds": dict(Counter(m[1].split(":")[0] for m in outbox)),
            "payment notification answers": answers,
        }
        print("\ntwo instances:", stats)
        found = {k: v for k, v in problems.items() if v}
        self.assertEqual(found, {}, f"\n{stats}")
        for inst in (a, b):
            self.assertEqual(inst.terminate(), 0, f"{inst.name} stops cleanly on SIGTERM:\n{inst.log_tail()}")


MEMBER = """
import sys, time
from smartpark.infra.mqtt import BrokerSettings, MqttConnection
client_id, topic, ack = sys.argv[1], sys.argv[2], sys.argv[3] == "ack"
conn = MqttConnection(BrokerSettings(session_expiry=int(sys.argv[4])), client_id, persistent=True, manual_ack=True)
def handle(_topic, payload, done):
    print(payload.decode(), flush=True)
    if ack:
        done()
conn.subscribe_deferred("$share/g/" + topic, handle)
conn.start(wait=10)
conn.wait_subscribed(10)
print("ready", flush=True)
time.sleep(120)
"""


class Member:
    """A shared-subscription member in a child process (so it can be killed with SIGKILL); collects what it got."""

    def __init__(self, client_id: str, topic: str, *, ack: bool, expiry: int) -> None:
        import threading

        self.got: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen([sys.executable, "-c", MEMBER, client_id, topic, "ack" if ack else "hold",
                                      str(expiry)], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(20):
            raise AssertionError("the member did not subscribe")

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if line == "ready":
                self.ready.set()
            elif line:
                self.got.append(line)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


class BrokerDeadMemberTest(unittest.TestCase):
    """What Mosquitto does with a shared-subscription member that dies (docs/scaling.md, "A dead instance"):
    its unacknowledged messages, and a share of the new ones, wait in its persistent session -- the other member
    does not get them; the member back with the same client id gets them; once the session expired they are gone."""

    def test_a_dead_members_share_waits_in_its_session_until_it_returns_or_expires(self):
        expiry = 3
        run = uuid.uuid4().hex[:8]
        topic, survivor_got = f"dead-member-{run}/events", []
        survivor = MqttConnection(BrokerSettings(session_expiry=expiry), f"dm-{run}-a", persistent=True)
        survivor.subscribe(f"$share/g/{topic}", lambda _t, payload: survivor_got.append(payload.decode()))
        self.assertTrue(survivor.start(wait=10) and survivor.wait_subscribed(10))
        self.addCleanup(survivor.stop)
        pub = MqttConnection(BrokerSettings(), f"dm-{run}-pub", persistent=False)
        self.assertTrue(pub.start(wait=10))
        self.addCleanup(pub.stop)

        def publish(first: int, n: int) -> list[str]:
            names = [f"m{i}" for i in range(first, first + n)]
            for name in names:
                pub.publish(topic, name, qos=1).wait_for_publish(5)
            return names

        member = Member(f"dm-{run}-b", topic, ack=False, expiry=expiry)  # takes messages, never acknowledges
        before = publish(0, 20)
        wait_for(lambda: len(survivor_got) + len(member.got) >= 20, 10, "the first 20 messages")
        held = set(member.got)
        self.assertTrue(held, "both members take a share")
        member.kill9()
        after = publish(20, 20)
        time.sleep(1.0)
        to_survivor = set(survivor_got) & set(after)
        self.assertLess(len(to_survivor), 20, "the dead member still gets its share of new messages, queued")
        self.assertFalse(held & set(survivor_got), "its unacknowledged messages are not handed to the survivor")

        back = Member(f"dm-{run}-b", topic, ack=True, expiry=expiry)  # back with the same client id
        self.addCleanup(back.kill9)
        everything = set(before) | set(after)
        wait_for(lambda: everything <= set(survivor_got) | set(back.got), 10,
                 "the returning member to get what its session held")
        back.kill9()
        late = publish(40, 20)
        time.sleep(expiry + 3.0)  # the session expires with what was queued for it
        again = Member(f"dm-{run}-b", topic, ack=True, expiry=expiry)
        self.addCleanup(again.kill9)
        time.sleep(1.0)
        lost = set(late) - set(survivor_got) - set(again.got)
        self.assertTrue(lost, "what was queued for an expired session is discarded, not re-routed")
        self.assertEqual(set(again.got) & set(late), set())
