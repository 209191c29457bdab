// Drives the live page in Debian's Chromium (headless, playwright-core; no
// browser download) and writes what it saw as JSON for tests/85-web.sh,
// which checks it against ListEvents/AggregateEvents with grpcurl. Nothing
// here decides pass or fail beyond "the step could be done": the checks are
// in the shell area, against the stored events.
//
// Environment (tests/85-web.sh sets it):
//   WEB_PAGE_URL       the page on an allowed origin, e.g. http://127.0.0.1:8088/
//   WEB_BAD_PAGE_URL   the same page on an origin ingest and query do not allow
//   WEB_INGEST_URL     ingest's gRPC-Web base URL;  WEB_QUERY_URL: query's
//   WEB_INGEST_ADDR    ingest's gRPC address for grpcurl (host:port)
//   WEB_STOP_INGEST    shell command that stops ingest;  WEB_START_INGEST: starts it again
//   GRPCURL            the grpcurl binary
//   WEB_OUT            where the JSON report goes;  WEB_SCREENSHOT: the PNG
//   WEB_LOAD_EVENTS    events tracked for the throughput step (default 5000)
//   CHROMIUM           default /usr/bin/chromium
import { execFileSync, execSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

// playwright-core is one of clients/web's pinned packages (scripts/web.sh).
const webDir = join(dirname(fileURLToPath(import.meta.url)), "../../clients/web");
const { chromium } = createRequire(join(webDir, "package.json"))("playwright-core");

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const PAGE = env("WEB_PAGE_URL");
const BAD_PAGE = env("WEB_BAD_PAGE_URL");
const INGEST = env("WEB_INGEST_URL");
const QUERY = env("WEB_QUERY_URL");
const INGEST_ADDR = env("WEB_INGEST_ADDR");
const GRPCURL = env("GRPCURL");
const OUT = env("WEB_OUT");
const SHOT = env("WEB_SCREENSHOT");
const LOAD = Number(env("WEB_LOAD_EVENTS", "5000"));
const qs = `?ingest=${encodeURIComponent(INGEST)}&query=${encodeURIComponent(QUERY)}`;

const report = { steps: [] };
const save = () => writeFileSync(OUT, JSON.stringify(report, null, 2) + "\n");
const step = (name) => {
  report.steps.push(name);
  console.error(`web: ${name}`);
  save();
};

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  headless: true,
  // playwright gives each launch a fresh temporary profile (no --user-data-dir).
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const consoleLines = [];
async function open(url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1180 } });
  const page = await context.newPage();
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(url + qs);
  await page.waitForFunction(() => window.tributaryPage && window.tributaryPage.tracker);
  return page;
}
const st = (page) => page.evaluate(() => window.tributaryPage.tracker.state());
const waitFor = (page, f, arg, timeout = 30000) => page.waitForFunction(f, arg, { timeout, polling: 50 });

