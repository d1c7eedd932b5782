// SPDX-License-Identifier: Apache-2.0
// cardd's PIN page. Served inline with a per-response CSP nonce; talks only to its own origin.
// The PIN goes from the input straight to POST /v1/pin/<op>/submit and the field is cleared.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const app = $("app");
  const op = app.dataset.op;
  const secret = app.dataset.secret;
  const base = "/v1/pin/" + encodeURIComponent(op);
  const ACTIONS = { authenticate: "以自然人憑證簽署身分驗證（登入／註冊）" };
  const STATUS = {
    reading: "正在讀取卡片…",
    waiting_pin: "請輸入 PIN 碼。",
    checking: "驗證中，請勿移除卡片…",
    pinpad: "請在讀卡機的密碼鍵盤上輸入 PIN 碼。",
    done: "完成，已將驗證結果交給網站。此視窗將自動關閉。",
  };
  const FAILURES = {
    user_cancelled: "已取消。",
    card_removed: "卡片已移除，作業已中止。",
    pin_blocked: "PIN 碼已鎖定，無法使用此卡。請至戶政事務所辦理解鎖。",
    timeout: "等候逾時，作業已中止。",
    cancelled: "要求驗證的網頁已關閉，作業已中止。",
    reader_busy: "讀卡機正在處理另一個作業，請稍後再試。",
    no_card: "讀卡機上沒有卡片。",
    no_reader: "找不到讀卡機。",
    card_not_supported: "這張卡片不是自然人憑證。",
    not_found: "找不到這個驗證請求（可能已結束或過期）。",
  };
  let version = -1;
  let finished = false;
  let deadline = 0;

  async function call(path, body, extra) {
    const resp = await fetch(base + path, Object.assign({
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(Object.assign({ secret }, body)),
      credentials: "omit",
      cache: "no-store",
    }, extra || {}));
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    return { status: resp.status, data };
  }

  function setText(id, text) { $(id).textContent = text; }

  function finish(code) {
    finished = true;
    $("form").hidden = true;
    $("cancel").hidden = true;
    setText("remaining", "");
    document.body.dataset.state = code ? "failed" : "done";
    if (code) {
      setText("status", (FAILURES[code] || "作業失敗。") + "您可以關閉此視窗。");
      document.body.dataset.error = code;
    } else {
      app.classList.add("done");
      setText("status", STATUS.done);
      setTimeout(() => window.close(), 1500);
    }
  }

  function render(s) {
    setText("origin", s.origin);
    setText("holder", s.holderName || "讀取中…");
    setText("action", ACTIONS[s.action] || s.action);
    setText("reader", s.reader || "…");
    deadline = Date.now() + s.remainingSeconds * 1000;
    document.body.dataset.state = s.state;
    if (s.state === "done") return finish(null);
    if (s.state === "failed") return finish(s.error || "failed");
    const form = $("form");
    form.hidden = s.state !== "waiting_pin";
    $("ok").disabled = s.state !== "waiting_pin";
    setText("status", STATUS[s.state] || "");
    if (s.state === "waiting_pin") {
      if (s.error === "pin_incorrect") {
        const left = s.triesLeft == null ? "" : `還剩 ${s.triesLeft} 次機會，`;
        setText("message", `PIN 碼錯誤。${left}請重新輸入（輸入錯誤太多次卡片會鎖定）。`);
        document.body.dataset.error = "pin_incorrect";
      }
      $("pin").focus();
    } else {
      setText("message", "");
    }
  }

  async function poll() {
    if (!secret) return finish("not_found");
    while (!finished) {
      let r;
      try {
        r = await call("/state", { version });
      } catch (e) {
        await new Promise((ok) => setTimeout(ok, 1000));
        continue;
      }
      if (r.status !== 200 || !r.data) return finish((r.data && r.data.error && r.data.error.code) || "not_found");
      version = r.data.version;
      render(r.data);
    }
  }

  $("form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const field = $("pin");
    const pin = field.value;
    field.value = "";
    if (!/^[0-9]{6,8}$/.test(pin)) {
      setText("message", "PIN 碼必須是 6 到 8 位數字。");
      return;
    }
    setText("message", "");
    $("ok").disabled = true;
    let r;
    try {
      r = await call("/submit", { pin });
    } catch (e) {
      r = { status: 0, data: null };
    }
    if (r.status !== 202) {
      $("ok").disabled = false;
      setText("message", (r.data && r.data.error && r.data.error.message) || "無法送出 PIN 碼，請再試一次。");
    }
  });

  $("cancel").addEventListener("click", async () => {
    $("cancel").disabled = true;
    try { await call("/cancel", {}); } catch (e) { /* the state poll reports the outcome */ }
  });

  // Closing the window cancels at once; the daemon's heartbeat timeout is the fallback.
  window.addEventListener("pagehide", () => {
    if (finished || !secret) return;
    fetch(base + "/cancel", {
      method: "POST", keepalive: true, credentials: "omit",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ secret }),
    }).catch(() => {});
  });

  setInterval(() => {
    if (!finished && deadline) setText("remaining", `剩餘 ${Math.max(0, Math.round((deadline - Date.now()) / 1000))} 秒`);
  }, 1000);

  poll();
})();
