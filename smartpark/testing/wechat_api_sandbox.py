"""A loopback WeChat official-account API server: access tokens and template messages (tests, demo, ``python -m``).

Endpoints, answering like ``api.weixin.qq.com`` (JSON ``{"errcode": ..., "errmsg": "... rid: ..."}`` on errors,
HTTP 200 throughout):

* ``GET /cgi-bin/token?grant_type=client_credential&appid=&secret=`` -- every call issues a new token; the
  previous one stays valid for 5 more minutes (the documented overlap).
* ``POST /cgi-bin/stable_token`` ``{"grant_type", "appid", "secret", "force_refresh"}`` -- normal mode returns the
  current stable token while it is valid (a new one in its last 5 minutes, or after it was invalidated);
  ``force_refresh`` issues a new one and voids the old one at once.
* ``POST /cgi-bin/message/template/send?access_token=`` ``{"touser", "template_id", "url", "data":
  {key: {"value"}}, "client_msg_id"}`` -> ``{"errcode": 0, "errmsg": "ok", "msgid": ...}``.

Checks: appid (40013) and secret (40125) on the token endpoints; the token on sends (41001 missing, 40001 unknown
or invalidated, 42001 expired); the openid (40003 malformed, 43004 not following); the template id (40037, when
the sandbox is given the approved ones); the data (47001 not JSON, 47003 a value is not ``{"value": "..."}``).
A repeated ``client_msg_id`` for the same openid within 10 minutes is not delivered twice: the sandbox answers
with the first msgid (WeChat documents the field as a de-duplication key; the exact reply is assumed).

Scripting: :meth:`WeChatApiSandbox.invalidate_tokens` (the tokens in use stop working: 40001 once, then the client
must fetch a new one), :meth:`expire_tokens` (42001), :meth:`fail_next` (the next template sends answer an
errcode: 45009 rate limit, -1 system busy, 40001 ...), :meth:`answer_next` (a given body, e.g. a captured reply),
:meth:`fail_next_token`, :meth:`unfollow` (43004),
:meth:`delay` / :meth:`hang`. :attr:`token_requests` counts token requests; :attr:`sent` lists delivered messages.

``python -m smartpark.testing.wechat_api_sandbox`` runs it standalone and prints the settings for plugins.toml,
then one line per delivered message (openid masked).
"""

from __future__ import annotations

import argparse
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
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .loopback import LoopbackHandler, LoopbackHTTPServer, serve, shut

__all__ = ["SandboxTemplateMessage", "WeChatApiSandbox", "main", "mask_openid"]

DEFAULT_APPID = "wx0123456789abcdef"
DEFAULT_SECRET_ENV = "SMARTPARK_WECHAT_SECRET"
#: An openid: 28 characters, letters, digits, - and _ (they start with "o").
OPENID = re.compile(r"o[A-Za-z0-9_-]{27}")
OVERLAP_S = 300.0  # old /cgi-bin/token tokens stay valid this long; stable tokens renew this long before expiry
DEDUP_S = 600.0  # client_msg_id de-duplication window

ERRMSG: dict[int, str] = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40013: "invalid appid",
    40014: "invalid access_token",
    40037: "invalid template_id",
    40125: "invalid appsecret",
    40164: "invalid ip, not in whitelist",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    42001: "access_token expired",
    43004: "require subscribe",
    43101: "user refuse to accept the msg",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit  mustslower  retry next minute",
    47001: "data format error",
    47003: "argument invalid!",
    48001: "api unauthorized",
}


def mask_openid(openid: str) -> str:
    return f"{openid[:4]}****{openid[-4:]}" if len(openid) > 10 else "****"


def _rid() -> str:
    return "-".join(f"{random.getrandbits(32):08x}" for _ in range(3))


def _error(errcode: int, errmsg: str | None = None) -> dict[str, Any]:
    return {"errcode": errcode, "errmsg": f"{errmsg or ERRMSG.get(errcode, 'error')} rid: {_rid()}"}


@dataclass(frozen=True)
class SandboxTemplateMessage:
    """One delivered template message."""

    touser: str
    template_id: str
    data: dict[str, str]  # key -> value
    url: str
    client_msg_id: str
    msgid: int
    at: float = field(default_factory=time.time)

    @property
    def masked_openid(self) -> str:
        return mask_openid(self.touser)


@dataclass
class _Token:
    value: str
    expires: float  # time.monotonic()
    stable: bool
    voided_with: int = 0  # an errcode once invalidated


