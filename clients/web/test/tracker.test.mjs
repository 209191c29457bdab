// The tracker against real services, in Node (no browser, hence no CORS):
// the same code and the same connect-web gRPC-Web transport the browser
// uses, over Node's fetch. Needs a running ingest, processor and query, and
// the service binaries to start throw-away ingests (a dead broker, auth on).
//
//   TRIBUTARY_WEB_INGEST_URL   default http://127.0.0.1:50051
//   TRIBUTARY_WEB_QUERY_URL    default http://127.0.0.1:50052
//   TRIBUTARY_BIN_DIR          default ~/.cache/tributary/target/release
//   TRIBUTARY_WEB_DATABASE_URL default postgres://postgres:postgres@127.0.0.1:55432/tributary
//   TRIBUTARY_WEB_KAFKA        default 127.0.0.1:9092
//   TRIBUTARY_WEB_SPARE_PORT   first of 4 free ports for the throw-away ingests (default 51161)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir, homedir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const INGEST = process.env.TRIBUTARY_WEB_INGEST_URL ?? "http://127.0.0.1:50051";
const QUERY = process.env.TRIBUTARY_WEB_QUERY_URL ?? "http://127.0.0.1:50052";
const BIN = process.env.TRIBUTARY_BIN_DIR ?? join(homedir(), ".cache/tributary/target/release");
const DB = process.env.TRIBUTARY_WEB_DATABASE_URL ?? "postgres://postgres:postgres@127.0.0.1:55432/tributary";
const KAFKA = process.env.TRIBUTARY_WEB_KAFKA ?? "127.0.0.1:9092";
const SPARE = Number(process.env.TRIBUTARY_WEB_SPARE_PORT ?? 51161);
const RUN = `t${Date.now().toString(36)}`;

let lib; // the tracker, built from src/ for Node
let query; // a QueryService client
const children = [];

before(async () => {
  const dir = mkdtempSync(join(tmpdir(), "tributary-web-test-"));
  await build({
    entryPoints: [join(here, "node-entry.ts")],
    bundle: true,
    format: "esm",
    platform: "node",
    outfile: join(dir, "lib.mjs"),
    logLevel: "error",
  });
  lib = await import(join(dir, "lib.mjs"));
  query = lib.queryClient(QUERY);
});

