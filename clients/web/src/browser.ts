// The script-tag build (dist/tributary.js, global `Tributary`). A site needs
// only the tag; its data attributes configure the tracker:
//
//   <script src="tributary.js" data-endpoint="https://ingest.example.com" data-key="trb_pub_…"></script>
//   <button data-track="signup">Sign up</button>
//   <script>Tributary.track("order.placed", { amount: 99.5 })</script>
//
// Without data-endpoint nothing starts until Tributary.init({...}) is called.
import type { JsonObject } from "@bufbuild/protobuf";
import { Tracker, type TrackerOptions } from "./tracker.js";

let current: Tracker | undefined;
const early: [string, JsonObject | undefined][] = [];

export function init(options: TrackerOptions): Tracker {
  current?.stop();
  current = new Tracker(options);
  for (const [type, payload] of early.splice(0)) current.track(type, payload);
  return current;
}

/** Tracks through the tracker init() started (events tracked before it wait for it). */
export function track(type: string, payload?: JsonObject): string | undefined {
  if (!current) {
    early.push([type, payload]);
    return undefined;
  }
  return current.track(type, payload);
}

export function tracker(): Tracker | undefined {
  return current;
}

export { Tracker };

const script = typeof document !== "undefined" ? (document.currentScript as HTMLScriptElement | null) : null;
const endpoint = script?.dataset.endpoint;
if (endpoint) {
  const d = script.dataset;
  init({
    endpoint,
    key: d.key || undefined,
    source: d.source || undefined,
    pageViews: d.pageViews !== "false",
    clicks: d.clicks !== "false",
    forms: d.forms !== "false",
  });
}
