"""Owners sign in to their self-service page (业主自助) with a one-time SMS code, and get a signed session.

:meth:`OwnerLoginService.request_code` takes a mobile number. Whether or not it belongs to an owner, the answer is
the same ("if this number is an owner's, a code was sent") and the same state is written, so the page cannot be
used to find out who lives here: a 6-digit code is drawn and only its keyed hash is kept; a message (kind
``login_code``, urgent, by SMS) is queued in the outbox only when the number is an owner's (the code is in its
``params`` for the SMS template; its ``text``, which attendants can read, shows ``******``). The resend limits
(one code per ``resend_interval``, ``max_per_hour`` per hour) apply to every number alike.

:meth:`OwnerLoginService.verify` checks a code: right and not expired -> the owner's id (the oldest owner with
that number); wrong -> ``tries_left`` (after ``max_tries`` wrong tries the code is void: ask for a new one).
Expired codes and numbers nobody asked a code for are simply wrong.

State lives in the store's lot state (``uow.lot``), one JSON record per number under ``owner-login:<blind>``
where ``<blind>`` is an HMAC of the number (the number itself is never stored there); no table is added.

Sessions are stateless: ``<owner id>.<expiry>.<generation>.<HMAC>`` (:meth:`session_token`), checked by
:meth:`check_session`; :meth:`end_session` bumps the owner's generation (``owner-session:<owner id>``), which
voids every cookie issued before -- signing out works even for a copied cookie.

Clock-driven; the key comes from the composition root (derived from the data key ring). Standard library and
attrs only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

import attrs

from .entities import new_id
from .errors import ValidationError
from .notify import NotifyPolicy, render
from .outbox import OutboxMessage
from .values import Phone

__all__ = ["CodeRequest", "LoginPolicy", "LoginResult", "OwnerLoginService"]

log = logging.getLogger(__name__)

KIND = "login_code"
STATE_PREFIX = "owner-login:"
SESSION_PREFIX = "owner-session:"


@attrs.frozen(kw_only=True)
class LoginPolicy:
    code_ttl: timedelta = timedelta(minutes=5)
    max_tries: int = 5
    resend_interval: timedelta = timedelta(seconds=60)
    max_per_hour: int = 5
    session_ttl: timedelta = timedelta(minutes=30)


@attrs.frozen(kw_only=True)
class CodeRequest:
    """What the page says after a code was asked for (identical for owners' and other numbers)."""

    accepted: bool  # False: a resend limit; wait ``retry_after`` seconds
    retry_after: int = 0  # seconds until the next code may be asked for
    zh: str = ""


@attrs.frozen(kw_only=True)
class LoginResult:
    ok: bool
    owner_id: str | None = None
    tries_left: int = 0
    zh: str = ""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class OwnerLoginService:
    """One-time SMS codes and signed sessions for the owners' page (see the module docstring)."""

    def __init__(self, store: Any, clock: Any, key: bytes, notify_policy: NotifyPolicy | None = None, *,
                 policy: LoginPolicy | None = None) -> None:
        if len(key) < 16:
            raise ValueError("the login key must have at least 16 bytes")
        self._store, self._clock = store, clock
        self._code_key = hmac.new(key, b"codes", hashlib.sha256).digest()
        self._session_key = hmac.new(key, b"sessions", hashlib.sha256).digest()
        self.notify = notify_policy or NotifyPolicy()
        self.policy = policy or LoginPolicy()

    # == codes =============================================================================================
    @property
    def available(self) -> bool:
        """False when no SMS notifier is enabled: codes could never arrive."""
        channels = self.notify.channels
        return channels is None or "sms" in channels

    def blind(self, phone: Phone) -> str:
        return hmac.new(self._code_key, b"phone:" + str(phone).encode(), hashlib.sha256).hexdigest()[:32]

    def _hash(self, blind: str, code: str, issued: str) -> str:
        return hmac.new(self._code_key, f"{blind}|{code}|{issued}".encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _load(uow: Any, name: str) -> dict[str, Any]:
        raw = uow.lot.get(name)
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def request_code(self, phone: str | Phone) -> CodeRequest:
        """Draw a code for ``phone`` and queue it by SMS if the number is an owner's (same answer either way)."""
        number = phone if isinstance(phone, Phone) else Phone.parse(phone)
        if not self.available:
            raise ValidationError("短信验证码登录暂未开通，请联系物业", "no SMS notifier is enabled", field="phone")
        now = self._clock.now()
        p = self.policy
        blind = self.blind(number)
        name = STATE_PREFIX + blind
        with self._store.unit_of_work() as uow:
            state = self._load(uow, name)
            sent = [datetime.fromisoformat(t) for t in state.get("sent", [])]
            sent = [t for t in sent if now - t < timedelta(hours=1)]
            wait = 0
            if sent and now - sent[-1] < p.resend_interval:
                wait = (p.resend_interval - (now - sent[-1])).total_seconds()
            if len(sent) >= p.max_per_hour:
                wait = max(wait, (sent[-p.max_per_hour] + timedelta(hours=1) - now).total_seconds())
            if wait > 0:
                seconds = max(1, int(wait + 0.999))
                return CodeRequest(accepted=False, retry_after=seconds, zh=_wait_zh(seconds))
            code = f"{secrets.randbelow(10 ** 6):06d}"
            issued = now.isoformat()
            sent.append(now)
            uow.lot.set(name, json.dumps({"hash": self._hash(blind, code, issued), "issued": issued,
                                          "expires": (now + p.code_ttl).isoformat(), "tries": 0,
                                          "sent": [t.isoformat() for t in sent]}, separators=(",", ":")))
            owners = uow.owners.by_phone(number)
            if owners:
                owner = _oldest(owners)
                minutes = str(int(p.code_ttl.total_seconds() // 60))
                # the text is what attendants see in the outbox (booth 通知 screen, CLI): the code is masked there;
                # the notifiers send the template with ``params``, which carry it
                ctx = {"lot": self.notify.lot_name, "code": "******", "minutes": minutes}
                text = render(self.notify.template(KIND), ctx)
                uow.outbox.add(OutboxMessage.create(
                    dedupe_key=f"login:{blind}:{new_id()}", kind=KIND, recipient_kind="owner", recipient_id=owner.id,
                    channel="sms", address=str(number), params={"code": code, "minutes": minutes}, text=text,
                    at=now, urgent=True))
        return CodeRequest(accepted=True, retry_after=int(p.resend_interval.total_seconds()),
                           zh=f"如该手机号已登记为业主，验证码已通过短信发送，{int(p.code_ttl.total_seconds() // 60)} 分钟内有效。")

    def verify(self, phone: str | Phone, code: str) -> LoginResult:
        """Check ``code`` for ``phone``; the owner's id when right (the code is then used up)."""
        try:
            number = phone if isinstance(phone, Phone) else Phone.parse(phone)
        except ValidationError as e:
            return LoginResult(ok=False, zh=e.zh)
        code = "".join(ch for ch in (code or "") if not ch.isspace())
        now = self._clock.now()
        blind = self.blind(number)
        name = STATE_PREFIX + blind
        with self._store.unit_of_work() as uow:
            state = self._load(uow, name)
            if not state.get("hash"):
                return LoginResult(ok=False, zh="验证码不正确或已失效，请重新获取")
            tries = int(state.get("tries", 0))
            if tries >= self.policy.max_tries:
                return LoginResult(ok=False, zh="错误次数过多，验证码已失效，请重新获取")
            if now >= datetime.fromisoformat(state["expires"]):
                return LoginResult(ok=False, zh="验证码已过期，请重新获取")
            right = len(code) == 6 and code.isdigit() and hmac.compare_digest(
                self._hash(blind, code, state["issued"]), state["hash"])
            owners = uow.owners.by_phone(number) if right else []
            if not owners:
                tries += 1
                state["tries"] = tries
                uow.lot.set(name, json.dumps(state, separators=(",", ":")))
                left = max(0, self.policy.max_tries - tries)
                zh = (f"验证码不正确，还可尝试 {left} 次" if left else "错误次数过多，验证码已失效，请重新获取")
                return LoginResult(ok=False, tries_left=left, zh=zh)
            state.pop("hash", None)  # used up
            state["tries"] = 0
            uow.lot.set(name, json.dumps(state, separators=(",", ":")))
            owner = _oldest(owners)
        return LoginResult(ok=True, owner_id=owner.id, tries_left=self.policy.max_tries, zh="登录成功")

    # == sessions ==========================================================================================
    def _generation(self, uow: Any, owner_id: str) -> int:
        try:
            return int(uow.lot.get(SESSION_PREFIX + owner_id) or 0)
        except ValueError:
            return 0

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._session_key, body.encode(), hashlib.sha256).digest())

    def session_token(self, owner_id: str) -> str:
        """A signed session for ``owner_id``, valid for ``session_ttl``."""
        if not owner_id or "." in owner_id:
            raise ValueError("an owner id without dots is required")
        expires = int((self._clock.now() + self.policy.session_ttl).timestamp())
        with self._store.unit_of_work() as uow:
            generation = self._generation(uow, owner_id)
        body = f"{owner_id}.{expires}.{generation}"
        return f"{body}.{self._sign(body)}"

    def check_session(self, token: str | None) -> str | None:
        """The owner id of a valid, unexpired, not signed-out session; None otherwise."""
        parts = (token or "").split(".")
        if len(parts) != 4 or len(token or "") > 200:
            return None
        owner_id, expires, generation, signature = parts
        if not hmac.compare_digest(self._sign(f"{owner_id}.{expires}.{generation}"), signature):
            return None
        if not (expires.isdigit() and generation.isdigit()):
            return None
        if int(expires) <= self._clock.now().timestamp():
            return None
        with self._store.unit_of_work() as uow:
            if self._generation(uow, owner_id) != int(generation) or uow.owners.get(owner_id) is None:
                return None
        return owner_id

    def end_session(self, owner_id: str) -> None:
        """Sign out: every session issued to ``owner_id`` so far stops working."""
        with self._store.unit_of_work() as uow:
            uow.lot.set(SESSION_PREFIX + owner_id, str(self._generation(uow, owner_id) + 1))

    def form_token(self, session: str) -> str:
        """A token for the page's forms, bound to the session (a cross-site form cannot know it)."""
        return self._sign("form:" + session)[:32]

    def check_form_token(self, session: str, token: str) -> bool:
        return bool(token) and hmac.compare_digest(self.form_token(session), token)


def _oldest(owners: list[Any]) -> Any:
    return min(owners, key=lambda o: (o.created_at, o.id))


def _wait_zh(seconds: int) -> str:
    if seconds < 120:
        return f"获取验证码过于频繁，请 {seconds} 秒后再试"
    return f"获取验证码过于频繁，请 {(seconds + 59) // 60} 分钟后再试"
