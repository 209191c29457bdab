// The live page: tracks this visitor's clicks and form submissions with the
// tracker, and shows them coming back through QueryService.TailEvents, plus
// the last hour's events by type through AggregateEvents. Both services are
// called over gRPC-Web from this origin, which their --cors-allow-origin
// must list.
//
// Addresses: ?ingest=URL&query=URL, else http://<this host>:50051 and :50052.
// Tests read window.tributaryPage.
import { timestampFromMs, timestampMs, type Value } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Aggregation, EventField, QueryService } from "../src/gen/tributary/v1/query_pb.js";
import type { StoredEvent } from "../src/gen/tributary/v1/event_pb.js";
import { Tracker } from "../src/tracker.js";
import type { TrackerState } from "../src/types.js";

const params = new URLSearchParams(location.search);
const host = location.hostname || "127.0.0.1";
const INGEST = params.get("ingest") ?? `http://${host}:50051`;
const QUERY = params.get("query") ?? `http://${host}:50052`;
const MAX_ROWS = 25;

const $ = (id: string) => document.getElementById(id) as HTMLElement;

interface Seen {
  /** When this page saw the event in the tail (Date.now()). */
  at: number;
  type: string;
}
const seen = new Map<string, Seen>();
const page = {
  tracker: undefined as unknown as Tracker,
  ingest: INGEST,
  query: QUERY,
  /** Events shown in the live panel, by id. */
  seen,
  tail: "connecting" as "connecting" | "live" | "reconnecting",
  tailErrors: [] as string[],
  aggregate: [] as { type: string; count: number }[],
  rejected: [] as { id: string; message: string }[],
  /** Ids ingest acknowledged, in order, with their types. */
  acked: [] as { id: string; type: string }[],
};
(window as unknown as { tributaryPage: typeof page }).tributaryPage = page;

// ------------------------------------------------------------ tracker

const tracker = new Tracker({
  endpoint: INGEST,
  source: "tributary-live-page",
  // Snappier than the default 1 s, for a page whose point is to show the trip.
  flushIntervalMs: 250,
  onChange: renderState,
  onReject: (e, why) => page.rejected.push({ id: e.id, message: why.message }),
  onAck: (events) => {
    for (const e of events) page.acked.push({ id: e.id, type: e.type });
  },
});
page.tracker = tracker;
$("visitor").textContent = tracker.user;
$("session").textContent = tracker.session;
$("ingest-addr").textContent = INGEST;
$("query-addr").textContent = QUERY;
$("newsletter").addEventListener("submit", (ev) => {
  ev.preventDefault();
  (ev.target as HTMLFormElement).reset();
});
$("snippet").textContent = [
  `<script src="${location.origin}/tributary.js" data-endpoint="${INGEST}"></script>`,
  `<button data-track="signup">Sign up</button>`,
  `<script>Tributary.track("order.placed", { amount: 99.5 })</script>`,
].join("\n");

let stateFrame = 0;
let lastState: TrackerState | undefined;
function renderState(s: TrackerState) {
  lastState = s;
  if (stateFrame) return;
  stateFrame = requestAnimationFrame(() => {
    stateFrame = 0;
    const st = lastState!;
    $("st-queued").textContent = String(st.queued);
    $("st-acked").textContent = String(st.acked);
    $("st-rejected").textContent = String(st.rejected);
    $("st-failed").textContent = String(st.failedCalls);
    const el = $("st-status");
    if (st.paused) {
      el.className = "status bad";
      el.textContent = `paused: ${st.lastError?.code} (${st.lastError?.message}); events are kept`;
    } else if (st.retryAt) {
      el.className = "status warn";
      const secs = Math.max(0, Math.ceil((st.retryAt - Date.now()) / 1000));
      el.textContent = `ingest unreachable or refusing (${st.lastError?.code}): ${st.queued} kept, retrying in ${secs} s`;
    } else {
      el.className = "status ok";
      el.textContent = st.queued ? `sending ${st.queued}…` : "everything tracked is acknowledged";
    }
  });
}
setInterval(() => renderState(tracker.state()), 1000);

// ------------------------------------------------------------ live events (TailEvents)

const query = createClient(QueryService, createGrpcWebTransport({ baseUrl: QUERY }));
const filter = { userId: tracker.user };
let rowsFrame = 0;
const fresh: StoredEvent[] = [];

function show(events: StoredEvent[]) {
  for (const e of events) {
    const id = e.event?.eventId;
    if (!id || seen.has(id)) continue;
    seen.set(id, { at: Date.now(), type: e.event!.eventType });
    fresh.push(e);
  }
  if (!rowsFrame && fresh.length) rowsFrame = requestAnimationFrame(renderRows);
}

