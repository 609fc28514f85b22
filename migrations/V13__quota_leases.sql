-- Shared quotas (every send in the cluster, every send to one region) are taken
-- by each process in blocks, one short statement per block, instead of one
-- counter row that every send locks until its commit. `last_grant` is how many
-- units the last block statement took: the upsert's RETURNING sees only new
-- values, and the grant depends on the count it found.
ALTER TABLE quota_counters ADD COLUMN last_grant integer NOT NULL DEFAULT 0;
