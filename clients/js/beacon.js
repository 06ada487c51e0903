// Beacon JavaScript client: an ES module with no dependencies, for browsers and any runtime
// with a WHATWG WebSocket (Node 22+, Deno, Bun, React Native).
//
//   import { BeaconClient } from "./beacon.js";
//   const c = new BeaconClient({
//     url: "wss://rt.example.com/ws/bookings/42/",
//     token: async ({ refresh }) => (refresh ? await refreshAccessToken() : currentAccessToken()),
//   });
//   c.on("message", (msg) => console.log(msg.type, msg));
//   c.send({ type: "ping" });   // queued until connected, re-sent after a reconnect
//
// Reconnects follow each close code's declared class (the protocol's `[close.*] reconnect`,
// also published by `beacon asyncapi` under `x-beacon-close-codes`):
//   never         stop; emit "stopped" (e.g. 4003 forbidden)
//   after-reauth  ask the token source again with { refresh: true }, then reconnect
//   backoff       reconnect after an exponentially growing delay with full jitter
//   immediate     reconnect after a short jittered delay
// Full jitter (a uniform delay in [0, cap)) spreads a fleet's reconnects after a server
// restart instead of bringing every client back in the same instant.
//
// Tokens on long-lived sockets: when the token is a JWT, the client asks the token source for
// a fresh one ({ refresh: true }) before the current one expires and sends it in-band as
// {"type": "refresh_token", "token": ...} (the `refresh` key of every shipped protocol), so the
// socket is not closed when a 5-minute access token runs out. A refused refresh closes the
// socket with an after-reauth code, and the client reconnects with a fresh token.
//
// Resume (rooms with history, the protocol's `[resume]`): with the `resume` option the client
// keeps the last position (offset, epoch) of each URL's home room, sends it on reconnect as
// the declared query parameters (with tokenIn "message": in the first message, beside the
// token), and turns Beacon's answers into events:
//   recovered  { offset, epoch, resumed }: nothing was missed (missed messages, if any, came
//              before it as ordinary "message" events); resumed is false on a fresh join
//   reload     { reason, offset, epoch }: the room's state could not be recovered (restart,
//              too far behind, ...): reload it from the app's API; live messages follow
// A message at or before the position already held is never emitted twice. A jump in offsets
// on a live socket is never a loss: in a latest-value room Beacon replaced values too old to
// send with newer ones (conflation); elsewhere the skipped messages were kept from this socket
// on purpose (exclude_sender, a filter). The message is emitted and its position kept.

/** The reconnect class of close codes Beacon and RFC 6455 use when no table is given. */
export const DEFAULT_CLOSE_CLASSES = Object.freeze({
  1000: "backoff",
  1001: "backoff",
  1006: "backoff",
  1008: "never",
  1011: "backoff",
  4001: "after-reauth",
  4003: "never",
});

const STRICTNESS = ["immediate", "backoff", "after-reauth", "never"];

/** Close-code classes from a `beacon asyncapi` document. When two entries share a code, the
 * stricter class wins (a client cannot tell which of them closed it). */
export function closeClassesFromAsyncApi(doc) {
  const table = {};
  for (const c of doc["x-beacon-close-codes"] || []) {
    const prev = table[c.code];
    if (!prev || STRICTNESS.indexOf(c.reconnect) > STRICTNESS.indexOf(prev)) table[c.code] = c.reconnect;
  }
  return table;
}

/** The delay before reconnect attempt `attempt` (0-based): full jitter over an exponential cap. */
export function backoffDelay(attempt, { initialMs = 500, maxMs = 30000, factor = 2 } = {}, random = Math.random) {
  const cap = Math.min(maxMs, initialMs * Math.pow(factor, attempt));
  return Math.floor(random() * cap);
}

/** The `exp` of a JWT in milliseconds since the epoch, or null when `token` is not a JWT with
 * a numeric `exp` (the signature is not checked: the server does that). */