after(() => {
  for (const c of children) c.kill("SIGTERM");
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, f, timeoutMs = 20000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Starts a throw-away ingest; resolves once its health answers SERVING over gRPC-Web. */
async function startIngest(port, args, env = {}) {
  const child = spawn(join(BIN, "tributary-ingest"), ["--grpc-addr", `127.0.0.1:${port}`, "--http-addr", `127.0.0.1:${port + 1}`, ...args], {
    env: { ...process.env, TRIBUTARY_DATABASE_URL: DB, TRIBUTARY_KAFKA_BROKERS: KAFKA, TRIBUTARY_OTLP_ENDPOINT: "", ...env },
    stdio: "ignore",
  });
  children.push(child);
  await until(`ingest on ${port}`, async () => (await fetch(`http://127.0.0.1:${port + 1}/live`).then((r) => r.ok, () => false)), 30000);
  return child;
}

async function stored(id) {
  try {
    return await query.getEvent({ eventId: id });
  } catch {
    return undefined;
  }
}

test("uuidv7: format, version, variant, time, order", () => {
  const t = Date.now();
  const ids = Array.from({ length: 5000 }, () => lib.uuidv7(t));
  for (const id of ids.slice(0, 50)) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(new Set(ids).size, ids.length);
  assert.deepEqual([...ids].sort(), ids, "ids made in one tab sort in the order they were made");
  assert.ok(lib.uuidv7Time(ids[0]) >= t && lib.uuidv7Time(ids.at(-1)) <= t + 2);
});

test("retryDelay: jittered exponential, capped, never below RetryInfo", () => {
  for (let a = 0; a < 12; a++) {
    const cap = Math.min(30000, 500 * 2 ** a);
    for (let i = 0; i < 200; i++) {
      const d = lib.retryDelay(a);
      assert.ok(d >= Math.floor(cap / 2) && d <= cap, `attempt ${a}: ${d} not in [${cap / 2}, ${cap}]`);
    }
  }
  const lows = new Set(Array.from({ length: 50 }, () => lib.retryDelay(3)));
  assert.ok(lows.size > 10, "delays are jittered");
  for (let i = 0; i < 100; i++) assert.ok(lib.retryDelay(0, {}, 5000) >= 5000);
});

test("every tracked event is acknowledged and stored once with its own id and occurred_at", async () => {
  const acked = [];
  const t = new lib.Tracker({ endpoint: INGEST, storage: null, pageViews: false, batchSize: 10, flushIntervalMs: 50, userId: `${RUN}-u1`, onAck: (es) => acked.push(...es) });
  const ids = [];
  const at = new Map();
  for (let i = 0; i < 25; i++) {
    const id = t.track("web.test", { i });
    ids.push(id);
    at.set(id, t.pending().find((e) => e.id === id).at);
  }
  await until("25 acks", () => acked.length === 25);
  assert.deepEqual(acked.map((e) => e.id).sort(), [...ids].sort());
  assert.equal(t.state().queued, 0);
  assert.equal(t.state().failedCalls, 0);
  for (const id of ids) {
    const ev = await until(`event ${id} stored`, () => stored(id));
    assert.equal(ev.event.eventId, id);
    assert.equal(ev.event.userId, `${RUN}-u1`);
    const ms = Number(ev.event.occurredAt.seconds) * 1000 + Math.floor(ev.event.occurredAt.nanos / 1e6);
    assert.equal(ms, at.get(id), "occurred_at is the time of track()");
  }
  const list = await query.listEvents({ filter: { userId: `${RUN}-u1` }, pageSize: 100 });
  assert.equal(list.events.length, 25, "stored once each");
  t.stop();
});

test("an event refused with INVALID_ARGUMENT goes to onReject; the others of its batch are acknowledged", async () => {
  const rejected = [];
  const acked = [];
  const t = new lib.Tracker({ endpoint: INGEST, storage: null, pageViews: false, flushIntervalMs: 20, userId: `${RUN}-u2`, onReject: (e, why) => rejected.push([e, why]), onAck: (es) => acked.push(...es) });
  const good1 = t.track("web.test", { ok: 1 });
  const bad = t.track("Not A Valid Type", {});
  const good2 = t.track("web.test", { ok: 2 });
  await until("answers", () => acked.length === 2 && rejected.length === 1);
  assert.deepEqual(acked.map((e) => e.id).sort(), [good1, good2].sort());
  assert.equal(rejected[0][0].id, bad);
  assert.equal(rejected[0][1].code, 3);
  assert.ok(rejected[0][1].fieldViolations.some((v) => v.field.endsWith("event_type")), JSON.stringify(rejected[0][1]));
  await sleep(300);
  const s = t.state();
  assert.equal(s.queued, 0);
  assert.equal(s.failedCalls, 0, "a refused event is not retried");
  t.stop();
});

test("a refused connection (connect-web: Unknown) keeps the events and retries with backoff", async () => {
  const t = new lib.Tracker({ endpoint: "http://127.0.0.1:9", storage: null, pageViews: false, flushIntervalMs: 10, retry: { baseMs: 40, maxMs: 200 } });
  const id = t.track("web.test", {});
  await until("3 failed calls", () => t.state().failedCalls >= 3, 10000);
  const s = t.state();
  assert.equal(s.queued, 1);
  assert.equal(t.pending()[0].id, id, "same id on every retry");
  assert.ok(t.pending()[0].attempts >= 3);
  assert.equal(s.lastError.code, "Unknown");
  t.stop();
});

test("RetryInfo from ingest (broker unreachable: UNAVAILABLE, retry in 1 s) sets the wait", async () => {
  const port = SPARE;
  await startIngest(port, ["--kafka-brokers", "127.0.0.1:9", "--auth", "off"]);
  const t = new lib.Tracker({ endpoint: `http://127.0.0.1:${port}`, storage: null, pageViews: false, flushIntervalMs: 10, retry: { baseMs: 10, maxMs: 20 } });
  t.track("web.test", {});
  await until("a failed call", () => t.state().failedCalls >= 1, 20000);
  const s = t.state();
  assert.equal(s.lastError.code, "Unavailable", JSON.stringify(s.lastError));
  const wait = s.retryAt - s.lastError.at;
  assert.ok(wait >= 1000, `waits ${wait} ms; RetryInfo asked for 1 s and the backoff alone is at most 20 ms`);
  assert.equal(s.queued, 1);
  t.stop();
});

test("UNAUTHENTICATED pauses sending and keeps the events; a valid key resumes and delivers them", async () => {
  const port = SPARE + 2;
  const admin = execFileSync(join(BIN, "tributary-ctl"), ["generate-key"]).toString().trim();
  await startIngest(port, ["--auth", "on"], { TRIBUTARY_BOOTSTRAP_ADMIN_KEY: admin });
  const acked = [];
  const t = new lib.Tracker({ endpoint: `http://127.0.0.1:${port}`, key: "trb_pub_notakey_0000", storage: null, pageViews: false, flushIntervalMs: 10, retry: { baseMs: 10, maxMs: 20 }, userId: `${RUN}-u3`, onAck: (es) => acked.push(...es) });
  const ids = [t.track("web.test", { n: 1 }), t.track("web.test", { n: 2 })];
  await until("paused", () => t.state().paused, 10000);
  const calls = t.state().failedCalls;
  await sleep(500);
  assert.equal(t.state().failedCalls, calls, "no call while paused");
  assert.equal(t.state().lastError.code, "Unauthenticated");
  assert.equal(t.state().queued, 2);
  t.setKey(admin);
  await until("acks after setKey", () => acked.length === 2);
  assert.deepEqual(acked.map((e) => e.id).sort(), ids.sort());
  t.stop();
});

test("a backlog larger than one call is sent call after call, without waiting for the flush interval", async () => {
  // 1000 events of ~5 KiB: about 5 MiB, more than one call carries (1 MiB per
  // call, well under ingest's 4 MiB limit).
  const acked = [];
  const rejected = [];
  const t = new lib.Tracker({ endpoint: INGEST, storage: null, pageViews: false, batchSize: 1000, flushIntervalMs: 60000, userId: `${RUN}-u4`, onAck: (es) => acked.push(...es), onReject: (e) => rejected.push(e) });
  const blob = "x".repeat(5000);
  for (let i = 0; i < 1000; i++) t.track("web.big", { i, blob });
  const started = Date.now();
  await t.flush();
  await until("1000 acks", () => acked.length === 1000, 30000);
  assert.ok(Date.now() - started < 30000);
  assert.ok(t.state().failedCalls === 0 && rejected.length === 0, JSON.stringify(t.state()));
  t.stop();
});
