"""The HTTP side of the headless service (FastAPI): health, adapter routes, the visitor page and the booth API.

:func:`create_api` builds the ASGI application for one :class:`~smartpark.bootstrap.App`, its
:class:`~smartpark.adapters.service.runtime.Runtime` (adapter routes, per-lane locks) and an
:class:`~smartpark.adapters.service.events.EventHub` (the SSE stream). The core is synchronous: every call into it
runs in the thread pool (``run_in_threadpool``), never on the event loop. Request bodies are read by the handlers
themselves (never by FastAPI's body parameters), so a malformed body always becomes our own 422 and an oversized
one a 413 (:class:`BodyLimit`) before it is read whole.

Routes (README.md has the full table)::

    GET  /healthz                         store, devices, occupancy, uptime (503 when the store is unreachable)
    GET  /v/{token}                       the visitor registration page (410 expired / 400 invalid link)
    GET  /static/visitor.css|visitor.js   the page's assets (no CDN)
    POST /api/validate                    one field through the core parsers -> {ok, message}
    POST /api/visitor/register            the visitor page's submit
    GET  /api/announcements               current announcements
    /fee, /receipt/..., /verify           paying, receipts and their verification (pay_pages.py)
    /owner, /api/owner/...                the owners' self-service page: SMS sign-in, balance, top-up (owner_pages.py)
    /api/booth/...                        the attendant API (Authorization: Bearer <token>), including
                                          POST /api/booth/owners/{id}/topup {"amount_fen","channel"}
    (adapter routes)                      from Runtime.http_routes(), e.g. camera push endpoints
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import string
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from starlette.concurrency import run_in_threadpool

from smartpark.core.errors import (
    ConfigError,
    Conflict,
    NotFound,
    PermissionDenied,
    SmartparkError,
    ValidationError,
)
from smartpark.core.gate import LinkExpired
from smartpark.core.values import Money, Plate
from smartpark.forms import IdNumberField, NameField, PhoneField, PlateField, VisitorForm
from smartpark.ports.http import HttpReply, HttpRequest, HttpRoute

from .auth import bearer, verify_token
from .events import EventHub, event_to_json, to_jsonable

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).with_name("page")
VISITOR_ACTOR = "visitor-page"
#: Path prefixes of our own routes; an adapter route may not take them.
RESERVED_PREFIXES = ("/api/", "/v/", "/static/", "/healthz", "/fee", "/receipt/", "/verify", "/owner")
CONSENT_ZH = "请阅读并同意《个人信息处理说明》后再登记"

#: Chinese messages for pydantic's own error types (the value parsers bring their own).
_PYDANTIC_ZH = {
    "json_invalid": "请求内容不是有效的 JSON",
    "json_type": "请求内容不是有效的 JSON",
    "missing": "请填写此项",
    "extra_forbidden": "不支持的字段",
    "string_type": "应为文本",
    "string_too_short": "不能为空",
    "string_too_long": "内容过长",
    "bool_type": "应为是或否（true/false）",
    "bool_parsing": "应为是或否（true/false）",
    "int_type": "应为整数",
    "int_parsing": "应为整数",
    "model_type": "请求内容应为 JSON 对象",
    "model_attributes_type": "请求内容应为 JSON 对象",
    "dict_type": "请求内容应为 JSON 对象",
    "literal_error": "取值无效",
    "enum": "取值无效",
    "greater_than_equal": "数值过小",
    "less_than_equal": "数值过大",
}


# == errors ================================================================================================
class ApiError(Exception):
    """An error answered as ``{"error": zh, "detail": en, ...extra}`` with ``status``."""

    def __init__(self, status: int, zh: str, en: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(en)
        self.status, self.zh, self.en, self.headers, self.extra = status, zh, en, headers, extra

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.zh, "detail": self.en, **self.extra}, status_code=self.status,
                            headers=self.headers)


def status_for(err: SmartparkError) -> int:
    if isinstance(err, NotFound):
        return 404
    if isinstance(err, Conflict):
        return 409
    if isinstance(err, PermissionDenied):
        return 403
    return 400


def _error_json(err: SmartparkError) -> JSONResponse:
    body: dict[str, Any] = {"error": err.zh, "detail": err.en}
    if err.field:
        body["field"] = err.field
        body["errors"] = {err.field: err.zh}
    return JSONResponse(body, status_code=status_for(err))


def _zh_message(e: dict[str, Any]) -> str:
    """The Chinese text of one pydantic error: the core's ``.zh`` when a value parser raised it."""
    cause = (e.get("ctx") or {}).get("error")
    if cause is not None and getattr(cause, "zh", None):
        return cause.zh
    if e["type"] in _PYDANTIC_ZH:
        return _PYDANTIC_ZH[e["type"]]
    msg = str(e.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    zh, sep, _en = msg.partition(" / ")
    return zh if sep else "内容无效"


def zh_field_errors(err: PydanticValidationError) -> dict[str, str]:
    """``{field: Chinese message}`` for showing beside form fields (first problem per field)."""
    out: dict[str, str] = {}
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        field = ".".join(loc) or "__all__"
        out.setdefault(field, _zh_message(e))
    return out


def _unprocessable(errors: dict[str, str]) -> ApiError:
    first = next(iter(errors.values()), "请求内容有误")
    return ApiError(422, first if len(errors) == 1 else "请求内容有误，请检查标出的项目",
                    "the request body is invalid", errors=errors)


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "请求内容不是有效的 JSON", "the request body is not valid JSON",
                       errors={"__all__": "请求内容不是有效的 JSON"}) from None


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(422, "请求内容应为 JSON 对象", "the request body must be a JSON object",
                       errors={"__all__": "请求内容应为 JSON 对象"})
    return data


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    data = _object(await _read_json(request))
    try:
        return model.model_validate(data)
    except PydanticValidationError as e:
        raise _unprocessable(zh_field_errors(e)) from None


