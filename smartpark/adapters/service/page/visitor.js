/* 访客登记页：边输入边校验（与服务器同一套规则：POST /api/validate），提交到 POST /api/visitor/register。 */
(function () {
  "use strict";
  var page = document.getElementById("page");
  var form = document.getElementById("visitor-form");
  if (!page || !form) { return; }
  var token = page.getAttribute("data-token") || "";
  var FIELDS = ["name", "id_number", "phone"];
  var DEBOUNCE_MS = 450;
  var timers = {};
  var serial = {};
  var submitting = false;

  function $(id) { return document.getElementById(id); }
  function box(field) { return form.querySelector('.field[data-field="' + field + '"]'); }

  function show(field, ok, message) {
    var b = box(field), input = $(field), msg = $(field + "-msg");
    if (!b || !msg) { return; }
    b.classList.toggle("valid", ok === true);
    if (input) { input.setAttribute("aria-invalid", ok === false ? "true" : "false"); }
    msg.textContent = ok === false ? (message || "") : (ok === true && field !== "consent" ? "✓ 格式正确" : "");
  }

  function postJson(url, body) {
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (res) {
      return res.json().catch(function () { return {}; }).then(function (data) {
        return { status: res.status, data: data || {} };
      });
    });
  }

  function validate(field) {
    var value = $(field).value;
    var mine = (serial[field] = (serial[field] || 0) + 1);
    if (!value.trim()) { show(field, null, ""); return Promise.resolve(null); }
    return postJson("/api/validate", { field: field, value: value }).then(function (r) {
      if (serial[field] !== mine) { return null; }  // a newer keystroke already asked again
      if (r.status === 200) { show(field, !!r.data.ok, r.data.message); return !!r.data.ok; }
      return null;
    }).catch(function () { return null; });
  }

  FIELDS.forEach(function (field) {
    var input = $(field);
    input.addEventListener("input", function () {
      clearTimeout(timers[field]);
      var b = box(field);
      if (b) { b.classList.remove("valid"); }
      timers[field] = setTimeout(function () { validate(field); }, DEBOUNCE_MS);
    });
    input.addEventListener("blur", function () {
      clearTimeout(timers[field]);
      if (input.value.trim()) { validate(field); }
    });
  });
  $("consent").addEventListener("change", function () {
    if ($("consent").checked) { show("consent", null, ""); }
  });

  function showResult(kind, title, text, reminder) {
    var result = $("result");
    result.className = "card result result-" + kind;
    $("result-title").textContent = title;
    $("result-text").textContent = text || "";
    $("result-reminder").textContent = reminder || "";
    result.hidden = false;
    if (kind !== "error") { form.hidden = true; }
    result.focus();
    result.scrollIntoView({ block: "start" });
  }

  function setBusy(busy) {
    submitting = busy;
    var button = $("submit");
    button.disabled = busy;
    button.textContent = busy ? "正在登记…" : "提交登记并入场";
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    if (submitting) { return; }
    $("form-msg").textContent = "";
    var missing = false;
    FIELDS.forEach(function (field) {
      if (!$(field).value.trim()) {
        show(field, false, "请填写" + form.querySelector('label[for="' + field + '"]').textContent);
        missing = true;
      }
    });
    if (!$("consent").checked) {
      show("consent", false, "请阅读并同意《个人信息处理说明》后再登记");
      missing = true;
    }
    if (missing) { focusFirstError(); return; }
    setBusy(true);
    postJson("/api/visitor/register", {
      token: token,
      name: $("name").value,
      id_number: $("id_number").value,
      phone: $("phone").value,
      consent: $("consent").checked
    }).then(function (r) {
      setBusy(false);
      var d = r.data;
      if (r.status === 200) {
        if (d.admitted) {
          showResult("ok", d.title || "登记成功", d.message, d.reminder);
        } else {
          showResult("refused", d.title || "暂时无法入场", d.message, "");
        }
      } else if (r.status === 422 && d.errors) {
        Object.keys(d.errors).forEach(function (field) {
          if (box(field)) { show(field, false, d.errors[field]); }
          else { $("form-msg").textContent = d.errors[field]; }
        });
        focusFirstError();
      } else if (r.status === 410 || (r.status === 400 && d.field === "token")) {
        showResult("expired", "登记链接已失效", d.error || "请重新扫描车道上的二维码");
      } else {
        $("form-msg").textContent = d.error || "登记没有成功，请稍后重试或联系值班员";
      }
    }).catch(function () {
      setBusy(false);
      $("form-msg").textContent = "网络异常，请检查网络后重试";
    });
  });

  function focusFirstError() {
    var bad = form.querySelector('[aria-invalid="true"]');
    if (bad) { bad.focus(); }
  }
})();
