// Headless Chromium follows a booking through the JS client (clients/js/beacon.js), through
// real nginx, while the Beacon node behind nginx is killed and started again and while nginx
// itself is stopped and started (every connection through it drops). History lives in Redis
// ([cluster] broker = "redis"), so the restarted node knows the room's epoch and offsets: every
// status change published meanwhile (through a second node's API) is shown exactly once, in
// order, and the client always recovers.
// Driven by tests/browser_resume.rs: FRONT (nginx), PUBLISH_ADDR (the second node), TOKEN,
// API_KEY. An action the driver must take is a line `ACTION <name>` on stdout; the driver
// answers `done` on stdin once it is taken.
import assert from "node:assert/strict";
import readline from "node:readline";
import { serveRepo, launch } from "./lib.mjs";

const env = (k) => { const v = process.env[k]; assert.ok(v, `${k} must be set`); return v; };
const front = env("FRONT");
const publishAddr = env("PUBLISH_ADDR");
const token = env("TOKEN");
const apiKey = env("API_KEY");

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function action(name) {
  console.log(`ACTION ${name}`);
  const { value } = await lines.next();
  assert.equal(value, "done", `the driver did not take ${name}`);
}

async function publish(items) {
  const res = await fetch(`http://${publishAddr}/api/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify(items),
  });
  assert.equal(res.status, 200, await res.text());
}
const status = (text) => ({ room: "room:booking-9", message: { type: "said", text } });

const { server, origin } = await serveRepo();
const chrome = await launch();
let failed = 0;
const page = await chrome.context.newPage();
page.on("console", (m) => console.log(`[page] ${m.text()}`));
await page.goto(`${origin}/tests/browser/client.html`);
await page.waitForFunction(() => document.title === "ready");
const waitFor = (fn, arg) => page.waitForFunction(fn, arg, { timeout: 60000 });

try {
  await page.evaluate(({ ws, token }) => {
    window.f = { shown: [], recovered: [], reload: [], closes: 0 };
    const client = new window.beacon.BeaconClient({
      url: `${ws}/ws/rooms/booking-9/`,
      token: () => token,
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
  }, { ws: `ws://${front}`, token });
  await waitFor(() => window.f.recovered.length === 1);
  const epoch = (await page.evaluate(() => window.f.recovered[0])).epoch;
  const texts = [];
  let n = 0;
  const next = () => { const t = `status-${n++}`; texts.push(t); return t; };
  for (let i = 0; i < 5; i++) await publish([status(next())]);
  await waitFor((k) => window.f.shown.length === k, texts.length);

  for (const [stop, start] of [["stop-beacon", "start-beacon"], ["stop-nginx", "start-nginx"]]) {
    const closes = await page.evaluate(() => window.f.closes);
    await action(stop);
    await waitFor((c) => window.f.closes > c, closes);
    // Published while the page has no socket.
    for (let i = 0; i < 10; i++) await publish([status(next())]);
    await action(start);
    // Published while the page reconnects and catches up.
    for (let i = 0; i < 10; i++) await publish([status(next())]);
    await waitFor((k) => window.f.shown.length >= k, texts.length);
  }
  const f = await page.evaluate(() => window.f);
  assert.deepEqual(f.shown, texts, "every status once, in order");
  assert.equal(f.reload.length, 0, JSON.stringify(f.reload));
  const resumed = f.recovered.filter((r) => r.resumed);
  assert.ok(resumed.length >= 2, JSON.stringify(f.recovered));
  assert.ok(f.recovered.every((r) => r.epoch === epoch), "one epoch across the restart");
  const position = await page.evaluate(() => window.client.position);
  assert.equal(position.offset, texts.length);
  await page.evaluate(() => window.client.close());
  console.log("ok - a booking followed through a Beacon restart and nginx drops");
} catch (e) {
  failed += 1;
  console.log(`not ok - a booking followed through a Beacon restart and nginx drops\n${e.stack}`);
}

await chrome.close();
server.close();
console.log(`${1 - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
