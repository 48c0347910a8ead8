-- connecting:no-transaction
-- A partner's sessions of one kind (its visits to the department, its
-- department events), as a partner token or the programme team lists them:
-- with the organisation's index in date order, a page of a rare kind
-- walked every session the organisation ever had (2,857 sessions at one
-- partner, 28 of them its visits to the department: 3,141 index entries
-- and rows read for that page, 5,770 with a generic plan). Sessions are
-- written seldom (bookings do not touch their rows), so one more index
-- costs the booking path nothing.
--
-- Run outside a transaction (libs/db/migrations.h): built CONCURRENTLY,
-- letting session changes through.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_by_organisation_and_kind
  ON sessions (organisation_id, kind, session_date, start_time, id);
