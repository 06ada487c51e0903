// Headless Chromium against a running Beacon (core test protocol): raw WebSockets with the
// token in the query and in the subprotocol, a declared close code in onclose, and the JS
// client's reconnect classes. Driven by tests/browser.rs, which starts Beacon and mints tokens:
//   BEACON_ADDR, TOKEN_MEMBER, TOKEN_GUEST (no role: 4003), TOKEN_EXPIRED (4002)
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { serveRepo, launch } from "./lib.mjs";

const env = (k) => { const v = process.env[k]; assert.ok(v, `${k} must be set`); return v; };
const cfg = {
  ws: `ws://${env("BEACON_ADDR")}`,
  member: env("TOKEN_MEMBER"),
  guest: env("TOKEN_GUEST"),
  expired: env("TOKEN_EXPIRED"),
};
const secret = env("JWT_SECRET");

// A simplejwt-shaped HS256 access token for user 1, minted when the page's token source asks.
let minted = 0;
function mint(lifetimeS) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  minted += 1;
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ token_type: "access", exp: now + lifetimeS, iat: now, jti: `browser-${minted}`, user_id: 1, role: "member" });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

const { server, origin } = await serveRepo();
const chrome = await launch();
let failed = 0;
let checks = 0;
const page = await chrome.context.newPage();
page.on("console", (m) => console.log(`[page] ${m.text()}`));
await page.exposeFunction("mintToken", (lifetimeS) => mint(lifetimeS));
await page.goto(`${origin}/tests/browser/client.html`);
await page.waitForFunction(() => document.title === "ready");

