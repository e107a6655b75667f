"""``smartpark demo``: a scripted day at the gate, on the real service, in a temporary folder.

Everything is the real thing on loopback: SQLite in a temporary folder, an MQTT broker (the configured one at
127.0.0.1:1883 when it answers, else the embedded broker of :mod:`smartpark.infra.broker`), the barrier
controller simulator over real TCP (``gate_tcp``), two simulated Hikvision cameras sending real ISAPI payloads
(the entry camera through the MQTT relay, the exit camera to the HTTP listening route), and the headless
service in-process (``start_in_thread``). Only the clock is the demo's own: a controllable clock that starts
at the current time and that the script moves forward ("演示时钟快进 2 小时"), since a real stay takes hours.

The timeline is driven by what the service publishes on ``app.bus`` and by what the gate simulator received
over TCP; every expectation is checked and marked ✓/✗. Any ✗ makes the exit status 1.

The scripted day:

1. an owner is registered (as the booth does) and drives in (camera read -> the gate opens, no stop) and out;
2. a visitor's unknown plate holds the gate -> the registration link -> the visitor page (GET, then the POST the
   page's script makes) -> the gate opens, with the free-time reminder;
3. two hours later the visitor reads out -> payment required -> the exit shows a WeChat Pay QR code (the real
   ``wechatpayv3`` SDK against the loopback WeChat Pay sandbox) -> the "payer" pays in the sandbox, which POSTs
   its signed notification to the service -> verified, the order is paid, the exit gate opens -> the receipt;
4. the lot fills -> 车库已满 (LotFull) -> a visitor is refused -> a car leaves -> LotAvailable;
5. a malformed camera payload is answered 400 without harm (and one through the relay is dropped), a resent
   event is recognised as a duplicate, and a re-read of a car at the barrier re-opens it without a second stay.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.cells import cell_len
from rich.console import Console
from rich.panel import Panel
from rich.rule import Rule
from rich.text import Text

from .core import events as ev
from .core.values import Money, Plate

__all__ = ["BROKER_ENV", "DEFAULT_BROKER", "run_demo"]

#: Where the demo looks for an MQTT broker before starting the embedded one (``--broker`` overrides).
BROKER_ENV = "SMARTPARK_DEMO_BROKER"
_SMS_SECRET_ENV = "SMARTPARK_DEMO_SMS_SECRET"
_WECHAT_SECRET_ENV = "SMARTPARK_DEMO_WECHAT_SECRET"
DEFAULT_BROKER = "127.0.0.1:1883"

LOT_NAME = "阳光花园小区停车场（演示）"
CAPACITY = 3
LANES = [{"id": "in-1", "name": "入口", "direction": "in"}, {"id": "out-1", "name": "出口", "direction": "out"}]
TARIFF = {"free_minutes": 15, "unit_minutes": 60, "unit_fee": 300}
ACTOR = "booth:演示岗亭"

# Made-up people with valid ID numbers (correct check characters) and phones.
DEMO_OPENID = "oDemo-WangQiang-000000000000"  # an openid that follows the (sandbox) official account
OWNERS = {
    "张伟": {"id_number": "110105198001011238", "phone": "13800138000", "plates": ["京A12345"]},
    "李娜": {"id_number": "310115198506152343", "phone": "13900139000", "plates": ["沪B67890"]},
    "王强": {"id_number": "110108197511114565", "phone": "13600136000", "plates": ["苏E2M567"]},
}
VISITOR = {"name": "赵敏", "id_number": "440305199002033457", "phone": "13700137000", "plate": "粤B12345"}
VISITOR_2 = "浙A88888"

_OUTCOME = {"open": "抬杆", "hold": "等待", "refuse": "拒绝"}
_CHANNEL_ZH = {"cash": "现金", "wechat": "微信支付", "alipay": "支付宝", "balance": "余额"}
_KIND = {"owner": "业主", "visitor": "访客"}


def _masked(plate: str | None) -> str:
    if not plate:
        return "—"
    try:
        return Plate.parse(plate).masked
    except Exception:  # noqa: BLE001 - already masked, or not a plate
        return plate


_PLATE_IN_TEXT = re.compile(r"[\u4e00-\u9fa5][A-Z][A-Z0-9]{5,6}")
_PHONE_IN_TEXT = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")


def _mask_text(text: str) -> str:
    """A message's text for the terminal: plates and phone numbers masked."""
    return _PHONE_IN_TEXT.sub(r"\1****\2", _PLATE_IN_TEXT.sub(lambda m: _masked(m.group(0)), text))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- what happened: bus events and gate commands --------------------------------------------------------------
