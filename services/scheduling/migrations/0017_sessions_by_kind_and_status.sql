-- connecting:no-transaction
-- Sessions of one kind in one status: the partners' visits to the
-- department still awaiting their host, the department events scheduled,
-- and (ListSessions with_free_seats and a kind) the events a booking made
-- now would be confirmed on. With one index per filter, a page walked every
-- session of the kind, or every one in the status, in date order, to find a
-- rare pair (20 such visits among 20,000 sessions: 200 or 220 of them read
-- for the page, 480 index entries and rows in all).
-- Sessions are written seldom (bookings do not touch their rows), so one
-- more index costs the booking path nothing.
--
-- Run outside a transaction (libs/db/migrations.h): built CONCURRENTLY,
-- letting session changes through.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_by_kind_and_status
  ON sessions (kind, status, session_date, start_time, id);
