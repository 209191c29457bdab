// Retry delays: exponential backoff with jitter, never shorter than what the
// server asked for in google.rpc.RetryInfo.

export interface BackoffOptions {
  /** First delay, in ms (default 500). */
  baseMs?: number;
  /** Longest delay, in ms (default 30000). */
  maxMs?: number;
}

/**
 * The wait before retry number `attempt` (0 for the first retry): "equal
 * jitter", i.e. uniformly between half and all of min(maxMs, baseMs * 2^attempt),
 * so many tabs that failed together do not come back together, yet each
 * still waits. `retryInfoMs` (the server's RetryInfo.retry_delay) is a floor,
 * with up to 20 % jitter on top for the same reason.
 */
export function retryDelay(
  attempt: number,
  opts: BackoffOptions = {},
  retryInfoMs?: number,
  random: () => number = Math.random,
): number {
  const base = opts.baseMs ?? 500;
  const max = opts.maxMs ?? 30000;
  const cap = Math.min(max, base * 2 ** Math.min(attempt, 30));
  let delay = cap / 2 + (random() * cap) / 2;
  if (retryInfoMs !== undefined && retryInfoMs > 0) {
    delay = Math.max(delay, retryInfoMs * (1 + random() * 0.2));
  }
  return Math.round(delay);
}
