-- connecting:no-transaction
-- Every list filter walks an index in the list's own order, so a page reads
-- about as many rows as it returns, however rare the value asked for
-- (measured over 300,000 participants in 300 directorates: a directorate's
-- first page read 39,000 index entries, a directorate with nobody in it all
-- 600,000; sessions awaiting their host, one in a hundred, 10,000).
--
-- Participants are listed by display name ignoring case (lower() in the
-- name's "C" collation: ASCII letters), then name and id, so that a name
-- prefix, matched ignoring case, is a range of the index the list is read in.
--
-- Run outside a transaction (libs/db/migrations.h): each index is built
-- CONCURRENTLY, letting registrations and session changes through, and the
-- name index is built before the one it replaces is dropped.
CREATE INDEX CONCURRENTLY IF NOT EXISTS participants_in_name_order
  ON participants (lower(display_name), display_name, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS participants_by_directorate
  ON participants (directorate, lower(display_name), display_name, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS participants_by_grade
  ON participants (grade, lower(display_name), display_name, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS participants_by_status
  ON participants (status, lower(display_name), display_name, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_by_status
  ON sessions (status, session_date, start_time, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_by_kind
  ON sessions (kind, session_date, start_time, id);
DROP INDEX CONCURRENTLY IF EXISTS participants_by_name;
