import type { JsonObject } from "@bufbuild/protobuf";

/** An event waiting for ingest's acknowledgement. */
export interface PendingEvent {
  /** UUIDv7, made at track() time: the idempotency key of every retry. */
  id: string;
  type: string;
  /** occurred_at, Unix ms, taken at track() time. */
  at: number;
  payload: JsonObject;
  userId: string;
  sessionId: string;
  source: string;
  /** Calls that carried it so far. */
  attempts: number;
  /** Part of a call that has not answered yet (memory only). */
  sending?: boolean;
}

/** Why ingest refused an event for good (INVALID_ARGUMENT). */
export interface Rejection {
  code: number;
  message: string;
  /** From google.rpc.BadRequest, e.g. { field: "events[0].event_type", description: "..." }. */
  fieldViolations: { field: string; description: string }[];
}

export interface TrackerState {
  /** Events kept until acknowledged (memory; localStorage holds up to maxStored of them). */
  queued: number;
  /** Events in calls that have not answered yet. */
  sending: number;
  /** Acknowledged by ingest since this tracker started. */
  acked: number;
  /** Refused with INVALID_ARGUMENT (given to onReject) since start. */
  rejected: number;
  /** Dropped because the memory bound (maxQueue) was reached. */
  dropped: number;
  /** Calls that failed, or answered with some event not OK, since start. */
  failedCalls: number;
  /** UNAUTHENTICATED or PERMISSION_DENIED: nothing is sent until resume() or setKey(). */
  paused: boolean;
  /** When the next retry is due (Unix ms), 0 when none is waiting. */
  retryAt: number;
  /** The last failure: a gRPC code name (e.g. "Unavailable") and message. */
  lastError: { code: string; message: string; at: number } | null;
}