class _Recorder:
    """Every event published on the bus, in order, with a wait for the one a step expects."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: ev.Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def since(self, mark: int, kind: type[ev.Event] = ev.Event) -> list[Any]:
        with self._cond:
            return [e for e in self.events[mark:] if isinstance(e, kind)]

    def wait(self, mark: int, kind: type[ev.Event], pred: Callable[[Any], bool] = lambda e: True,
             timeout: float = 5.0) -> Any:
        """The first event of ``kind`` after ``mark`` that satisfies ``pred`` (None after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[mark:]:
                    if isinstance(e, kind) and pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


class _Timeline:
    """Prints the rows: demo-clock time, lane, masked plate, what happened, ✓/✗ for expectations."""

    def __init__(self, console: Console, clock: Any, tz: Any, recorder: _Recorder, sim: Any) -> None:
        self.console, self.clock, self.tz = console, clock, tz
        self.recorder, self.sim = recorder, sim
        self.checks: list[tuple[str, bool, str]] = []
        self._printed = 0
        self._sim_seen = 0

    # rows
    def row(self, text: str, *, lane: str = "", plate: str = "", at: datetime | None = None, style: str = "",
            mark: str = "", mark_style: str = "") -> None:
        when = (at or self.clock.now()).astimezone(self.tz).strftime("%H:%M:%S")
        line = Text()
        line.append(f"{when}  ", style="dim")
        line.append(_pad(lane or "", 6), style="cyan")
        line.append(_pad(plate or "", 10), style="bold")
        line.append(text, style=style)
        if mark:
            line.append(f"  {mark}", style=mark_style)
        self.console.print(line, soft_wrap=True)

    def section(self, title: str) -> None:
        self.flush()
        self.console.print(Rule(Text(title, style="bold"), align="left", style="dim"))

    def note(self, text: str, **kw: Any) -> None:
        self.flush()
        self.row(text, style="dim", **kw)

    def expect(self, title: str, ok: bool, detail: str = "") -> bool:
        self.flush()
        self.checks.append((title, bool(ok), detail))
        text = title + (f"（{detail}）" if detail else "")
        self.row(text, style="green" if ok else "bold red", mark="✓" if ok else "✗",
                 mark_style="bold green" if ok else "bold red")
        return bool(ok)

    @property
    def failed(self) -> list[tuple[str, bool, str]]:
        return [c for c in self.checks if not c[1]]

    # events and gate commands, in the order they happened
    def flush(self) -> None:
        with self.recorder._cond:
            events = self.recorder.events[self._printed:]
            self._printed += len(events)
        commands = list(self.sim.history[self._sim_seen:])
        self._sim_seen += len(commands)
        for e in events:
            self._event(e)
            if isinstance(e, ev.DecisionRecorded) and e.outcome == "open":
                for c in [c for c in commands if c.lane == e.lane]:
                    commands.remove(c)
                    self._command(c)
        for c in commands:
            self._command(c)

    def _command(self, c: Any) -> None:
        ok = c.result == "ok"
        self.row(f"道闸控制器经 TCP 收到「{c.op}」指令（请求 {c.id}，原因 {c.reason}）→ {'执行' if ok else c.result}",
                 lane=c.lane, style="yellow" if ok else "red")

    def _event(self, e: ev.Event) -> None:  # noqa: C901 - one branch per event type
        at = e.at
        if isinstance(e, ev.DecisionRecorded):
            gate = "" if e.outcome != "open" else ("，道闸已确认" if e.gate_ok else "，道闸未响应")
            style = {"open": "green", "hold": "yellow", "refuse": "red"}.get(e.outcome, "")
            self.row(f"判定：{_OUTCOME.get(e.outcome, e.outcome)}（{e.reason}）{e.message}{gate}", lane=e.lane,
                     plate=e.plate or "", at=at, style=style)
        elif isinstance(e, ev.VehicleEntered):
            self.row(f"{_KIND.get(e.holder_kind, e.holder_kind)}车辆入场，停车记录开始", lane=e.lane, plate=e.plate, at=at)
        elif isinstance(e, ev.VehicleExited):
            fee = f"，费用 {Money(e.fee_fen)}" if e.fee_fen else "，免费"
            self.row(f"{_KIND.get(e.holder_kind, e.holder_kind)}车辆离场，停车 {e.minutes} 分钟{fee}", lane=e.lane,
                     plate=e.plate, at=at)
        elif isinstance(e, ev.VisitorRegistrationRequired):
            self.row(f"需要登记：车道屏显示二维码 {_short_link(e.url)}", lane=e.lane, plate=e.plate, at=at, style="yellow")
        elif isinstance(e, ev.VisitorRegistered):
            self.row("访客登记成功（身份证号、手机号加密保存）", plate=e.plate, at=at)
        elif isinstance(e, ev.OwnerRegistered):
            self.row(f"业主登记（岗亭）：车牌 {'、'.join(e.plates)}", plate=e.plates[0] if e.plates else "", at=at)
        elif isinstance(e, ev.PaymentRequired):
            self.row(f"请缴费 {Money(e.amount_fen)}（订单 {e.order_id[:8]}…）", lane=e.lane or "", plate=e.plate, at=at,
                     style="yellow")
        elif isinstance(e, ev.PaymentSucceeded):
            self.row(f"缴费成功 {Money(e.amount_fen)}（{_CHANNEL_ZH.get(e.channel, e.channel)}）", at=at,
                     style="green")
        elif isinstance(e, ev.LotFull):
            self.row(f"车库已满（{e.occupied}/{e.capacity}）", at=at, style="bold red")
        elif isinstance(e, ev.LotAvailable):
            self.row(f"车库有空位（{e.occupied}/{e.capacity}）", at=at, style="bold green")
        elif isinstance(e, ev.EntryRefused):
            self.row(f"拒绝入场（{e.reason}）", lane=e.lane, plate=e.plate, at=at, style="red")
        elif isinstance(e, ev.GateFailed):
            self.row(f"道闸无响应：{e.detail}", lane=e.lane, at=at, style="bold red")
        elif isinstance(e, ev.Anomaly):
            self.row(f"异常：{e.message}", lane=e.lane, plate=e.plate or "", at=at, style="yellow")
        elif isinstance(e, ev.ReadNeedsConfirmation):
            self.row(f"识别不清（{e.raw_text}，置信度 {e.confidence:.2f}），请值班员确认", lane=e.lane, at=at,
                     style="yellow")
        elif isinstance(e, (ev.DeviceOffline, ev.DeviceOnline)):
            state = "离线" if isinstance(e, ev.DeviceOffline) else "在线"
            self.row(f"设备 {e.device}（{e.kind}）{state}", at=at, style="dim")
        elif isinstance(e, ev.OrderCreated):
            pass  # shown by PaymentRequired
        else:
            self.row(type(e).__name__, at=at, style="dim")


def _pad(text: str, width: int) -> str:
    return text + " " * max(1, width - cell_len(text))


def _short_link(url: str) -> str:
    parts = urlsplit(url)
    token = parts.path.rsplit("/", 1)[-1]
    return f"{parts.scheme}://{parts.netloc}/v/{token[:10]}…"


# -- the demo ---------------------------------------------------------------------------------------------------
class _Demo:
    def __init__(self, folder: Path, broker_address: str, console: Console) -> None:
        self.folder, self.broker_address, self.console = folder, broker_address, console
        self.started = time.monotonic()
        self.counts = {"mqtt": 0, "http": 0, "malformed": 0, "duplicate": 0}
        self._stack: list[Callable[[], None]] = []

    # set-up ------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from .adapters.camera_hikvision.simulator import CameraSimulator
        from .adapters.gate_tcp.simulator import GateSimulator
        from .adapters.service import Config as ServiceConfig
        from .adapters.service import start_in_thread
        from .adapters.service.auth import create_token
        from .bootstrap import bootstrap
        from .infra.broker import ensure_broker, parse_address
        from .testing.fakes import FakeClock

        host, port = parse_address(self.broker_address)
        self.broker = ensure_broker(host, port)
        self._stack.append(self.broker.stop)
        from .testing.wechatpay_sandbox import WeChatPaySandbox

        self.wechat = WeChatPaySandbox().start()  # a loopback WeChat Pay with real signatures both ways
        self._stack.append(self.wechat.stop)
        self.sim = GateSimulator("127.0.0.1", 0, [lane["id"] for lane in LANES], move_time_s=0.2,
                                 heartbeat_s=1.0, controller="demo-gate").start()
        self._stack.append(self.sim.stop)
        self.clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
        notify_plugins = self._start_message_sandboxes()
        http_port = _free_port()
        self.base = f"http://127.0.0.1:{http_port}"
        run_id = os.urandom(4).hex()
        config = {
            "data_dir": str(self.folder / "data"),
            "lot": {"name": LOT_NAME, "capacity": CAPACITY, "timezone": "Asia/Shanghai", "lanes": LANES},
            "tariff": dict(TARIFF),
            "gate": {"public_url": self.base},
            "plugins": {
                "enabled": ["storage_sqlite", "gate_tcp", "camera_hikvision", "pay_wechat", "service"],
                "storage_sqlite": {"path": "smartpark.db"},
                "pay_wechat": self.wechat.plugin_settings(),  # gateway: the sandbox; notify: {public_url}/pay/...
                "gate_tcp": {"controllers": [{"id": "demo-gate", "host": "127.0.0.1", "port": self.sim.port,
                                              "lanes": [lane["id"] for lane in LANES]}]},
                "camera_hikvision": {
                    "cameras": [{"id": "cam-in-1", "lane": "in-1"}, {"id": "cam-out-1", "lane": "out-1"}],
                    # the demo clock jumps hours ahead: a silence watchdog would call the cameras offline
                    "offline_after_seconds": 0,
                    # a run-unique topic prefix: other lots (or test runs) on a shared broker never cross in
                    "mqtt": {"enabled": True, "host": self.broker.host, "port": self.broker.port,
                             "client_id": f"smartpark-demo-{run_id}",
                             "topic": f"smartpark-demo-{run_id}/cameras/{{camera}}/events"},
                },
                "service": {"host": "127.0.0.1", "port": http_port},
                **notify_plugins,
            },
        }
        config["plugins"]["enabled"] += list(notify_plugins)
        self.app = bootstrap(config, overrides={"clock": self.clock})
        self._stack.append(self.app.close)
        self.tz = self.app.timezone
        self.recorder = _Recorder()
        self.app.bus.subscribe(ev.Event, self.recorder)
        self.tl = _Timeline(self.console, self.clock, self.tz, self.recorder, self.sim)
        self.handle = start_in_thread(self.app, ServiceConfig(host="127.0.0.1", port=http_port), port=http_port)
        self._stack.append(self.handle.stop)
        import httpx

        self.http = httpx.Client(base_url=self.base, timeout=10.0)
        self._stack.append(self.http.close)
        self.recognizer = self.app.recognizers["camera_hikvision"]
        self.gate = self.app.gates["gate_tcp"]
        cams = self.app.config.plugins.settings("camera_hikvision")
        route = self.base + "/devices/hikvision/{camera}"
        topic = cams.get("mqtt", {}).get("topic", "smartpark/cameras/{camera}/events")
        # the entry camera relays through MQTT; the exit camera posts to the listening route
        self.cam_in = CameraSimulator("cam-in-1", url=route, mqtt=(self.broker.host, self.broker.port), topic=topic,
                                      tz=self.tz, clock=self.clock)
        self.cam_out = CameraSimulator("cam-out-1", url=route, tz=self.tz, clock=self.clock)
        self._stack += [self.cam_in.close, self.cam_out.close]

        tl = self.tl
        tl.section("准备 · 真实服务，内置默认配置")
        tl.note(f"数据目录 {self.folder}（SQLite，数据密钥文件 0600）")
        tl.note(("使用已配置的 MQTT 服务器 " + self.broker.address) if self.broker.embedded is None else
                f"MQTT 服务器 {host}:{port} 无法连接，已启动内置 MQTT 服务器 {self.broker.address}")
        tl.note(f"道闸控制器模拟器 TCP 127.0.0.1:{self.sim.port}，车道 in-1 入口、out-1 出口")
        tl.note(f"服务已启动 {self.base}（摄像机：cam-in-1 经 MQTT 转发，cam-out-1 经 HTTP 监听）")
        tl.note(f"微信支付沙箱 {self.wechat.url}（真实 wechatpayv3 SDK，双向 RSA 签名；支付通知发往 "
                f"{self.base}/pay/wechat/notify）")
        tl.note(f"短信沙箱（阿里云 SendSms）{self.sms_sandbox.endpoint}、微信模板消息沙箱 {self.wechat_sandbox.base_url}："
                "通知经真实客户端发出，收到即显示")
        tl.note(f"车位 {CAPACITY} 个；访客收费：{TARIFF['free_minutes']} 分钟内免费，每小时 {Money(TARIFF['unit_fee'])}；"
                "演示时钟从当前时间开始，由脚本快进")
        tl.expect("摄像机 MQTT 转发已连接", self.recognizer.wait_ready(10.0), self.broker.address)
        tl.expect("道闸控制器已连接（TCP）", _wait(lambda: self.gate.is_online("demo-gate"), 10.0),
                  f"127.0.0.1:{self.sim.port}")
        health = self.http.get("/healthz")
        tl.expect("服务健康检查 /healthz", health.status_code == 200, f"HTTP {health.status_code}")
        self.token = create_token(self.app.store, self.clock, "demo-booth", actor="demo")
        tl.note("为演示创建岗亭接口令牌 demo-booth（只显示一次，只存哈希）")

    def _start_message_sandboxes(self) -> dict[str, Any]:
        """The loopback SMS and WeChat servers, and the plugin settings that point sms_aliyun/wechat_template at them
        (secrets through environment variables of this process, as plugins.toml requires)."""
        from .core.notify import KINDS
        from .testing.aliyun_sms_sandbox import AliyunSmsSandbox
        from .testing.wechat_api_sandbox import WeChatApiSandbox

        self._messages: list[tuple[str, str, str, str]] = []  # (channel, masked address, out id, code)
        self._messages_lock = threading.Lock()
        self._messages_shown = 0

        def got(channel: str, address: str, out_id: str, code: str) -> None:
            with self._messages_lock:
                self._messages.append((channel, address, out_id, code))

        self.sms_sandbox = AliyunSmsSandbox(
            on_accept=lambda m: got("短信", m.masked_phone, m.out_id, m.template_code)).start()
        self._stack.append(self.sms_sandbox.stop)
        self.wechat_sandbox = WeChatApiSandbox(
            on_send=lambda m: got("微信", m.masked_openid, m.client_msg_id, m.template_id[:12])).start()
        self._stack.append(self.wechat_sandbox.stop)
        secrets = {_SMS_SECRET_ENV: self.sms_sandbox.access_key_secret, _WECHAT_SECRET_ENV: self.wechat_sandbox.secret}
        os.environ.update(secrets)
        self._stack.append(lambda: [os.environ.pop(k, None) for k in secrets])
        return {
            "sms_aliyun": {"access_key_id": self.sms_sandbox.access_key_id,
                           "access_key_secret": {"env": _SMS_SECRET_ENV}, "sign_name": "阳光花园物业",
                           "endpoint": self.sms_sandbox.endpoint, "protocol": "http",
                           "templates": {k: f"SMS_4650000{i:02d}" for i, k in enumerate(KINDS, 1)}},
            "wechat_template": {"appid": self.wechat_sandbox.appid, "secret": {"env": _WECHAT_SECRET_ENV},
                                "base_url": self.wechat_sandbox.base_url,
                                "templates": {k: f"DemoTemplate{i:02d}{k}"[:64] for i, k in enumerate(KINDS, 1)}},
        }

    def deliver(self) -> None:
        """Send what the outbox holds (the service's worker may already have) and show what the sandboxes got."""
        self.tl.flush()
        try:
            self.app.outbox_worker.run_until_idle()
        except Exception:  # noqa: BLE001 - shown as missing messages; the log has the cause
            logging.getLogger(__name__).exception("delivering the demo's notifications failed")
        _wait(lambda: self.app.outbox_worker.pending() == 0, 3.0)
        with self._messages_lock:
            new = self._messages[self._messages_shown:]
            self._messages_shown = len(self._messages)
        for channel, address, out_id, code in new:
            with self.app.store.unit_of_work() as uow:
                m = uow.outbox.get(out_id)
            text = _mask_text(m.text) if m is not None else code
            self.tl.row(f"[{channel}] {address} 收到：{text}", style="magenta")

    def write_config(self) -> Path:
        """For ``--keep``: a plugins.toml beside the data, so ``smartpark -c DIR audit verify`` (or ``owner list``)
        opens what the demo left (the store only: the devices are gone)."""
        from .testing.toml_writer import to_toml

        config = {"data_dir": "data",
                  "lot": {"name": LOT_NAME, "capacity": CAPACITY, "timezone": "Asia/Shanghai", "lanes": list(LANES)},
                  "tariff": dict(TARIFF),
                  "plugins": {"enabled": ["storage_sqlite"], "storage_sqlite": {"path": "smartpark.db"}}}
        path = self.folder / "plugins.toml"
        path.write_text("# Written by `smartpark demo --keep`: the demo's lot, with the store only.\n" + to_toml(config),
                        encoding="utf-8")
        return path

    def close(self) -> None:
        while self._stack:
            fn = self._stack.pop()
            try:
                fn()
            except Exception:  # noqa: BLE001 - keep closing the rest
                logging.getLogger(__name__).exception("demo clean-up step failed")

    # helpers -----------------------------------------------------------------------------------------------
    def advance(self, text: str, **delta: float) -> None:
        self.clock.advance(**delta)
        self.tl.note(f"» 演示时钟快进 {text}")

    def read(self, cam: Any, plate: str, *, via: str, timeout: float = 5.0, **kw: Any) -> Any:
        """Send a read of ``plate``; wait for (and return) the decision on the camera's lane."""
        lane = "in-1" if cam is self.cam_in else "out-1"
        mark = self.recorder.mark()
        payload = cam.read(plate, **kw)
        shown = f"{len(payload.body) / 1024:.1f} KB，事件 {payload.event_id[:8]}…"
        if via == "mqtt":
            self.tl.note(f"摄像机 {cam.camera_id} 识别 → MQTT 转发 {cam.topic}（ISAPI multipart，{shown}）",
                         lane=lane, plate=_masked(plate))
            cam.publish(payload)
        else:
            self.tl.note(f"摄像机 {cam.camera_id} 识别 → HTTP POST /devices/hikvision/{cam.camera_id}（{shown}）",
                         lane=lane, plate=_masked(plate))
            sent = cam.post(payload)
            if sent.status != 200:
                self.tl.expect("摄像机报文被接受", False, f"HTTP {sent.status} {sent.text}")
        self.counts[via] += 1
        self.last_payload = payload
        masked = _masked(plate)
        d = self.recorder.wait(mark, ev.DecisionRecorded, lambda e: e.lane == lane and e.plate == masked, timeout)
        self.tl.flush()
        return d

    def opens(self, lane: str) -> int:
        return len(self.sim.executed("open", lane))

    def booth(self, method: str, path: str, **kw: Any) -> Any:
        return self.http.request(method, "/api/booth" + path, headers={"Authorization": f"Bearer {self.token}"}, **kw)

    # the day -----------------------------------------------------------------------------------------------
    def owner_day(self) -> None:
        tl, app = self.tl, self.app
        tl.section("① 业主：岗亭登记，无感通行")
        info = OWNERS["张伟"]
        app.residents.register_owner(name="张伟", id_number=info["id_number"], phone=info["phone"],
                                     plates=info["plates"], actor=ACTOR)
        before = self.opens("in-1")
        d = self.read(self.cam_in, "京A12345", via="mqtt")
        tl.expect("业主车辆：识别后直接抬杆，无需停车",
                  d is not None and d.outcome == "open" and d.reason == "owner" and d.gate_ok is True
                  and self.opens("in-1") == before + 1, "道闸控制器收到开闸指令" if d else "没有判定")
        self.advance("40 分钟", minutes=40)
        before = self.opens("out-1")
        d = self.read(self.cam_out, "京A12345", via="http")
        tl.expect("业主离场：HTTP 监听模式识别，抬杆",
                  d is not None and d.outcome == "open" and self.opens("out-1") == before + 1)

    def visitor_arrives(self) -> None:
        tl = self.tl
        tl.section("② 访客到访：陌生车牌 → 扫码登记 → 抬杆")
        self.advance("5 分钟", minutes=5)
        mark, before = self.recorder.mark(), self.opens("in-1")
        d = self.read(self.cam_in, VISITOR["plate"], via="mqtt")
        need = self.recorder.wait(mark, ev.VisitorRegistrationRequired, timeout=2.0)
        tl.expect("陌生车牌：道闸保持关闭，等待登记",
                  d is not None and d.outcome == "hold" and d.reason == "registration_required"
                  and self.opens("in-1") == before)
        tl.expect("车道屏出现登记链接", need is not None and need.url.startswith(self.base + "/v/"))
        if need is None:
            return
        page = self.http.get(need.url)
        tl.expect("访客手机打开登记页面", page.status_code == 200 and 'id="visitor-form"' in page.text
                  and VISITOR["plate"] in page.text and LOT_NAME in page.text, f"GET /v/… → HTTP {page.status_code}")
        token = urlsplit(need.url).path.rsplit("/", 1)[-1]
        from urllib.parse import unquote

        mark = self.recorder.mark()
        tl.note("访客填写姓名、身份证号、手机号并同意《个人信息处理说明》，提交（页面脚本 POST /api/visitor/register）",
                lane="in-1", plate=_masked(VISITOR["plate"]))
        reply = self.http.post("/api/visitor/register", json={
            "token": unquote(token), "name": VISITOR["name"], "id_number": VISITOR["id_number"],
            "phone": VISITOR["phone"], "consent": True,
        }, headers={"Accept": "application/json"})
        body = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else {}
        self.recorder.wait(mark, ev.VehicleEntered, timeout=2.0)
        tl.flush()
        tl.expect("登记成功，道闸打开", reply.status_code == 200 and body.get("admitted") is True
                  and self.opens("in-1") == before + 1, f"HTTP {reply.status_code}：{body.get('message', '')}")
        reminder = body.get("reminder", "")
        tl.expect("入场提醒（免费时段）", f"免费停车 {TARIFF['free_minutes']} 分钟" in reminder, reminder or "无提醒")

    def visitor_pays(self) -> None:
        tl = self.tl
        tl.section("③ 访客停车 2 小时 → 出口扫码微信支付 → 支付通知验签 → 抬杆 → 电子凭证")
        self.advance("2 小时", hours=2)
        mark, before = self.recorder.mark(), self.opens("out-1")
        d = self.read(self.cam_out, VISITOR["plate"], via="http")
        due = self.recorder.wait(mark, ev.PaymentRequired, timeout=2.0)
        expected = 2 * TARIFF["unit_fee"]  # 120 minutes: past the free 15, two started hours at ¥3
        tl.expect("出口：需缴费，道闸保持关闭",
                  d is not None and d.reason == "payment_required" and self.opens("out-1") == before)
        tl.expect(f"应缴 {Money(expected)}（2 小时 × 每小时 {Money(TARIFF['unit_fee'])}）",
                  due is not None and due.amount_fen == expected,
                  f"显示 {Money(due.amount_fen)}" if due is not None else "没有缴费通知")
        if due is None:
            return
        denied = self.http.post(f"/api/booth/orders/{due.order_id}/cash", json={})
        tl.expect("没有令牌的岗亭请求被拒绝", denied.status_code == 401, f"HTTP {denied.status_code}")
        # the exit display asks the payment service for a WeChat Pay Native order: a new out_trade_no, a code_url
        view = self.app.payments.pay_order(due.order_id, "wechat", actor=ACTOR)
        tl.note(f"出口屏显示微信支付二维码（商户订单号 {view.out_trade_no}，{Money(view.amount_fen)}）",
                lane="out-1", plate=_masked(VISITOR["plate"]))
        self.console.print(Text(_qr_text(view.code_url)))
        tl.expect("微信支付下单成功（SDK 签名请求，沙箱签名应答已验证）",
                  view.state == "paying" and view.code_url.startswith("weixin://wxpay/"), view.code_url)
        # the payer scans and pays in the sandbox; WeChat Pay signs the notification and POSTs it to the service.
        # (Signed at the demo clock's time: the channel refuses notifications signed far from our clock.)
        mark = self.recorder.mark()
        tl.note("访客用微信扫码并支付（微信支付沙箱）→ 微信支付回调 POST /pay/wechat/notify",
                lane="out-1", plate=_masked(VISITOR["plate"]))
        self.wechat.pay(view.out_trade_no)
        headers, body = self.wechat.notification(view.out_trade_no, timestamp=int(self.clock.now().timestamp()))
        delivery = self.wechat.deliver(headers, body, self.base + "/pay/wechat/notify")
        tl.expect("支付通知验签、解密、核对金额后应答 200 SUCCESS",
                  delivery.status == 200 and b'"SUCCESS"' in delivery.body, f"HTTP {delivery.status}")
        self.recorder.wait(mark, ev.VehicleExited, timeout=3.0)
        _wait(lambda: self.opens("out-1") == before + 1, 3.0)
        tl.flush()
        paid = self.app.payments.status(view.out_trade_no)
        tl.expect("微信支付成功后出口抬杆", paid.state == "paid" and self.opens("out-1") == before + 1,
                  f"交易单号 {paid.transaction_id}")
        again = self.wechat.deliver(*self.wechat.notification(view.out_trade_no,
                                                              timestamp=int(self.clock.now().timestamp())),
                                    self.base + "/pay/wechat/notify")
        tl.expect("微信支付重发的通知只应答、不重复入账", again.status == 200
                  and self.app.payments.status(view.out_trade_no).state == "paid"
                  and self.opens("out-1") == before + 1)
        receipts = getattr(self.app, "receipts", None)
        if receipts is not None:
            receipt = receipts.for_order(due.order_id)
            text = "\n".join(f"{label}：{value}" for label, value in receipt.lines())
        else:  # no receipt service: the order and the transaction
            text = (f"订单 {due.order_id}\n金额 {Money(paid.amount_fen)}\n支付方式 微信支付\n"
                    f"交易单号 {paid.transaction_id}\n商户订单号 {paid.out_trade_no}")
        self.console.print(Panel(Text(text), title="电子缴费凭证", expand=False))
        tl.expect("电子缴费凭证", str(Money(expected)) in text and (paid.transaction_id or "-") in text)

    def lot_fills(self) -> None:
        tl, app = self.tl, self.app
        tl.section(f"④ 车库满位（{CAPACITY} 个车位）")
        for name, extra in (("李娜", {"lot_full_opt_out": True}), ("王强", {"wechat_openid": DEMO_OPENID})):
            info = OWNERS[name]
            app.residents.register_owner(name=name, id_number=info["id_number"], phone=info["phone"],
                                         plates=info["plates"], actor=ACTOR, **extra)
        tl.note("李娜 选择不接收「车库已满」通知；王强 已关注物业公众号（微信模板消息）")
        mark = self.recorder.mark()
        for plate in ("京A12345", "沪B67890", "苏E2M567"):
            self.advance("2 分钟", minutes=2)
            d = self.read(self.cam_in, plate, via="mqtt")
            if d is None or d.outcome != "open":
                tl.expect(f"{_masked(plate)} 入场", False)
        full = self.recorder.wait(mark, ev.LotFull, timeout=2.0)
        tl.expect("第 3 辆车入场后：车库已满", full is not None and full.occupied == CAPACITY,
                  f"LotFull {full.occupied}/{full.capacity}" if full else "没有 LotFull")
        # The service fans "车库已满" out to owners in a job every 5 s (not in the transaction of the car that
        # filled the lot); the demo's clock is simulated, so it runs that job now.
        app.notifications.expand_lot_full()
        self.deliver()
        with app.store.unit_of_work() as uow:
            told = {m.recipient_id: m.channel for m in uow.outbox.list(kind="lot_full")}
            owners = {str(o.name): o.id for o in uow.owners.list()}
        want = {owners["张伟"]: "sms", owners["王强"]: "wechat"}
        tl.expect("「车库已满」通知每位业主一次（退订者除外）", told == want,
                  f"短信 {sum(c == 'sms' for c in told.values())} 条、微信 {sum(c == 'wechat' for c in told.values())} 条，"
                  f"李娜 已退订")
        self.advance("3 分钟", minutes=3)
        before = self.opens("in-1")
        mark = self.recorder.mark()
        d = self.read(self.cam_in, VISITOR_2, via="mqtt")
        refused = self.recorder.wait(mark, ev.EntryRefused, timeout=2.0)
        tl.expect("满位时外来车辆被拒绝（车库已满）",
                  d is not None and d.outcome == "refuse" and d.reason == "lot_full" and refused is not None
                  and self.opens("in-1") == before, d.message if d else "没有判定")
        self.advance("10 分钟", minutes=10)
        mark = self.recorder.mark()
        d = self.read(self.cam_out, "沪B67890", via="http")
        free = self.recorder.wait(mark, ev.LotAvailable, timeout=2.0)
        tl.expect("一辆车离场后：车库有空位", d is not None and d.outcome == "open" and free is not None,
                  f"LotAvailable {free.occupied}/{free.capacity}" if free else "没有 LotAvailable")

    def bad_input(self) -> None:
        tl = self.tl
        tl.section("⑤ 异常输入：畸形报文、重复识别")
        self.advance("1 分钟", minutes=1)
        mark, opens = self.recorder.mark(), len(self.sim.executed("open"))
        broken = "<EventNotificationAlert><ANPR><licensePlate>京A1".encode()
        tl.note("摄像机 cam-in-1 → HTTP POST 截断的 XML（畸形报文）", lane="in-1")
        sent = self.cam_in.post(broken, "application/xml")
        self.counts["malformed"] += 1
        health = self.http.get("/healthz")
        tl.expect("畸形报文被拒绝（HTTP 400），服务正常", sent.status == 400 and health.status_code == 200
                  and not self.recorder.since(mark, ev.DecisionRecorded) and len(self.sim.executed("open")) == opens,
                  f"HTTP {sent.status} {sent.text.split(':')[0]}；/healthz {health.status_code}")
        tl.note("摄像机 cam-in-1 → MQTT 转发一段不是 ISAPI 的数据", lane="in-1")
        self.cam_in.publish(b"\x00\x01 not an alert \xff")
        self.counts["malformed"] += 1
        d = self.read(self.cam_in, VISITOR_2, via="mqtt")
        tl.expect("转发的畸形报文被丢弃，之后的识别照常处理（车位已空出：请登记）",
                  d is not None and d.reason == "registration_required")

        self.advance("1 分钟", minutes=1)
        d = self.read(self.cam_out, "苏E2M567", via="http")
        tl.expect("业主离场抬杆", d is not None and d.outcome == "open")
        mark, before = self.recorder.mark(), self.opens("out-1")
        tl.note("摄像机重发同一事件（相同 UUID，网络重试）", lane="out-1", plate=_masked("苏E2M567"))
        again = self.cam_out.post(self.last_payload)
        self.counts["duplicate"] += 1
        time.sleep(0.2)
        tl.expect("重发的事件被识别为重复：不再判定、不再抬杆", again.status == 200
                  and not self.recorder.since(mark, ev.DecisionRecorded) and self.opens("out-1") == before,
                  f"HTTP {again.status}")
        self.advance("20 秒", seconds=20)
        exits = len(self.recorder.since(0, ev.VehicleExited))
        d = self.read(self.cam_out, "苏E2M567", via="http")
        tl.expect("20 秒后车还在道闸前再次被识别：重复识别，再次抬杆，不重复记录离场",
                  d is not None and d.reason == "repeat_read" and self.opens("out-1") == before + 1
                  and len(self.recorder.since(0, ev.VehicleExited)) == exits)

    # summary -----------------------------------------------------------------------------------------------
    def summary(self, keep: bool, error: str = "") -> bool:
        tl = self.tl
        tl.flush()
        events = self.recorder.events
        decisions = [e for e in events if isinstance(e, ev.DecisionRecorded)]
        by = {k: sum(1 for d in decisions if d.outcome == k) for k in ("open", "hold", "refuse")}
        paid = [e for e in events if isinstance(e, ev.PaymentSucceeded)]
        owners = sum(1 for e in events if isinstance(e, ev.OwnerRegistered))
        visitors = sum(1 for e in events if isinstance(e, ev.VisitorRegistered))
        result = self.app.audit.verify()
        tl.expect("审计日志哈希链校验", result.ok, f"{result.checked} 条" if result.ok else result.reason_zh)
        with self.app.store.unit_of_work() as uow:
            outbox = uow.outbox.count_by_state()
        with self._messages_lock:
            received = [c for c, *_ in self._messages]
        notified = f"短信 {received.count('短信')} 条、微信 {received.count('微信')} 条"
        tl.expect("通知全部送达，每条只发一次（短信、微信沙箱收到）",
                  bool(received) and outbox.get("sent", 0) == len(received) == sum(outbox.values()), notified)
        failed = tl.failed
        ok = not failed and not error
        reads = self.counts["mqtt"] + self.counts["http"]
        lines = [
            f"预期：{len(tl.checks) - len(failed)}/{len(tl.checks)} 符合" + (f"，{len(failed)} 项不符合" if failed else ""),
            f"识别报文：{reads} 条（MQTT 转发 {self.counts['mqtt']}，HTTP 监听 {self.counts['http']}），"
            f"另有畸形 {self.counts['malformed']} 条、重发 {self.counts['duplicate']} 条",
            f"判定：{len(decisions)} 次（抬杆 {by['open']}，等待 {by['hold']}，拒绝 {by['refuse']}）",
            f"道闸开闸：{len(self.sim.executed('open'))} 次（道闸控制器经 TCP 收到并执行）",
            f"登记：业主 {owners} 位，访客 {visitors} 位",
            f"收入：{Money(sum(p.amount_fen for p in paid))}（{len(paid)} 笔）",
            f"通知：{notified}（经真实客户端发往本机沙箱）",
            "审计日志：" + (f"哈希链完整，共 {result.checked} 条" if result.ok else f"校验失败：{result.reason_zh}"),
            "MQTT：" + (f"已配置的服务器 {self.broker.address}" if self.broker.embedded is None
                        else f"内置 MQTT 服务器 {self.broker.address}（{self.broker_address} 无法连接）"),
            f"用时：{time.monotonic() - self.started:.1f} 秒",
            f"目录：{self.folder}（{'已保留' if keep else '已删除'}）",
        ]
        if error:
            lines.insert(0, f"演示中断：{error}")
        for title, _, detail in failed:
            lines.append(f"✗ {title}" + (f"（{detail}）" if detail else ""))
        self.console.print(Panel(Text("\n".join(lines)), title="演示小结 " + ("✓" if ok else "✗"),
                                 border_style="green" if ok else "red", expand=False))
        return ok


def _qr_text(data: str) -> str:
    """A QR code as text for the terminal (segno, half-block characters); the URL alone without segno."""
    try:
        import io

        import segno
    except ImportError:
        return data
    buffer = io.StringIO()
    segno.make(data, error="m").terminal(out=buffer, compact=True)
    return buffer.getvalue() + data


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _quiet_logging(folder: Path) -> Callable[[], None]:
    """Service logs go to ``demo.log`` in the demo folder; only errors reach the terminal."""
    root = logging.getLogger()
    handlers = [logging.FileHandler(folder / "demo.log", encoding="utf-8"), logging.StreamHandler()]
    handlers[0].setLevel(logging.INFO)
    handlers[1].setLevel(logging.ERROR)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    old_level = root.level
    root.setLevel(logging.INFO)

    def restore() -> None:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)
    return restore