async function check(name, fn) {
  checks += 1;
  try {
    await fn();
    console.log(`ok - ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`not ok - ${name}\n${e.stack}`);
  }
}

await check("raw WebSocket, token in the query", async () => {
  const got = await page.evaluate(async (c) => {
    const ws = new WebSocket(`${c.ws}/ws/rooms/lobby/?token=${c.member}`);
    const msgs = [];
    await new Promise((ok, no) => {
      ws.onmessage = (e) => {
        msgs.push(JSON.parse(e.data));
        if (msgs.length === 1) ws.send(JSON.stringify({ type: "ping" }));
        if (msgs.length === 2) ok();
      };
      ws.onclose = (e) => no(new Error(`closed ${e.code}`));
    });
    ws.onclose = null;
    ws.close(1000);
    return msgs;
  }, cfg);
  assert.equal(got[0].type, "welcome");
  assert.equal(got[0].room, "lobby");
  assert.deepEqual(got[1], { type: "pong" });
});

await check("raw WebSocket, token in the subprotocol; only the marker comes back", async () => {
  const got = await page.evaluate(async (c) => {
    const ws = new WebSocket(`${c.ws}/ws/rooms/lobby/`, ["jwt", c.member]);
    const first = await new Promise((ok, no) => {
      ws.onmessage = (e) => ok(JSON.parse(e.data));
      ws.onclose = (e) => no(new Error(`closed ${e.code}`));
    });
    ws.onclose = null;
    const protocol = ws.protocol;
    ws.close(1000);
    return { first, protocol };
  }, cfg);
  assert.equal(got.protocol, "jwt");
  assert.equal(got.first.type, "welcome");
});

await check("declared close codes reach onclose", async () => {
  const got = await page.evaluate(async (c) => {
    const closeOf = (url) => new Promise((ok) => {
      const ws = new WebSocket(url);
      ws.onclose = (e) => ok({ code: e.code, reason: e.reason, clean: e.wasClean });
    });
    return {
      bad: await closeOf(`${c.ws}/ws/rooms/lobby/?token=not.a.jwt`),
      guest: await closeOf(`${c.ws}/ws/rooms/lobby/?token=${c.guest}`),
    };
  }, cfg);
  assert.deepEqual(got.bad, { code: 4001, reason: "Invalid token", clean: true });
  assert.equal(got.guest.code, 4003);
});

await check("client: expired token -> refresh, queued message sent after connect", async () => {
  const got = await page.evaluate(async (c) => {
    const calls = [];
    const events = [];
    const client = new window.beacon.BeaconClient({
      url: `${c.ws}/ws/rooms/lobby/`,
      tokenIn: "subprotocol",
      token: ({ refresh }) => { calls.push(refresh); return refresh ? c.member : c.expired; },
      closeClasses: { 4002: "after-reauth", 4003: "never" },
      backoff: { initialMs: 50, maxMs: 200 },
    });
    client.on("close", (i) => events.push(`close ${i.code}`));
    client.on("reconnecting", (i) => events.push(`reconnecting ${i.class}`));
    client.send({ type: "ping" }); // before any socket exists
    const msgs = [];
    await new Promise((ok) => client.on("message", (m) => { msgs.push(m.type); if (msgs.includes("pong")) ok(); }));
    client.close();
    return { calls, events, msgs };
  }, cfg);
  assert.deepEqual(got.calls, [false, true]);
  assert.deepEqual(got.events, ["close 4002", "reconnecting after-reauth"]);
  assert.ok(got.msgs.includes("welcome") && got.msgs.includes("pong"), got.msgs.join());
});

// Each socket below starts with an 8-second token. With in-band refresh the client replaces it
// halfway through its life and the socket is still answering after the first token's expiry;
// without it (the control) the same socket is closed with 4002 at that expiry.
async function shortTokenSession(refreshType) {
  return page.evaluate(async ([c, refreshType]) => {
    const calls = [];
    const events = [];
    let firstExp = 0;
    const client = new window.beacon.BeaconClient({
      url: `${c.ws}/ws/rooms/lobby/`,
      token: async ({ refresh }) => {
        calls.push(refresh);
        const t = await window.mintToken(8);
        if (!firstExp) firstExp = window.beacon.tokenExpiresAt(t);
        return t;
      },
      refreshType,
      closeClasses: { 4002: "never" },
    });
    client.on("refreshed", () => events.push("refreshed"));
    client.on("close", (i) => events.push(`close ${i.code}`));
    const welcomed = new Promise((ok) => client.on("message", (m) => { if (m.type === "welcome") ok(); }));
    await welcomed;
    // Past the first token's expiry (whole seconds, no leeway declared) by a second.
    await new Promise((ok) => setTimeout(ok, Math.max(0, firstExp - Date.now()) + 1000));
    let pong = false;
    if (client.state === "open") {
      const ponged = new Promise((ok) => client.on("message", (m) => { if (m.type === "pong") ok(true); }));
      client.send({ type: "ping" });
      pong = await Promise.race([ponged, new Promise((ok) => setTimeout(() => ok(false), 5000))]);
    }
    const state = client.state;
    client.close();
    return { calls, events, pong, state };
  }, [cfg, refreshType]);
}

await check("client: refreshes in-band before expiry, the socket outlives its first token", async () => {
  const got = await shortTokenSession("refresh_token");
  // One refresh halfway through the first token; the second token's own refresh may have come too.
  assert.ok(got.calls.length >= 2 && got.calls[0] === false && got.calls.slice(1).every((r) => r), JSON.stringify(got));
  assert.ok(got.events.length === got.calls.length - 1 && got.events.every((e) => e === "refreshed"), JSON.stringify(got));
  assert.deepEqual([got.pong, got.state], [true, "open"], JSON.stringify(got));
});

await check("client: without in-band refresh the same socket is closed at expiry (4002)", async () => {
  const got = await shortTokenSession(null);
  assert.deepEqual(got.calls, [false], JSON.stringify(got));
  assert.deepEqual(got.events, ["close 4002"], JSON.stringify(got));
  assert.equal(got.state, "stopped");
});

await check("client: never retries after 4003", async () => {
  const got = await page.evaluate(async (c) => {
    let connects = 0;
    const client = new window.beacon.BeaconClient({
      url: `${c.ws}/ws/rooms/lobby/`,
      token: () => { connects += 1; return c.guest; },
      backoff: { initialMs: 10, maxMs: 20 },
    });
    const stopped = await new Promise((ok) => client.on("stopped", ok));
    await new Promise((ok) => setTimeout(ok, 300)); // would have retried several times by now
    return { code: stopped.code, connects, state: client.state };
  }, cfg);
  assert.deepEqual(got, { code: 4003, connects: 1, state: "stopped" });
});

await check("client: backoff close reconnects and re-sends what was queued meanwhile", async () => {
  const got = await page.evaluate(async (c) => {
    const events = [];
    const client = new window.beacon.BeaconClient({
      url: `${c.ws}/ws/rooms/flood/`,
      token: () => c.member,
      backoff: { initialMs: 50, maxMs: 200 },
      stableMs: 100,
    });
    let opens = 0;
    const pongs = [];
    const done = new Promise((ok) => {
      client.on("open", () => {
        opens += 1;
        if (opens === 1) {
          // Flood the room until the server cuts us off (rate limit or slow consumer).
          for (let i = 0; i < 3000; i++) client.send({ type: "say", text: `m${i}` });
        }
      });
      client.on("message", (m) => { if (m.type === "pong") { pongs.push(m); ok(); } });
    });
    client.on("reconnecting", (i) => {
      events.push({ code: i.code, cls: i.class, delayMs: i.delayMs });
      client.send({ type: "ping" }); // queued while disconnected
    });
    await done;
    client.close();
    return { events, opens };
  }, cfg);
  assert.ok(got.events.length >= 1, JSON.stringify(got));
  assert.ok([4008, 4029].includes(got.events[0].code), JSON.stringify(got));
  assert.equal(got.events[0].cls, "backoff");
  assert.ok(got.events[0].delayMs >= 0 && got.events[0].delayMs < 50, JSON.stringify(got));
  assert.ok(got.opens >= 2);
});

await check("client: close classes from the AsyncAPI extension, stricter class wins", async () => {
  const got = await page.evaluate(() => window.beacon.closeClassesFromAsyncApi({
    "x-beacon-close-codes": [
      { code: 1001, reconnect: "backoff" }, { code: 1001, reconnect: "immediate" },
      { code: 4003, reconnect: "never" },
    ],
  }));
  assert.deepEqual(got, { 1001: "backoff", 4003: "never" });
});

await chrome.close();
server.close();
console.log(`${checks - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
