"""Receipt pictures and PDFs: the PNG decodes at the right size with ink on it (real CJK font), the PDF is a PDF
whose text carries the amount and the verification code, and both carry a QR code of the verify link."""

import base64
import io
import re
import unittest
import zlib
from datetime import UTC, datetime
from unittest import mock

from PIL import Image

from smartpark.core.receipts import Receipt
from smartpark.infra import receipt_render
from smartpark.infra.receipt_render import FontMissing, cjk_font, qr_svg, render_pdf, render_png


def sample(**kw):
    fields = dict(receipt_no="9a9de02df1bb421093f47ce3c8b35dec", order_id="9a9de02df1bb421093f47ce3c8b35dec",
                  lot_name="阳光花园停车场", plate="沪B***88", entered_at=datetime(2024, 5, 1, 0, 30, tzinfo=UTC),
                  exited_at=datetime(2024, 5, 1, 2, 36, tzinfo=UTC), minutes=126, amount_fen=1250,
                  channel="wechat", transaction_id="4200001234567890", paid_at=datetime(2024, 5, 1, 2, 35, tzinfo=UTC),
                  refunded_fen=0, code="YW6S-XOI5-G2DB",
                  verify_url="http://127.0.0.1:8080/receipt/9a9de02df1bb421093f47ce3c8b35dec?code=YW6S-XOI5-G2DB")
    fields.update(kw)
    return Receipt(**fields)


def pdf_text(data: bytes) -> str:
    """The decoded content streams of a reportlab PDF (ASCII85 + Flate), as Latin-1 text."""
    out = []
    for m in re.finditer(rb"/Filter \[ /ASCII85Decode /FlateDecode \].*?stream\r?\n(.*?)endstream", data, re.S):
        raw = m.group(1).strip().removesuffix(b"~>").replace(b"\n", b"")
        out.append(zlib.decompress(base64.a85decode(raw)).decode("latin-1"))
    return "\n".join(out)


