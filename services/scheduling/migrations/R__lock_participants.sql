-- lock_participants: share-locks the people a batch of bookings books, in id
-- order, before any seat (services/scheduling/store.cc, ShareParticipants).
-- A repeatable migration (libs/db/migrations.h).
--
-- A function rather than the statement itself, for its plan: sent as a
-- prepared `id = ANY($1)`, PostgreSQL judged a plan for the actual array
-- cheaper than a generic one at every batch and planned it again each time
-- (60 µs a batch, more than running it). Here the plan is made once per
-- connection, and without sequential scans, as book_sites' are: a plan made
-- while participants was small would read the table whole at every batch
-- until the next ANALYZE.
CREATE OR REPLACE FUNCTION lock_participants(p_ids uuid[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
BEGIN
  PERFORM 1 FROM participants WHERE id = ANY(p_ids) ORDER BY id FOR SHARE;
END;
$$;
