// The browser tracker: track() puts an event (with its own UUIDv7 id and
// occurred_at) in a queue; batches go to IngestService.PublishBatch over
// gRPC-Web (connect-web); each event stays queued, in memory and in
// localStorage, until ingest acknowledges it.
//
// What each answer does:
//   OK, event OK                    acknowledged: forgotten
//   OK, event INVALID_ARGUMENT      refused for good: onReject, forgotten
//   OK, event any other code        kept, retried with backoff (RetryInfo honoured)
//   call INVALID_ARGUMENT           the batch is split and sent again; a
//                                   single event refused so goes to onReject
//   call UNAUTHENTICATED /
//        PERMISSION_DENIED          paused: events kept, nothing sent until
//                                   setKey() or resume()
//   call any other code, or a       kept, retried with backoff and jitter,
//   network error (connect-web says never sooner than RetryInfo asks
//   Unknown for a refused
//   connection or a CORS failure)

import type { JsonObject } from "@bufbuild/protobuf";
import { anyUnpack, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BadRequestSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";
import { IngestService, type PublishBatchResponse } from "./gen/tributary/v1/ingest_pb.js";
import { retryDelay } from "./backoff.js";
import { EventStore } from "./store.js";
import type { PendingEvent, Rejection, TrackerState } from "./types.js";
import { uuidv7 } from "./uuid.js";

export interface TrackerOptions {
  /** Ingest's gRPC-Web base URL, e.g. "https://ingest.example.com" or "http://127.0.0.1:50051". */
  endpoint: string;
  /** A publishable key (trb_pub_…), sent as "authorization: Bearer <key>". None when ingest's auth is off. */
  key?: string;
  /** Event.source (default "web"). */
  source?: string;
  /** Event.user_id (default: an anonymous id kept in localStorage; see identify()). */
  userId?: string;
  /** Event.session_id (default: an id per tab, kept in sessionStorage). */
  sessionId?: string;
  /** Track a "page.view" at start (default true). */
  pageViews?: boolean;
  /** Track a "click" for clicks on elements with data-track="name" (default true). */
  clicks?: boolean;
  /** Track a "form.submit" for submitted forms (default true; field names only, never values). */
  forms?: boolean;
  /** Send as soon as this many events wait (default 50); at most this many per call (max 1000). */
  batchSize?: number;
  /** Send what waits at least this often, in ms (default 1000). */
  flushIntervalMs?: number;
  /** Most events kept in memory; past it the oldest are dropped (onDrop). Default 10000. */
  maxQueue?: number;
  /** Most events kept in localStorage (the oldest pending ones). Default 1000. */
  maxStored?: number;
  /** Deadline of one call, in ms (sent as grpc-timeout). Default 10000. */
  timeoutMs?: number;
  /** Backoff between retries: first delay and cap, in ms (default 500 and 30000). */
  retry?: { baseMs?: number; maxMs?: number };
  /** Where pending events are kept (default localStorage; null: memory only). */
  storage?: Storage | null;
  /** The fetch the transport uses (default globalThis.fetch). */
  fetch?: typeof globalThis.fetch;
  /** An event ingest refused for good (INVALID_ARGUMENT): it is not retried. */
  onReject?: (event: PendingEvent, why: Rejection) => void;
  /** Events dropped because maxQueue was reached. */
  onDrop?: (events: PendingEvent[]) => void;
  /** Called after every change of state() (a send, an answer, a track). */
  onChange?: (state: TrackerState) => void;
  /** Events acknowledged by ingest. */
  onAck?: (events: PendingEvent[]) => void;
}

const STORE_PREFIX = "tributary.q.";
const USER_KEY = "tributary.uid";
const SESSION_KEY = "tributary.sid";
// A keepalive fetch may carry at most 64 KiB (all of a page's keepalive
// requests together); leave room for the framing and headers.
const KEEPALIVE_BUDGET = 48 * 1024;
// Ingest takes at most 4 MiB per batch; stay well below.
const CALL_BUDGET = 1024 * 1024;

export class Tracker {
  private readonly opts: TrackerOptions;
  private readonly client: Client<typeof IngestService>;
  private readonly keepaliveClient: Client<typeof IngestService>;
  private readonly store: EventStore;
  private readonly queue: PendingEvent[] = [];
  private key: string | undefined;
  private userId: string;
  private readonly sessionId: string;
  private readonly source: string;
  private readonly batchSize: number;
  private maxBatch: number;
  private calling = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private persistTimer: ReturnType<typeof setTimeout> | undefined;
  private failures = 0;
  /** The last call could not take every waiting event: send the rest at once. */
  private backlog = false;
  private sendingCount = 0;
  private readonly st: TrackerState = {
    queued: 0,
    sending: 0,
    acked: 0,
    rejected: 0,
    dropped: 0,
    failedCalls: 0,
    paused: false,
    retryAt: 0,
    lastError: null,
  };
  private readonly cleanup: (() => void)[] = [];
  private stopped = false;
  /** Between pagehide and a pageshow from the back/forward cache: the page is gone. */
  private released = false;

  constructor(options: TrackerOptions) {
    this.opts = options;
    this.key = options.key;
    this.source = options.source ?? "web";
    this.batchSize = Math.max(1, Math.min(1000, options.batchSize ?? 50));
    this.maxBatch = this.batchSize;
    const storage = options.storage === undefined ? defaultStorage("localStorage") : options.storage;
    this.userId = options.userId ?? persistentId(storage, USER_KEY, "anon-");
    this.sessionId = options.sessionId ?? persistentId(defaultStorage("sessionStorage"), SESSION_KEY, "s-");
    const baseUrl = options.endpoint.replace(/\/+$/, "");
    const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.client = createClient(IngestService, createGrpcWebTransport({ baseUrl, fetch: fetchImpl }));
    // The last flush of a page that goes away: keepalive lets the request
    // outlive the page (its answer may never be read; the events stay in
    // localStorage until one is, and a later visit sends them again).
    this.keepaliveClient = createClient(
      IngestService,
      createGrpcWebTransport({
        baseUrl,
        fetch: (input, init) => fetchImpl(input, { ...init, keepalive: true }),
      }),
    );
    this.store = new EventStore(storage, STORE_PREFIX, uuidv7(), Math.max(0, options.maxStored ?? 1000));
    this.enqueue(this.store.adoptOrphans());
    this.listen();
    if (options.pageViews ?? true) this.pageView();
    this.schedule();
  }

  /** Records an event now; returns its id. It is sent in the next batch. */
  track(type: string, payload: JsonObject = {}): string {
    const e: PendingEvent = {
      id: uuidv7(),
      type,
      at: Date.now(),
      payload,
      userId: this.userId,
      sessionId: this.sessionId,
      source: this.source,
      attempts: 0,
    };
    this.queue.push(e);
    this.bound();
    this.persistSoon();
    this.schedule();
    this.changed();
    return e.id;
  }

  /** Tracks a "page.view" of the current location. */
  pageView(extra: JsonObject = {}): string {
    const loc = typeof location === "undefined" ? undefined : location;
    return this.track("page.view", {
      path: loc ? loc.pathname : "",
      title: typeof document === "undefined" ? "" : document.title,
      referrer: typeof document === "undefined" ? "" : document.referrer,
      ...extra,
    });
  }

  /** Sets user_id for the events tracked from now on. */
  identify(userId: string): void {
    this.userId = userId;
  }

  /** Replaces the API key and resumes sending if a refused key had paused it. */
  setKey(key: string | undefined): void {
    this.key = key;
    this.resume();
  }

  /** Resumes after UNAUTHENTICATED/PERMISSION_DENIED, and retries now. */
  resume(): void {
    this.st.paused = false;
    this.st.retryAt = 0;
    this.failures = 0;
    this.schedule(0);
    this.changed();
  }

  /** Sends what waits now (also when a retry is not due yet). Resolves when the call answered. */
  async flush(): Promise<void> {
    this.st.retryAt = 0;
    await this.send(false);
  }

  get user(): string {
    return this.userId;
  }

  get session(): string {
    return this.sessionId;
  }

  state(): TrackerState {
    this.st.queued = this.queue.length;
    this.st.sending = this.sendingCount;
    return { ...this.st, lastError: this.st.lastError && { ...this.st.lastError } };
  }

  /** The events still waiting for an acknowledgement (copies). */
  pending(): PendingEvent[] {
    return this.queue.map((e) => ({ ...e }));
  }

  /** Stops timers and listeners; pending events stay in localStorage for a later page. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.persistTimer);
    for (const f of this.cleanup) f();
    this.store.save(this.queue, true);
  }

  // ------------------------------------------------------------ sending

  private schedule(delay?: number): void {
    if (this.stopped || this.st.paused || this.calling || this.queue.length === 0) return;
    let d = delay ?? (this.backlog || this.queue.length >= this.maxBatch ? 0 : (this.opts.flushIntervalMs ?? 1000));
    if (this.st.retryAt) d = Math.max(d, this.st.retryAt - Date.now());
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.send(false), Math.max(0, d));
  }

  /** One PublishBatch call with the oldest events not already in a call. */
  private async send(keepalive: boolean): Promise<void> {
    if (this.stopped && !keepalive) return;
    if (this.st.paused) return;
    if (!keepalive) {
      if (this.calling) return;
      if (this.st.retryAt && Date.now() < this.st.retryAt) return this.schedule();
    }
    const batch: PendingEvent[] = [];
    let bytes = 0;
    const budget = keepalive ? KEEPALIVE_BUDGET : CALL_BUDGET;
    for (const e of this.queue) {
      if (e.sending) continue;
      const size = approxSize(e);
      if (batch.length > 0 && (batch.length >= this.maxBatch || bytes + size > budget)) break;
      if (keepalive && size > budget) continue;
      batch.push(e);
      bytes += size;
    }
    if (batch.length === 0) return;
    if (!keepalive) this.backlog = this.queue.length - this.sendingCount > batch.length;
    for (const e of batch) {
      e.sending = true;
      e.attempts++;
    }
    this.sendingCount += batch.length;
    if (!keepalive) this.calling = true;
    clearTimeout(this.timer);
    this.changed();
    const client = keepalive ? this.keepaliveClient : this.client;
    try {
      const res = await client.publishBatch(
        {
          events: batch.map((e) => ({
            eventId: e.id,
            eventType: e.type,
            source: e.source,
            userId: e.userId,
            sessionId: e.sessionId,
            occurredAt: timestampFromMs(e.at),
            payload: e.payload,
          })),
        },
        {
          timeoutMs: this.opts.timeoutMs ?? 10000,
          headers: this.key ? { authorization: `Bearer ${this.key}` } : undefined,
        },
      );
      this.answered(batch, res);
    } catch (err) {
      this.failed(batch, ConnectError.from(err));
    } finally {
      for (const e of batch) e.sending = false;
      this.sendingCount -= batch.length;
      if (!keepalive) this.calling = false;
      this.persistSoon();
      this.changed();
      this.schedule();
    }
  }

  private answered(batch: PendingEvent[], res: PublishBatchResponse): void {
    const acked: PendingEvent[] = [];
    const done = new Set<PendingEvent>();
    let retryInfoMs: number | undefined;
    let firstError: Status | undefined;
    for (const r of res.results) {
      const e = batch[r.index];
      if (!e || done.has(e)) continue;
      // An absent Status reads as the default one: code 0, OK.
      const code = r.status?.code ?? 0;
      if (!r.status || code === 0) {
        done.add(e);
        acked.push(e);
      } else if (code === Code.InvalidArgument) {
        done.add(e);
        this.reject(e, r.status.code, r.status.message, badRequestsOf(r.status.details.map((d) => anyUnpack(d, BadRequestSchema))));
      } else {
        firstError ??= r.status;
        const ms = retryInfoOf(r.status);
        if (ms !== undefined) retryInfoMs = Math.max(retryInfoMs ?? 0, ms);
      }
    }
    this.remove(done);
    this.st.acked += acked.length;
    if (acked.length && this.opts.onAck) this.opts.onAck(acked);
    const kept = batch.length - done.size;
    if (kept === 0) {
      this.succeeded();
      return;
    }
    // Some events were not acknowledged (or had no result): they stay and
    // are retried with the same ids.
    this.backoff(
      firstError ? (Code[firstError.code] ?? String(firstError.code)) : "Unknown",
      firstError ? firstError.message : `${kept} event(s) without a result`,
      retryInfoMs,
    );
  }

  private failed(batch: PendingEvent[], err: ConnectError): void {
    if (err.code === Code.InvalidArgument) {
      // The call itself was refused (e.g. over ingest's batch limits): send
      // smaller batches; a lone event refused so is invalid for good.
      if (batch.length > 1) {
        this.maxBatch = Math.max(1, Math.ceil(batch.length / 2));
        this.note(err);
        return;
      }
      const e = batch[0];
      this.remove(new Set([e]));
      this.reject(e, err.code, err.rawMessage, badRequestsOf(err.findDetails(BadRequestSchema)));
      return;
    }
    if (err.code === Code.Unauthenticated || err.code === Code.PermissionDenied) {
      this.st.failedCalls++;
      this.note(err);
      this.st.paused = true;
      clearTimeout(this.timer);
      return;
    }
    let retryInfoMs: number | undefined;
    for (const d of err.findDetails(RetryInfoSchema)) {
      const ms = durationMs(d.retryDelay);
      if (ms !== undefined) retryInfoMs = Math.max(retryInfoMs ?? 0, ms);
    }
    this.backoff(Code[err.code] ?? String(err.code), err.rawMessage, retryInfoMs);
  }

  private succeeded(): void {
    this.failures = 0;
    this.st.retryAt = 0;
    this.maxBatch = this.batchSize;
  }

  private backoff(code: string, message: string, retryInfoMs: number | undefined): void {
    this.st.failedCalls++;
    this.st.lastError = { code, message, at: Date.now() };
    const delay = retryDelay(this.failures++, this.opts.retry, retryInfoMs);
    this.st.retryAt = Date.now() + delay;
  }

  private note(err: ConnectError): void {
    this.st.lastError = { code: Code[err.code] ?? String(err.code), message: err.rawMessage, at: Date.now() };
  }

  private reject(e: PendingEvent, code: number, message: string, fieldViolations: Rejection["fieldViolations"]): void {
    this.st.rejected++;
    this.st.lastError = { code: Code[code] ?? String(code), message, at: Date.now() };
    if (this.opts.onReject) {
      try {
        this.opts.onReject({ ...e, sending: false }, { code, message, fieldViolations });
      } catch {
        /* a throwing callback must not stop the tracker */
      }
    }
  }

  private remove(gone: Set<PendingEvent>): void {
    if (gone.size === 0) return;
    let w = 0;
    for (const e of this.queue) if (!gone.has(e)) this.queue[w++] = e;
    this.queue.length = w;
  }

  private enqueue(events: PendingEvent[]): void {
    if (events.length === 0) return;
    const have = new Set(this.queue.map((e) => e.id));
    for (const e of events) if (!have.has(e.id)) this.queue.push(e);
    this.bound();
  }

  /** Drops the oldest events not in a call while the queue is over maxQueue. */
  private bound(): void {
    const max = Math.max(1, this.opts.maxQueue ?? 10000);
    if (this.queue.length > max) {
      // Drop the oldest that are not in a call.
      const over = this.queue.length - max;
      const dropped: PendingEvent[] = [];
      for (let i = 0; i < this.queue.length && dropped.length < over; i++) {
        if (!this.queue[i].sending) dropped.push(this.queue[i]);
      }
      this.remove(new Set(dropped));
      this.st.dropped += dropped.length;
      if (this.opts.onDrop) this.opts.onDrop(dropped);
    }
  }

  // ------------------------------------------------------------ persistence and page life

  private persistSoon(): void {
    if (this.persistTimer !== undefined) return;
    this.persistTimer = setTimeout(() => {
      this.persistTimer = undefined;
      this.store.save(this.queue, this.released);
    }, 250);
  }

  private persistNow(): void {
    clearTimeout(this.persistTimer);
    this.persistTimer = undefined;
    this.store.save(this.queue, this.released);
  }

  private changed(): void {
    if (this.opts.onChange) this.opts.onChange(this.state());
  }

  private listen(): void {
    if (typeof window === "undefined" || typeof document === "undefined") return;
    const on = <K extends keyof WindowEventMap>(
      target: Window | Document,
      type: K | string,
      f: (ev: Event) => void,
      capture = false,
    ) => {
      target.addEventListener(type, f, capture);
      this.cleanup.push(() => target.removeEventListener(type, f, capture));
    };
    if (this.opts.clicks ?? true) {
      on(
        document,
        "click",
        (ev) => {
          const el = (ev.target as Element | null)?.closest?.("[data-track]");
          if (!el || el.tagName === "FORM") return;
          this.track("click", { name: el.getAttribute("data-track") ?? "", ...dataAttributes(el), path: location.pathname, text: (el.textContent ?? "").trim().slice(0, 80) });
        },
        true,
      );
    }
    if (this.opts.forms ?? true) {
      on(
        document,
        "submit",
        (ev) => {
          const form = ev.target as HTMLFormElement | null;
          if (!form || form.tagName !== "FORM") return;
          const fields: string[] = [];
          for (const f of Array.from(form.elements)) {
            const name = (f as HTMLInputElement).name;
            if (name && !fields.includes(name)) fields.push(name);
          }
          this.track("form.submit", {
            name: form.getAttribute("data-track") || form.id || form.getAttribute("name") || "form",
            ...dataAttributes(form),
            path: location.pathname,
            fields,
          });
        },
        true,
      );
    }
    // The last flush: a page that is hidden may never run again.
    // Chrome fires pagehide, then visibilitychange: once released, every
    // later save keeps saying so, so the next page adopts the events at once.
    const leave = () => {
      this.persistNow();
      void this.send(true);
    };
    on(document, "visibilitychange", () => {
      if (document.visibilityState === "hidden") leave();
    });
    on(window, "pagehide", () => {
      this.released = true;
      leave();
    });
    on(window, "pageshow", (ev) => {
      // Back from the back/forward cache: this instance lives again.
      if ((ev as PageTransitionEvent).persisted) {
        this.released = false;
        this.persistNow();
      }
    });
    on(window, "online", () => {
      this.st.retryAt = 0;
      this.failures = 0;
      this.schedule(0);
    });
  }
}

// ------------------------------------------------------------ helpers

function defaultStorage(name: "localStorage" | "sessionStorage"): Storage | null {
  try {
    const s = (globalThis as unknown as Record<string, Storage | undefined>)[name];
    if (!s) return null;
    const probe = "tributary.probe";
    s.setItem(probe, "1");
    s.removeItem(probe);
    return s;
  } catch {
    return null;
  }
}

function persistentId(storage: Storage | null, key: string, prefix: string): string {
  try {
    const have = storage?.getItem(key);
    if (have) return have;
  } catch {
    /* no storage */
  }
  const id = prefix + uuidv7();
  try {
    storage?.setItem(key, id);
  } catch {
    /* no storage */
  }
  return id;
}

/** data-track-plan="pro" becomes { plan: "pro" } (data-track itself is the name). */
function dataAttributes(el: Element): JsonObject {
  const out: JsonObject = {};
  for (const a of Array.from(el.attributes)) {
    if (a.name.startsWith("data-track-")) {
      out[a.name.slice(11).replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())] = a.value;
    }
  }
  return out;
}

function approxSize(e: PendingEvent): number {
  return 96 + e.id.length + e.type.length + e.userId.length + e.sessionId.length + e.source.length + JSON.stringify(e.payload).length;
}

function durationMs(d: { seconds: bigint; nanos: number } | undefined): number | undefined {
  if (!d) return undefined;
  return Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
}

function badRequestsOf(
  details: ({ fieldViolations: { field: string; description: string }[] } | undefined)[],
): Rejection["fieldViolations"] {
  const out: Rejection["fieldViolations"] = [];
  for (const d of details) {
    if (d) for (const v of d.fieldViolations) out.push({ field: v.field, description: v.description });
  }
  return out;
}

function retryInfoOf(status: Status): number | undefined {
  let out: number | undefined;
  for (const a of status.details) {
    const ri = anyUnpack(a, RetryInfoSchema);
    const ms = ri && durationMs(ri.retryDelay);
    if (ms !== undefined) out = Math.max(out ?? 0, ms);
  }
  return out;
}
