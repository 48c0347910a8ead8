-- Who, among the people waiting, could take a seat freed on their session and
-- site now: every waitlisted booking but a frontline visit whose connector
-- already holds a confirmed frontline visit that date (one per date). The
-- rule's one SQL text: book_session (R__book_session.sql, released with this
-- migration) waits a newcomer behind such a person, and the seat sweep
-- (store::SeatsFreeForWaiting) hands them the seat. A view is expanded into
-- the query reading it, so each still plans its own index paths. Promote
-- (scheduling_service.cc) applies the same rule person by person, in line
-- order, and also meets the confirmations in flight that no query sees.
CREATE VIEW waiting_who_could_take_a_seat AS
  SELECT w.id, w.session_id, w.site, w.participant_id, w.seq
    FROM bookings w
   WHERE w.status = 2  -- WAITLISTED
     AND NOT (w.kind = 1 AND EXISTS (  -- a frontline visit, and a confirmed one that date
       SELECT 1 FROM bookings f
        WHERE f.participant_id = w.participant_id AND f.kind = 1 AND f.status = 1
          AND f.session_date = w.session_date));
