"""WeChat official-account template messages -> the Notifier port, with a small httpx client.

Why not ``wechatpy`` (1.8.18): it hard-codes ``api.weixin.qq.com`` for its token and has no ``stable_token``; a
configurable base URL keeps the adapter testable against a loopback server and the client is a hundred lines.

* The access token comes from ``POST /cgi-bin/stable_token`` (default) or ``GET /cgi-bin/token``, is cached until
  ``refresh_margin_s`` before it expires, and is fetched by one thread at a time: threads that waited while another
  fetched use its result, whether it worked or not (one token request per wave of senders).
* A send refused with 40001 / 42001 / 40014 (token invalid, expired, malformed) drops that token, fetches a new one
  (once, shared with concurrent senders) and retries the send once; a second token refusal is FAILED.
* ``client_msg_id`` carries the outbox id, so WeChat drops a repeat of the same message to the same user within
  its de-duplication window (10 minutes) -- a retry after a read timeout does not double-notify.

``send`` is thread-safe and never raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import string
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import attrs
import httpx

from smartpark.ports.notifier import DeliveryResult, DeliveryStatus, Message

__all__ = ["PERMANENT_ERRCODES", "TEMPORARY_ERRCODES", "TOKEN_ERRCODES", "TemplateSpec", "WeChatTemplateNotifier",
           "classify", "mask_openid"]

log = logging.getLogger(__name__)

SENT, REJECTED, FAILED = DeliveryStatus.SENT, DeliveryStatus.REJECTED, DeliveryStatus.FAILED

#: The token was refused: refresh once and retry the send once.
TOKEN_ERRCODES: dict[int, str] = {
    40001: "access token invalid or not the latest",
    42001: "access token expired",
    40014: "access token malformed",
}

#: Try again later.
TEMPORARY_ERRCODES: dict[int, str] = {
    -1: "WeChat system busy",
    45009: "the daily API quota is used up",
    45011: "the per-minute API quota is used up",
    41001: "the access token was missing",
    89503: "this server's IP is waiting for an administrator's confirmation",
}

#: This message will never go through as it is.
PERMANENT_ERRCODES: dict[int, str] = {
    43004: "the user does not follow the official account",
    40003: "the openid is not valid for this official account",
    43101: "the user refuses messages from this account",
    40037: "the template_id is not valid: check [plugins.wechat_template] templates",
    40036: "the template_id is malformed: check [plugins.wechat_template] templates",
    47001: "the request body is malformed",
    47003: "a template value is not valid (missing, too long or wrong type)",
    48001: "this account may not send template messages",
    45103: "template messages are no longer available to this account",
    40013: "the appid is not valid: check [plugins.wechat_template] appid",
    40125: "the AppSecret is wrong: check [plugins.wechat_template] secret",
    40164: "this server's IP is not in the account's IP whitelist",
    40243: "the AppSecret is frozen",
    41002: "the appid is missing",
    41004: "the AppSecret is missing",
    40002: "invalid grant_type",
}

#: Token-endpoint errors that are our settings: the message cannot go out until the operator fixes them.
_CONFIG_ERRCODES = frozenset({40013, 40125, 40164, 40243, 41002, 41004, 40002, 40037, 40036, 48001, 45103})


def classify(errcode: int) -> DeliveryStatus:
    """SENT / REJECTED / FAILED for a template-send errcode (token errcodes are FAILED once the retry is spent).

    Unknown errcodes are FAILED: the outbox retries a bounded number of times and keeps the code for the operator.
    """
    if errcode == 0:
        return SENT
    if errcode in PERMANENT_ERRCODES:
        return REJECTED
    return FAILED


def mask_openid(openid: str) -> str:
    return f"{openid[:4]}****{openid[-4:]}" if len(openid) > 10 else "****"


@attrs.frozen(kw_only=True)
class TemplateSpec:
    """How one logical template is sent: the WeChat ``template_id``, an optional link and the data keys.

    ``url`` and the ``data`` values are format strings over ``Message.params`` (``"{plate}"``,
    ``"https://park.example.com/receipts/{order_id}"``); values put into ``url`` are percent-encoded. Without
    ``data`` every parameter is sent under its own name: ``{key: {"value": value}}``.
    """

    template_id: str
    url: str | None = None
    data: Mapping[str, str] | None = None


class _Problem(Exception):
    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.detail)
        self.result = result


_SECRET_IN_URL = re.compile(r"((?:access_token|secret)=)[^&\s\"']+")


class _RedactTokens(logging.Filter):
    """httpx logs every request URL at INFO; ours carry the access token (and, for /cgi-bin/token, the AppSecret)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_SECRET_IN_URL.sub(r"\1***", str(a)) if isinstance(a, (str, httpx.URL)) else a
                                for a in record.args)
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = _SECRET_IN_URL.sub(r"\1***", record.msg)
        return True


