// @tributary/web: the browser tracker (ESM entry).
export { Tracker, type TrackerOptions } from "./tracker.js";
export type { PendingEvent, Rejection, TrackerState } from "./types.js";
export { uuidv7, uuidv7Time } from "./uuid.js";
export { retryDelay } from "./backoff.js";

import { Tracker, type TrackerOptions } from "./tracker.js";

/** Starts a tracker (page view, clicks on [data-track], form submissions unless turned off). */
export function createTracker(options: TrackerOptions): Tracker {
  return new Tracker(options);
}
