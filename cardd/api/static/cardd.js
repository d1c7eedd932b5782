// SPDX-License-Identifier: Apache-2.0
/**
 * cardd.js: the browser client of cardd, the local card-reader service (ES module, no
 * dependencies). Served by cardd at http://127.0.0.1:7420/v1/client/cardd.js to the sites its
 * configuration allows; types in cardd.d.ts next to it.
 *
 *   import cardd, { CarddError } from "http://127.0.0.1:7420/v1/client/cardd.js";
 *
 *   button.addEventListener("click", async () => {
 *     const nonce = await (await fetch("/auth/nonce", { method: "POST" })).text();
 *     try {
 *       const token = await cardd.moica.authenticate(nonce);   // opens cardd's PIN window
 *       await fetch("/auth/verify", { method: "POST", body: JSON.stringify(token) });
 *     } catch (e) {
 *       if (e instanceof CarddError) show(e.code);              // "not_running", "user_cancelled", ...
 *     }
 *   });
 *
 * Call moica.authenticate() directly in a click (or key) handler, before any await: it opens
 * cardd's PIN window at once, and browsers block popups opened later.
 *
 * Every request goes to http://127.0.0.1:PORT with `targetAddressSpace: "loopback"` (Chrome's
 * Local Network Access; other browsers ignore it), without cookies. Failures are CarddError with
 * a stable `.code`: the code cardd answered (`reader_busy`, `no_card`, `user_cancelled`,
 * `pin_blocked`, `scope_denied`, ...), or `not_running` (nothing answers on that port),
 * `origin_not_allowed` (cardd runs but its configuration does not list this site), or
 * `popup_blocked`.
 */

const DEFAULT_BASE = "http://127.0.0.1:7420";
const CLIENT_PATH = "/v1/client/cardd.js";
const EVENT_TYPES = [
  "hello", "reader.added", "reader.removed", "card.inserted", "card.removed", "tag.tapped",
  "barcode.scanned", "backend.lost", "backend.restored", "operation.started",
  "operation.finished", "kiosk.decision",
];

/** An error from cardd or from reaching it; `code` is stable, `message` is for people. */
export class CarddError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{status?: number, triesLeft?: number | null}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "CarddError";
    /** @type {string} */
    this.code = code;
    /** @type {number} HTTP status, 0 when cardd was not reached */
    this.status = extra.status || 0;
    /** @type {number | null | undefined} PIN tries left, for `pin_incorrect` */
    this.triesLeft = extra.triesLeft;
  }
}

/** cardd's address: where this script was loaded from, or the default port. */
function defaultBase() {
  try {
    const url = new URL(import.meta.url);
    if (url.pathname === CLIENT_PATH) return url.origin;
  } catch (e) {
    // not loaded from a URL (bundled): use the default
  }
  return DEFAULT_BASE;
}

function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * A client for the cardd at `base`.
 * @param {{base?: string, popupFeatures?: string}} [options]
 */
