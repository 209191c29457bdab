// Keeps the events not yet acknowledged in localStorage, so a reload, a
// closed tab or a browser restart while ingest is unreachable loses none.
//
// Each tracker instance (one per page load) writes one key of its own,
// "<prefix><instance>", holding its pending events and a heartbeat. A new
// instance adopts (sends, then forgets) the keys of instances that are gone:
// released at pagehide, or silent for longer than ADOPT_AFTER_MS. Two tabs
// adopting the same key send the same events twice, which is harmless: the
// ids are the client's, so ingest and the processor store them once.

import type { PendingEvent } from "./types.js";

const ADOPT_AFTER_MS = 30_000;

interface Saved {
  /** Heartbeat: when the owner last wrote. */
  t: number;
  /** The owner left (pagehide): adopt at once. */
  r?: boolean;
  e: PendingEvent[];
}

export class EventStore {
  private readonly key: string;

  constructor(
    private readonly storage: Storage | null,
    private readonly prefix: string,
    instance: string,
    /** Most events kept (the oldest pending ones: they are sent first). */
    private readonly maxEvents: number,
  ) {
    this.key = prefix + instance;
  }

  /**
   * Writes the pending events (up to maxEvents, fewer when the quota is
   * short). Returns how many were written; never throws.
   */
  save(events: readonly PendingEvent[], released = false): number {
    const s = this.storage;
    if (!s) return 0;
    if (events.length === 0) {
      try {
        s.removeItem(this.key);
      } catch {
        /* storage unavailable: memory only */
      }
      return 0;
    }
    let n = Math.min(events.length, this.maxEvents);
    while (n > 0) {
      const saved: Saved = { t: Date.now(), e: events.slice(0, n).map(strip) };
      if (released) saved.r = true;
      try {
        s.setItem(this.key, JSON.stringify(saved));
        return n;
      } catch {
        // Over the quota (or storage disabled): keep fewer.
        n = Math.floor(n / 2);
      }
    }
    try {
      s.removeItem(this.key);
    } catch {
      /* ignore */
    }
    return 0;
  }

  /** Takes over the events of instances that are gone, and removes their keys. */
  adoptOrphans(now: number = Date.now()): PendingEvent[] {
    const s = this.storage;
    if (!s) return [];
    const out: PendingEvent[] = [];
    const keys: string[] = [];
    try {
      for (let i = 0; i < s.length; i++) {
        const k = s.key(i);
        if (k && k.startsWith(this.prefix) && k !== this.key) keys.push(k);
      }
      for (const k of keys) {
        let saved: Saved | null = null;
        try {
          saved = JSON.parse(s.getItem(k) ?? "null") as Saved | null;
        } catch {
          saved = null;
        }
        if (saved && !saved.r && now - saved.t < ADOPT_AFTER_MS) continue;
        s.removeItem(k);
        if (saved && Array.isArray(saved.e)) out.push(...saved.e.filter(valid));
      }
    } catch {
      /* storage unavailable */
    }
    return out;
  }
}

function strip(e: PendingEvent): PendingEvent {
  return {
    id: e.id,
    type: e.type,
    at: e.at,
    payload: e.payload,
    userId: e.userId,
    sessionId: e.sessionId,
    source: e.source,
    attempts: e.attempts,
  };
}

function valid(e: unknown): e is PendingEvent {
  const v = e as PendingEvent;
  return !!v && typeof v.id === "string" && typeof v.type === "string" && typeof v.at === "number";
}