# == request body cap ======================================================================================
class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit (413) by Content-Length, or while they stream in.

    Our JSON API gets ``api_limit``; everything else (adapter routes: camera pictures) ``default_limit``.
    """

    def __init__(self, app: Any, *, default_limit: int, api_limit: int) -> None:
        self.app, self.default_limit, self.api_limit = app, default_limit, api_limit

    def limit_for(self, path: str) -> int:
        return self.api_limit if path.startswith(("/api/", "/v/", "/fee", "/owner")) else self.default_limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"error": "请求头 Content-Length 无效",
                                                 "detail": "invalid Content-Length"})
                    return
                if declared > limit:
                    await _send_json(send, 413, _too_large(limit))
                    return
        received = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, _too_large(limit))


def _too_large(limit: int) -> dict[str, str]:
    return {"error": f"请求内容过大（上限 {limit // 1024} KiB）", "detail": f"request body over {limit} bytes"}


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


# == JSON views of domain objects ==========================================================================
def money(prefix: str, fen: int) -> dict[str, Any]:
    return {f"{prefix}_fen": fen, f"{prefix}_display": str(Money(fen))}


def decision_json(d: Any, tz: Any) -> dict[str, Any]:
    """A gate decision, masked: the raw camera text is left out (it may be a full plate)."""
    return {
        "id": d.id, "at": to_jsonable(d.at, tz), "lane": d.lane, "direction": d.direction,
        "outcome": to_jsonable(d.outcome, tz), "reason": d.reason, "message": d.message,
        "plate": d.plate.masked if d.plate is not None else None, "holder_kind": d.holder_kind,
        "session_id": d.session_id, "order_id": d.order_id, "gate_ok": d.gate_ok, "actor": d.actor,
    }


def stay_json(v: Any, tz: Any) -> dict[str, Any]:
    s = v.session
    return {
        "session_id": s.id, "plate": s.plate.masked, "holder_kind": to_jsonable(s.holder_kind, tz),
        "entry_lane": s.entry_lane, "entered_at": to_jsonable(s.entered_at, tz), "minutes": v.minutes,
        **money("fee", v.fee_fen), **money("paid", v.paid_fen), **money("due", max(0, v.fee_fen - v.paid_fen)),
    }


def device_json(d: Any, tz: Any) -> dict[str, Any]:
    return {"device": d.device, "kind": d.kind, "online": d.online, "since": to_jsonable(d.since, tz),
            "last_seen": to_jsonable(d.last_seen, tz), "detail": d.detail}


def announcement_json(a: Any, tz: Any) -> dict[str, Any]:
    return {"id": a.id, "title": a.title, "body": a.body, "valid_from": to_jsonable(a.valid_from, tz),
            "valid_until": to_jsonable(a.valid_until, tz)}


def occupancy_json(o: Any) -> dict[str, Any]:
    return {"capacity": o.capacity, "occupied": o.occupied, "free": o.free, "full": o.full}


# == the tariff in words ===================================================================================
def _span(minutes: int) -> str:
    return f"{minutes // 60} 小时" if minutes % 60 == 0 else f"{minutes} 分钟"


def _per(minutes: int) -> str:
    return "每小时" if minutes == 60 else f"每 {_span(minutes)}"


def tariff_lines(tariff: Any) -> list[str]:
    """The visitor tariff as short Chinese sentences for the page."""
    if tariff.is_free:
        return ["访客停车免费"]
    lines = []
    if tariff.free_minutes:
        lines.append(f"免费停车 {tariff.free_minutes} 分钟，超过后从入场时起计费")
    if tariff.unit_fee:
        unit = _span(tariff.unit_minutes)
        lines.append(f"{_per(tariff.unit_minutes)} {Money(tariff.unit_fee)}（不足 {unit}按 {unit}计）")
    for p in tariff.periods:
        cap = f"，每段封顶 {Money(p.cap)}" if p.cap else ""
        lines.append(f"{p.name} {p.span}：{_per(p.unit_minutes)} {Money(p.unit_fee)}{cap}")
    if tariff.daily_cap:
        lines.append(f"每 24 小时最多收费 {Money(tariff.daily_cap)}")
    if tariff.grace_minutes:
        lines.append(f"缴费后请在 {tariff.grace_minutes} 分钟内离场")
    return lines


def free_reminder(tariff: Any, entered_at: datetime | None = None) -> str:
    """E.g. ``免费停车 30 分钟（14:35 前离场免费）``."""
    if tariff.is_free:
        return "访客停车免费"
    if not tariff.free_minutes:
        return "入场即开始计费，" + "；".join(tariff_lines(tariff)[:1])
    text = f"免费停车 {tariff.free_minutes} 分钟"
    if entered_at is not None:
        text += f"（{tariff.free_until(entered_at).strftime('%H:%M')} 前离场免费）"
    return text


# == the visitor page ======================================================================================
class _Assets:
    """The page's files, read once; ``version`` busts caches when they change."""

    def __init__(self, folder: Path) -> None:
        self.visitor = string.Template((folder / "visitor.html").read_text(encoding="utf-8"))
        self.message = string.Template((folder / "message.html").read_text(encoding="utf-8"))
        self.files = {name: (folder / name).read_bytes()
                      for name in ("visitor.css", "visitor.js", "pay.css", "pay.js", "owner.css")}
        digest = hashlib.sha256(b"".join(self.files.values()))
        self.version = digest.hexdigest()[:12]
        self.etags = {name: '"' + hashlib.sha256(data).hexdigest()[:16] + '"' for name, data in self.files.items()}


