-- connecting:no-transaction
-- A partner lists its own sessions (the service adds its organisation to
-- every ListSessions it makes), most often by status: the visits awaiting
-- its hosts' acceptance, the scheduled ones. With only the organisation's
-- index in date order, a page of a rare status walked every session the
-- organisation ever had (2,857 sessions at one partner, 29 of them
-- pending: 3,144 index entries and rows read for that page, 5,772 with a
-- generic plan); this index is the listing's order within both.
--
-- Run outside a transaction (libs/db/migrations.h): built CONCURRENTLY,
-- letting session changes through.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_by_organisation_and_status
  ON sessions (organisation_id, status, session_date, start_time, id);
