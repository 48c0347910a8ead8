-- The relay deletes a row once JetStream has acknowledged it (the stream is the
-- event log) instead of marking it sent and deleting it a day later: one write
-- per event instead of three, and an outbox that holds only what is pending.
-- sent_at stays (always NULL) so older replicas' queries still run.
DELETE FROM outbox WHERE sent_at IS NOT NULL;
DROP INDEX outbox_sent;
-- A queue table: rows live for milliseconds, so vacuum it by dead rows, not by
-- a fraction of its (tiny) size, and without throttling.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
                        autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0,
                        autovacuum_analyze_threshold = 1000);