export function createClient(options = {}) {
  const base = (options.base || defaultBase()).replace(/\/+$/, "");
  const popupFeatures = options.popupFeatures || "popup,width=480,height=640";

  /** Tell "nothing listens" from "cardd refuses this site": fetch() fails alike for both. */
  async function unreachable() {
    try {
      // A no-cors GET of a public file (served with Cross-Origin-Resource-Policy:
      // cross-origin) resolves with an opaque answer from a running cardd; it rejects only
      // when nothing answers at all.
      await fetch(base + "/v1/client/cardd.d.ts", {
        mode: "no-cors", credentials: "omit", cache: "no-store", targetAddressSpace: "loopback",
      });
      return new CarddError("origin_not_allowed",
        "cardd is running but its configuration does not allow this site");
    } catch (e) {
      return new CarddError("not_running", `cardd does not answer at ${base}: is it running?`);
    }
  }

  async function request(method, path, body) {
    /** @type {RequestInit & {targetAddressSpace?: string}} */
    const init = {
      method, mode: "cors", credentials: "omit", cache: "no-store", targetAddressSpace: "loopback",
    };
    if (body !== undefined) {
      init.headers = { "Content-Type": "application/json" };
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(base + path, init);
    } catch (e) {
      throw await unreachable();
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      const err = (data && data.error) || {};
      throw new CarddError(err.code || `http_${resp.status}`, err.message || `cardd answered ${resp.status}`,
        { status: resp.status, triesLeft: err.triesLeft });
    }
    return data;
  }

  /**
   * cardd's events as an async iterator (Server-Sent Events underneath).
   * @param {{types?: string[]}} [opts]
   */
  function events(opts = {}) {
    const types = opts.types || EVENT_TYPES;
    const source = new EventSource(base + "/v1/events");
    const queue = [];
    const waiting = [];
    let failure = null;
    let closed = false;
    let opened = false;
    const deliver = (item) => {
      const next = waiting.shift();
      if (next) next(item);
      else queue.push(item);
    };
    for (const type of types) {
      source.addEventListener(type, (ev) => {
        let data;
        try { data = JSON.parse(ev.data); } catch (e) { return; }
        deliver({ value: Object.assign({ type }, data), done: false });
      });
    }
    source.onopen = () => { opened = true; };
    source.onerror = async () => {
      // EventSource reconnects by itself after a dropped stream; CLOSED means it gave up
      // (refused by CORS, or never reached).
      if (source.readyState !== EventSource.CLOSED || closed) return;
      failure = opened ? new CarddError("not_running", "the event stream ended") : await unreachable();
      while (waiting.length) waiting.shift()({ error: failure });
    };
    const iterator = {
      source,
      next() {
        if (queue.length) return Promise.resolve(queue.shift());
        if (closed) return Promise.resolve({ value: undefined, done: true });
        if (failure) return Promise.reject(failure);
        return new Promise((resolve, reject) => {
          waiting.push((item) => (item.error ? reject(item.error) : resolve(item)));
        });
      },
      return() {
        iterator.close();
        return Promise.resolve({ value: undefined, done: true });
      },
      close() {
        closed = true;
        source.close();
        while (waiting.length) waiting.shift()({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() { return iterator; },
    };
    return iterator;
  }

  return {
    base,
    /** Is cardd there, and does it serve this site? Never throws for those two cases. */
    async detect() {
      try {
        const health = await request("GET", "/v1/health");
        return { running: true, allowed: true, version: health.version, status: health.status };
      } catch (e) {
        if (e instanceof CarddError && e.code === "not_running") return { running: false, allowed: false };
        if (e instanceof CarddError && e.code === "origin_not_allowed") return { running: true, allowed: false };
        throw e;
      }
    },
    /** Readers with kind, card presence, ATR and card type. */
    async readers() {
      return (await request("GET", "/v1/readers")).readers;
    },
    events,
    moica: {
      /** The citizen certificate card's public data (no PIN). */
      read(opts = {}) {
        return request("POST", "/v1/moica/read", { reader: opts.reader });
      },
      /**
       * Have the card sign the relying party's nonce; cardd asks for the PIN in its own window.
       * Call it directly in a click handler: the window opens before anything is awaited.
       * @param {string} nonce the relying party's challenge (base64, 44–128 characters)
       * @param {{reader?: string}} [opts]
       */
      authenticate(nonce, opts = {}) {
        const op = randomId();
        const popup = window.open(`${base}/pin?op=${op}`, `cardd-pin-${op}`, popupFeatures);
        if (!popup) {
          return Promise.reject(new CarddError("popup_blocked",
            "the browser blocked cardd's PIN window: call authenticate() in a click handler"));
        }
        return request("POST", "/v1/moica/authenticate", { nonce, reader: opts.reader, pinPage: op });
      },
    },
    rfid: {
      /** The next card tapped on a contactless reader: UID forms (hex, decLE = 內碼, ...). */
      waitTap(opts = {}) {
        return request("POST", "/v1/rfid/wait-tap", { reader: opts.reader, timeoutMs: opts.timeoutMs });
      },
    },
    studentCard: {
      /** The library number recorded on a student card, and its ledger state. */
      read(opts = {}) {
        return request("POST", "/v1/student-card/read", { reader: opts.reader });
      },
    },
  };
}

/** The client for the cardd this script came from (or http://127.0.0.1:7420). */
const cardd = createClient();
export default cardd;
export const { detect, readers, events, moica, rfid, studentCard } = cardd;