export function tokenExpiresAt(token) {
  if (typeof token !== "string") return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof json.exp === "number" ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** How long to wait before refreshing a token that expires in `remainingMs`: `beforeMs` ahead
 * of expiry, or halfway for a token shorter-lived than that. */
export function refreshDelay(remainingMs, beforeMs) {
  return Math.max(0, remainingMs - Math.min(beforeMs, remainingMs / 2));
}

// setTimeout's longest delay (about 24.8 days); anything longer fires at once.
const MAX_TIMER_MS = 2147483647;

export class BeaconClient {
  /**
   * @param {object} o
   * @param {string | (() => string)} o.url  WebSocket URL of the endpoint (ws:// or wss://)
   * @param {({refresh}: {refresh: boolean}) => (string | null | Promise<string | null>)} [o.token]
   *        any token source; called before every connect, with refresh=true after an auth close
   * @param {"query" | "subprotocol" | "message"} [o.tokenIn]  where the token travels (default
   *        "query"); "message": in a first message `{type: authType, token}` (an endpoint with
   *        `token_sources = ["message:<authType>"]`), which then also carries the position to
   *        resume from instead of the query
   * @param {string} [o.authType]  wire type of that first message (default "authenticate")
   * @param {string} [o.queryParam]  query parameter name (default "token")
   * @param {string} [o.subprotocol]  subprotocol marker (default "jwt"): offers [marker, token]
   * @param {Record<number, string>} [o.closeClasses]  code -> reconnect class (see above)
   * @param {{initialMs?: number, maxMs?: number, factor?: number}} [o.backoff]
   * @param {number} [o.stableMs]  a socket open this long (or that received a message) resets
   *        the backoff and confirms the messages sent on it
   * @param {number} [o.maxQueue]  messages kept while disconnected (oldest dropped beyond)
   * @param {string | null} [o.refreshType]  wire type of the in-band token refresh (the
   *        endpoint's `refresh` key; default "refresh_token"); null turns proactive refresh off
   * @param {number} [o.refreshBeforeMs]  refresh this long before the token's `exp` (default
   *        60000; halfway through the token's life when that is shorter)
   * @param {{offsetField?: string, epochField?: string, offsetParam?: string, epochParam?: string,
   *          recovered: string, notRecovered: string, reasonField?: string}} [o.resume]
   *        the protocol's `[resume]` (field and parameter names default to offset/epoch,
   *        reason); message types are wire types
   */
  constructor(o) {
    this.o = {
      tokenIn: "query",
      queryParam: "token",
      authType: "authenticate",
      subprotocol: "jwt",
      closeClasses: DEFAULT_CLOSE_CLASSES,
      backoff: {},
      stableMs: 5000,
      maxQueue: 1000,
      refreshType: "refresh_token",
      refreshBeforeMs: 60000,
      WebSocket: globalThis.WebSocket,
      random: Math.random,
      ...o,
    };
    if (this.o.resume) {
      this.o.resume = { offsetField: "offset", epochField: "epoch", reasonField: "reason", ...this.o.resume };
      this.o.resume.offsetParam ||= this.o.resume.offsetField;
      this.o.resume.epochParam ||= this.o.resume.epochField;
    }
    this.positions = new Map(); // URL (without token) -> { offset, epoch } of its home room
    this.room = null;           // the URL of the current socket
    this.listeners = new Map();
    this.queue = [];        // not yet handed to a socket
    this.unconfirmed = [];  // handed to the current socket, not yet known to have arrived
    this.attempt = 0;
    this.refresh = false;
    this.stopped = false;
    this.ws = null;
    this.timer = null;
    this.refreshTimer = null;
    this.state = "connecting";
    this._connect();
  }

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, []);
    this.listeners.get(event).push(fn);
    return this;
  }

  _emit(event, arg) {
    for (const fn of this.listeners.get(event) || []) {
      try { fn(arg); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }

  /** Sends a message (objects are JSON-encoded); queued while not connected. */
  send(msg) {
    const data = typeof msg === "string" ? msg : JSON.stringify(msg);
    if (this.stopped) throw new Error("BeaconClient is stopped");
    if (this.ws && this.ws.readyState === 1 && this.queue.length === 0) {
      this.ws.send(data);
      if (!this.confirmed) this.unconfirmed.push(data);
    } else {
      this.queue.push(data);
      if (this.queue.length > this.o.maxQueue) this.queue.shift();
    }
  }

  /** The last position received in the current URL's home room, or null. */
  get position() {
    return this.positions.get(this.room) || null;
  }

  /** The first message of an endpoint that authenticates by message: the token and, when the
   * client resumes, its position under the `[resume]` field names (`""` with no epoch asks
   * where the room is, as the empty query parameter does). */
  _authMessage(url, token) {
    const msg = { type: this.o.authType, token };
    const r = this.o.resume;
    if (r) {
      const at = this.positions.get(url);
      msg[r.offsetField] = at ? at.offset : "";
      if (at) msg[r.epochField] = at.epoch;
    }
    return JSON.stringify(msg);
  }

  /** The URL with the position to resume from, when the client resumes. */
  _withPosition(url) {
    const r = this.o.resume;
    if (!r || this.o.tokenIn === "message") return url;
    const at = this.positions.get(url);
    const q = (k, v) => encodeURIComponent(k) + "=" + encodeURIComponent(v);
    // No position yet: an empty offset asks Beacon where the room is, so that the client can
    // resume even if nothing arrives before its socket drops.
    const params = at ? q(r.offsetParam, at.offset) + "&" + q(r.epochParam, at.epoch) : q(r.offsetParam, "");
    return url + (url.includes("?") ? "&" : "?") + params;
  }

  /** Keeps the position a message carries; answers whether the app should see the message
   * (`false` for Beacon's resume answers, turned into events, and for repeats). */
  _track(msg, resumed) {
    const r = this.o.resume;
    if (!r || msg === null || typeof msg !== "object") return true;
    const offset = msg[r.offsetField];
    const epoch = msg[r.epochField];
    if (typeof offset !== "number" || typeof epoch !== "string") return true;
    const prev = this.positions.get(this.room);
    if (msg.type === r.recovered || msg.type === r.notRecovered) {
      this.positions.set(this.room, { offset, epoch });
      if (msg.type === r.recovered) this._emit("recovered", { offset, epoch, resumed });
      else this._emit("reload", { reason: msg[r.reasonField], offset, epoch });
      return false;
    }
    if (prev && prev.epoch === epoch && offset <= prev.offset) return false;
    this.positions.set(this.room, { offset, epoch });
    return true;
  }

  /** Closes for good: no reconnect. */
  close(code = 1000, reason = "") {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    if (this.ws) this.ws.close(code, reason);
    this.state = "stopped";
  }

  async _connect() {
    this.state = "connecting";
    let token = null;
    if (this.o.token) {
      try {
        token = await this.o.token({ refresh: this.refresh });
      } catch (e) {
        this._emit("error", e);
        return this._schedule("backoff", null);
      }
    }
    if (this.stopped) return;
    let url = typeof this.o.url === "function" ? this.o.url() : this.o.url;
    this.room = url;
    const resumed = this.positions.has(url);
    const auth = this.o.tokenIn === "message" ? this._authMessage(url, token) : null;
    url = this._withPosition(url);
    let protocols;
    if (token == null || this.o.tokenIn === "message") {
      // No token in the URL: none, or the first message carries it.
    } else if (this.o.tokenIn === "query") {
      url += (url.includes("?") ? "&" : "?") + encodeURIComponent(this.o.queryParam) + "=" + encodeURIComponent(token);
    } else {
      protocols = [this.o.subprotocol, token];
    }
    const ws = protocols ? new this.o.WebSocket(url, protocols) : new this.o.WebSocket(url);
    this.ws = ws;
    this.confirmed = false;
    let openedAt = 0;
    let stableTimer = null;
    const confirm = () => {
      if (this.confirmed) return;
      this.confirmed = true;
      this.attempt = 0;
      this.refresh = false;
      this.unconfirmed = [];
      clearTimeout(stableTimer);
    };
    ws.onopen = () => {
      openedAt = Date.now();
      this.state = "open";
      stableTimer = setTimeout(confirm, this.o.stableMs);
      // Before anything queued: Beacon reads nothing else until it has the token.
      if (auth) ws.send(auth);
      this._emit("open", { protocol: ws.protocol });
      this._armRefresh(ws, token);
      while (this.queue.length && ws.readyState === 1) {
        const data = this.queue.shift();
        ws.send(data);
        this.unconfirmed.push(data);
      }
    };
    ws.onmessage = (ev) => {
      confirm();
      let msg = ev.data;
      if (typeof msg === "string") {
        try { msg = JSON.parse(msg); } catch { /* not JSON: pass the text through */ }
      }
      if (this._track(msg, resumed)) this._emit("message", msg);
    };
    ws.onclose = (ev) => {
      clearTimeout(stableTimer);
      if (this.ws !== ws) return;
      clearTimeout(this.refreshTimer);
      this.ws = null;
      // Messages sent on a socket that never proved itself (closed right after the upgrade,
      // as Beacon does on a bad token) were not processed: send them again next time.
      if (!this.confirmed && this.unconfirmed.length) {
        this.queue = this.unconfirmed.concat(this.queue);
      }
      this.unconfirmed = [];
      const info = { code: ev.code, reason: ev.reason, wasClean: ev.wasClean, openMs: openedAt ? Date.now() - openedAt : 0 };
      this._emit("close", info);
      if (this.stopped) return;
      const cls = this.o.closeClasses[ev.code] || "backoff";
      this._schedule(cls, info);
    };
  }

  /** Schedules the in-band refresh of `token` on `ws` ahead of its expiry. */
  _armRefresh(ws, token) {
    clearTimeout(this.refreshTimer);
    const exp = tokenExpiresAt(token);
    if (!this.o.refreshType || !this.o.token || exp == null) return;
    // An already expired token gets the server's close and a reconnect, not a refresh.
    const remaining = exp - Date.now();
    if (remaining <= 0) return;
    const delay = refreshDelay(remaining, this.o.refreshBeforeMs);
    if (delay > MAX_TIMER_MS) return;
    this.refreshTimer = setTimeout(() => this._refresh(ws, exp), delay);
  }

  async _refresh(ws, exp) {
    let fresh = null;
    try {
      fresh = await this.o.token({ refresh: true });
    } catch (e) {
      this._emit("error", e);
    }
    // The socket may have closed while the token source worked; the next connect asks again.
    if (this.ws !== ws || ws.readyState !== 1) return;
    if (fresh == null) {
      // Try again while the current token still holds; past its expiry the server closes the
      // socket with an after-reauth code and the reconnect asks for a fresh token.
      const left = exp - Date.now();
      if (left > 2000) this.refreshTimer = setTimeout(() => this._refresh(ws, exp), Math.min(5000, left / 2));
      return;
    }
    ws.send(JSON.stringify({ type: this.o.refreshType, token: fresh }));
    this._emit("refreshed", { expiresAt: tokenExpiresAt(fresh) });
    this._armRefresh(ws, fresh);
  }

  _schedule(cls, info) {
    if (cls === "never") {
      this.stopped = true;
      this.state = "stopped";
      this._emit("stopped", info);
      return;
    }
    if (cls === "after-reauth") this.refresh = true;
    const delay = cls === "immediate"
      ? backoffDelay(0, this.o.backoff, this.o.random)
      : backoffDelay(this.attempt, this.o.backoff, this.o.random);
    this.attempt += 1;
    this.state = "waiting";
    this._emit("reconnecting", { ...info, class: cls, attempt: this.attempt, delayMs: delay });
    this.timer = setTimeout(() => this._connect(), delay);
  }
}
