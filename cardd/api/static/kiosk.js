// SPDX-License-Identifier: Apache-2.0
// The kiosk page: shows each kiosk.decision from cardd's display stream (/kiosk/events, same
// origin) in large type, the library system's screen message (SIP2 AF), and an offline notice.
// Text only goes through textContent: nothing from the stream is ever parsed as HTML.
"use strict";
(function () {
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  const IDLE = ["請感應借書證或掃描條碼", "Please tap your card or scan your barcode"];
  let displayMs = 5000;
  let timer = null;

  function setText(id, text) {
    const el = $(id);
    el.textContent = text || "";
    el.hidden = !text;
  }

  function idle() {
    body.dataset.state = "idle";
    delete body.dataset.reason;
    setText("message", IDLE[0]);
    setText("message-en", IDLE[1]);
    setText("screen-message", "");
    setText("card", "");
  }

  function show(d) {
    body.dataset.state = d.decision === "allow" ? "allow" : "deny";
    body.dataset.reason = d.reason || "";
    setText("message", d.message);
    setText("message-en", d.messageEn);
    setText("screen-message", d.screenMessage);
    setText("card", d.token && d.token.masked ? d.token.masked : "");
    if (d.offline) { showOffline(true); }
    clearTimeout(timer);
    timer = setTimeout(idle, displayMs);
  }

  function showOffline(offline) {
    body.dataset.library = offline ? "offline" : "online";
    $("offline").hidden = !offline;
  }

  function status(s) {
    if (s.libraryOnline === false) { showOffline(true); }
    else if (s.libraryOnline === true) { showOffline(false); }
  }

  const es = new EventSource("/kiosk/events");
  es.addEventListener("hello", (e) => {
    const h = JSON.parse(e.data);
    if (typeof h.displaySeconds === "number") { displayMs = h.displaySeconds * 1000; }
    if (h.status) { status(h.status); }
  });
  es.addEventListener("kiosk.decision", (e) => show(JSON.parse(e.data)));
  es.addEventListener("kiosk.status", (e) => status(JSON.parse(e.data)));
  es.onopen = () => { body.dataset.link = "open"; $("link").hidden = true; };
  // EventSource reconnects by itself; say so on the screen meanwhile.
  es.onerror = () => { body.dataset.link = "lost"; $("link").hidden = false; };
})();
