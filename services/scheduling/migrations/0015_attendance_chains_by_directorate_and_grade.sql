-- connecting:no-transaction
-- Recording an attendance links its fact into the figures' chains
-- (R__attendance_chains.sql), finding each chain's neighbours by an index
-- in chain order. The organisation's chains within one directorate and
-- within one grade had only the organisation's index, so the first visit
-- of a directorate to an organisation, or one of a rare grade, walked the
-- organisation's visits before and after it: at an organisation of 50,000
-- visits, 132,000 index entries and rows read for one attendance record
-- (8–9 ms). Connectors' chains walk only their own visits, and an
-- organisation's sector and region are the same on all of its visits.
--
-- Run outside a transaction (libs/db/migrations.h): built CONCURRENTLY,
-- letting attendance records through.
CREATE INDEX CONCURRENTLY IF NOT EXISTS attendance_facts_by_organisation_and_directorate
  ON attendance_facts (organisation_id, directorate, session_date, booking_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS attendance_facts_by_organisation_and_grade
  ON attendance_facts (organisation_id, grade, session_date, booking_id);