_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the link is a capability: never send it on in a Referer
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# == the attendant's token ================================================================================
async def booth_actor(request: Request) -> str:
    """``api:<token name>`` for a request with a live bearer token; 401 otherwise."""
    token = bearer(request.headers.get("authorization"))
    app = request.app.state.smartpark
    name = await run_in_threadpool(verify_token, app.store, token) if token else None
    if name is None:
        raise ApiError(401, "需要有效的值班员令牌（请求头 Authorization: Bearer <令牌>）",
                       "a valid bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="smartpark"'})
    return f"api:{name}"


Actor = Annotated[str, Depends(booth_actor)]


# == the application =======================================================================================
class Settings(BaseModel):
    """What :func:`create_api` needs from the frontend's Config."""

    model_config = ConfigDict(extra="ignore")
    max_body_bytes: int = 8 * 1024 * 1024
    max_api_body_bytes: int = 64 * 1024
    event_queue_size: int = 256
    sse_keepalive_seconds: float = 15.0
    health_timeout_seconds: float = 3.0


class ValidateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str
    value: Any = ""


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = ""


class PlateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plate: str = ""


_VALIDATORS: dict[str, TypeAdapter] = {
    "name": TypeAdapter(NameField),
    "id_number": TypeAdapter(IdNumberField),
    "phone": TypeAdapter(PhoneField),
    "plate": TypeAdapter(PlateField),
}
_OK_MESSAGE = {"name": "姓名可用", "id_number": "身份证号格式正确", "phone": "手机号格式正确", "plate": "车牌格式正确"}


def create_api(app: Any, runtime: Any, hub: EventHub, settings: Settings | None = None, *,
               started: float | None = None) -> FastAPI:
    """The FastAPI application of the service."""
    settings = settings or Settings()
    tz = app.timezone
    assets = _Assets(PAGE_DIR)
    started_monotonic = time.monotonic() if started is None else started
    api = FastAPI(title="smartpark", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_middleware(BodyLimit, default_limit=settings.max_body_bytes, api_limit=settings.max_api_body_bytes)
    api.state.smartpark = app
    api.state.hub = hub

    # -- error handlers ---------------------------------------------------------------------------------
    @api.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @api.exception_handler(SmartparkError)
    async def _domain_error(_request: Request, exc: SmartparkError) -> JSONResponse:
        return _error_json(exc)

    @api.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors: dict[str, str] = {}
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ()) if x not in ("query", "path", "header", "body")]
            errors.setdefault(".".join(loc) or "__all__", _zh_message(e))
        return _unprocessable(errors).response()

    @api.exception_handler(404)
    async def _not_found(_request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "没有这个地址", "detail": "not found"}, status_code=404)

    @api.exception_handler(405)
    async def _not_allowed(_request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "不支持该请求方法", "detail": "method not allowed"}, status_code=405)

    @api.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, _redact_path(request.url.path), exc_info=exc)
        return JSONResponse({"error": "服务器内部错误，请稍后重试", "detail": "internal error"}, status_code=500)

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(fn, *args, **kwargs)

    def on_lane(lane: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` under the lane's lock, so API actions keep their place among the lane's plate reads."""
        def run() -> Any:
            with runtime.dispatcher.lane_lock(lane):
                return fn()
        return run

    # -- health -----------------------------------------------------------------------------------------
    def health_snapshot() -> dict[str, Any]:
        parking = app.parking
        occupancy = parking.occupancy()  # a read transaction: proves the store answers
        devices = parking.devices()
        return {"occupancy": occupancy_json(occupancy), "devices": [device_json(d, tz) for d in devices]}

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        uptime = round(time.monotonic() - started_monotonic, 1)
        body: dict[str, Any] = {"lot": app.config.lot.name, "uptime_seconds": uptime,
                                "time": to_jsonable(app.clock.now(), tz)}
        try:
            with anyio.fail_after(settings.health_timeout_seconds):
                # abandon_on_cancel: a store that hangs must not hang the health check with it
                snapshot = await anyio.to_thread.run_sync(health_snapshot, abandon_on_cancel=True)
        except Exception as e:  # noqa: BLE001 - any failure of the store means "not healthy"
            log.warning("health check: store not reachable: %s", e)
            reason = "timeout" if isinstance(e, TimeoutError) else type(e).__name__
            body.update(status="unavailable", store={"ok": False, "error": reason})
            return JSONResponse(body, status_code=503)
        offline = [d["device"] for d in snapshot["devices"] if not d["online"]]
        body.update(status="degraded" if offline else "ok", store={"ok": True}, **snapshot,
                    devices_offline=offline, event_subscribers=hub.subscribers)
        return JSONResponse(body)

    # -- adapter routes ---------------------------------------------------------------------------------
    for route in runtime.http_routes():
        _mount(api, route, call)

    # -- the visitor page -------------------------------------------------------------------------------
    def message_page(status: int, kind: str, title: str, message: str) -> HTMLResponse:
        text = assets.message.safe_substitute(lot_name=_e(app.config.lot.name), title=_e(title),
                                              message=_e(message), kind=_e(kind), asset_version=assets.version)
        return HTMLResponse(text, status_code=status, headers=_PAGE_HEADERS)

    def check_link(token: str) -> tuple[str, Plate]:
        """Lane and plate of a link; ApiError 410 when it expired, 400 when it is not ours."""
        try:
            info = app.parking.links.verify(token, app.clock.now())
        except LinkExpired as e:
            raise ApiError(410, e.zh, e.en, field="token") from None
        except ValidationError as e:
            raise ApiError(400, e.zh, e.en, field="token") from None
        return info.lane, info.plate

    def render_visitor(token: str) -> HTMLResponse:
        try:
            lane_id, plate = check_link(token)
        except ApiError as e:
            if e.status == 410:
                minutes = int(app.parking.rules.registration_ttl.total_seconds() // 60)
                return message_page(410, "expired", "登记链接已过期",
                                    f"为保护您的信息，登记链接 {minutes} 分钟内有效。"
                                    "请重新扫描车道上的二维码，或联系值班员协助登记。")
            return message_page(e.status, "error", "登记链接无效",
                                "请重新扫描车道上的二维码，或联系值班员协助登记。")
        lane = app.parking.rules.lane(lane_id)
        tariff = app.tariffs.visitor
        notices = app.announcements.current()
        expires = app.parking.links.inspect(token).expires_at.astimezone(tz).strftime("%H:%M")
        items = "".join(
            f'<li class="{"free" if i == 0 and tariff.free_minutes else ""}">{_e(line)}</li>'
            for i, line in enumerate(tariff_lines(tariff)))
        blocks = "".join(f"<article><h3>{_e(a.title)}</h3><p>{_e(a.body)}</p></article>" for a in notices)
        section = (f'<section class="card notices" aria-labelledby="notice-title"><h2 id="notice-title">公告</h2>'
                   f"{blocks}</section>") if notices else ""
        privacy = app.config.privacy
        text = assets.visitor.safe_substitute(
            lot_name=_e(app.config.lot.name), token=_e(token), plate=_e(str(plate)),
            plate_style="green" if plate.is_new_energy else "blue",
            lane_name=_e(lane.name if lane else lane_id), expires_at=_e(expires), tariff_items=items,
            announcements=section, free_reminder=_e(free_reminder(tariff)),
            valid_days=privacy.visitor_valid_days, retention_days=privacy.visitor_retention_days,
            asset_version=assets.version)
        return HTMLResponse(text, headers=_PAGE_HEADERS)

    @api.get("/v/{token}", include_in_schema=False)
    async def visitor_page(token: str) -> HTMLResponse:
        try:
            return await call(render_visitor, token)
        except Exception:  # noqa: BLE001 - a visitor sees a friendly page, never a traceback
            log.exception("visitor page failed")
            return message_page(500, "error", "页面暂时无法打开", "系统繁忙，请稍后重试或联系值班员协助登记")

    @api.get("/static/{name}", include_in_schema=False)
    async def static(name: str, request: Request) -> Response:
        if name not in assets.files:
            raise ApiError(404, "没有这个文件", "no such file")
        etag = assets.etags[name]
        headers = {"ETag": etag, "Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        media = "text/css; charset=utf-8" if name.endswith(".css") else "text/javascript; charset=utf-8"
        return Response(assets.files[name], media_type=media, headers=headers)

    from .pay_pages import add_routes as add_payment_routes  # it imports this module's helpers

    add_payment_routes(api, app, call=call, tz=tz, asset_version=assets.version)

    from .owner_pages import add_routes as add_owner_routes  # the owners' page (业主自助), same pattern

    add_owner_routes(api, app, call=call, tz=tz, asset_version=assets.version)

    @api.post("/api/validate")
    async def validate(request: Request) -> JSONResponse:
        body: ValidateBody = await _parse(request, ValidateBody)
        adapter = _VALIDATORS.get(body.field)
        if adapter is None:
            raise ApiError(422, f"不支持校验字段 {body.field}", f"unknown field {body.field!r}",
                           errors={"field": f"应为 {'、'.join(_VALIDATORS)} 之一"})
        value = body.value.strip() if isinstance(body.value, str) else body.value
        try:
            parsed = adapter.validate_python(value)
        except PydanticValidationError as e:
            return JSONResponse({"ok": False, "field": body.field, "message": _zh_message(e.errors()[0])})
        out = {"ok": True, "field": body.field, "message": _OK_MESSAGE[body.field]}
        if body.field == "plate":
            out["normalized"] = str(parsed)  # the visitor's own input, canonical; ID and phone are not echoed
        return JSONResponse(out)

    @api.post("/api/visitor/register")
    async def visitor_register(request: Request) -> JSONResponse:
        data = _object(await _read_json(request))
        token = data.pop("token", None)
        if not isinstance(token, str) or not token:
            raise ApiError(400, "登记链接无效，请重新扫描车道上的二维码", "a registration token is required",
                           field="token")
        lane_id, plate = await call(check_link, token)
        return await call(on_lane(lane_id, lambda: _register(app, token, plate, data, tz)))

    @api.get("/api/announcements")
    async def announcements() -> JSONResponse:
        current = await call(app.announcements.current)
        return JSONResponse({"announcements": [announcement_json(a, tz) for a in current]})

    # -- the attendant API (every route depends on booth_actor: Authorization: Bearer <token>) ------------
    p = "/api/booth"

    @api.get(p + "/occupancy")
    async def booth_occupancy(actor: Actor) -> JSONResponse:
        return JSONResponse(occupancy_json(await call(app.parking.occupancy)))

    @api.get(p + "/lanes")
    async def booth_lanes(actor: Actor) -> JSONResponse:
        return JSONResponse({"lanes": [{"id": lane.id, "name": lane.name, "direction": lane.direction}
                                       for lane in app.parking.rules.lanes]})

    @api.get(p + "/stays")
    async def booth_stays(actor: Actor, limit: int = 200) -> JSONResponse:
        limit = _bounded(limit, 1, 1000, "limit")
        stays = await call(app.parking.current_stays, limit)
        return JSONResponse({"stays": [stay_json(v, tz) for v in stays], "count": len(stays)})

    @api.get(p + "/decisions")
    async def booth_decisions(actor: Actor, lane: str | None = None, limit: int = 50) -> JSONResponse:
        limit = _bounded(limit, 1, 500, "limit")
        decisions = await call(app.parking.recent_decisions, lane or None, limit)
        return JSONResponse({"decisions": [decision_json(d, tz) for d in decisions]})

    @api.get(p + "/devices")
    async def booth_devices(actor: Actor) -> JSONResponse:
        devices = await call(app.parking.devices)
        return JSONResponse({"devices": [device_json(d, tz) for d in devices]})

    @api.post(p + "/lanes/{lane}/open")
    async def booth_open(lane: str, request: Request, actor: Actor) -> JSONResponse:
        body: ReasonBody = await _parse(request, ReasonBody)
        d = await call(on_lane(lane, lambda: app.parking.manual_open(lane, reason=body.reason, actor=actor)))
        return JSONResponse({"decision": decision_json(d, tz)})

    @api.post(p + "/lanes/{lane}/confirm")
    async def booth_confirm(lane: str, request: Request, actor: Actor) -> JSONResponse:
        body: PlateBody = await _parse(request, PlateBody)
        if app.parking.rules.lane(lane) is None:
            raise NotFound(f"没有车道 {lane}", f"no lane {lane}")
        d = await call(on_lane(lane, lambda: app.parking.confirm_read(lane, body.plate, actor=actor)))
        return JSONResponse({"decision": decision_json(d, tz)})

    @api.post(p + "/orders/{order_id}/cash")
    async def booth_cash(order_id: str, request: Request, actor: Actor) -> JSONResponse:
        _object(await _read_json(request))  # no fields; a body, if any, must still be JSON
        d = await call(app.parking.settle_cash, order_id, actor=actor)
        return JSONResponse({"paid": True, "gate_opened": bool(d is not None and d.gate_ok),
                             "decision": decision_json(d, tz) if d is not None else None})

    @api.post(p + "/owners/{owner_id}/topup")
    async def booth_topup(owner_id: str, request: Request, actor: Actor) -> JSONResponse:
        """An owner's balance top-up: {"amount_fen", "channel"} -> the payment (its code_url is the QR)."""
        data = _object(await _read_json(request))
        amount, channel = data.get("amount_fen"), data.get("channel")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ApiError(422, "请填写充值金额（分）", "amount_fen must be a positive integer",
                           errors={"amount_fen": "请填写充值金额"})
        if not isinstance(channel, str) or not channel:
            raise ApiError(422, "请选择支付方式", "a channel is required", errors={"channel": "请选择支付方式"})
        v = await call(app.payments.start_topup, owner_id, amount, channel, actor=actor)
        return JSONResponse({"payment": {
            "out_trade_no": v.out_trade_no, "channel": v.channel, "purpose": v.purpose, "owner_id": v.subject_id,
            "amount_fen": v.amount_fen, "state": v.state, "code_url": v.code_url,
            "expires_at": v.expires_at.astimezone(tz).isoformat()}})

    @api.post(p + "/visitors")
    async def booth_visitor(request: Request, actor: Actor) -> JSONResponse:
        data = _object(await _read_json(request))
        lane = data.pop("lane", None)
        if not isinstance(lane, str) or not lane:
            raise ApiError(422, "请选择车道", "a lane is required", errors={"lane": "请选择车道"})
        return await call(on_lane(lane, lambda: _register(app, None, None, data, tz, lane=lane, actor=actor)))

    @api.get(p + "/events")
    async def booth_events(request: Request, actor: Actor, types: str | None = None) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def notify() -> None:
            loop.call_soon_threadsafe(wake.set)

        last = request.headers.get("last-event-id", "")
        try:
            sub = hub.subscribe(maxsize=settings.event_queue_size, notify=notify,
                                types=[t.strip() for t in types.split(",") if t.strip()] if types else None,
                                after=int(last) if last.isdigit() else None)
        except ValueError:
            raise ApiError(400, f"未知的事件类型：{types}", f"unknown event type in {types!r}",
                           known=hub.type_names) from None
        log.info("event stream opened by %s", actor)
        return StreamingResponse(_sse(sub, wake, settings.sse_keepalive_seconds, tz, actor),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return api


async def _sse(sub: Any, wake: asyncio.Event, keepalive: float, tz: Any, actor: str) -> Any:
    """The Server-Sent-Events body: ``id``/``event``/``data`` per event, a comment line as keep-alive."""
    seen_drops = 0
    try:
        yield "retry: 3000\n: connected\n\n"
        while True:
            batch = sub.drain(100)
            if sub.dropped != seen_drops:
                seen_drops = sub.dropped
                yield f"event: dropped\ndata: {json.dumps({'dropped': seen_drops})}\n\n"
            for envelope in batch:
                data = json.dumps(event_to_json(envelope.event, tz), ensure_ascii=False, separators=(",", ":"))
                yield f"id: {envelope.seq}\nevent: {envelope.type}\ndata: {data}\n\n"
            if batch:
                continue
            if sub.closed:
                yield "event: closing\ndata: {}\n\n"
                return
            wake.clear()
            if len(sub) or sub.closed:
                continue
            try:
                await asyncio.wait_for(wake.wait(), keepalive)
            except TimeoutError:
                yield ": ping\n\n"
    finally:
        sub.close()
        log.info("event stream of %s closed", actor)


def _bounded(value: int, low: int, high: int, name: str) -> int:
    if not low <= value <= high:
        raise ApiError(422, f"{name} 应在 {low}–{high} 之间", f"{name} must be within {low}..{high}",
                       errors={name: f"应在 {low}–{high} 之间"})
    return value


def _register(app: Any, token: str | None, plate: Plate | None, data: dict[str, Any], tz: Any, *,
              lane: str | None = None, actor: str = VISITOR_ACTOR) -> JSONResponse:
    """Validate the visitor form (one rule set: VisitorForm) and admit the car; 422 with field errors."""
    fields = dict(data)
    if plate is not None:
        fields["plate"] = str(plate)
    consent_ok = fields.get("consent") is True
    try:
        form = VisitorForm.model_validate(fields)
        errors: dict[str, str] = {}
    except PydanticValidationError as e:
        form, errors = None, zh_field_errors(e)
        if "__all__" in errors and not consent_ok:
            errors.pop("__all__")
    if not consent_ok:
        errors.setdefault("consent", CONSENT_ZH)
    if plate is not None and "plate" in errors:  # the plate came from the link: nothing the visitor can fix
        raise ApiError(400, "登记链接无效，请重新扫描车道上的二维码", "the link's plate does not validate",
                       field="token")
    if errors or form is None:
        raise _unprocessable(errors or {"__all__": "请求内容有误"})
    try:
        d = app.parking.admit_visitor(token=token, lane_id=lane, plate=None if token else str(form.plate),
                                      name=str(form.name), id_number=str(form.id_number), phone=str(form.phone),
                                      consent=True, actor=actor)
    except ValidationError as e:
        if e.field in ("name", "id_number", "phone", "consent") or (e.field == "plate" and token is None):
            raise _unprocessable({e.field: e.zh}) from None
        raise
    tariff = app.tariffs.visitor
    admitted = to_jsonable(d.outcome, tz) == "open"
    if admitted and d.gate_ok is not False:
        title, message = "登记成功", "登记成功，道闸已开启，请入场"
    elif admitted:
        title, message = "登记成功", "登记成功，但道闸没有响应，请稍候或联系值班员开闸"
    else:
        title, message = "暂时无法入场", d.message
    return JSONResponse({
        "admitted": admitted, "title": title, "message": message,
        "reminder": free_reminder(tariff, d.at) if admitted else "",
        "free_minutes": tariff.free_minutes, "decision": decision_json(d, tz),
    })


def _mount(api: FastAPI, route: HttpRoute, call: Callable[..., Awaitable[Any]]) -> None:
    """Mount one adapter route: FastAPI request -> HttpRequest -> handler (thread pool) -> HttpReply."""
    if route.path.startswith(RESERVED_PREFIXES) or not route.path.startswith("/"):
        raise ConfigError(f"适配器路由 {route.path} 与服务自身的地址冲突",
                          f"adapter route {route.method} {route.path} clashes with the service's own paths "
                          f"(reserved: {', '.join(RESERVED_PREFIXES)})")
    handler = route.handler

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        req = HttpRequest(method=request.method, path=request.url.path,
                          path_params={k: str(v) for k, v in request.path_params.items()},
                          query=dict(request.query_params), headers=headers, body=body,
                          client=request.client.host if request.client else "")
        try:
            reply: HttpReply = await call(handler, req)
        except Exception:  # noqa: BLE001 - adapters must answer bad input; a bug still must not leak out
            log.exception("adapter route %s %s failed", route.method, route.path)
            return Response(b"internal error\n", status_code=500, media_type="text/plain")
        return Response(reply.body, status_code=reply.status, headers={"content-type": reply.content_type})

    endpoint.__name__ = f"adapter_{route.method.lower()}_{route.path.strip('/').replace('/', '_')}"
    api.add_api_route(route.path, endpoint, methods=[route.method.upper()], include_in_schema=False,
                      description=route.description)


def _redact_path(path: str) -> str:
    """Visitor links carry a capability (and the plate): keep them out of logs."""
    return "/v/***" if path.startswith("/v/") else path


class RedactVisitorLinks(logging.Filter):
    """A filter for uvicorn's access log that hides visitor-link tokens."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "/v/" in args[2]:
            record.args = (*args[:2], _redact_access(args[2]), *args[3:])
        return True


def _redact_access(path: str) -> str:
    head, sep, _rest = path.partition("/v/")
    return head + sep + "***" if sep else path


__all__ = ["ApiError", "BodyLimit", "RedactVisitorLinks", "Settings", "create_api", "decision_json",
           "free_reminder", "stay_json", "tariff_lines", "zh_field_errors"]
