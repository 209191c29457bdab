// UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits. Made in
// the browser at track() time, so every retry of an event carries the same
// id and ingest/processor store it once. Ids made in the same millisecond
// count up in the 12-bit rand_a field, so one tab's ids sort in track order.

let lastMs = -1;
let counter = 0;

const HEX: string[] = [];
for (let i = 0; i < 256; i++) HEX.push((i + 0x100).toString(16).slice(1));

export function uuidv7(nowMs: number = Date.now()): string {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  let ms = Math.max(0, Math.floor(nowMs));
  if (ms <= lastMs) {
    ms = lastMs;
    counter++;
    if (counter > 0xfff) {
      // 4096 ids in one millisecond: borrow the next one.
      ms = ++lastMs;
      counter = 0;
    }
  } else {
    lastMs = ms;
    // Start low in the range so the counter has room to count up.
    counter = ((b[6] & 0x07) << 8) | b[7];
  }
  // 48-bit big-endian milliseconds (2^48 ms is past the year 10000).
  const hi = Math.floor(ms / 0x100000000);
  const lo = ms >>> 0;
  b[0] = (hi >>> 8) & 0xff;
  b[1] = hi & 0xff;
  b[2] = (lo >>> 24) & 0xff;
  b[3] = (lo >>> 16) & 0xff;
  b[4] = (lo >>> 8) & 0xff;
  b[5] = lo & 0xff;
  b[6] = 0x70 | (counter >>> 8);
  b[7] = counter & 0xff;
  b[8] = (b[8] & 0x3f) | 0x80;
  let s = "";
  for (let i = 0; i < 16; i++) {
    s += HEX[b[i]];
    if (i === 3 || i === 5 || i === 7 || i === 9) s += "-";
  }
  return s;
}

/** The milliseconds a UUIDv7 carries (for tests and display). */
export function uuidv7Time(id: string): number {
  return parseInt(id.replace(/-/g, "").slice(0, 12), 16);
}