try {
  // ---------------------------------------------------------------- clicks and a form
  step("load the page");
  const page = await open(PAGE);
  const visitor = await page.evaluate(() => window.tributaryPage.tracker.user);
  report.visitor = visitor;
  await waitFor(page, () => window.tributaryPage.tail === "live");
  await waitFor(page, () => window.tributaryPage.acked.length === 1); // the page.view
  step("click three buttons and submit the form");
  await page.click("button[data-track=signup]");
  await page.click("button[data-track=add-to-cart]");
  await page.click("button[data-track=read-docs]");
  await page.fill("input[name=email]", "someone@example.com");
  await page.click("#newsletter button[type=submit]");
  await waitFor(page, () => window.tributaryPage.acked.length === 5);
  report.basic = {
    acked: await page.evaluate(() => window.tributaryPage.acked),
    state: await st(page),
  };
  // The live panel shows them too (TailEvents).
  await waitFor(page, (ids) => ids.every((id) => window.tributaryPage.seen.has(id)), report.basic.acked.map((e) => e.id), 20000);
  report.basic.shownLive = true;
  save();

  // ---------------------------------------------------------------- ingest down
  step("stop ingest");
  execSync(env("WEB_STOP_INGEST"), { stdio: ["ignore", "inherit", "inherit"] });
  const outage = {};
  report.outage = outage;
  for (let i = 0; i < 3; i++) await page.click("button[data-track=signup]");
  await waitFor(page, () => window.tributaryPage.tracker.state().failedCalls > 0, undefined, 20000);
  outage.beforeReload = await st(page);
  outage.storedLocally = await page.evaluate(() =>
    Object.keys(localStorage).filter((k) => k.startsWith("tributary.q.")).reduce((n, k) => n + JSON.parse(localStorage.getItem(k)).e.length, 0),
  );
  step("reload the page while ingest is down (events wait in localStorage)");
  await page.reload();
  await page.waitForFunction(() => window.tributaryPage && window.tributaryPage.tracker);
  outage.afterReload = await st(page);
  for (let i = 0; i < 2; i++) await page.click("button[data-track=add-to-cart]");
  await page.waitForTimeout(1500);
  outage.pending = await page.evaluate(() => window.tributaryPage.tracker.pending().map((e) => ({ id: e.id, type: e.type, attempts: e.attempts })));
  outage.stateDown = await st(page);
  step("start ingest");
  const restarted = Date.now();
  execSync(env("WEB_START_INGEST"), { stdio: ["ignore", "inherit", "inherit"] });
  // The tracker's next retry is at most 30 s away (its backoff cap).
  await waitFor(page, () => window.tributaryPage.tracker.state().queued === 0, undefined, 60000);
  outage.drainedAfterStartMs = Date.now() - restarted;
  outage.stateUp = await st(page);
  outage.ackedAfterReload = await page.evaluate(() => window.tributaryPage.acked);
  save();

  // ---------------------------------------------------------------- live: an event published by grpcurl
  step("publish an event with grpcurl and wait for it in the live panel");
  await waitFor(page, () => window.tributaryPage.tail === "live");
  const liveId = `web-live-${Date.now()}`;
  const published = Date.now();
  execFileSync(GRPCURL, ["-plaintext", "-d", JSON.stringify({ event: { eventId: liveId, eventType: "grpcurl.ping", source: "tests/85-web.sh", userId: visitor, payload: { from: "grpcurl" } } }), INGEST_ADDR, "tributary.v1.IngestService/Publish"]);
  const acked = Date.now();
  report.live = { eventId: liveId, publishMs: acked - published };
  try {
    await waitFor(page, (id) => window.tributaryPage.seen.has(id), liveId, 15000);
    report.live.seen = true;
    report.live.delayMs = (await page.evaluate((id) => window.tributaryPage.seen.get(id).at, liveId)) - published;
  } catch {
    report.live.seen = false;
  }
  save();

  // ---------------------------------------------------------------- throughput of one tab
  step(`track ${LOAD} events as fast as the tab can, until all are acknowledged`);
  const load = page.evaluate(async (n) => {
    const t = window.tributaryPage.tracker;
    const base = t.state().acked;
    const started = performance.now();
    for (let i = 0; i < n; i++) t.track("load.test", { i });
    const tracked = performance.now();
    while (t.state().acked < base + n) await new Promise((r) => setTimeout(r, 10));
    const done = performance.now();
    return { events: n, trackMs: tracked - started, totalMs: done - started, state: t.state() };
  }, LOAD);
  await page.waitForTimeout(1200);
  await page.screenshot({ path: SHOT, fullPage: true });
  report.load = await load;
  report.load.perSecond = Math.round(report.load.events / (report.load.totalMs / 1000));
  save();
  await page.context().close();

  // ---------------------------------------------------------------- an origin not allowed
  step("open the page from an origin that is not allowed");
  const bad = await open(BAD_PAGE);
  report.cors = { visitor: await bad.evaluate(() => window.tributaryPage.tracker.user) };
  await bad.click("button[data-track=signup]");
  await waitFor(bad, () => window.tributaryPage.tracker.state().failedCalls >= 2, undefined, 20000);
  await bad.waitForTimeout(1000);
  report.cors.state = await st(bad);
  report.cors.tail = await bad.evaluate(() => window.tributaryPage.tail);
  report.cors.tailErrors = await bad.evaluate(() => window.tributaryPage.tailErrors.slice(0, 3));
  await bad.context().close();
  step("done");
} catch (err) {
  report.error = String(err && err.stack ? err.stack : err);
  process.exitCode = 1;
} finally {
  report.console = consoleLines.slice(-40);
  save();
  await browser.close();
}
