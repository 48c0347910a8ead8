-- Programme figures without sorting the range's visits. Each attendance fact
-- records the date of the visit before it in ten chains: the same connector's
-- visits (c_prev), and theirs in the same sector, region, directorate and
-- grade (c_prev_<group>); the same organisation's visits (o_prev), and its
-- visits by connectors of the same directorate and grade and while it was of
-- the same sector and region (o_prev_<group>). Chains run in (session_date,
-- booking_id) order; NULL: no visit before it.
--
-- A connector counts once in [from, to] (in a group) through the one visit of
-- theirs there whose c_prev (c_prev_<group>) is NULL or before `from`, so
-- the exact distinct counts are one pass over the range's facts, with no sort
-- or hash of connectors. Likewise organisations. R__attendance_chains.sql
-- fills the chains of the facts already recorded, and keeps them as facts
-- come and go.
ALTER TABLE attendance_facts
  ADD COLUMN c_prev date, ADD COLUMN c_prev_sector date, ADD COLUMN c_prev_region date,
  ADD COLUMN c_prev_directorate date, ADD COLUMN c_prev_grade date,
  ADD COLUMN o_prev date, ADD COLUMN o_prev_sector date, ADD COLUMN o_prev_region date,
  ADD COLUMN o_prev_directorate date, ADD COLUMN o_prev_grade date;

-- A chain's neighbours are found by its owner's index, in chain order.
DROP INDEX attendance_facts_by_participant;
CREATE INDEX attendance_facts_by_participant
  ON attendance_facts (participant_id, session_date, booking_id);
CREATE INDEX attendance_facts_by_organisation
  ON attendance_facts (organisation_id, session_date, booking_id);