class WeChatApiSandbox:
    """A threaded loopback ``api.weixin.qq.com``. ``with WeChatApiSandbox() as sandbox:`` starts and stops it.

    ``secret`` defaults to a fresh random value (tests generate their own). ``templates`` are the approved template
    ids (``None``: any). Every well-formed openid follows the account unless :meth:`unfollow` says otherwise, or,
    with ``followers`` given, only those do.
    """

    def __init__(
        self,
        *,
        appid: str = DEFAULT_APPID,
        secret: str | None = None,
        templates: Iterable[str] | None = None,
        followers: Iterable[str] | None = None,
        token_ttl_s: float = 7200.0,
        host: str = "127.0.0.1",
        port: int = 0,
        on_send: Callable[[SandboxTemplateMessage], None] | None = None,
    ) -> None:
        self.appid = appid
        self.secret = secret or secrets.token_hex(16)
        self.templates = None if templates is None else set(templates)
        self.followers = None if followers is None else set(followers)
        self.token_ttl_s = token_ttl_s
        self.on_send = on_send
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._tokens: dict[str, _Token] = {}
        self._stable: _Token | None = None
        self._unfollowed: set[str] = set()
        self._send_script: deque[dict[str, Any]] = deque()
        self._token_script: deque[dict[str, Any]] = deque()
        self._delays: deque[tuple[str | None, float]] = deque()
        self._delay_all = 0.0
        self._msgids = itertools.count(random.randrange(10**9, 9 * 10**9))
        self._dedup: dict[tuple[str, str], tuple[int, float]] = {}
        self._sent: list[SandboxTemplateMessage] = []
        self._send_replies: list[int] = []
        self.token_requests = 0
        self.send_requests = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self) -> WeChatApiSandbox:
        sandbox = self

        class Handler(_Handler):
            owner = sandbox

        self._stopping.clear()
        self._server, self._thread = serve(_Server, (self._host, self._port), Handler, "wechat-api-sandbox")
        return self

    def stop(self) -> None:
        """Stop serving, release hung requests and close kept-alive connections."""
        self._stopping.set()
        shut(self._server, self._thread)  # also cuts the kept-alive connections
        self._server = self._thread = None

    def __enter__(self) -> WeChatApiSandbox:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the sandbox is not running")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- scripting -------------------------------------------------------------------------------------------------
    def invalidate_tokens(self, errcode: int = 40001) -> None:
        """Every token issued so far stops working: sends with it answer ``errcode`` (40001, 40014 or 42001)."""
        with self._lock:
            for tok in self._tokens.values():
                tok.voided_with = tok.voided_with or errcode

    def expire_tokens(self) -> None:
        """Every token issued so far has expired (42001)."""
        self.invalidate_tokens(42001)

    def fail_next(self, errcode: int, n: int = 1, *, errmsg: str | None = None) -> None:
        """The next ``n`` template sends (past the token check) answer ``errcode``."""
        with self._lock:
            self._send_script.extend({"errcode": errcode, "errmsg": errmsg} for _ in range(n))

    def answer_next(self, body: dict[str, Any], n: int = 1) -> None:
        """The next ``n`` template sends (past the token check) answer exactly ``body``, e.g. a captured reply from
        ``tests/fixtures/notify/``."""
        with self._lock:
            self._send_script.extend({"raw": dict(body)} for _ in range(n))

    def fail_next_token(self, errcode: int, n: int = 1, *, errmsg: str | None = None) -> None:
        """The next ``n`` token requests answer ``errcode`` (-1 busy, 40164 IP not allowed, ...)."""
        with self._lock:
            self._token_script.extend({"errcode": errcode, "errmsg": errmsg} for _ in range(n))

    def unfollow(self, openid: str) -> None:
        """``openid`` no longer follows the account: sends to it answer 43004."""
        with self._lock:
            self._unfollowed.add(openid)
            if self.followers is not None:
                self.followers.discard(openid)

    def follow(self, openid: str) -> None:
        with self._lock:
            self._unfollowed.discard(openid)
            if self.followers is not None:
                self.followers.add(openid)

    def delay(self, seconds: float, n: int | None = 1, *, path: str | None = None) -> None:
        """Answer the next ``n`` requests (to ``path`` only, if given) ``seconds`` late; ``n=None``: all of them."""
        with self._lock:
            if n is None:
                self._delay_all = seconds
            else:
                self._delays.extend([(path, seconds)] * n)

    def hang(self, n: int | None = 1, *, path: str | None = None) -> None:
        """Do not answer the next ``n`` requests until the sandbox stops."""
        self.delay(float("inf"), n, path=path)

    # -- what happened ---------------------------------------------------------------------------------------
    @property
    def sent(self) -> list[SandboxTemplateMessage]:
        with self._lock:
            return list(self._sent)

    @property
    def send_replies(self) -> list[int]:
        """The errcode of every template send answered, in order."""
        with self._lock:
            return list(self._send_replies)

    def wait_for(self, count: int, timeout: float = 2.0) -> list[SandboxTemplateMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.sent
            if len(got) >= count:
                return got
            time.sleep(0.01)
        return self.sent

    # -- the protocol ------------------------------------------------------------------------------------------
    def _wait(self, path: str) -> None:
        with self._lock:
            wait = self._delay_all
            for i, (p, seconds) in enumerate(self._delays):
                if p is None or p == path:
                    wait = seconds
                    del self._delays[i]
                    break
        if wait > 0:
            self._stopping.wait(None if wait == float("inf") else wait)
            if self._stopping.is_set():
                raise ConnectionAbortedError("sandbox stopped")

    def handle(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        self._wait(url.path)
        if url.path == "/cgi-bin/token" and method == "GET":
            return 200, self._token(query, stable=False)
        if url.path == "/cgi-bin/stable_token" and method == "POST":
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                return 200, _error(47001)
            return 200, self._token(payload if isinstance(payload, dict) else {}, stable=True)
        if url.path == "/cgi-bin/message/template/send" and method == "POST":
            return 200, self._send(query.get("access_token", ""), body)
        return 404, {"errcode": 404, "errmsg": f"no such api {url.path}"}

    def _token(self, args: dict[str, Any], *, stable: bool) -> dict[str, Any]:
        with self._lock:
            self.token_requests += 1
            if self._token_script:
                s = self._token_script.popleft()
                return _error(s["errcode"], s["errmsg"])
            if args.get("grant_type") != "client_credential":
                return _error(40002)
            if not args.get("appid"):
                return _error(41002)
            if args.get("appid") != self.appid:
                return _error(40013)
            if not args.get("secret"):
                return _error(41004)
            if not secrets.compare_digest(str(args.get("secret")).encode(), self.secret.encode()):
                return _error(40125)
            now = time.monotonic()
            if stable:
                cur = self._stable
                force = args.get("force_refresh") in (True, "true", 1)
                if cur is not None and force:
                    cur.voided_with = cur.voided_with or 40001
                if cur is None or force or cur.voided_with or cur.expires - now <= OVERLAP_S:
                    cur = self._issue(now, stable=True)
                    self._stable = cur
            else:
                for old in self._tokens.values():
                    if not old.stable:
                        old.expires = min(old.expires, now + OVERLAP_S)
                cur = self._issue(now, stable=False)
            return {"access_token": cur.value, "expires_in": max(0, round(cur.expires - now))}

    def _issue(self, now: float, *, stable: bool) -> _Token:
        tok = _Token(value=secrets.token_urlsafe(96), expires=now + self.token_ttl_s, stable=stable)
        self._tokens[tok.value] = tok
        return tok

    def _send(self, access_token: str, body: bytes) -> dict[str, Any]:
        with self._lock:
            self.send_requests += 1
            reply = self._check_send(access_token, body)
            self._send_replies.append(reply.get("errcode", 0))
            msg = reply.pop("_message", None)
            if msg is not None:
                self._sent.append(msg)
        if msg is not None and self.on_send is not None:
            self.on_send(msg)
        return reply

    def _check_send(self, access_token: str, body: bytes) -> dict[str, Any]:
        if not access_token:
            return _error(41001)
        tok = self._tokens.get(access_token)
        if tok is None:
            return _error(40001)
        if tok.voided_with:
            return _error(tok.voided_with)
        if time.monotonic() >= tok.expires:
            return _error(42001)
        if self._send_script:
            s = self._send_script.popleft()
            return dict(s["raw"]) if "raw" in s else _error(s["errcode"], s["errmsg"])
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(47001)
        if not isinstance(payload, dict):
            return _error(47001)
        touser, template_id = payload.get("touser"), payload.get("template_id")
        if not isinstance(touser, str) or not OPENID.fullmatch(touser):
            return _error(40003)
        if touser in self._unfollowed or (self.followers is not None and touser not in self.followers):
            return _error(43004)
        if not isinstance(template_id, str) or not template_id or (
                self.templates is not None and template_id not in self.templates):
            return _error(40037)
        data = payload.get("data")
        if not isinstance(data, dict):
            return _error(47001)
        values: dict[str, str] = {}
        for key, item in data.items():
            if not isinstance(item, dict) or not isinstance(item.get("value"), str):
                return _error(47003, f"argument invalid! data.{key}.value invalid")
            values[key] = item["value"]
        url = payload.get("url") or ""
        if not isinstance(url, str):
            return _error(47003, "argument invalid! url invalid")
        client_msg_id = str(payload.get("client_msg_id") or "")
        now = time.monotonic()
        if client_msg_id:
            for k in [k for k, (_, at) in self._dedup.items() if now - at > DEDUP_S]:
                del self._dedup[k]
            seen = self._dedup.get((touser, client_msg_id))
            if seen is not None:
                return {"errcode": 0, "errmsg": "ok", "msgid": seen[0]}
        msgid = next(self._msgids)
        if client_msg_id:
            self._dedup[(touser, client_msg_id)] = (msgid, now)
        message = SandboxTemplateMessage(touser=touser, template_id=template_id, data=values, url=url,
                                         client_msg_id=client_msg_id, msgid=msgid)
        return {"errcode": 0, "errmsg": "ok", "msgid": msgid, "_message": message}


class _Server(LoopbackHTTPServer):
    block_on_close = False


class _Handler(LoopbackHandler):
    owner: WeChatApiSandbox
    server_version = "WeChatApiSandbox/1.0"

    def _serve(self) -> None:
        body = self.read_body()
        try:
            status, reply = self.owner.handle(self.command, self.path, body)
        except ConnectionAbortedError:
            self.close_connection = True
            return
        data = json.dumps(reply, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; encoding=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    do_GET = _serve
    do_POST = _serve



# -- standalone -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m smartpark.testing.wechat_api_sandbox [--port 9300] [--not-following OPENID ...]``."""
    parser = argparse.ArgumentParser(prog="python -m smartpark.testing.wechat_api_sandbox",
                                     description="微信公众号接口沙箱 / a loopback WeChat official-account API "
                                                 "(access tokens, template messages)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9300, help="port (default 9300; 0 picks a free one)")
    parser.add_argument("--appid", default=DEFAULT_APPID)
    parser.add_argument("--secret-env", default=DEFAULT_SECRET_ENV,
                        help=f"environment variable holding the test AppSecret (default {DEFAULT_SECRET_ENV}); "
                             "when it is unset a random one is generated and printed")
    parser.add_argument("--template", action="append", help="an approved template id (repeat; default: any)")
    parser.add_argument("--not-following", action="append", default=[], metavar="OPENID",
                        help="an openid that does not follow the account: 43004 (repeat)")
    args = parser.parse_args(argv)
    secret = os.environ.get(args.secret_env)
    generated = not secret
    secret = secret or secrets.token_hex(16)

    def show(msg: SandboxTemplateMessage) -> None:
        data = json.dumps(msg.data, ensure_ascii=False)
        link = f" {msg.url}" if msg.url else ""
        print(f"[微信 wechat] {time.strftime('%H:%M:%S')} {msg.masked_openid} {msg.template_id} {data}{link} "
              f"msgid={msg.msgid}", flush=True)

    try:
        sandbox = WeChatApiSandbox(appid=args.appid, secret=secret, templates=args.template, host=args.host,
                                   port=args.port, on_send=show).start()
    except OSError as e:
        print(f"微信沙箱无法启动：{e} / the WeChat sandbox could not start: {e}", file=sys.stderr)
        return 1
    for openid in args.not_following:
        sandbox.unfollow(openid)
    print("微信公众号接口沙箱已启动 / WeChat API sandbox listening on " + sandbox.base_url, flush=True)
    if generated:
        print(f"# a random TEST AppSecret was generated for this run:\nexport {args.secret_env}={secret}")
    print(f"""
[plugins.wechat_template]
appid = "{sandbox.appid}"
secret = {{ env = "{args.secret_env}" }}
base_url = "{sandbox.base_url}"

[plugins.wechat_template.templates]   # our logical name = a template_id{' the sandbox approves' if args.template else ''}
""" + "\n".join(f'# name_{i} = "{tid}"' for i, tid in enumerate(args.template or ["TPL_entry_reminder_0001"], 1))
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
