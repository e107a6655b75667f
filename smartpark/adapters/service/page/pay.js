/* 缴费页：车牌边输入边校验（POST /api/validate），付款二维码页每 2 秒查询一次支付状态。 */
(function () {
  "use strict";
  function $(id) { return document.getElementById(id); }

  var plate = $("plate");
  if (plate) {
    var timer = null, serial = 0;
    plate.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var mine = ++serial, value = plate.value.trim();
        if (!value) { $("plate-msg").textContent = ""; return; }
        fetch("/api/validate", {
          method: "POST", headers: { "Content-Type": "application/json" }, credentials: "same-origin",
          body: JSON.stringify({ field: "plate", value: value })
        }).then(function (r) { return r.json(); }).then(function (data) {
          if (mine !== serial) { return; }
          plate.setAttribute("aria-invalid", data.ok ? "false" : "true");
          plate.parentNode.classList.toggle("invalid", !data.ok);
          $("plate-msg").textContent = data.ok ? "" : (data.message || "车牌格式不正确");
        }).catch(function () {});
      }, 400);
    });
  }

  var pay = $("pay");
  if (!pay) { return; }
  var url = pay.getAttribute("data-status-url");
  var every = parseInt(pay.getAttribute("data-poll-ms"), 10) || 2000;
  function done(data) {
    pay.hidden = true;
    var box = $("pay-result");
    box.hidden = false;
    $("pay-result-title").textContent = data.paid ? "支付成功" : "支付已关闭";
    $("pay-result-text").textContent = data.message || "";
    var link = $("receipt-link");
    if (data.paid && data.receipt_url) { link.href = data.receipt_url; } else if (link) { link.parentNode.hidden = true; }
    if (!data.paid) { box.className = "card result result-error"; }
    box.focus && box.focus();
  }
  function poll() {
    fetch(url, { headers: { "Accept": "application/json" }, cache: "no-store", credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        if (data.state === "paid" || data.state === "closed") { done(data); return; }
        $("pay-state").textContent = "等待支付…";
        setTimeout(poll, every);
      })
      .catch(function () {
        $("pay-state").textContent = "网络不稳定，正在重试…";
        setTimeout(poll, every);
      });
  }
  setTimeout(poll, every);
}());
