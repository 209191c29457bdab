-- Replaces 20261122090000 (fastupdate = off), measured again with the
-- inserts isolated from the rest of the stack (BENCHMARKS.md, session 4).
-- Updating the payload index directly for every row made it the most
-- expensive part of an insert: 1000-row inserts into a 10M-row events table
-- ran at 11-14k rows/s (p99 per batch 185-225 ms). A pending list, merged
-- into the index in one sorted pass when it fills, costs far less per row;
-- capped at 1 MB, a merge stays short: 21-23k rows/s, p99 per batch 82 ms.
-- The session-3 stalls (0.5-0.9 s) came with the default 4 MB list.
-- Payload queries scan the pending list too; 1 MB keeps that small.
ALTER INDEX events_by_payload SET (fastupdate = on, gin_pending_list_limit = 1024);