class PngTests(unittest.TestCase):
    def test_png_decodes_with_the_right_size_and_ink(self):
        data = render_png(sample())
        self.assertTrue(data.startswith(b"\x89PNG\r\n\x1a\n"))
        img = Image.open(io.BytesIO(data))
        img.load()
        self.assertEqual(img.format, "PNG")
        self.assertEqual(img.width, receipt_render.PNG_WIDTH)
        self.assertGreater(img.height, 700)
        grey = img.convert("L")
        dark = sum(grey.histogram()[:100])
        self.assertGreater(dark, 0.03 * img.width * img.height, "text and QR code are drawn, not a blank page")
        # the lower part holds the QR code: a square block with many dark modules
        qr_zone = grey.crop((img.width // 3, img.height - 300, 2 * img.width // 3, img.height - 60))
        self.assertGreater(sum(qr_zone.histogram()[:100]), 0.2 * qr_zone.width * qr_zone.height)

    def test_more_rows_make_a_taller_picture(self):
        plain = Image.open(io.BytesIO(render_png(sample())))
        refunded = Image.open(io.BytesIO(render_png(sample(refunded_fen=500))))
        self.assertGreater(refunded.height, plain.height)

    def test_font_comes_from_fontconfig_or_known_paths(self):
        path, index = cjk_font()
        self.assertRegex(path.lower(), r"(noto|cjk|wqy|pingfang|msyh)")
        self.assertGreaterEqual(index, 0)

    def test_no_cjk_font_is_a_clear_error(self):
        cjk_font.cache_clear()
        try:
            with mock.patch.object(receipt_render.shutil, "which", return_value=None), \
                    mock.patch.object(receipt_render, "_KNOWN_FONTS", ()), \
                    mock.patch.dict(receipt_render.os.environ, {receipt_render.FONT_ENV: ""}):
                with self.assertRaises(FontMissing) as ctx:
                    render_png(sample())
            self.assertIn("fonts-noto-cjk", ctx.exception.zh)
            self.assertIn("fonts-noto-cjk", ctx.exception.en)
        finally:
            cjk_font.cache_clear()


class PdfTests(unittest.TestCase):
    def test_pdf_carries_amount_code_and_qr(self):
        data = render_pdf(sample())
        self.assertTrue(data.startswith(b"%PDF-"))
        self.assertTrue(data.rstrip().endswith(b"%%EOF"))
        self.assertIn(b"/BaseFont /STSong-Light", data, "CJK text uses the built-in CID font")
        self.assertNotIn(b"/FontFile", data, "no font file is embedded")
        text = pdf_text(data)
        self.assertIn("12.50", text)
        self.assertIn("(YW6S-XOI5-G2DB) Tj", text)
        self.assertIn("(4200001234567890) Tj", text)
        self.assertGreater(text.count(" re"), 200, "the QR code is drawn as filled squares")

    def test_refund_row_appears(self):
        text = pdf_text(render_pdf(sample(refunded_fen=500)))
        self.assertIn("5.00", text)


class SvgTests(unittest.TestCase):
    def test_inline_svg(self):
        svg = qr_svg("http://x/receipt/1?code=A")
        self.assertTrue(svg.startswith("<svg"))
        self.assertIn("</svg>", svg)


if __name__ == "__main__":
    unittest.main()


# == the service's receipt routes over real HTTP ===============================================================
class ReceiptRoutesTest(unittest.TestCase):
    """uvicorn on a free port, SQLite in a temporary folder, a FakeClock; a visitor's stay paid in cash."""

    @classmethod
    def setUpClass(cls) -> None:
        import tempfile

        from smartpark.adapters.service import start_in_thread
        from smartpark.adapters.service.auth import create_token
        from smartpark.bootstrap import bootstrap
        from smartpark.testing.fakes import FakeClock

        cls._dir = tempfile.TemporaryDirectory(prefix="smartpark-receipts-")
        cls.clock = FakeClock(datetime(2025, 1, 6, 1, 0, tzinfo=UTC))
        cls.app = bootstrap({
            "data_dir": cls._dir.name,
            "lot": {"name": "阳光花园小区停车场", "capacity": 50,
                    "lanes": [{"id": "in-1", "name": "东门入口", "direction": "in"},
                              {"id": "out-1", "name": "东门出口", "direction": "out"}]},
            "tariff": {"free_minutes": 30, "unit_minutes": 60, "unit_fee": 300, "daily_cap": 3000,
                       "grace_minutes": 15},
            "gate": {"public_url": "https://park.example.cn"},
            "plugins": {"enabled": ["storage_sqlite"]},
        }, overrides={"clock": cls.clock})
        cls.order_id = paid_in_cash(cls.app, cls.clock, "粤B12345")
        cls.receipt = cls.app.receipts.for_order(cls.order_id)
        cls.token = create_token(cls.app.store, cls.clock, "booth-1", actor="test")
        cls.handle = start_in_thread(cls.app)
        cls.url = cls.handle.url

    @classmethod
    def tearDownClass(cls) -> None:
        cls.handle.stop()
        cls.app.close()
        cls._dir.cleanup()

    def get(self, path: str, **kw):
        import requests

        return requests.get(self.url + path, timeout=10, allow_redirects=False, **kw)

    def booth(self, method: str, path: str, body=None):
        import requests

        return requests.request(method, self.url + path, json=body, timeout=10,
                                headers={"Authorization": f"Bearer {self.token}"})

    def test_receipt_page_shows_the_receipt_and_downloads(self) -> None:
        r = self.receipt
        self.assertTrue(r.verify_url.startswith("https://park.example.cn/receipt/"))
        page = self.get(f"/receipt/{r.receipt_no}?code={r.code}")
        self.assertEqual(page.status_code, 200)
        self.assertEqual(page.headers["cache-control"], "no-store")
        for text in ("停车缴费电子凭证", "本凭证真实有效", "¥9.00", "现金", "粤B***45", r.code, "下载 PDF", "保存图片"):
            self.assertIn(text, page.text)
        self.assertNotIn("粤B12345", page.text, "the plate is masked")
        png = self.get(f"/receipt/{r.receipt_no}.png?code={r.code.lower().replace('-', '')}")
        self.assertEqual((png.status_code, png.headers["content-type"]), (200, "image/png"))
        self.assertEqual(Image.open(io.BytesIO(png.content)).width, receipt_render.PNG_WIDTH)
        pdf = self.get(f"/receipt/{r.receipt_no}.pdf?code={r.code}")
        self.assertEqual((pdf.status_code, pdf.headers["content-type"]), (200, "application/pdf"))
        self.assertIn(f"({r.code}) Tj", pdf_text(pdf.content))

    def test_receipts_need_their_code(self) -> None:
        r = self.receipt
        self.assertEqual(self.get(f"/receipt/{r.receipt_no}").status_code, 400)
        wrong = "AAAA-AAAA-AAAA" if r.code != "AAAA-AAAA-AAAA" else "BBBB-BBBB-BBBB"
        page = self.get(f"/receipt/{r.receipt_no}?code={wrong}")
        self.assertEqual(page.status_code, 404)
        self.assertIn("凭证无效", page.text)
        self.assertNotIn("¥9.00", page.text)
        for suffix in (".png", ".pdf"):
            self.assertEqual(self.get(f"/receipt/{r.receipt_no}{suffix}").status_code, 400)
            reply = self.get(f"/receipt/{r.receipt_no}{suffix}?code={wrong}")
            self.assertEqual(reply.status_code, 404)
            self.assertIn("凭证无效", reply.json()["error"])
        self.assertEqual(self.get(f"/receipt/{'0' * 32}?code={r.code}").status_code, 404)

    def test_verify_form(self) -> None:
        r = self.receipt
        blank = self.get("/verify")
        self.assertEqual(blank.status_code, 200)
        self.assertIn("核验停车缴费凭证", blank.text)
        self.assertNotIn("凭证有效", blank.text)
        ok = self.get("/verify", params={"receipt_no": r.receipt_no, "code": r.code.lower()})
        self.assertIn("凭证有效", ok.text)
        self.assertIn("¥9.00", ok.text)
        bad = self.get("/verify", params={"receipt_no": r.receipt_no, "code": r.code[:-1] + "Q"
                                          if not r.code.endswith("Q") else r.code[:-1] + "R"})
        self.assertIn("凭证无效", bad.text)
        self.assertNotIn("¥9.00", bad.text)

    def test_booth_receipt_api(self) -> None:
        import requests

        self.assertEqual(requests.get(f"{self.url}/api/booth/orders/{self.order_id}/receipt", timeout=10).status_code,
                         401)
        reply = self.booth("GET", f"/api/booth/orders/{self.order_id}/receipt")
        self.assertEqual(reply.status_code, 200, reply.text)
        data = reply.json()
        self.assertEqual((data["receipt"]["amount_fen"], data["receipt"]["channel_display"]), (900, "现金"))
        self.assertEqual(data["receipt"]["code"], self.receipt.code)
        self.assertEqual(self.get(data["links"]["pdf"]).status_code, 200)
        missing = self.booth("GET", f"/api/booth/orders/{'0' * 32}/receipt")
        self.assertEqual(missing.status_code, 404)
        self.assertIn("找不到订单", missing.json()["error"])

    def test_fee_page_without_online_payment(self) -> None:
        import requests

        page = self.get("/fee")
        self.assertEqual(page.status_code, 200)
        self.assertIn("缴费 / 场内预付", page.text)
        self.assertIn("线上缴费暂未开通", page.text)
        unknown = requests.post(self.url + "/fee", data={"plate": "沪C99999"}, timeout=10)
        self.assertEqual(unknown.status_code, 404)
        self.assertIn("没有找到 沪C***99 的在场记录", unknown.text)
        bad = requests.post(self.url + "/fee", data={"plate": "12345"}, timeout=10)
        self.assertEqual(bad.status_code, 422)
        refused = self.booth("POST", f"/api/booth/orders/{self.order_id}/pay", {"channel": "wechat"})
        self.assertEqual(refused.status_code, 422)
        self.assertIn("未开通", refused.json()["error"])


class PaymentRoutesTest(unittest.TestCase):
    """The booth's payment API and the visitor's /fee routes with one online channel (FakePaymentChannel as
    WeChat Pay: its payer pays and its callback is signed), over real HTTP."""

    @classmethod
    def setUpClass(cls) -> None:
        import tempfile

        from smartpark.adapters.service import start_in_thread
        from smartpark.adapters.service.auth import create_token
        from smartpark.bootstrap import bootstrap
        from smartpark.testing.fakes import FakeClock
        from smartpark.testing.fakes.payment import FakePaymentChannel

        cls._dir = tempfile.TemporaryDirectory(prefix="smartpark-payroutes-")
        cls.clock = FakeClock(datetime(2025, 1, 6, 1, 0, tzinfo=UTC))
        cls.wechat = FakePaymentChannel("wechat", clock=cls.clock)
        cls.app = bootstrap({
            "data_dir": cls._dir.name,
            "lot": {"name": "阳光花园小区停车场", "capacity": 50,
                    "lanes": [{"id": "in-1", "name": "东门入口", "direction": "in"},
                              {"id": "out-1", "name": "东门出口", "direction": "out"}]},
            "tariff": {"free_minutes": 30, "unit_minutes": 60, "unit_fee": 300, "daily_cap": 3000,
                       "grace_minutes": 15},
            "plugins": {"enabled": ["storage_sqlite"]},
        }, overrides={"clock": cls.clock, "payment_channels": {"pay_wechat": cls.wechat}})
        cls.token = create_token(cls.app.store, cls.clock, "booth-1", actor="test")
        cls.handle = start_in_thread(cls.app)
        cls.url = cls.handle.url

    @classmethod
    def tearDownClass(cls) -> None:
        cls.handle.stop()
        cls.app.close()
        cls._dir.cleanup()

    def booth(self, method: str, path: str, body=None):
        import requests

        return requests.request(method, self.url + path, json=body, timeout=10,
                                headers={"Authorization": f"Bearer {self.token}"})

    def pay(self, out_trade_no: str) -> None:
        headers, body = self.wechat.pay(out_trade_no)
        self.app.payments.handle_event(self.wechat.parse_callback(headers, body))

    def test_booth_pays_an_order_by_qr_and_refunds_part(self) -> None:
        self.app.parking.admit_visitor(lane_id="in-1", plate="苏E54321", name="赵敏", id_number="440305199002033457",
                                       phone="13700137000", consent=True, actor="booth:test")
        self.clock.advance(minutes=70)
        order_id = self.app.parking.confirm_read("out-1", "苏E54321", actor="booth:test").order_id
        refused = self.booth("POST", f"/api/booth/orders/{order_id}/pay", {"channel": "alipay"})
        self.assertEqual(refused.status_code, 422)
        self.assertEqual(refused.json()["channels"], ["wechat"])
        started = self.booth("POST", f"/api/booth/orders/{order_id}/pay", {"channel": "wechat"})
        self.assertEqual(started.status_code, 200, started.text)
        payment = started.json()["payment"]
        self.assertEqual((payment["state"], payment["amount_fen"], payment["channel_display"], payment["order_id"]),
                         ("paying", 600, "微信支付", order_id))
        self.assertTrue(payment["qr_svg"].startswith("<svg"))
        otn = payment["out_trade_no"]
        self.assertEqual(payment["code_url"], f"fakepay://pay/{otn}")
        self.assertEqual(self.booth("POST", f"/api/booth/payments/{otn}/refund",
                                    {"amount_fen": 100, "reason": "x"}).status_code, 409, "not paid yet")
        self.pay(otn)
        status = self.booth("GET", f"/api/booth/payments/{otn}").json()["payment"]
        self.assertEqual(status["state"], "paid")
        receipt = self.booth("GET", f"/api/booth/orders/{order_id}/receipt").json()["receipt"]
        self.assertEqual((receipt["channel_display"], receipt["transaction_id"]), ("微信支付", status["transaction_id"]))
        no_reason = self.booth("POST", f"/api/booth/payments/{otn}/refund", {"amount_fen": 200, "reason": " "})
        self.assertEqual(no_reason.status_code, 422)
        self.assertIn("原因", no_reason.json()["error"])
        too_much = self.booth("POST", f"/api/booth/payments/{otn}/refund", {"amount_fen": 900, "reason": "多收"})
        self.assertEqual(too_much.status_code, 400)
        self.assertIn("超出可退金额", too_much.json()["error"])
        done = self.booth("POST", f"/api/booth/payments/{otn}/refund", {"amount_fen": 200, "reason": "多收"})
        self.assertEqual(done.status_code, 200, done.text)
        self.assertEqual((done.json()["refund"]["amount_fen"], done.json()["refund"]["reason"]), (200, "多收"))
        after = self.app.receipts.for_order(order_id)
        self.assertEqual(after.refunded_fen, 200)
        self.assertEqual(after.code, receipt["code"], "a refund after printing keeps the receipt's code")

    def test_visitor_prepays_over_plain_http(self) -> None:
        import requests

        self.app.parking.admit_visitor(lane_id="in-1", plate="鲁B24680", name="钱七", id_number="110101199003074477",
                                       phone="13600136000", consent=True, actor="booth:test")
        self.clock.advance(minutes=20)
        free = requests.post(self.url + "/fee", data={"plate": "鲁B24680"}, timeout=10)
        self.assertIn("无需缴费", free.text)
        self.clock.advance(minutes=50)
        quote = requests.post(self.url + "/fee", data={"plate": "鲁B24680"}, timeout=10)
        self.assertEqual(quote.status_code, 200)
        self.assertIn("¥6.00", quote.text)
        self.assertIn('id="pay-wechat"', quote.text)
        self.assertNotIn('id="pay-alipay"', quote.text)
        started = requests.post(self.url + "/fee/start", data={"plate": "鲁B24680", "channel": "wechat"}, timeout=10,
                                allow_redirects=False)
        self.assertEqual(started.status_code, 303)
        location = started.headers["location"]
        otn = location.split("/fee/", 1)[1].split("?", 1)[0]
        page = requests.get(self.url + location, timeout=10)
        self.assertIn("<svg", page.text)
        self.assertIn("应付 <span id=\"pay-amount\">¥6.00</span>", page.text)
        api = location.replace("/fee/", "/api/fee/")
        self.assertEqual(requests.get(self.url + api, timeout=10).json()["state"], "paying")
        for forged in (f"/api/fee/{otn}", f"/api/fee/{otn}?t=aaaaaaaaaaaaaaaa"):
            self.assertEqual(requests.get(self.url + forged, timeout=10).status_code, 404)
        self.assertEqual(requests.get(self.url + f"/fee/{otn}?t=x", timeout=10).status_code, 404)
        self.pay(otn)
        paid = requests.get(self.url + api, timeout=10).json()
        self.assertEqual((paid["paid"], paid["message"]), (True, "支付成功，请在 15 分钟内离场"))
        receipt = requests.get(self.url + paid["receipt_url"], timeout=10)
        self.assertIn("本凭证真实有效", receipt.text)
        self.assertIn("在场", receipt.text)
        again = requests.get(self.url + location, timeout=10)
        self.assertIn("支付成功", again.text)
        self.assertIn('id="receipt-link"', again.text)
        # paid up: the fee page now says so
        self.assertIn("停车费已付清", requests.post(self.url + "/fee", data={"plate": "鲁B24680"}, timeout=10).text)


def paid_in_cash(app, clock, plate: str) -> str:
    """A visitor registered at the booth drives in, stays 2 h 10 min, and pays in cash at the exit."""
    from smartpark.testing.samples import sample_id_number

    app.parking.admit_visitor(lane_id="in-1", plate=plate, name="赵敏", id_number=str(sample_id_number(7)),
                              phone="13700137000", consent=True, actor="booth:test")
    clock.advance(minutes=130)
    decision = app.parking.confirm_read("out-1", plate, actor="booth:test")
    assert decision.order_id, decision
    app.parking.settle_cash(decision.order_id, actor="booth:test")
    return decision.order_id
