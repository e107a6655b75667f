"""A loopback Aliyun SMS (Dysmsapi 2017-05-25) server for SendSms: tests, the demo and ``python -m``.

It speaks the RPC protocol the real SDK (``alibabacloud-dysmsapi20170525`` 4.6.0 on ``alibabacloud-tea-openapi``
0.4.x) uses, and it checks what Aliyun checks, so the adapter under test runs the SDK for real:

* **the signature** -- the SDK signs SendSms with the V3 scheme ``ACS3-HMAC-SHA256`` (``Authorization`` header,
  ``x-acs-*`` headers, parameters in the query string, empty body). The sandbox rebuilds the canonical request and
  checks the HMAC with the test AccessKey secret; a wrong one is refused like Aliyun does
  (HTTP 400 ``SignatureDoesNotMatch``). The older RPC v1 scheme (``HMAC-SHA1``, ``Signature`` query parameter,
  what the SDK sends with ``signature_algorithm="v2"``) is verified too. An unknown AccessKey id is HTTP 404
  ``InvalidAccessKeyId.NotFound``; a reused nonce ``SignatureNonceUsed``; a clock more than 15 minutes off
  ``InvalidTimeStamp.Expired``; a body that does not match ``x-acs-content-sha256`` ``SignatureDoesNotMatch``.
* **the parameters** -- PhoneNumbers (mainland mobiles, optional ``+``/``+86``/``0086``/``86`` prefix, at most
  1,000), SignName and TemplateCode (when the sandbox is given the approved ones), TemplateParam (a JSON object of
  strings with every variable of the template, each value at most ``max_param_length`` characters).
* **the replies** -- business results come back with HTTP 200 and a ``Code`` exactly like the captured replies in
  ``tests/fixtures/notify/``: ``{"Message":"OK","RequestId":"...","BizId":"...","Code":"OK"}``, or e.g.
  ``{"Message":"触发小时级流控Permits:5","RequestId":"...","Code":"isv.BUSINESS_LIMIT_CONTROL"}``.

Scripting: :meth:`AliyunSmsSandbox.fail_next` (the next n SendSms calls answer a code), :meth:`answer_next` (they
answer a given body, such as a captured reply), :meth:`set_number_rule`
(one number always answers a code), :meth:`delay` / :meth:`hang` (answer late, or not until stopped: timeouts),
:meth:`stall_after_record` / :meth:`stall_before_record` (stall a send after or before its message is recorded: a
client killed mid-send).
QuerySendDetails (signature-checked the same way) lists the accepted messages of one number and day with their
``OutId`` (SendStatus 3, delivered), so a client can find out whether an unanswered send went out.
A delayed request is still carried out once the delay is over, as Aliyun would: a client that timed out cannot know
whether its message went out. :attr:`accepted` lists the accepted messages, one per phone number.

``python -m smartpark.testing.aliyun_sms_sandbox`` runs it standalone, prints the settings to put in plugins.toml and
then one line per accepted message (phone numbers masked).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import os
import random
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit
from zoneinfo import ZoneInfo

from .loopback import LoopbackHandler, LoopbackHTTPServer, serve, shut

__all__ = ["AliyunSmsSandbox", "SandboxSms", "main", "mask_phone"]

API_VERSION = "2017-05-25"
HOST_ID = "dysmsapi.aliyuncs.com"
#: Mainland mobile numbers with the prefixes Aliyun accepts (+, +86, 0086, 86).
MOBILE = re.compile(r"(?:\+86|0086|86|\+)?(1[3-9]\d{9})")
MAX_NUMBERS = 1000
CLOCK_SKEW_S = 15 * 60
_BEIJING = ZoneInfo("Asia/Shanghai")  # Aliyun's SendDate is a Beijing date
DEFAULT_SECRET_ENV = "SMARTPARK_ALIYUN_SMS_SECRET"

#: Known codes: HTTP status and the message Aliyun answers with. Business results are HTTP 200.
KNOWN_CODES: dict[str, tuple[int, str]] = {
    "isv.BUSINESS_LIMIT_CONTROL": (200, "触发小时级流控Permits:5"),  # the captured reply (fixtures)
    "isv.DAY_LIMIT_CONTROL": (200, "触发日发送限额"),
    "isv.MONTH_LIMIT_CONTROL": (200, "触发月发送限额"),
    "isv.MOBILE_NUMBER_ILLEGAL": (200, "非法手机号"),
    "isv.MOBILE_COUNT_OVER_LIMIT": (200, "手机号码数量超过限制"),
    "isv.TEMPLATE_MISSING_PARAMETERS": (200, "模板缺少变量"),
    "isv.INVALID_PARAMETERS": (200, "参数异常"),
    "isv.INVALID_JSON_PARAM": (200, "JSON参数不合法，只接受字符串值"),
    "isv.PARAM_LENGTH_LIMIT": (200, "参数超出长度限制"),
    "isv.SMS_TEMPLATE_ILLEGAL": (200, "该账号下找不到对应模板"),
    "isv.SMS_SIGNATURE_ILLEGAL": (200, "该账号下找不到对应签名"),
    "isv.BLACK_KEY_CONTROL_LIMIT": (200, "黑名单管控"),
    "isv.AMOUNT_NOT_ENOUGH": (200, "账户余额不足"),
    "isv.OUT_OF_SERVICE": (200, "业务停机"),
    "isv.CUSTOMER_REFUSED": (200, "用户已退订推广短信"),
    "isp.SYSTEM_ERROR": (200, "系统错误"),
    "isp.RAM_PERMISSION_DENY": (200, "RAM权限DENY"),
    "Throttling.User": (400, "Request was denied due to user flow control."),
    "Throttling.Api": (400, "Request was denied due to api flow control."),
    "ServiceUnavailable": (503, "The request has failed due to a temporary failure of the server."),
    "InternalError": (500, "The request processing has failed due to some unknown error, exception or failure."),
    "SignatureDoesNotMatch": (400, "Specified signature does not match our calculation."),
    "IncompleteSignature": (400, "The request signature does not conform to Aliyun standards."),
    "SignatureNonceUsed": (400, "Specified signature nonce was used already."),
    "InvalidTimeStamp.Expired": (400, "Specified time stamp or date value is expired."),
    "InvalidTimeStamp.Format": (400, "Specified time stamp or date value is not well formatted."),
    "InvalidAccessKeyId.NotFound": (404, "Specified access key is not found."),
    "InvalidAction.NotFound": (404, "Specified api is not found, please check your url and method."),
    "InvalidVersion": (400, "Specified parameter Version is not valid."),
}


def mask_phone(phone: str) -> str:
    """``138****8000``: the first three and last four digits of a mobile number, for logs and screens."""
    m = MOBILE.fullmatch(phone)
    digits = m.group(1) if m else phone
    if len(digits) < 8:
        return "*" * len(digits)
    return f"{digits[:3]}****{digits[-4:]}"


@dataclass(frozen=True)
class SandboxSms:
    """One accepted message (one per phone number of an accepted SendSms call)."""

    phone: str
    sign_name: str
    template_code: str
    params: dict[str, str]
    out_id: str
    biz_id: str
    request_id: str
    signature_method: str  # "ACS3-HMAC-SHA256" (V3) or "HMAC-SHA1" (RPC v1)
    at: float = field(default_factory=time.time)

    @property
    def masked_phone(self) -> str:
        return mask_phone(self.phone)


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]


class _Refused(Exception):
    def __init__(self, code: str, message: str | None = None, status: int | None = None) -> None:
        super().__init__(code)
        known = KNOWN_CODES.get(code, (200, code))
        self.code, self.message, self.status = code, message or known[1], status or known[0]


def _percent(s: str) -> str:
    return quote(s, safe="~", encoding="utf-8")


def _parse_query(raw: str) -> dict[str, str]:
    """Decode ``a=1&b=2`` the way it was encoded (``urlencode``: ``+`` is a space)."""
    out: dict[str, str] = {}
    for part in raw.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out[unquote_plus(k)] = unquote_plus(v)
    return out


class AliyunSmsSandbox:
    """A threaded loopback Dysmsapi server. ``with AliyunSmsSandbox(...) as sandbox:`` starts and stops it.

    ``access_key_secret`` defaults to a fresh random value (tests generate their own keys). ``sign_names`` and
    ``templates`` (TemplateCode -> the variable names it needs) are the approved ones; ``None`` approves any.
    """

    def __init__(
        self,
        *,
        access_key_id: str = "LTAI5tSandboxTestKey0001",
        access_key_secret: str | None = None,
        sign_names: Iterable[str] | None = None,
        templates: Mapping[str, Iterable[str]] | None = None,
        max_param_length: int = 35,
        host: str = "127.0.0.1",
        port: int = 0,
        on_accept: Callable[[SandboxSms], None] | None = None,
    ) -> None:
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret or secrets.token_urlsafe(24)
        self.sign_names = None if sign_names is None else set(sign_names)
        self.templates = None if templates is None else {code: frozenset(v) for code, v in templates.items()}
        self.max_param_length = max_param_length
        self.on_accept = on_accept
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._script: deque[_Refused | _Reply] = deque()
        self._number_rules: dict[str, _Refused] = {}
        self._delays: deque[float] = deque()
        self._delay_all = 0.0
        self._nonces: dict[str, float] = {}
        self._biz = itertools.count(random.randrange(10**17, 9 * 10**17))
        self._accepted: list[SandboxSms] = []
        self._replies: list[tuple[str, str]] = []  # (Code, signature method) of every SendSms answered
        self._stall_skip = 0
        self._stall_left = 0
        self._stall_mode = "after"
        self._release = threading.Event()
        #: Set when a SendSms recorded its message and stalled (see :meth:`stall_after_record`).
        self.stalled = threading.Event()
        self.queries = 0  # QuerySendDetails calls answered
        self.requests = 0  # HTTP requests received
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------------------
    def start(self) -> AliyunSmsSandbox:
        sandbox = self

        class Handler(_Handler):
            owner = sandbox

        self._stopping.clear()
        self._server, self._thread = serve(_Server, (self._host, self._port), Handler, "aliyun-sms-sandbox")
        return self

    def stop(self) -> None:
        """Stop serving, release hung requests and close kept-alive connections."""
        self._stopping.set()  # releases hung requests
        shut(self._server, self._thread)  # also cuts the kept-alive connections
        self._server = self._thread = None

    def __enter__(self) -> AliyunSmsSandbox:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the sandbox is not running")
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``: the SDK's ``Config(endpoint=...)`` (with ``protocol='http'``)."""
        return f"{self._host}:{self.port}"

    # -- scripting ------------------------------------------------------------------------------------------
    def fail_next(self, code: str, n: int = 1, *, message: str | None = None, status: int | None = None) -> None:
        """The next ``n`` SendSms calls (with a valid signature) answer ``code``.

        Known codes get Aliyun's HTTP status and message (business codes such as ``isv.BUSINESS_LIMIT_CONTROL``
        come with HTTP 200, exactly like the captured reply); others default to HTTP 200.
        """
        with self._lock:
            self._script.extend(_Refused(code, message, status) for _ in range(n))

    def answer_next(self, body: Mapping[str, Any], status: int = 200, n: int = 1) -> None:
        """The next ``n`` SendSms calls (with a valid signature) answer exactly ``body`` with HTTP ``status``, e.g. a
        captured reply from ``tests/fixtures/notify/``. A ``"Code": "OK"`` body records the message as accepted."""
        with self._lock:
            self._script.extend(_Reply(status, dict(body)) for _ in range(n))

    def set_number_rule(self, phone: str, code: str = "isv.MOBILE_NUMBER_ILLEGAL", *, message: str | None = None,
                        status: int | None = None) -> None:
        """Every SendSms to ``phone`` answers ``code`` (an illegal number, a blacklisted one, ...)."""
        with self._lock:
            self._number_rules[phone] = _Refused(code, message, status)

    def clear_number_rules(self) -> None:
        with self._lock:
            self._number_rules.clear()

    def delay(self, seconds: float, n: int | None = 1) -> None:
        """Answer the next ``n`` requests ``seconds`` late (``n=None``: every request from now on; 0 resets)."""
        with self._lock:
            if n is None:
                self._delay_all = seconds
            else:
                self._delays.extend([seconds] * n)

    def hang(self, n: int | None = 1) -> None:
        """Do not answer the next ``n`` requests until the sandbox stops (timeout tests)."""
        self.delay(float("inf"), n)

    def stall_after_record(self, n: int = 1, *, skip: int = 0) -> None:
        """After ``skip`` more accepted SendSms calls, the next ``n`` record their message (it counts as sent, as
        Aliyun would have sent it) and then do not answer until :meth:`release` or :meth:`stop`: the client
        cannot know the outcome -- the crash test kills the client meanwhile. :attr:`stalled` is set then."""
        self._set_stall(n, skip, "after")

    def stall_before_record(self, n: int = 1, *, skip: int = 0) -> None:
        """Like :meth:`stall_after_record`, but the next ``n`` valid SendSms calls (after ``skip``) stall *before*
        their message is recorded, and are dropped unanswered on :meth:`release`: the message never went out
        (the client died, or its request was lost, before Aliyun took it)."""
        self._set_stall(n, skip, "before")

    def _set_stall(self, n: int, skip: int, mode: str) -> None:
        with self._lock:
            self._stall_skip, self._stall_left, self._stall_mode = skip, n, mode
            self._release.clear()
            self.stalled.clear()

    def release(self) -> None:
        """Let stalled SendSms calls go on: after recording they answer OK; before recording they are dropped."""
        self._release.set()

    def reset(self) -> None:
        """Forget scripted failures, rules, delays and recorded messages."""
        with self._lock:
            self._stall_skip = self._stall_left = 0
            self._release.set()
            self.stalled.clear()
            self._script.clear()
            self._number_rules.clear()
            self._delays.clear()
            self._delay_all = 0.0
            self._accepted.clear()
            self._replies.clear()

    # -- what happened --------------------------------------------------------------------------------------
    @property
    def accepted(self) -> list[SandboxSms]:
        """Accepted messages, in order (one per phone number)."""
        with self._lock:
            return list(self._accepted)

    @property
    def replies(self) -> list[tuple[str, str]]:
        """``(Code, signature method)`` of every SendSms call that passed the signature check, in order."""
        with self._lock:
            return list(self._replies)

    def wait_for(self, count: int, timeout: float = 2.0) -> list[SandboxSms]:
        """Wait until at least ``count`` messages were accepted; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.accepted
            if len(got) >= count:
                return got
            time.sleep(0.01)
        return self.accepted

    # -- the protocol ---------------------------------------------------------------------------------------
    def _next_delay(self) -> float:
        with self._lock:
            self.requests += 1
            return self._delays.popleft() if self._delays else self._delay_all

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> _Reply:
        wait = self._next_delay()
        if wait > 0:
            self._stopping.wait(None if wait == float("inf") else wait)
            if self._stopping.is_set():
                raise ConnectionAbortedError("sandbox stopped")
        request_id = str(uuid.uuid4()).upper()
        try:
            params, action, version, sig_method = self._authenticate(method, target, headers, body)
            if action not in ("SendSms", "QuerySendDetails"):
                raise _Refused("InvalidAction.NotFound")
            if version != API_VERSION:
                raise _Refused("InvalidVersion")
            if action == "QuerySendDetails":
                return self._query_send_details(params, request_id)
            return self._send_sms(params, sig_method, request_id)
        except _Refused as r:
            reply = {"RequestId": request_id, "Message": r.message, "Code": r.code}
            if r.status != 200:
                reply.update({"HostId": HOST_ID, "Recommend": f"https://api.aliyun.com/troubleshoot?q={r.code}"})
            return _Reply(r.status, reply)

    def _authenticate(self, method: str, target: str, headers: Any, body: bytes) -> tuple[dict[str, str], str, str, str]:
        url = urlsplit(target)
        query = _parse_query(url.query)
        if headers.get("Authorization"):
            return self._verify_v3(method, url.path or "/", url.query, query, headers, body)
        if "Signature" in query:
            form = {}
            if body and (headers.get("content-type") or "").startswith("application/x-www-form-urlencoded"):
                form = _parse_query(body.decode("utf-8"))
            return self._verify_v1(method, {**query, **form})
        raise _Refused("IncompleteSignature", "no Authorization header and no Signature parameter", 400)

    def _secret_for(self, access_key_id: str) -> str:
        if not hmac.compare_digest(access_key_id.encode(), self.access_key_id.encode()):
            raise _Refused("InvalidAccessKeyId.NotFound")
        return self.access_key_secret

    def _check_time(self, stamp: str) -> None:
        try:
            t = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise _Refused("InvalidTimeStamp.Format")
        if abs(time.time() - t) > CLOCK_SKEW_S:
            raise _Refused("InvalidTimeStamp.Expired")

    def _use_nonce(self, nonce: str) -> None:
        if not nonce:
            raise _Refused("IncompleteSignature", "the signature nonce is missing", 400)
        now = time.time()
        with self._lock:
            for old in [n for n, at in self._nonces.items() if now - at > CLOCK_SKEW_S]:
                del self._nonces[old]
            if nonce in self._nonces:
                raise _Refused("SignatureNonceUsed")
            self._nonces[nonce] = now

    def _verify_v3(self, method: str, path: str, raw_query: str, query: dict[str, str], headers: Any,
                   body: bytes) -> tuple[dict[str, str], str, str, str]:
        m = re.fullmatch(r"(\S+) Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-fA-F]+)",
                         headers.get("Authorization", "").strip())
        if m is None:
            raise _Refused("IncompleteSignature", "the Authorization header is malformed", 400)
        algorithm, access_key_id, signed_list, signature = m.groups()
        if algorithm != "ACS3-HMAC-SHA256":
            raise _Refused("IncompleteSignature", f"the sandbox verifies ACS3-HMAC-SHA256, not {algorithm}", 400)
        secret = self._secret_for(access_key_id)
        signed = signed_list.split(";")
        present = {k.lower() for k in headers.keys()}
        must_sign = {"host"} | {h for h in present if h.startswith("x-acs-")}
        if "content-type" in present:
            must_sign.add("content-type")
        if not must_sign <= set(signed) or not set(signed) <= present:
            raise _Refused("IncompleteSignature", "SignedHeaders must name host, every x-acs-* header and "
                                                  "content-type, and only headers that are present", 400)
        payload_hash = hashlib.sha256(body).hexdigest()
        if headers.get("x-acs-content-sha256", "") != payload_hash:
            raise _Refused("SignatureDoesNotMatch", "x-acs-content-sha256 does not match the request body", 400)
        # The canonical request: method, path, sorted percent-encoded query, signed headers, payload hash.
        canonical_query = "&".join(f"{_percent(k)}={_percent(v)}" for k, v in sorted(_parse_query(raw_query).items()))
        canonical_headers = "".join(
            f"{name}:{','.join(sorted(v.strip() for v in headers.get_all(name)))}\n" for name in signed)
        canonical = f"{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_list}\n{payload_hash}"
        to_sign = f"{algorithm}\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"
        expected = hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise _Refused("SignatureDoesNotMatch",
                           f"Specified signature does not match our calculation. server string to sign is:{to_sign}")
        self._check_time(headers.get("x-acs-date", ""))
        self._use_nonce(headers.get("x-acs-signature-nonce", ""))
        return query, headers.get("x-acs-action", ""), headers.get("x-acs-version", ""), algorithm

    def _verify_v1(self, method: str, params: dict[str, str]) -> tuple[dict[str, str], str, str, str]:
        if params.get("SignatureMethod") != "HMAC-SHA1" or params.get("SignatureVersion") != "1.0":
            raise _Refused("IncompleteSignature", "the sandbox verifies RPC v1 signatures with HMAC-SHA1 1.0", 400)
        secret = self._secret_for(params.get("AccessKeyId", ""))
        signed = {k: v for k, v in params.items() if k != "Signature"}
        canonical = "&".join(f"{_percent(k)}={_percent(v)}" for k, v in sorted(signed.items()))
        to_sign = f"{method}&{_percent('/')}&{_percent(canonical)}"
        digest = hmac.new((secret + "&").encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha1).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), params["Signature"]):
            raise _Refused("SignatureDoesNotMatch",
                           f"Specified signature does not match our calculation. server string to sign is:{to_sign}")
        self._check_time(params.get("Timestamp", ""))
        self._use_nonce(params.get("SignatureNonce", ""))
        return signed, params.get("Action", ""), params.get("Version", ""), "HMAC-SHA1"

    def _send_sms(self, params: dict[str, str], sig_method: str, request_id: str) -> _Reply:
        try:
            reply = self._check_send(params)
        except _Refused as r:
            with self._lock:
                self._replies.append((r.code, sig_method))
            raise
        phones, sign_name, template_code, values, canned = reply
        if canned is not None and canned.body.get("Code") != "OK":
            with self._lock:
                self._replies.append((str(canned.body.get("Code")), sig_method))
            return canned
        if self._maybe_stall("before"):
            raise ConnectionAbortedError("dropped before it was recorded")
        biz_id = str(canned.body.get("BizId", "")) if canned is not None else f"{next(self._biz)}^0"
        request_id = str(canned.body.get("RequestId", request_id)) if canned is not None else request_id
        sms = [SandboxSms(phone=p, sign_name=sign_name, template_code=template_code, params=dict(values),
                          out_id=params.get("OutId", ""), biz_id=biz_id, request_id=request_id,
                          signature_method=sig_method) for p in phones]
        with self._lock:
            self._accepted.extend(sms)
            self._replies.append(("OK", sig_method))
        if self.on_accept is not None:
            for s in sms:
                self.on_accept(s)
        self._maybe_stall("after")
        if canned is not None:
            return canned
        return _Reply(200, {"Message": "OK", "RequestId": request_id, "BizId": biz_id, "Code": "OK"})

    def _maybe_stall(self, where: str) -> bool:
        """Stall here if a stall is due at ``where`` ("before"/"after" recording); ``True`` if it stalled."""
        with self._lock:
            if self._stall_left <= 0 or self._stall_mode != where:
                return False
            if self._stall_skip > 0:
                self._stall_skip -= 1
                return False
            self._stall_left -= 1
        self.stalled.set()
        while not self._release.wait(0.05):
            if self._stopping.is_set():
                raise ConnectionAbortedError("sandbox stopped")
        return True

    def _query_send_details(self, params: dict[str, str], request_id: str) -> _Reply:
        """QuerySendDetails: the messages sent to one number on one (Beijing) day, newest first, one page."""
        for name in ("PhoneNumber", "SendDate", "PageSize", "CurrentPage"):
            if not params.get(name):
                raise _Refused(f"Missing{name}", f"{name} is mandatory for this action.", 400)
        m = MOBILE.fullmatch(params["PhoneNumber"].strip())
        if m is None:
            raise _Refused("isv.MOBILE_NUMBER_ILLEGAL")
        if not re.fullmatch(r"\d{8}", params["SendDate"]):
            raise _Refused("isv.INVALID_PARAMETERS", "SendDate must be yyyyMMdd")
        try:
            size, page = int(params["PageSize"]), int(params["CurrentPage"])
        except ValueError:
            raise _Refused("isv.INVALID_PARAMETERS", "PageSize and CurrentPage are numbers")
        if not 1 <= size <= 50 or page < 1:
            raise _Refused("isv.INVALID_PARAMETERS", "PageSize is 1..50, CurrentPage from 1")
        biz_id = params.get("BizId", "")
        with self._lock:
            self.queries += 1
            found = [s for s in self._accepted if s.phone == m.group(1)
                     and datetime.fromtimestamp(s.at, _BEIJING).strftime("%Y%m%d") == params["SendDate"]
                     and (not biz_id or s.biz_id == biz_id)]
        found.reverse()
        rows = [{
            "PhoneNum": s.phone, "SendStatus": 3, "ErrCode": "DELIVERED", "TemplateCode": s.template_code,
            "Content": f"【{s.sign_name}】" + json.dumps(s.params, ensure_ascii=False), "OutId": s.out_id,
            "SendDate": datetime.fromtimestamp(s.at, _BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
            "ReceiveDate": datetime.fromtimestamp(s.at, _BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
        } for s in found[(page - 1) * size: page * size]]
        return _Reply(200, {"Code": "OK", "Message": "OK", "RequestId": request_id, "TotalCount": len(found),
                            "SmsSendDetailDTOs": {"SmsSendDetailDTO": rows}})

    def _check_send(self, params: dict[str, str]) -> tuple[list[str], str, str, dict[str, str], _Reply | None]:
        for name in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not params.get(name):
                raise _Refused(f"Missing{name}", f"{name} is mandatory for this action.", 400)
        canned: _Reply | None = None
        with self._lock:
            scripted = self._script.popleft() if self._script else None
            rules = dict(self._number_rules)
        if isinstance(scripted, _Refused):
            raise scripted
        if isinstance(scripted, _Reply):
            canned = scripted
            if canned.body.get("Code") != "OK":
                return [], params["SignName"], params["TemplateCode"], {}, canned
        phones = [p.strip() for p in params["PhoneNumbers"].split(",")]
        if len(phones) > MAX_NUMBERS:
            raise _Refused("isv.MOBILE_COUNT_OVER_LIMIT")
        for phone in phones:
            m = MOBILE.fullmatch(phone)
            rule = rules.get(phone) or (rules.get(m.group(1)) if m else None)
            if rule is not None:
                raise rule
            if m is None:
                raise _Refused("isv.MOBILE_NUMBER_ILLEGAL")
        sign_name, template_code = params["SignName"], params["TemplateCode"]
        if self.sign_names is not None and sign_name not in self.sign_names:
            raise _Refused("isv.SMS_SIGNATURE_ILLEGAL")
        if self.templates is not None and template_code not in self.templates:
            raise _Refused("isv.SMS_TEMPLATE_ILLEGAL")
        values: dict[str, str] = {}
        if params.get("TemplateParam"):
            try:
                values = json.loads(params["TemplateParam"])
            except ValueError:
                raise _Refused("isv.INVALID_JSON_PARAM")
            if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
                raise _Refused("isv.INVALID_JSON_PARAM")
        needed = self.templates.get(template_code, frozenset()) if self.templates is not None else frozenset()
        missing = sorted(needed - set(values))
        if missing:
            raise _Refused("isv.TEMPLATE_MISSING_PARAMETERS", f"模板缺少变量：{', '.join(missing)}")
        too_long = sorted(k for k, v in values.items() if len(v) > self.max_param_length)
        if too_long:
            raise _Refused("isv.PARAM_LENGTH_LIMIT", f"参数超出长度限制：{', '.join(too_long)}")
        numbers = [MOBILE.fullmatch(p).group(1) for p in phones]  # type: ignore[union-attr]
        return numbers, sign_name, template_code, values, canned


class _Server(LoopbackHTTPServer):
    block_on_close = False


class _Handler(LoopbackHandler):
    owner: AliyunSmsSandbox
    server_version = "AliyunSmsSandbox/1.0"

    def _serve(self) -> None:
        body = self.read_body()
        try:
            reply = self.owner.handle(self.command, self.path, self.headers, body)
        except ConnectionAbortedError:
            self.close_connection = True
            return
        data = json.dumps(reply.body, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-acs-request-id", reply.body.get("RequestId", ""))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout) before we answered
            self.close_connection = True

    do_POST = _serve
    do_GET = _serve



# -- standalone ------------------------------------------------------------------------------------------------
def _template_arg(text: str) -> tuple[str, list[str]]:
    code, _, names = text.partition(":")
    return code.strip(), [n.strip() for n in names.split(",") if n.strip()]


def main(argv: list[str] | None = None) -> int:
    """``python -m smartpark.testing.aliyun_sms_sandbox [--port 9200] [--template SMS_1:plate,minutes ...]``."""
    parser = argparse.ArgumentParser(prog="python -m smartpark.testing.aliyun_sms_sandbox",
                                     description="阿里云短信沙箱 / a loopback Aliyun SMS (Dysmsapi SendSms) server")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9200, help="port (default 9200; 0 picks a free one)")
    parser.add_argument("--access-key-id", default="LTAI5tSandboxTestKey0001", help="the test AccessKey id")
    parser.add_argument("--secret-env", default=DEFAULT_SECRET_ENV,
                        help=f"environment variable holding the test AccessKey secret (default {DEFAULT_SECRET_ENV});"
                             " when it is unset a random one is generated and printed")
    parser.add_argument("--sign-name", action="append", help="an approved SignName (repeat; default: any)")
    parser.add_argument("--template", action="append", type=_template_arg, metavar="CODE[:var,var]",
                        help="an approved TemplateCode and its variables (repeat; default: any)")
    parser.add_argument("--illegal", action="append", default=[], metavar="PHONE",
                        help="a number that always answers isv.MOBILE_NUMBER_ILLEGAL (repeat)")
    args = parser.parse_args(argv)
    secret = os.environ.get(args.secret_env)
    generated = not secret
    secret = secret or secrets.token_urlsafe(24)

    def show(sms: SandboxSms) -> None:
        params = json.dumps(sms.params, ensure_ascii=False)
        print(f"[短信 sms] {time.strftime('%H:%M:%S')} {sms.masked_phone} 【{sms.sign_name}】 {sms.template_code} "
              f"{params} BizId={sms.biz_id}", flush=True)

    try:
        sandbox = AliyunSmsSandbox(access_key_id=args.access_key_id, access_key_secret=secret,
                                   sign_names=args.sign_name, templates=dict(args.template) if args.template else None,
                                   host=args.host, port=args.port, on_accept=show).start()
    except OSError as e:
        print(f"短信沙箱无法启动：{e} / the SMS sandbox could not start: {e}", file=sys.stderr)
        return 1
    for phone in args.illegal:
        sandbox.set_number_rule(phone)
    print("阿里云短信沙箱已启动 / Aliyun SMS sandbox listening on " + sandbox.endpoint, flush=True)
    if generated:
        print(f"# a random TEST secret was generated for this run:\nexport {args.secret_env}={secret}")
    print(f"""
[plugins.sms_aliyun]
access_key_id = "{sandbox.access_key_id}"
access_key_secret = {{ env = "{args.secret_env}" }}
sign_name = "{(args.sign_name or ['智慧社区停车'])[0]}"
endpoint = "{sandbox.endpoint}"
protocol = "http"

[plugins.sms_aliyun.templates]   # our logical name = a TemplateCode{' the sandbox approves' if args.template else ''}
""" + "\n".join(f'# name_{i} = "{code}"   # variables: {", ".join(names) or "none"}'
                for i, (code, names) in enumerate(args.template or [("SMS_465000001", ["plate", "minutes"])], 1))
          + "\n", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
