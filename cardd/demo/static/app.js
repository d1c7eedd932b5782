// SPDX-License-Identifier: Apache-2.0
// The demo registration page: cardd's JavaScript client used from the library's own origin.
const config = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);

const CODES = { A: 10, B: 11, C: 12, D: 13, E: 14, F: 15, G: 16, H: 17, I: 34, J: 18, K: 19,
  L: 20, M: 21, N: 22, O: 35, P: 23, Q: 24, R: 25, S: 26, T: 27, U: 28, V: 29, W: 32, X: 30,
  Y: 31, Z: 33 };
const WEIGHTS = [1, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1];

/** 身分證字號／居留證號 checksum (the same rule as cardd.rfid.idnumber; the server checks too). */
export function idNumberValid(text) {
  const v = text.trim().toUpperCase();
  if (!/^[A-Z][1289A-D][0-9]{8}$/.test(v)) return false;
  const code = CODES[v[0]];
  const second = /[A-D]/.test(v[1]) ? CODES[v[1]] % 10 : Number(v[1]);
  const digits = [Math.floor(code / 10), code % 10, second, ...v.slice(2).split("").map(Number)];
  return digits.reduce((sum, d, i) => sum + d * WEIGHTS[i], 0) % 10 === 0;
}

const MESSAGES = {
  not_running: "讀卡服務（cardd）沒有啟動，請先啟動讀卡服務。",
  origin_not_allowed: "讀卡服務不允許本網站使用，請洽系統管理員。",
  popup_blocked: "瀏覽器擋下了 PIN 碼視窗，請允許彈出式視窗後再試。",
  user_cancelled: "已取消自然人憑證驗證。",
  card_removed: "卡片已移除，請重新插入自然人憑證後再試。",
  pin_blocked: "自然人憑證 PIN 碼已鎖定。",
  reader_busy: "讀卡機忙碌中，請稍後再試。",
  no_card: "請將自然人憑證插入讀卡機。",
  no_reader: "找不到讀卡機。",
  timeout: "等候逾時，請再試一次。",
  cancelled: "作業已中止。",
  scope_denied: "讀卡服務不允許本網站使用這項功能。",
};

function say(id, text, ok) {
  const el = $(id);
  el.textContent = text;
  el.className = "result " + (ok ? "ok" : "error");
}

async function post(path, body) {
  const resp = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    const err = new Error((data && data.error && data.error.message) || `錯誤 ${resp.status}`);
    err.code = data && data.error && data.error.code;
    throw err;
  }
  return data;
}

let cardd = null;
let CarddError = Error;
try {
  const mod = await import(`${config.carddUrl}/v1/client/cardd.js`);
  cardd = mod.default;
  CarddError = mod.CarddError;
  const found = await cardd.detect();
  $("carddStatus").textContent = found.allowed
    ? `讀卡服務（cardd ${found.version}）已連線。`
    : found.running ? MESSAGES.origin_not_allowed : MESSAGES.not_running;
  document.body.dataset.cardd = found.allowed ? "ready" : found.running ? "origin_not_allowed" : "not_running";
} catch (e) {
  // The client is loaded from cardd itself: when this fails cardd is down or refuses us.
  $("carddStatus").textContent = "無法連線讀卡服務（cardd 未啟動，或不允許本網站）。";
  document.body.dataset.cardd = "unreachable";
}

// A challenge is fetched ahead of the click, so the PIN window opens inside the click handler
// itself (popup blockers allow windows opened there, not after a network round trip).
let nonce = null;
async function refreshNonce() {
  nonce = (await post("/api/nonce", {})).nonce;
}
await refreshNonce().catch(() => {});
setInterval(() => refreshNonce().catch(() => {}), 4 * 60 * 1000);

$("idNumber").addEventListener("input", () => {
  const v = $("idNumber").value;
  const hint = $("idHint");
  if (v.length < 10) { hint.textContent = ""; return; }
  const ok = idNumberValid(v);
  hint.textContent = ok ? "✓ 格式正確" : "身分證字號格式或檢查碼不正確";
  hint.className = ok ? "hint ok" : "hint";
});

$("moicaBtn").addEventListener("click", () => {
  const idNumber = $("idNumber").value.trim().toUpperCase();
  if (!idNumberValid(idNumber)) return say("moicaResult", "請先填寫正確的身分證字號。", false);
  if (!cardd) return say("moicaResult", MESSAGES.not_running, false);
  if (!nonce) return say("moicaResult", "無法取得驗證碼，請重新整理頁面。", false);
  const challenge = nonce;
  nonce = null;
  say("moicaResult", "請在彈出的 cardd 視窗輸入自然人憑證 PIN 碼…", true);
  // authenticate() opens cardd's PIN window synchronously, here in the click handler.
  cardd.moica.authenticate(challenge)
    .then((token) => post("/api/moica/verify", { token, idNumber }))
    .then((who) => {
      $("name").value = who.holderName;
      $("name").readOnly = true;
      document.body.dataset.moica = "verified";
      say("moicaResult", `驗證成功：${who.holderName}（身分證末四碼 ${who.idLast4}）。送出後立即開通。`, true);
    })
    .catch((e) => {
      document.body.dataset.moica = e.code || "error";
      const text = (e instanceof CarddError && MESSAGES[e.code]) || e.message;
      say("moicaResult", `驗證失敗：${text}`, false);
    })
    .finally(() => refreshNonce().catch(() => {}));
});

$("bindBtn").addEventListener("click", async () => {
  if (!cardd) return say("chipResult", MESSAGES.not_running, false);
  say("chipResult", "請將悠遊卡或一卡通放在感應區…", true);
  try {
    const tap = await cardd.rfid.waitTap({ timeoutMs: 30000 });
    const bound = await post("/api/card/bind", { uid: tap.uid });
    document.body.dataset.chip = bound.chip;
    say("chipResult", `已讀取卡片，卡片內碼：${bound.chip}（送出申請後綁定）`, true);
  } catch (e) {
    const text = (e instanceof CarddError && MESSAGES[e.code]) || e.message;
    say("chipResult", `讀取失敗：${text}`, false);
  }
});

$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = (id) => $(id).value;
  if (!idNumberValid(v("idNumber"))) return say("result", "身分證字號格式或檢查碼不正確。", false);
  if (v("password") !== v("password2")) return say("result", "兩次輸入的密碼不同。", false);
  try {
    const account = await post("/api/register", {
      idNumber: v("idNumber").trim().toUpperCase(), password: v("password"), name: v("name"),
      birthday: v("birthday"), email: v("email"), phone: v("phone"), address: v("address"),
    });
    document.body.dataset.account = account.status;
    const chip = account.chip ? `，已綁定卡片（內碼 ${account.chip}）` : "";
    say("result", account.status === "activated"
      ? `申請完成，借閱證已立即開通（${account.maskedId}）${chip}。`
      : `資料已送出，將於 3 個工作天內完成審核（${account.maskedId}）${chip}。`, true);
  } catch (e) {
    say("result", e.message, false);
  }
});
