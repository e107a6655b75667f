"""Receipts, receipt verification and paying on the visitor page; receipts, payments and refunds on the booth API.

Visitor side (server-rendered Chinese HTML; ``pay.js`` only adds checking the plate as it is typed and polling the
payment's state every 2 s; without JavaScript a 刷新 link does the same)::

    GET  /fee                               缴费 / 场内预付: enter the plate
    POST /fee                               the fee so far (form: plate) and the enabled channels
    POST /fee/start                         start paying (form: plate, channel) -> 303 /fee/{out_trade_no}?t=...
    GET  /fee/{out_trade_no}?t=...          the QR code while paying; 支付成功 + the receipt link once paid
    GET  /api/fee/{out_trade_no}?t=...      the state as JSON (what pay.js polls)
    GET  /receipt/{receipt_no}?code=...     the receipt (HTML) with PNG / PDF downloads
    GET  /receipt/{receipt_no}.png|.pdf?code=...
    GET  /verify[?receipt_no=...&code=...]  check a receipt: 有效 / 无效

The receipt code is required everywhere a receipt is shown, so receipt numbers cannot be enumerated; a payment's
page needs a ticket (``t``) bound to its out_trade_no for the same reason.

Booth side (``Authorization: Bearer <token>``)::

    GET  /api/booth/orders/{order_id}/receipt           receipt JSON + links
    POST /api/booth/orders/{order_id}/pay               {"channel"} -> the payment, with code_url and an SVG QR
    GET  /api/booth/payments/{out_trade_no}             the payment's state
    POST /api/booth/payments/{out_trade_no}/refund      {"amount_fen", "reason"} -> the refund
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict

from smartpark.core.errors import NotFound, SmartparkError, ValidationError
from smartpark.core.receipts import CHANNEL_ZH
from smartpark.core.values import Money, Plate
from smartpark.infra.receipt_render import qr_svg, render_pdf, render_png

from . import page_shell
from .events import to_jsonable
from .http import VISITOR_ACTOR, Actor, ApiError, _e, _parse

log = logging.getLogger(__name__)

POLL_MS = 2000
_FILE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class PayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str


class RefundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount_fen: int
    reason: str = ""


def payment_json(v: Any, tz: Any) -> dict[str, Any]:
    """A PaymentView as JSON (times in the lot's zone, money in fen and as text)."""
    out: dict[str, Any] = {}
    for name in ("out_trade_no", "channel", "purpose", "subject_id", "amount_fen", "state", "code_url",
                 "expires_at", "paid_at", "transaction_id", "order_id", "refunded_fen"):
        out[name] = to_jsonable(getattr(v, name, None), tz)
    out["amount_display"] = str(Money(int(out["amount_fen"] or 0)))
    out["refunded_display"] = str(Money(int(out["refunded_fen"] or 0)))
    out["channel_display"] = CHANNEL_ZH.get(out["channel"], out["channel"])
    return out


def refund_json(r: Any, tz: Any) -> dict[str, Any]:
    return {name: to_jsonable(getattr(r, name, None), tz)
            for name in ("out_refund_no", "out_trade_no", "channel", "amount_fen", "reason", "actor", "created_at",
                         "state", "finished_at", "detail")} | {"amount_display": str(Money(int(r.amount_fen)))}


def add_routes(api: FastAPI, app: Any, *, call: Callable[..., Awaitable[Any]], tz: Any, asset_version: str) -> None:
    """Mount the receipt, verification and payment routes on the service's FastAPI application."""

    def payments() -> Any:
        service = getattr(app, "payments", None)
        if service is None:
            raise ValidationError("线上支付暂未开通，请出场时向值班员缴费", "online payment is not configured",
                                  field="channel")
        return service

    def channels() -> list[str]:
        service = getattr(app, "payments", None)
        if service is None:
            return []
        try:
            return list(service.channels())
        except Exception:  # noqa: BLE001 - no channel list means no online payment, not a broken page
            log.exception("payment channels unavailable")
            return []

    def grace_minutes() -> int:
        return int(getattr(app.tariffs.visitor, "grace_minutes", 0) or 0)

    def layout(title: str, body: str, *, status: int = 200, script: bool = False, heading: str = "") -> HTMLResponse:
        return page_shell.page(lot_name=app.config.lot.name, title=title, heading=heading or title, body=body,
                               asset_version=asset_version, footer="如需帮助，请按车道对讲或联系值班员",
                               script=script, status=status)

    result = page_shell.result

    def rows_html(receipt: Any) -> str:
        cells = "".join(f'<div class="row" data-label="{_e(label)}"><dt>{_e(label)}</dt><dd>{_e(value)}</dd></div>'
                        for label, value in receipt.lines())
        return f'<dl class="receipt-rows" id="receipt-rows">{cells}</dl>'

    def receipt_links(receipt: Any) -> dict[str, str]:
        no, code = quote(receipt.receipt_no), quote(receipt.code)
        return {"html": f"/receipt/{no}?code={code}", "png": f"/receipt/{no}.png?code={code}",
                "pdf": f"/receipt/{no}.pdf?code={code}", "verify": receipt.verify_url}

    # == receipts ==========================================================================================
    def receipt_page(receipt_no: str, code: str) -> Response:
        if not code:
            return layout("电子凭证", result("error", "链接不完整", "缺少验证码，请使用收据上的二维码或完整链接打开。"),
                          status=400, heading="停车缴费电子凭证")
        receipt = app.receipts.verify(receipt_no, code)
        if receipt is None:
            return layout("凭证无效", result("error", "凭证无效", "凭证号或验证码不正确，或凭证已被篡改。"),
                          status=404, heading="停车缴费电子凭证")
        links = receipt_links(receipt)
        refunded = (f'<p class="receipt-note">该笔费用已退款 {_e(receipt.refunded)}</p>'
                    if receipt.refunded_fen else "")
        body = f"""  <section class="card receipt" id="receipt" data-receipt-no="{_e(receipt.receipt_no)}">
    <p class="receipt-badge" id="receipt-valid">✓ 本凭证真实有效</p>
    {rows_html(receipt)}{refunded}
    <div class="actions">
      <a class="button" id="download-png" href="{_e(links['png'])}" download="停车凭证-{_e(receipt.receipt_no)}.png">保存图片</a>
      <a class="button secondary" id="download-pdf" href="{_e(links['pdf'])}">下载 PDF</a>
    </div>
    <p class="hint">凭证号与验证码可在“<a href="/verify">验证凭证</a>”页面核验真伪。</p>
  </section>"""
        return layout("电子凭证", body, heading="停车缴费电子凭证")

    @api.get("/receipt/{name}", include_in_schema=False)
    async def receipt(name: str, code: str = "") -> Response:
        stem, dot, kind = name.rpartition(".")
        if not dot:
            stem, kind = name, "html"
        if kind not in ("html", "png", "pdf"):
            raise ApiError(404, "没有这个地址", "not found")
        if kind == "html":
            return await call(receipt_page, stem, code)
        if not code:
            raise ApiError(400, "缺少验证码", "the receipt code is required", field="code")
        found = await call(app.receipts.verify, stem, code)
        if found is None:
            raise ApiError(404, "凭证无效：凭证号或验证码不正确", "no receipt with this number and code")
        if kind == "png":
            data = await call(render_png, found)
            return Response(data, media_type="image/png", headers=_FILE_HEADERS)
        data = await call(render_pdf, found)
        headers = dict(_FILE_HEADERS, **{"Content-Disposition": f'inline; filename="receipt-{found.receipt_no}.pdf"'})
        return Response(data, media_type="application/pdf", headers=headers)

    def verify_page(receipt_no: str, code: str) -> HTMLResponse:
        outcome = ""
        if receipt_no or code:
            found = app.receipts.verify(receipt_no.strip(), code) if receipt_no.strip() and code.strip() else None
            if found is not None:
                outcome = result("ok", "凭证有效", f"这是 {app.config.lot.name} 开具的真实凭证，内容如下。",
                                 rows_html(found), element_id="verify-result")
            else:
                outcome = result("error", "凭证无效", "凭证号或验证码不正确，或凭证内容已被篡改。",
                                 element_id="verify-result")
        body = f"""{outcome}
  <form class="card form" id="verify-form" method="get" action="/verify" novalidate>
    <h2>核验停车缴费凭证</h2>
    <p class="hint">请输入收据上的凭证号和验证码（验证码不区分大小写，可省略横线）。</p>
    <div class="field"><label for="receipt_no">凭证号</label>
      <input id="receipt_no" name="receipt_no" type="text" autocomplete="off" spellcheck="false" maxlength="64"
             value="{_e(receipt_no)}" required></div>
    <div class="field"><label for="code">验证码</label>
      <input id="code" name="code" type="text" autocomplete="off" autocapitalize="characters" spellcheck="false"
             maxlength="20" placeholder="如 ABCD-EFGH-JKLM" value="{_e(code)}" required></div>
    <button type="submit" class="submit" id="verify-submit">验证</button>
  </form>"""
        return layout("验证凭证", body)

    @api.get("/verify", include_in_schema=False)
    async def verify(receipt_no: str = "", code: str = "") -> HTMLResponse:
        return await call(verify_page, receipt_no[:200], code[:100])

    # == paying on the visitor page ==========================================================================
    def plate_form(error: str = "", plate: str = "", status: int = 200) -> HTMLResponse:
        enabled = channels()
        notice = "" if enabled else ('<p class="card warn" id="no-online">线上缴费暂未开通，'
                                     '请出场时在出口扫码或向值班员缴费。</p>')
        msg = _e(error)
        body = f"""{notice}
  <form class="card form" id="fee-form" method="post" action="/fee" novalidate>
    <h2>查询停车费</h2>
    <p class="hint">在场内即可提前缴费，缴费后请在规定时间内离场，出口自动抬杆。</p>
    <div class="field{' invalid' if error else ''}" data-field="plate">
      <label for="plate">车牌号</label>
      <input id="plate" name="plate" type="text" autocapitalize="characters" autocomplete="off" spellcheck="false"
             maxlength="12" required placeholder="如 粤B12345" value="{_e(plate)}" aria-describedby="plate-msg"
             aria-invalid="{'true' if error else 'false'}">
      <p class="field-msg" id="plate-msg" aria-live="polite">{msg}</p>
    </div>
    <button type="submit" class="submit" id="fee-submit">查询费用</button>
  </form>
  <p class="foot"><a href="/verify">验证电子凭证</a></p>"""
        return layout("缴费", body, status=status, script=True, heading="缴费 / 场内预付")

    def quote_page(plate_text: str, error: str = "", status: int = 200) -> HTMLResponse:
        try:
            plate = Plate.parse(plate_text)
        except ValidationError as e:
            return plate_form(e.zh, plate_text, 422)
        try:
            stay = app.parking.quote(plate)
        except NotFound:
            return plate_form(f"没有找到 {plate.masked} 的在场记录，请核对车牌", str(plate), 404)
        due = max(0, stay.fee_fen - stay.paid_fen)
        s = stay.session
        facts = [("车牌", plate.masked), ("入场时间", s.entered_at.astimezone(tz).strftime("%Y-%m-%d %H:%M")),
                 ("已停", _duration(stay.minutes)), ("停车费", str(Money(stay.fee_fen)))]
        if stay.paid_fen:
            facts.append(("已缴", str(Money(stay.paid_fen))))
        facts.append(("应缴", str(Money(due))))
        rows = "".join(f'<div class="row"><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>' for k, v in facts)
        err = f'<p class="form-msg" id="fee-error" role="alert">{_e(error)}</p>' if error else ""
        if due <= 0:
            action = result("ok", "无需缴费", "当前无需缴费，请在免费时段内离场。" if stay.fee_fen == 0
                            else "停车费已付清，请尽快离场。", element_id="fee-result")
        else:
            enabled = channels()
            buttons = "".join(
                f'<button type="submit" class="submit channel channel-{_e(c)}" name="channel" value="{_e(c)}" '
                f'id="pay-{_e(c)}">{_e(CHANNEL_ZH.get(c, c))}</button>' for c in enabled)
            action = (f"""<form class="card form" id="channel-form" method="post" action="/fee/start">
    <h2>选择支付方式</h2>
    <input type="hidden" name="plate" value="{_e(str(plate))}">
    {err}<div class="channels">{buttons}</div>
  </form>""" if enabled else '<p class="card warn" id="no-online">线上缴费暂未开通，请出场时向值班员缴费。</p>')
        body = f"""  <section class="card" id="quote"><h2>停车费用</h2><dl class="receipt-rows">{rows}</dl>
    <p class="hint">费用计算到此刻{f"；缴费后请在 {grace_minutes()} 分钟内离场" if grace_minutes() else ""}。</p></section>
  {action}
  <p class="foot"><a href="/fee">重新查询</a></p>"""
        return layout("缴费", body, status=status, heading="缴费 / 场内预付")

    form_fields = page_shell.form_fields

    @api.get("/fee", include_in_schema=False)
    async def fee_form() -> HTMLResponse:
        return await call(plate_form)

    @api.post("/fee", include_in_schema=False)
    async def fee_quote(request: Request) -> HTMLResponse:
        fields = await form_fields(request)
        plate = fields.get("plate", "").strip()
        if not plate:
            return await call(plate_form, "请输入车牌号", "", 422)
        return await call(quote_page, plate)

    def start(plate_text: str, channel: str, client_ip: str | None = None) -> Response:
        try:
            plate = Plate.parse(plate_text)
        except ValidationError as e:
            return plate_form(e.zh, plate_text, 422)
        if channel not in channels():
            name = CHANNEL_ZH.get(channel, channel or "该方式")
            return quote_page(str(plate), f"{name}暂不可用，请选择其他支付方式", 400)
        try:
            # the payer's address: WeChat H5 (a phone browser) requires it; QR channels ignore it
            view = payments().prepay(plate, channel, actor=VISITOR_ACTOR, payer_hint=client_ip)
        except NotFound:
            return plate_form(f"没有找到 {plate.masked} 的在场记录，请核对车牌", str(plate), 404)
        except SmartparkError as e:
            return quote_page(str(plate), e.zh, 400 if not isinstance(e, NotFound) else 404)
        except Exception:  # noqa: BLE001 - the provider failed: say so in Chinese, keep the details in the log
            log.exception("starting a payment failed")
            return quote_page(str(plate), "支付渠道暂时无法下单，请稍后重试或向值班员缴费", 502)
        ticket = app.receipts.ticket(view.out_trade_no)
        return RedirectResponse(f"/fee/{quote(view.out_trade_no)}?t={ticket}", status_code=303)

    @api.post("/fee/start", include_in_schema=False)
    async def fee_start(request: Request) -> Response:
        fields = await form_fields(request)
        client_ip = request.client.host if request.client else None  # uvicorn applies trusted proxy headers
        return await call(start, fields.get("plate", "").strip(), fields.get("channel", "").strip(), client_ip)

    def status_of(out_trade_no: str, ticket: str) -> Any:
        if not app.receipts.check_ticket(out_trade_no, ticket):
            raise ApiError(404, "支付记录不存在或链接无效", "no such payment (bad ticket)")
        return payments().status(out_trade_no)

    def status_json(view: Any) -> dict[str, Any]:
        state = str(to_jsonable(view.state, tz))
        out: dict[str, Any] = {"state": state, "paid": state == "paid", "amount_display": str(Money(view.amount_fen)),
                               "channel_display": CHANNEL_ZH.get(view.channel, view.channel)}
        if state == "paid":
            minutes = grace_minutes()
            out["message"] = f"支付成功，请在 {minutes} 分钟内离场" if minutes else "支付成功，请尽快离场"
            if view.order_id:
                try:
                    out["receipt_url"] = receipt_links(app.receipts.for_order(view.order_id))["html"]
                except SmartparkError:
                    out["receipt_url"] = None
        elif state == "closed":
            out["message"] = "本次支付已关闭，请重新发起缴费"
        else:
            out["message"] = f"请使用{out['channel_display']}扫码支付 {out['amount_display']}"
        return out

    def payment_page(out_trade_no: str, ticket: str) -> HTMLResponse:
        try:
            view = status_of(out_trade_no, ticket)
        except (ApiError, SmartparkError):
            return layout("缴费", result("error", "支付记录不存在", "链接无效或已过期，请重新查询停车费。"), status=404,
                          heading="缴费 / 场内预付")
        info = status_json(view)
        status_url = f"/api/fee/{quote(out_trade_no)}?t={quote(ticket)}"
        if info["paid"]:
            link = (f'<p class="actions"><a class="button" id="receipt-link" href="{_e(info["receipt_url"])}">'
                    f"查看电子凭证</a></p>") if info.get("receipt_url") else ""
            body = result("ok", "支付成功", info["message"], link, element_id="pay-result")
        elif info["state"] == "closed":
            body = result("error", "支付已关闭", info["message"],
                          '<p class="actions"><a class="button" href="/fee">重新缴费</a></p>', element_id="pay-result")
        else:
            expires = view.expires_at.astimezone(tz).strftime("%H:%M") if view.expires_at else ""
            svg = qr_svg(view.code_url, scale=6, title="付款二维码")
            body = f"""  <section class="card pay" id="pay" data-status-url="{_e(status_url)}" data-poll-ms="{POLL_MS}">
    <h2>{_e(info['channel_display'])} · 应付 <span id="pay-amount">{_e(info['amount_display'])}</span></h2>
    <div class="qr" id="pay-qr" role="img" aria-label="付款二维码">{svg}</div>
    <p class="hint" id="pay-hint">{_e(info['message'])}；可用另一台手机扫码，或长按二维码识别。{
        f"二维码 {expires} 前有效。" if expires else ""}</p>
    <p class="pay-state" id="pay-state" aria-live="polite">等待支付…</p>
    <noscript><p><a class="button" href="">我已支付，刷新</a></p></noscript>
  </section>
  {result("ok", "支付成功", "", '<p class="actions"><a class="button" id="receipt-link" href="#">查看电子凭证</a></p>',
          element_id="pay-result").replace('class="card result', 'hidden class="card result')}"""
        return layout("缴费", body, script=True, heading="缴费 / 场内预付")

    @api.get("/fee/{out_trade_no}", include_in_schema=False)
    async def fee_payment(out_trade_no: str, t: str = "") -> HTMLResponse:
        return await call(payment_page, out_trade_no, t)

    @api.get("/api/fee/{out_trade_no}")
    async def fee_status(out_trade_no: str, t: str = "") -> JSONResponse:
        view = await call(status_of, out_trade_no, t)
        return JSONResponse(await call(status_json, view), headers={"Cache-Control": "no-store"})

    # == the booth API =======================================================================================
    p = "/api/booth"

    @api.get(p + "/orders/{order_id}/receipt")
    async def booth_receipt(order_id: str, actor: Actor) -> JSONResponse:
        r = await call(app.receipts.for_order, order_id)
        return JSONResponse({"receipt": r.to_dict(), "lines": [[k, v] for k, v in r.lines()],
                             "links": receipt_links(r)})

    @api.post(p + "/orders/{order_id}/pay")
    async def booth_pay(order_id: str, request: Request, actor: Actor) -> JSONResponse:
        body: PayBody = await _parse(request, PayBody)
        if body.channel not in channels():
            raise ApiError(422, f"支付方式 {CHANNEL_ZH.get(body.channel, body.channel)} 未开通",
                           f"channel {body.channel!r} is not enabled", errors={"channel": "该支付方式未开通"},
                           channels=channels())
        view = await call(lambda: payments().pay_order(order_id, body.channel, actor=actor))
        out = payment_json(view, tz)
        out["qr_svg"] = qr_svg(view.code_url) if view.code_url else None
        return JSONResponse({"payment": out})

    @api.get(p + "/payments/{out_trade_no}")
    async def booth_payment(out_trade_no: str, actor: Actor) -> JSONResponse:
        view = await call(lambda: payments().status(out_trade_no))
        return JSONResponse({"payment": payment_json(view, tz)})

    @api.post(p + "/payments/{out_trade_no}/refund")
    async def booth_refund(out_trade_no: str, request: Request, actor: Actor) -> JSONResponse:
        body: RefundBody = await _parse(request, RefundBody)
        if not body.reason.strip():
            raise ApiError(422, "退款必须填写原因", "a reason is required", errors={"reason": "请填写退款原因"})
        refund = await call(lambda: payments().refund(out_trade_no, body.amount_fen, reason=body.reason.strip(),
                                                      actor=actor))
        return JSONResponse({"refund": refund_json(refund, tz)})


def _duration(minutes: int) -> str:
    h, m = divmod(max(0, minutes), 60)
    return f"{h} 小时 {m:02d} 分" if h else f"{m} 分钟"