def run_demo(*, keep: Path | None = None, broker: str | None = None, console: Console | None = None) -> int:
    """Run the scripted day; 0 when every expectation held, 1 otherwise.

    ``keep``: run in this (empty or new) folder and leave it; otherwise a temporary folder, removed at the end.
    ``broker``: ``HOST:PORT`` of the MQTT broker to try first (default ``$SMARTPARK_DEMO_BROKER`` or
    127.0.0.1:1883); the embedded broker takes its place when it does not answer.
    """
    console = console or Console()
    missing = [module for module in ("wechatpayv3", "alibabacloud_dysmsapi20170525")
               if importlib.util.find_spec(module) is None]
    if missing:
        console.print(Text(f"演示需要微信支付与阿里云短信的 SDK（缺少 {', '.join(missing)}）：请运行 ./scripts/demo，"
                           "或 pip install 'smartpark[demo]' 后重试", style="bold red"))
        return 1
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        folder = keep.resolve()
    else:
        folder = Path(tempfile.mkdtemp(prefix="smartpark-demo-"))
    restore_logging = _quiet_logging(folder)
    address = broker or os.environ.get(BROKER_ENV) or DEFAULT_BROKER
    console.print(Panel(Text(f"智慧社区停车场服务 · 演示：一天的出入口\n{LOT_NAME}"), expand=False))
    demo = _Demo(folder, address, console)
    error = ""
    ok = False
    try:
        demo.setup()
        for step in (demo.owner_day, demo.visitor_arrives, demo.visitor_pays, demo.lot_fills, demo.bad_input):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - a broken step is a failed expectation; go on with the day
                logging.getLogger(__name__).exception("demo step %s failed", step.__name__)
                demo.tl.expect(f"步骤 {step.__name__} 意外中断", False, f"{type(e).__name__}: {e}")
            demo.deliver()
        if keep is not None:
            demo.write_config()
        ok = demo.summary(keep is not None)
    except Exception as e:  # noqa: BLE001 - set-up failed: say what and where the log is
        logging.getLogger(__name__).exception("demo set-up failed")
        error = f"{type(e).__name__}: {e}"
        console.print(Text(f"演示无法启动：{error}（详见 {folder / 'demo.log'}）", style="bold red"))
    finally:
        demo.close()
        restore_logging()
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok and not error else 1
