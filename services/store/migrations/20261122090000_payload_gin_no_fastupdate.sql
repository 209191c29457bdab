-- The payload GIN index took new entries into its pending list and merged
-- the list into the index whenever it passed 4 MB, inside whichever insert
-- crossed the limit. With millions of rows a merge stalled that batch for
-- 0.5-0.9 s, and the end-to-end p50 at a steady 4-5k events/s was 1-1.5 s.
-- Updating the index directly costs a little more per row and has no stalls:
-- p50 190 ms, p99 450 ms at the same load (BENCHMARKS.md).
ALTER INDEX events_by_payload SET (fastupdate = off);
