"""The owners' self-service page (业主自助): sign in with an SMS code, see the balance and history, top up, and
choose notification preferences.

Server-rendered Chinese HTML like the payment pages (``pay_pages.py``): every form works without JavaScript;
``pay.js`` only polls a top-up's state every 2 s (a 刷新 link does the same without it)::

    GET  /owner                          signed in: the owner's page; else: enter the mobile number
    POST /owner/code                     form: phone -> the same answer whether or not it is an owner's; the code form
    POST /owner/login                    form: phone, code -> 303 /owner with the session cookie
    POST /owner/logout                   form: t -> the session (and every copy of it) ends
    POST /owner/prefs                    form: t, lot_full, notify_channel -> ResidentService.set_owner_preferences
    POST /owner/topup                    form: t, amount (yuan), channel -> PaymentService.start_topup -> 303 the QR page
    GET  /owner/topup/{out_trade_no}     the QR code while paying; 充值成功 and the new balance once paid
    GET  /api/owner/topup/{out_trade_no} the state as JSON (what pay.js polls); the owner's own top-ups only

The codes, their limits and the session are :class:`smartpark.core.owner_login.OwnerLoginService`'s. The session is a
cookie (``sp_owner``: HttpOnly, SameSite=Lax, Secure behind HTTPS, 30 minutes); forms that change something also
carry a token bound to the session (``t``), so another site cannot submit them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from smartpark.core.errors import NotFound, SmartparkError, ValidationError
from smartpark.core.receipts import CHANNEL_ZH
from smartpark.core.values import Money, Phone
from smartpark.infra.receipt_render import qr_svg

from . import page_shell
from .events import to_jsonable
from .http import ApiError, _e

log = logging.getLogger(__name__)

COOKIE = "sp_owner"
POLL_MS = 2000
HISTORY = 20
MAX_TOPUP_FEN = 500_000  # ¥5,000 per top-up on the page
LEDGER_ZH = {"topup": "充值", "charge": "停车扣费", "refund": "退款", "adjust": "调整"}
CHANNEL_PREF_ZH = {"auto": "按停车场设置", "sms": "短信", "wechat": "微信"}


def mask_name(name: str) -> str:
    """``王小明`` -> ``王**``: the family name and one star per other character."""
    name = str(name)
    return name[:1] + "*" * (len(name) - 1) if len(name) > 1 else name


def add_routes(api: FastAPI, app: Any, *, call: Callable[..., Awaitable[Any]], tz: Any, asset_version: str) -> None:
    """Mount the owners' page on the service's FastAPI application."""
    class _Login:  # app.owner_login, looked up when first used (building the API stays free of side effects)
        def __getattr__(self, name: str) -> Any:
            return getattr(app.owner_login, name)

    login: Any = _Login()

    def channels() -> list[str]:
        service = getattr(app, "payments", None)
        if service is None:
            return []
        try:
            return list(service.channels())
        except Exception:  # noqa: BLE001 - no channel list means no top-up, not a broken page
            log.exception("payment channels unavailable")
            return []

    def layout(title: str, body: str, *, status: int = 200, script: bool = False,
               headers: dict[str, str] | None = None) -> HTMLResponse:
        return page_shell.page(lot_name=app.config.lot.name, title=title, heading="业主自助", body=body,
                               asset_version=asset_version, footer="如需帮助，请联系物业或值班员",
                               styles=("visitor.css", "pay.css", "owner.css"), script=script, status=status,
                               headers=headers)

    result = page_shell.result

    form_fields = page_shell.form_fields

    def session_of(request: Request) -> tuple[str, str] | None:
        token = request.cookies.get(COOKIE, "")
        owner_id = login.check_session(token) if token else None
        return (owner_id, token) if owner_id else None

    def cookie_header(request: Request, value: str, max_age: int) -> dict[str, str]:
        secure = "; Secure" if request.url.scheme == "https" else ""
        return {"Set-Cookie": f"{COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"}

    # == signing in ==========================================================================================
    def phone_form(error: str = "", phone: str = "", status: int = 200, notice: str = "") -> HTMLResponse:
        if not login.available:
            return layout("业主登录", result("error", "暂未开通", "短信验证码登录暂未开通，请联系物业。"), status=503)
        note = f'<p class="card warn" id="login-notice">{_e(notice)}</p>' if notice else ""
        body = f"""{note}
  <form class="card form" id="phone-form" method="post" action="/owner/code" novalidate>
    <h2>业主登录</h2>
    <p class="hint">请输入在物业登记的手机号，我们将发送短信验证码。登录后可查看余额、扣费记录，在线充值，设置通知方式。</p>
    <div class="field{' invalid' if error else ''}" data-field="phone">
      <label for="phone">手机号</label>
      <input id="phone" name="phone" type="tel" inputmode="numeric" autocomplete="tel" maxlength="20" required
             placeholder="如 13812345678" value="{_e(phone)}" aria-describedby="phone-msg"
             aria-invalid="{'true' if error else 'false'}">
      <p class="field-msg" id="phone-msg" aria-live="polite">{_e(error)}</p>
    </div>
    <button type="submit" class="submit" id="code-submit">获取验证码</button>
  </form>
  <p class="foot"><a href="/fee">访客缴费</a></p>"""
        return layout("业主登录", body, status=status)

    def code_form(phone: Phone, message: str, *, error: str = "", status: int = 200) -> HTMLResponse:
        body = f"""  <p class="card" id="code-sent" aria-live="polite">{_e(message)}</p>
  <form class="card form" id="code-form" method="post" action="/owner/login" novalidate>
    <h2>输入验证码</h2>
    <p class="hint">验证码已发往 {_e(phone.masked)}（如该号码已登记为业主）。</p>
    <input type="hidden" name="phone" value="{_e(str(phone))}">
    <div class="field{' invalid' if error else ''}" data-field="code">
      <label for="code">短信验证码</label>
      <input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" maxlength="6"
             pattern="[0-9]{{6}}" required placeholder="6 位数字" aria-describedby="code-msg"
             aria-invalid="{'true' if error else 'false'}">
      <p class="field-msg" id="code-msg" aria-live="polite">{_e(error)}</p>
    </div>
    <button type="submit" class="submit" id="login-submit">登录</button>
  </form>
  <form class="foot" method="post" action="/owner/code">
    <input type="hidden" name="phone" value="{_e(str(phone))}">
    <button type="submit" class="link-button" id="resend">重新获取验证码</button>
    <a href="/owner">更换手机号</a>
  </form>"""
        return layout("输入验证码", body, status=status)

    def ask_code(phone_text: str) -> HTMLResponse:
        try:
            phone = Phone.parse(phone_text)
        except ValidationError as e:
            return phone_form(e.zh, phone_text, 422)
        try:
            answer = login.request_code(phone)
        except ValidationError as e:
            return phone_form(e.zh, phone_text, 503)
        if not answer.accepted:
            return code_form(phone, answer.zh, status=429)
        return code_form(phone, answer.zh)

    def sign_in(request: Request, phone_text: str, code: str) -> Response:
        try:
            phone = Phone.parse(phone_text)
        except ValidationError as e:
            return phone_form(e.zh, phone_text, 422)
        outcome = login.verify(phone, code)
        if not outcome.ok or not outcome.owner_id:
            return code_form(phone, "请输入短信中的 6 位验证码。", error=outcome.zh, status=400)
        token = login.session_token(outcome.owner_id)
        max_age = int(login.policy.session_ttl.total_seconds())
        return RedirectResponse("/owner", status_code=303, headers=cookie_header(request, token, max_age))

    @api.post("/owner/code", include_in_schema=False)
    async def owner_code(request: Request) -> HTMLResponse:
        fields = await form_fields(request)
        phone = fields.get("phone", "").strip()
        if not phone:
            return await call(phone_form, "请输入手机号", "", 422)
        return await call(ask_code, phone)

    @api.post("/owner/login", include_in_schema=False)
    async def owner_login(request: Request) -> Response:
        fields = await form_fields(request)
        return await call(sign_in, request, fields.get("phone", "").strip(), fields.get("code", ""))

    @api.post("/owner/logout", include_in_schema=False)
    async def owner_logout(request: Request) -> Response:
        fields = await form_fields(request)
        session = await call(session_of, request)
        if session is not None and login.check_form_token(session[1], fields.get("t", "")):
            await call(login.end_session, session[0])
        return RedirectResponse("/owner", status_code=303, headers=cookie_header(request, "", 0))

    # == the owner's page ====================================================================================
    def local(at: Any) -> str:
        return at.astimezone(tz).strftime("%Y-%m-%d %H:%M") if at is not None else "—"

    def dashboard(owner_id: str, token: str, *, saved: str = "", topup_error: str = "", amount: str = "",
                  status: int = 200) -> HTMLResponse:
        owner = app.residents.get_owner(owner_id)
        view = app.balances.view(owner_id, HISTORY)
        t = _e(login.form_token(token))
        last = next((e.at for e in view.recent if e.kind in ("topup", "charge")), None)
        plates = "".join(f"<li>{_e(p.masked)}</li>" for p in owner.plates)
        rows = []
        for e in view.recent:
            sign = "plus" if e.delta.fen > 0 else "minus"
            amount_text = ("+" if e.delta.fen > 0 else "") + str(e.delta)
            note = f'<span class="note">{_e(e.note)}</span>' if e.note else ""
            rows.append(f'<tr><td>{_e(local(e.at))}</td><td>{_e(LEDGER_ZH.get(e.kind, e.kind))}{note}</td>'
                        f'<td class="amount {sign}">{_e(amount_text)}</td></tr>')
        history = (f'<table class="ledger" id="ledger"><thead><tr><th>时间</th><th>类型</th>'
                   f'<th class="amount">金额</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
                   if rows else '<p class="empty" id="ledger-empty">暂无记录</p>')
        enabled = channels()
        if enabled:
            buttons = "".join(
                f'<button type="submit" class="submit channel channel-{_e(c)}" name="channel" value="{_e(c)}" '
                f'id="topup-{_e(c)}">{_e(CHANNEL_ZH.get(c, c))}充值</button>' for c in enabled)
            err = f'<p class="field-msg" id="amount-msg" role="alert">{_e(topup_error)}</p>'
            topup = f"""  <form class="card form" id="topup-form" method="post" action="/owner/topup" novalidate>
    <h2>余额充值</h2>
    <input type="hidden" name="t" value="{t}">
    <div class="field{' invalid' if topup_error else ''}" data-field="amount">
      <label for="amount">充值金额（元）</label>
      <input id="amount" name="amount" type="text" inputmode="decimal" autocomplete="off" maxlength="10" required
             placeholder="如 100 或 50.50" value="{_e(amount)}" aria-describedby="amount-msg"
             aria-invalid="{'true' if topup_error else 'false'}">
      {err}
    </div>
    <div class="channels">{buttons}</div>
  </form>"""
        else:
            topup = '<p class="card warn" id="no-online">线上充值暂未开通，请到物业或值班室充值。</p>'
        saved_note = '<p class="saved" id="prefs-saved" role="status">通知设置已保存</p>' if saved == "prefs" else ""
        radios = "".join(
            f'<label class="check" for="channel-{c}"><input type="radio" id="channel-{c}" name="notify_channel" '
            f'value="{c}"{" checked" if owner.notify_channel == c else ""}> {_e(zh)}</label>'
            for c, zh in CHANNEL_PREF_ZH.items())
        wechat_hint = "" if owner.wechat_openid else "（尚未绑定微信，选择“微信”时仍以短信通知）"
        balance_class = "balance negative" if view.balance.is_negative else "balance"
        body = f"""  <section class="card" id="account">
    <div class="owner-head"><h2 id="owner-name">{_e(mask_name(str(owner.name)))}</h2>
      <form class="inline" method="post" action="/owner/logout"><input type="hidden" name="t" value="{t}">
        <button type="submit" class="link-button" id="logout">退出登录</button></form></div>
    <dl class="receipt-rows">
      <div class="row"><dt>手机号</dt><dd id="owner-phone">{_e(owner.phone.masked)}</dd></div>
      <div class="row"><dt>车牌</dt><dd><ul class="plates" id="owner-plates">{plates}</ul></dd></div>
      <div class="row"><dt>账户余额</dt><dd><span class="{balance_class}" id="balance">{_e(str(view.balance))}</span></dd></div>
      <div class="row"><dt>最近缴费</dt><dd id="last-payment">{_e(local(last))}</dd></div>
    </dl>
  </section>
{topup}
  <section class="card" id="history">
    <h2>最近 {HISTORY} 笔记录</h2>
    {history}
  </section>
  <form class="card form" id="prefs-form" method="post" action="/owner/prefs">
    <h2>通知设置</h2>
    {saved_note}
    <input type="hidden" name="t" value="{t}">
    <label class="check" for="lot_full"><input type="checkbox" id="lot_full" name="lot_full" value="1"
      {"" if owner.lot_full_opt_out else "checked"}> 车库已满时通知我</label>
    <fieldset class="options"><legend>首选通知方式</legend>{radios}
      <p class="hint">{_e(wechat_hint)}</p></fieldset>
    <button type="submit" class="submit" id="prefs-submit">保存设置</button>
  </form>"""
        return layout("我的账户", body, status=status)

    def need_session(request: Request) -> tuple[str, str]:
        session = session_of(request)
        if session is None:
            raise _SignedOut
        return session

    def signed_out_page() -> HTMLResponse:
        return phone_form(status=401, notice="登录已过期或未登录，请重新登录。")

    @api.get("/owner", include_in_schema=False)
    async def owner_page(request: Request, saved: str = "") -> HTMLResponse:
        session = await call(session_of, request)
        if session is None:
            return await call(phone_form)
        return await call(dashboard, session[0], session[1], saved=saved[:10])

    def save_prefs(request: Request, fields: dict[str, str]) -> Response:
        try:
            owner_id, token = need_session(request)
        except _SignedOut:
            return signed_out_page()
        if not login.check_form_token(token, fields.get("t", "")):
            return signed_out_page()
        channel = fields.get("notify_channel", "auto")
        if channel not in CHANNEL_PREF_ZH:
            channel = "auto"
        app.residents.set_owner_preferences(owner_id, actor=f"owner:{owner_id}",
                                            lot_full_opt_out=fields.get("lot_full") != "1", notify_channel=channel)
        return RedirectResponse("/owner?saved=prefs", status_code=303)

    @api.post("/owner/prefs", include_in_schema=False)
    async def owner_prefs(request: Request) -> Response:
        fields = await form_fields(request)
        return await call(save_prefs, request, fields)

    def start_topup(request: Request, fields: dict[str, str], client_ip: str | None) -> Response:
        try:
            owner_id, token = need_session(request)
        except _SignedOut:
            return signed_out_page()
        if not login.check_form_token(token, fields.get("t", "")):
            return signed_out_page()
        amount_text, channel = fields.get("amount", "").strip(), fields.get("channel", "").strip()
        try:
            amount = Money.from_yuan(amount_text.removeprefix("¥").removesuffix("元").strip())
        except ValidationError as e:
            return dashboard(owner_id, token, topup_error=e.zh, amount=amount_text, status=422)
        if amount.fen <= 0:
            return dashboard(owner_id, token, topup_error="充值金额必须大于零", amount=amount_text, status=422)
        if amount.fen > MAX_TOPUP_FEN:
            return dashboard(owner_id, token, topup_error=f"单次充值最多 {Money(MAX_TOPUP_FEN)}", amount=amount_text,
                             status=422)
        if channel not in channels():
            name = CHANNEL_ZH.get(channel, channel or "该方式")
            return dashboard(owner_id, token, topup_error=f"{name}暂不可用，请选择其他支付方式", amount=amount_text,
                             status=400)
        try:
            view = app.payments.start_topup(owner_id, amount.fen, channel, actor=f"owner:{owner_id}",
                                            payer_hint=client_ip)
        except SmartparkError as e:
            return dashboard(owner_id, token, topup_error=e.zh, amount=amount_text, status=400)
        except Exception:  # noqa: BLE001 - the provider failed: say so in Chinese, keep the details in the log
            log.exception("starting a top-up failed")
            return dashboard(owner_id, token, topup_error="支付渠道暂时无法下单，请稍后重试", amount=amount_text,
                             status=502)
        return RedirectResponse(f"/owner/topup/{quote(view.out_trade_no)}", status_code=303)

    @api.post("/owner/topup", include_in_schema=False)
    async def owner_topup(request: Request) -> Response:
        fields = await form_fields(request)
        client_ip = request.client.host if request.client else None
        return await call(start_topup, request, fields, client_ip)

    # == a top-up being paid =================================================================================
    def own_topup(owner_id: str, out_trade_no: str) -> Any:
        try:
            view = app.payments.status(out_trade_no)
        except NotFound:
            return None
        if view.purpose != "topup" or view.subject_id != owner_id:
            return None
        return view

    def topup_json(owner_id: str, view: Any) -> dict[str, Any]:
        state = str(to_jsonable(view.state, tz))
        out: dict[str, Any] = {"state": state, "paid": state == "paid", "amount_display": str(Money(view.amount_fen)),
                               "channel_display": CHANNEL_ZH.get(view.channel, view.channel), "receipt_url": "/owner"}
        if state == "paid":
            balance = app.balances.view(owner_id, 1).balance
            out["balance_display"] = str(balance)
            out["message"] = f"已充值 {out['amount_display']}，当前余额 {balance}"
        elif state == "closed":
            out["message"] = "本次充值已关闭，请重新发起"
        else:
            out["message"] = f"请使用{out['channel_display']}扫码支付 {out['amount_display']}"
        return out

    def topup_page(request: Request, out_trade_no: str) -> Response:
        session = session_of(request)
        if session is None:
            return signed_out_page()
        view = own_topup(session[0], out_trade_no)
        if view is None:
            return layout("充值", result("error", "充值记录不存在", "链接无效，请返回重新充值。",
                                         '<p class="actions"><a class="button" href="/owner">返回我的账户</a></p>'),
                          status=404)
        info = topup_json(session[0], view)
        back = '<p class="actions"><a class="button" id="receipt-link" href="/owner">返回我的账户</a></p>'
        if info["paid"]:
            body = result("ok", "支付成功", info["message"], back, element_id="pay-result")
        elif info["state"] == "closed":
            body = result("error", "充值已关闭", info["message"], back, element_id="pay-result")
        else:
            expires = view.expires_at.astimezone(tz).strftime("%H:%M") if view.expires_at else ""
            svg = qr_svg(view.code_url, scale=6, title="付款二维码")
            status_url = f"/api/owner/topup/{quote(out_trade_no)}"
            body = f"""  <section class="card pay" id="pay" data-status-url="{_e(status_url)}" data-poll-ms="{POLL_MS}">
    <h2>{_e(info['channel_display'])} · 充值 <span id="pay-amount">{_e(info['amount_display'])}</span></h2>
    <div class="qr" id="pay-qr" role="img" aria-label="付款二维码">{svg}</div>
    <p class="hint" id="pay-hint">{_e(info['message'])}；可用另一台手机扫码，或长按二维码识别。{
        f"二维码 {expires} 前有效。" if expires else ""}</p>
    <p class="pay-state" id="pay-state" aria-live="polite">等待支付…</p>
    <noscript><p><a class="button" href="">我已支付，刷新</a></p></noscript>
    <p class="foot"><a href="/owner">返回我的账户</a></p>
  </section>
  {result("ok", "支付成功", "", back, element_id="pay-result").replace('class="card result', 'hidden class="card result')}"""
        return layout("充值", body, script=not info["paid"] and info["state"] != "closed")

    @api.get("/owner/topup/{out_trade_no}", include_in_schema=False)
    async def owner_topup_page(out_trade_no: str, request: Request) -> Response:
        return await call(topup_page, request, out_trade_no)

    def topup_status(request: Request, out_trade_no: str) -> dict[str, Any]:
        session = session_of(request)
        if session is None:
            raise ApiError(401, "登录已过期，请重新登录", "no valid owner session")
        view = own_topup(session[0], out_trade_no)
        if view is None:
            raise ApiError(404, "充值记录不存在", "no such top-up for this owner")
        return topup_json(session[0], view)

    @api.get("/api/owner/topup/{out_trade_no}")
    async def owner_topup_status(out_trade_no: str, request: Request) -> JSONResponse:
        return JSONResponse(await call(topup_status, request, out_trade_no), headers={"Cache-Control": "no-store"})


class _SignedOut(Exception):
    """No valid owner session."""