function renderRows() {
  rowsFrame = 0;
  const body = $("events");
  const batch = fresh.splice(0).sort((a, b) => at(a) - at(b));
  for (const e of batch.slice(-MAX_ROWS)) {
    const ev = e.event!;
    const tr = document.createElement("tr");
    tr.className = "new";
    const p = (ev.payload ?? {}) as Record<string, unknown>;
    const what = [p.name, p.path && `on ${p.path}`, Array.isArray(p.fields) && `fields: ${p.fields.join(", ")}`]
      .filter(Boolean)
      .join(" ") || JSON.stringify(p).slice(0, 120);
    const lag = e.persistedAt ? timestampMs(e.persistedAt) - at(e) : NaN;
    for (const [text, cls] of [
      [new Date(at(e)).toLocaleTimeString(), ""],
      [ev.eventType, "type"],
      [what, ""],
      [Number.isFinite(lag) ? `${lag} ms` : "", "num"],
    ]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    tr.dataset.id = ev.eventId;
    body.insertBefore(tr, body.firstChild);
  }
  while (body.children.length > MAX_ROWS) body.lastChild!.remove();
  $("events-empty").style.display = body.children.length ? "none" : "";
}

function at(e: StoredEvent): number {
  return e.event?.occurredAt ? timestampMs(e.event.occurredAt) : 0;
}

function setTail(state: typeof page.tail) {
  page.tail = state;
  const el = $("tail-state");
  el.textContent = state;
  el.className = "pill " + (state === "live" ? "live" : state === "reconnecting" ? "down" : "");
}

async function tailForever() {
  let failures = 0;
  for (;;) {
    const ac = new AbortController();
    try {
      const stream = query.tailEvents({ filter }, { signal: ac.signal });
      // A tail is a live view: what was committed before (or while we
      // reconnected) comes from ListEvents, fetched once the tail is open.
      const iterator = stream[Symbol.asyncIterator]();
      const first = iterator.next();
      setTail("live");
      void backfill();
      for (let r = await first; !r.done; r = await iterator.next()) {
        failures = 0;
        show([r.value]);
      }
      throw new Error("the tail ended");
    } catch (err) {
      ac.abort();
      page.tailErrors.push(String(err));
      setTail("reconnecting");
      failures++;
      await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** Math.min(failures, 5)) * (0.5 + Math.random() / 2)));
    }
  }
}

async function backfill() {
  try {
    const res = await query.listEvents({ filter, pageSize: MAX_ROWS });
    show(res.events);
  } catch (err) {
    page.tailErrors.push(`ListEvents: ${String(err)}`);
  }
}

// ------------------------------------------------------------ last hour by type (AggregateEvents)

async function refreshAggregate() {
  try {
    const res = await query.aggregateEvents({
      filter: { occurredAfter: timestampFromMs(Date.now() - 3600_000) },
      groupBy: [{ key: { case: "field", value: EventField.EVENT_TYPE } }],
      measures: [{ aggregation: Aggregation.COUNT }],
    });
    page.aggregate = res.rows
      .map((r) => ({ type: String(plain(r.group[0]) ?? ""), count: Number(plain(r.values[0]) ?? 0) }))
      .sort((a, b) => b.count - a.count);
    renderAggregate();
  } catch (err) {
    $("agg").innerHTML = "";
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = `AggregateEvents failed: ${String(err)}`;
    $("agg").appendChild(p);
  }
}

/** A google.protobuf.Value's scalar (a string or a number here). */
function plain(v: Value | undefined): unknown {
  return v?.kind.value;
}

function renderAggregate() {
  const box = $("agg");
  box.innerHTML = "";
  const rows = page.aggregate.slice(0, 8);
  const max = Math.max(1, ...rows.map((r) => r.count));
  for (const r of rows) {
    const div = document.createElement("div");
    div.className = "bar";
    div.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span class="count"></span>`;
    (div.querySelector(".name") as HTMLElement).textContent = r.type;
    (div.querySelector(".name") as HTMLElement).title = r.type;
    (div.querySelector(".fill") as HTMLElement).style.width = `${(100 * r.count) / max}%`;
    (div.querySelector(".count") as HTMLElement).textContent = r.count.toLocaleString();
    box.appendChild(div);
  }
  const more = page.aggregate.length - rows.length;
  if (!rows.length || more > 0) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = rows.length ? `and ${more} more type${more > 1 ? "s" : ""}` : "No events in the last hour yet.";
    box.appendChild(p);
  }
}

void tailForever();
void refreshAggregate();
setInterval(refreshAggregate, 5000);