_httpx_log = logging.getLogger("httpx")
if not any(isinstance(f, _RedactTokens) for f in _httpx_log.filters):
    _httpx_log.addFilter(_RedactTokens())


def _render(template: str, params: Mapping[str, str], *, encode: bool) -> str:
    """``template`` with ``{name}`` replaced by ``params[name]`` (percent-encoded when ``encode``).

    Only plain names are allowed (no attribute access, indexing or format specs); a missing name raises KeyError.
    """
    out = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"only {{name}} placeholders are allowed, got {{{name}}}")
        value = str(params[name])
        out.append(quote(value, safe="") if encode else value)
    return "".join(out)


class WeChatTemplateNotifier:
    """Sends one template message per :class:`Message`: ``Message.recipient`` is the openid, ``Message.template``
    a logical name mapped to a :class:`TemplateSpec`, ``Message.params`` the values.

    ``vendor_code`` is WeChat's errcode as a string whenever WeChat answered (``"0"`` when sent, empty when it did
    not answer or the message was refused here); ``vendor_message_id`` is the msgid.
    """

    channel = "wechat"

    def __init__(
        self,
        *,
        appid: str,
        secret: str,
        templates: Mapping[str, TemplateSpec | str],
        base_url: str = "https://api.weixin.qq.com",
        use_stable_token: bool = True,
        page_url: str | None = None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 5.0,
        refresh_margin_s: float = 300.0,
        name: str = "wechat_template",
        monotonic: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not appid or not secret:
            raise ValueError("appid and secret are required")
        self.name = name
        self.appid = appid
        self._secret = secret
        self.templates = {k: TemplateSpec(template_id=v) if isinstance(v, str) else v for k, v in templates.items()}
        self.base_url = base_url.rstrip("/")
        self.use_stable_token = use_stable_token
        self.page_url = page_url
        self.refresh_margin_s = refresh_margin_s
        self._now = monotonic
        self._http = httpx.Client(
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            transport=transport,
            headers={"User-Agent": "smartpark-wechat-template/1"},
            follow_redirects=False,
        )
        self._lock = threading.Lock()  # one token fetch at a time
        self._token: str | None = None
        self._expires = 0.0  # monotonic time after which the cached token is not used
        self._attempts_done = 0  # token fetch attempts finished so far
        self._last_failure: DeliveryResult | None = None  # the last attempt's failure, shared with its waiters
        #: Token requests made (for operators and tests).
        self.token_fetches = 0

    # -- Notifier ---------------------------------------------------------------------------------------------------
    def send(self, message: Message) -> DeliveryResult:
        try:
            openid = message.recipient.strip() if isinstance(message.recipient, str) else ""
            if not openid:
                raise self._local(message, "the message has no openid (the resident has not bound WeChat)")
            payload = self._payload(message, openid)
            token = self._get_token()
            errcode, reply = self._post_send(token, payload)
            if errcode in TOKEN_ERRCODES:
                first = errcode
                log.info("wechat_template: token refused (%s); fetching a new one and sending once more", errcode)
                self._drop_token(token)
                token = self._get_token()
                errcode, reply = self._post_send(token, payload)
                if errcode in TOKEN_ERRCODES:
                    return self._answer(message, errcode, reply, f"the access token was refused twice ({first}, "
                                                                 f"{errcode}) even after a refresh")
            return self._answer(message, errcode, reply)
        except _Problem as p:
            return p.result
        except Exception as e:  # noqa: BLE001 - send() reports, it never raises
            log.exception("wechat_template: unexpected error sending message %s", message.id)
            return DeliveryResult(status=FAILED, detail=f"unexpected error: {type(e).__name__}: {e}")

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"WeChatTemplateNotifier(name={self.name!r}, appid={self.appid!r}, base_url={self.base_url!r})"

    # -- the message ------------------------------------------------------------------------------------------------
    def _local(self, message: Message, why: str) -> _Problem:
        log.warning("wechat_template: message %s not sent: %s", message.id, why)
        return _Problem(DeliveryResult(status=REJECTED, detail=f"not sent: {why}"))

    def _payload(self, message: Message, openid: str) -> dict[str, Any]:
        spec = self.templates.get(message.template)
        if spec is None:
            known = ", ".join(sorted(self.templates)) or "(none)"
            raise self._local(message, f"no template_id for template {message.template!r} in "
                                       f"[plugins.{self.name}] templates (configured: {known})")
        params = {str(k): v if isinstance(v, str) else str(v) for k, v in (message.params or {}).items()}
        try:
            if spec.data is None:
                data = {k: {"value": v} for k, v in params.items()}
            else:
                data = {key: {"value": _render(fmt, params, encode=False)} for key, fmt in spec.data.items()}
            link = spec.url if spec.url is not None else self.page_url
            url = _render(link, params, encode=True) if link else ""
        except KeyError as e:
            raise self._local(message, f"template {message.template!r} needs parameter {e.args[0]!r}, which the "
                                       f"message does not have (has: {', '.join(sorted(params)) or 'none'})")
        except ValueError as e:
            raise self._local(message, f"template {message.template!r}: {e}")
        payload: dict[str, Any] = {"touser": openid, "template_id": spec.template_id, "data": data}
        if url:
            payload["url"] = url
        if isinstance(message.id, str) and message.id:
            payload["client_msg_id"] = (message.id if len(message.id) <= 32
                                        else hashlib.sha256(message.id.encode()).hexdigest()[:32])
        return payload

    def _post_send(self, token: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        reply = self._call("POST", "/cgi-bin/message/template/send", params={"access_token": token}, content=body,
                           headers={"Content-Type": "application/json; charset=utf-8"}, sending=True)
        try:
            return int(reply.get("errcode", 0)), reply
        except (TypeError, ValueError):
            raise _Problem(DeliveryResult(status=FAILED, detail=f"WeChat answered an unreadable errcode: "
                                                                f"{reply.get('errcode')!r}"))

    def _answer(self, message: Message, errcode: int, reply: dict[str, Any], why: str = "") -> DeliveryResult:
        openid = mask_openid(message.recipient.strip())
        errmsg = str(reply.get("errmsg") or "")
        if errcode == 0:
            msgid = str(reply.get("msgid") or "")
            log.info("wechat_template: message %s to %s sent (msgid %s)", message.id, openid, msgid)
            return DeliveryResult(status=SENT, vendor_code="0", vendor_message_id=msgid,
                                  detail="" if msgid else "sent, but WeChat returned no msgid")
        status = classify(errcode)
        known = (PERMANENT_ERRCODES.get(errcode) or TEMPORARY_ERRCODES.get(errcode) or TOKEN_ERRCODES.get(errcode)
                 or "unrecognised errcode")
        detail = f"{errcode}: {errmsg or '-'} ({why or known})"
        level = logging.ERROR if errcode in _CONFIG_ERRCODES else logging.WARNING
        log.log(level, "wechat_template: message %s to %s %s: %s", message.id, openid, status.value, detail)
        return DeliveryResult(status=status, vendor_code=str(errcode), detail=detail)

    # -- HTTP -----------------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, sending: bool, **kwargs: Any) -> dict[str, Any]:
        """One request; transport problems become FAILED results (raised as _Problem), logged here."""
        try:
            return self._request(method, path, sending=sending, **kwargs)
        except _Problem as p:
            log.warning("wechat_template: %s", p.result.detail)
            raise

    def _request(self, method: str, path: str, *, sending: bool, **kwargs: Any) -> dict[str, Any]:
        where = f"{self.base_url}{path}"
        try:
            response = self._http.request(method, where, **kwargs)
        except httpx.TimeoutException as e:
            unknown = sending and not isinstance(e, (httpx.ConnectTimeout, httpx.PoolTimeout))
            raise _Problem(DeliveryResult(status=FAILED, detail=(
                f"no answer from {where} in time ({type(e).__name__})"
                + ("; the outcome is unknown -- a retry with the same message id is de-duplicated by WeChat "
                   "for 10 minutes" if unknown else ""))))
        except httpx.HTTPError as e:
            said = _SECRET_IN_URL.sub(r"\1***", str(e))
            raise _Problem(DeliveryResult(status=FAILED, detail=f"could not reach {where}: {type(e).__name__}: {said}"))
        if response.status_code != 200:
            raise _Problem(DeliveryResult(status=FAILED, detail=f"{where} answered HTTP {response.status_code}"))
        try:
            reply = response.json()
        except ValueError:
            raise _Problem(DeliveryResult(status=FAILED, detail=f"{where} answered something that is not JSON"))
        if not isinstance(reply, dict):
            raise _Problem(DeliveryResult(status=FAILED, detail=f"{where} answered an unexpected JSON value"))
        return reply

    # -- the access token -------------------------------------------------------------------------------------------
    def _get_token(self) -> str:
        token = self._token
        if token is not None and self._now() < self._expires:
            return token
        arrived = self._attempts_done
        with self._lock:
            if self._token is not None and self._now() < self._expires:
                return self._token  # another thread fetched it while we waited
            if self._attempts_done != arrived and self._last_failure is not None:
                raise _Problem(self._last_failure)  # one was tried while we waited, and failed: do not hammer
            try:
                token, expires_in = self._fetch_token()
            except _Problem as p:
                self._last_failure = p.result
                raise
            else:
                self._last_failure = None
                margin = min(self.refresh_margin_s, expires_in / 2)
                self._token, self._expires = token, self._now() + expires_in - margin
                return token
            finally:
                self._attempts_done += 1

    def _drop_token(self, token: str) -> None:
        """Forget ``token`` (WeChat refused it) unless another thread has already replaced it."""
        with self._lock:
            if self._token == token:
                self._token, self._expires = None, 0.0

    def _fetch_token(self) -> tuple[str, float]:
        self.token_fetches += 1
        if self.use_stable_token:
            path = "/cgi-bin/stable_token"
            reply = self._call("POST", path, sending=False, json={
                "grant_type": "client_credential", "appid": self.appid, "secret": self._secret,
                "force_refresh": False})
        else:
            path = "/cgi-bin/token"
            reply = self._call("GET", path, sending=False, params={
                "grant_type": "client_credential", "appid": self.appid, "secret": self._secret})
        token, expires_in = reply.get("access_token"), reply.get("expires_in")
        if isinstance(token, str) and token and isinstance(expires_in, (int, float)) and expires_in > 0:
            log.info("wechat_template: new access token from %s, valid %ss", path, expires_in)
            return token, float(expires_in)
        errcode = reply.get("errcode")
        errmsg = str(reply.get("errmsg") or "")
        try:
            code = int(errcode)
        except (TypeError, ValueError):
            code = None
        known = (PERMANENT_ERRCODES.get(code) or TEMPORARY_ERRCODES.get(code) or "unrecognised errcode"
                 ) if code is not None else "no token in the reply"
        # Our credentials or whitelist are wrong: no message can go out until the operator fixes the settings, so
        # this message is REJECTED (the outbox falls back to SMS) and the log says so at ERROR.
        status = REJECTED if code in _CONFIG_ERRCODES else FAILED
        detail = f"access token request refused: {errcode}: {errmsg or '-'} ({known})"
        log.log(logging.ERROR if status is REJECTED else logging.WARNING, "wechat_template: %s", detail)
        raise _Problem(DeliveryResult(status=status, vendor_code="" if errcode is None else str(errcode),
                                      detail=detail))
