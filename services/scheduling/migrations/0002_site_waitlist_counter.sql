-- Waitlisted bookings per site kept as a counter beside `confirmed`, so reading
-- a session never counts its (possibly long) waitlist.
ALTER TABLE session_sites ADD COLUMN waitlisted int NOT NULL DEFAULT 0 CHECK (waitlisted >= 0);
UPDATE session_sites ss SET waitlisted = (
  SELECT count(*) FROM bookings b
  WHERE b.session_id = ss.session_id AND b.site = ss.site AND b.status = 2);
