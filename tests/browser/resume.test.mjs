// Headless Chromium follows a room with history through the JS client (clients/js/beacon.js)
// while the path to Beacon drops: a TCP proxy between the page and Beacon cuts every socket
// and refuses new ones for a while (what a proxy restart does), while messages are published
// during the outage and during the reconnect. Every message is shown exactly once, in order,
// and the client reports "recovered"; a client too far behind reports "reload" instead.
// Driven by tests/browser_resume.rs: BEACON_ADDR, TOKEN, API_KEY.
import assert from "node:assert/strict";
import net from "node:net";
import { serveRepo, launch } from "./lib.mjs";

const env = (k) => { const v = process.env[k]; assert.ok(v, `${k} must be set`); return v; };
const beaconAddr = env("BEACON_ADDR");
const [beaconHost, beaconPort] = beaconAddr.split(":");
const token = env("TOKEN");
const apiKey = env("API_KEY");

/** A TCP proxy to Beacon that can drop every connection and refuse new ones. */
async function proxy() {
  const open = new Set();
  let down = false;
  const server = net.createServer((client) => {
    if (down) { client.destroy(); return; }
    const upstream = net.connect(Number(beaconPort), beaconHost);
    open.add(client); open.add(upstream);
    const forget = () => { open.delete(client); open.delete(upstream); client.destroy(); upstream.destroy(); };
    client.on("error", forget); upstream.on("error", forget);
    client.on("close", forget); upstream.on("close", forget);
    client.pipe(upstream); upstream.pipe(client);
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    cut() { down = true; for (const s of open) s.destroy(); open.clear(); },
    restore() { down = false; },
    close() { server.close(); },
  };
}

async function publish(items) {
  const res = await fetch(`http://${beaconAddr}/api/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify(items),
  });
  assert.equal(res.status, 200, await res.text());
}
const said = (room, text) => ({ room, message: { type: "said", text } });

const { server, origin } = await serveRepo();
const chrome = await launch();
const p = await proxy();
let failed = 0;
let checks = 0;
const page = await chrome.context.newPage();
page.on("console", (m) => console.log(`[page] ${m.text()}`));
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

/** Starts a client in the page following `path`; its messages and events land in window.f.
 * `tokenIn`: "query", or "message" for an endpoint that authenticates by first message. */
async function follow(path, tokenIn = "query") {
  await page.evaluate(({ ws, path, token, tokenIn }) => {
    window.f = { shown: [], recovered: [], reload: [], closes: 0 };
    const client = new window.beacon.BeaconClient({
      url: `${ws}${path}`,
      token: () => token,
      tokenIn,
      backoff: { initialMs: 50, maxMs: 250 },
      resume: {
        offsetField: "offset", epochField: "epoch", offsetParam: "since", epochParam: "epoch",
        recovered: "resumed", notRecovered: "reload", reasonField: "reason",
      },
    });
    client.on("message", (m) => { if (m.type === "said") window.f.shown.push(m.text); });
    client.on("recovered", (i) => window.f.recovered.push(i));
    client.on("reload", (i) => window.f.reload.push(i));
    client.on("close", () => { window.f.closes += 1; });
    window.client = client;
  }, { ws: `ws://${p.addr}`, path, token, tokenIn });
}

const waitFor = (fn, arg) => page.waitForFunction(fn, arg, { timeout: 30000 });

await check("every status published while the connection was down is shown once, in order", async () => {
  await follow("/ws/rooms/booking-1/");
  await waitFor(() => window.f.recovered.length === 1);
  const texts = [];
  let n = 0;
  const next = () => { const t = `status-${n++}`; texts.push(t); return t; };
  for (let i = 0; i < 5; i++) await publish([said("room:booking-1", next())]);
  await waitFor((k) => window.f.shown.length === k, texts.length);
  for (let round = 0; round < 2; round++) {
    const closes = await page.evaluate(() => window.f.closes);
    p.cut();
    await waitFor((c) => window.f.closes > c, closes);
    // Published while the page has no socket.
    for (let i = 0; i < 10; i++) await publish([said("room:booking-1", next())]);
    p.restore();
    // Published while the page reconnects and catches up.
    for (let i = 0; i < 15; i++) await publish([said("room:booking-1", next())]);
    await waitFor((k) => window.f.shown.length >= k, texts.length);
  }
  const f = await page.evaluate(() => window.f);
  assert.deepEqual(f.shown, texts);
  assert.equal(f.reload.length, 0, JSON.stringify(f.reload));
  assert.ok(f.recovered.filter((r) => r.resumed).length >= 2, JSON.stringify(f.recovered));
  const position = await page.evaluate(() => window.client.position);
  assert.equal(position.offset, texts.length);
  await page.evaluate(() => window.client.close());
});

await check("a client that authenticates by first message resumes through it too", async () => {
  await follow("/ws/auth/rooms/booking-3/", "message");
  await waitFor(() => window.f.recovered.length === 1);
  const texts = [];
  let n = 0;
  const next = () => { const t = `m-${n++}`; texts.push(t); return t; };
  for (let i = 0; i < 3; i++) await publish([said("room:booking-3", next())]);
  await waitFor((k) => window.f.shown.length === k, texts.length);
  for (let round = 0; round < 2; round++) {
    const closes = await page.evaluate(() => window.f.closes);
    p.cut();
    await waitFor((c) => window.f.closes > c, closes);
    for (let i = 0; i < 8; i++) await publish([said("room:booking-3", next())]);
    p.restore();
    for (let i = 0; i < 8; i++) await publish([said("room:booking-3", next())]);
    await waitFor((k) => window.f.shown.length >= k, texts.length);
  }
  const f = await page.evaluate(() => window.f);
  assert.deepEqual(f.shown, texts);
  assert.equal(f.reload.length, 0, JSON.stringify(f.reload));
  // Resumed by the first message: the URL carried no position and no token.
  assert.ok(f.recovered.filter((r) => r.resumed).length >= 2, JSON.stringify(f.recovered));
  await page.evaluate(() => window.client.close());
});

await check("a client too far behind is told to reload, with the reason", async () => {
  await follow("/ws/small/booking-2/");
  await waitFor(() => window.f.recovered.length === 1);
  p.cut();
  await waitFor(() => window.f.closes > 0);
  await publish(Array.from({ length: 30 }, (_, i) => said("small:booking-2", `s${i}`)));
  p.restore();
  await waitFor(() => window.f.reload.length === 1);
  const f = await page.evaluate(() => window.f);
  assert.equal(f.reload[0].reason, "too_far_behind");
  assert.equal(f.reload[0].offset, 30);
  assert.deepEqual(f.shown, [], "never a partial recovery");
  // From the reload on, live messages flow again.
  await publish([said("small:booking-2", "after")]);
  await waitFor(() => window.f.shown.length === 1);
  await page.evaluate(() => window.client.close());
});

await chrome.close();
p.close();
server.close();
console.log(`${checks - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
