-- book_session: one booking, every rule checked under the site's row lock
-- (services/scheduling/store.cc sends it; BookStatement). A repeatable
-- migration: this file is the function's one definition, re-applied whenever
-- it changes (libs/db/migrations.h); 0003 and 0005 are its history.
-- Returns the outcome ('booked', 'prior', or the rule that refused it), the
-- booking, the booked site's capacity and counters after it, and the session
-- (the os_* columns, formatted as store.cc reads a session; os_sites: the
-- sites before this booking). The os_* columns are NULL when the session does
-- not exist and when the request_id had already booked.
DROP FUNCTION IF EXISTS book_session(uuid, uuid, text, text);

CREATE FUNCTION book_session(p_session uuid, p_participant uuid, p_site text, p_request_id text,
    OUT o_outcome text, OUT o_detail text,
    OUT o_booking_id text, OUT o_booking_session text, OUT o_booking_participant text,
    OUT o_booking_site text, OUT o_booking_status int, OUT o_waitlist_position bigint,
    OUT o_created_us bigint, OUT o_updated_us bigint, OUT o_version bigint,
    OUT o_capacity int, OUT o_confirmed int, OUT o_waitlisted int,
    OUT o_participant_status int, OUT o_partner_status int, OUT o_session_status int,
    OUT os_id text, OUT os_kind int, OUT os_title text, OUT os_organisation_id text,
    OUT os_offer_id text, OUT os_host_contact_id text, OUT os_date text, OUT os_start text,
    OUT os_end text, OUT os_broadcast_link text, OUT os_arranged_by text, OUT os_status int,
    OUT os_created_us bigint, OUT os_updated_us bigint, OUT os_version bigint, OUT os_sites text)
LANGUAGE plpgsql AS $$
-- Three statements on the common path (lock, context, insert), as each costs
-- an executor start: this function is most of a booking's database time. The
-- context statement also reads the session's columns for the caller.
DECLARE
  s_kind int;
  s_date date;
  s_start time;
  s_org uuid;
  b bookings%ROWTYPE;
  locked boolean;
  prior_id uuid;
  frontline_id text;
  new_status int;
BEGIN
  -- A retry of a request that already booked gets that booking back.
  IF p_request_id IS NOT NULL THEN
    SELECT * INTO b FROM bookings WHERE request_id = p_request_id;
    IF FOUND THEN
      o_outcome := 'prior';
    END IF;
  END IF;

  IF o_outcome IS NULL THEN
    -- The site's row lock serialises every seat change for this site (counts
    -- and arrival order). CancelSession takes it too, so the session is read
    -- after it and a booking never lands in a session cancelled meanwhile.
    SELECT ss.capacity, ss.confirmed, ss.waitlisted INTO o_capacity, o_confirmed, o_waitlisted
      FROM session_sites ss WHERE ss.session_id = p_session AND ss.site = p_site FOR UPDATE;
    locked := FOUND;

    -- FOR SHARE: a deactivation holds the participant's row until it commits
    -- (its bookings cancelled); waiting here and reading what it committed
    -- keeps a leaver from booking in between. The insert's foreign-key check
    -- would only have waited, then booked anyway.
    SELECT COALESCE((SELECT p.status FROM participants p WHERE p.id = p_participant FOR SHARE), 0),
           s.kind, s.status, s.session_date, s.start_time, s.organisation_id,
           COALESCE((SELECT po.status FROM partner_organisations po
                     WHERE po.id = s.organisation_id), 0),
           (SELECT x.id FROM bookings x WHERE p_request_id IS NOT NULL
              AND x.request_id = p_request_id),
           (SELECT x.id::text FROM bookings x WHERE x.session_id = p_session
              AND x.participant_id = p_participant AND x.status IN (1, 2)),
           (SELECT x.id::text FROM bookings x WHERE s.kind = 1
              AND x.participant_id = p_participant AND x.session_date = s.session_date
              AND x.status = 1 AND x.kind = 1),
           s.id::text, s.kind, s.title, s.organisation_id::text, COALESCE(s.offer_id::text, ''),
           COALESCE(s.host_contact_id::text, ''), to_char(s.session_date, 'YYYY-MM-DD'),
           to_char(s.start_time, 'HH24:MI'), to_char(s.end_time, 'HH24:MI'), s.broadcast_link,
           COALESCE(s.arranged_by::text, ''), s.status,
           (extract(epoch FROM s.created_at) * 1000000)::bigint,
           (extract(epoch FROM s.updated_at) * 1000000)::bigint, s.version,
           -- Only an event has more than the one site, '', that is locked above.
           COALESCE(CASE WHEN s.kind <> 2 AND p_site = '' THEN
                      E'\x1f' || o_capacity || E'\x1f' || o_confirmed || E'\x1f' || o_waitlisted
                    END,
                    (SELECT string_agg(ss.site || E'\x1f' || ss.capacity || E'\x1f' ||
                                       ss.confirmed || E'\x1f' || ss.waitlisted, E'\x1e'
                                       ORDER BY ss.ordinal)
                       FROM session_sites ss WHERE ss.session_id = s.id))
      INTO o_participant_status, s_kind, o_session_status, s_date, s_start, s_org,
           o_partner_status, prior_id, o_detail, frontline_id,
           os_id, os_kind, os_title, os_organisation_id, os_offer_id, os_host_contact_id, os_date,
           os_start, os_end, os_broadcast_link, os_arranged_by, os_status, os_created_us,
           os_updated_us, os_version, os_sites
      FROM sessions s WHERE s.id = p_session;
    IF NOT FOUND THEN
      o_participant_status := COALESCE(
        (SELECT p.status FROM participants p WHERE p.id = p_participant), 0);
    END IF;
    IF o_participant_status = 0 THEN
      o_outcome := 'no_participant'; RETURN;
    END IF;
    IF o_participant_status <> 1 THEN
      o_outcome := 'participant_inactive'; RETURN;
    END IF;
    IF s_kind IS NULL THEN
      o_outcome := 'no_session'; RETURN;
    END IF;
    IF o_session_status <> 2 THEN  -- SCHEDULED
      o_outcome := 'not_scheduled'; RETURN;
    END IF;
    IF (s_date + s_start) AT TIME ZONE 'Europe/London' <= now() THEN
      o_outcome := 'began'; RETURN;
    END IF;
    IF o_partner_status <> 1 THEN
      o_outcome := 'partner_inactive'; RETURN;
    END IF;
    IF s_kind <> 2 AND p_site <> '' THEN
      o_outcome := 'site_not_allowed'; RETURN;
    END IF;
    IF s_kind = 2 AND p_site = '' THEN
      o_outcome := 'site_required'; RETURN;
    END IF;
    IF NOT locked THEN
      o_outcome := 'no_site'; RETURN;
    END IF;
    IF prior_id IS NOT NULL THEN  -- a concurrent retry committed while we waited
      SELECT * INTO b FROM bookings WHERE id = prior_id;
      o_outcome := 'prior';
      o_detail := NULL;
    ELSIF o_detail IS NOT NULL THEN
      o_outcome := 'live_on_session'; RETURN;
    ELSIF frontline_id IS NOT NULL THEN
      o_detail := frontline_id;
      o_outcome := 'frontline_on_date'; RETURN;
    END IF;
  END IF;

  IF o_outcome IS NULL THEN
    new_status := CASE WHEN o_confirmed < o_capacity THEN 1 ELSE 2 END;
    -- A free seat while people wait: someone in line may be owed it (their
    -- other visit that date ended and the hand-on has not run yet: a process
    -- stopped in between). Then the newcomer waits behind them, and the
    -- service, seeing a waitlisted booking beside a free seat, hands the seat
    -- on. Nested IFs: the outer test is a plain expression, so the common
    -- path runs no query for it.
    -- (The rule of who could take it: the view, migration 0012.)
    IF new_status = 1 AND o_waitlisted > 0 THEN
      IF EXISTS (SELECT 1 FROM waiting_who_could_take_a_seat w
                  WHERE w.session_id = p_session AND w.site = p_site) THEN
        new_status := 2;
      END IF;
    END IF;
    IF new_status = 1 THEN
      o_confirmed := o_confirmed + 1;
    ELSE
      o_waitlisted := o_waitlisted + 1;
    END IF;
    -- Bookings of other sites and sessions are not under our lock: the unique
    -- indexes decide between them (one confirmed frontline visit per date,
    -- one live booking per session, one booking per request_id), and a loser
    -- finds out below which rule it met. The counters move only with a row.
    WITH ins AS (
      INSERT INTO bookings (request_id, session_id, site, participant_id, status, session_date,
                            kind)
        VALUES (p_request_id, p_session, p_site, p_participant, new_status, s_date, s_kind)
        ON CONFLICT DO NOTHING
        RETURNING *),
    upd AS (
      UPDATE session_sites SET confirmed = o_confirmed, waitlisted = o_waitlisted
        WHERE session_id = p_session AND site = p_site AND EXISTS (SELECT 1 FROM ins))
    SELECT * INTO b FROM ins;
    IF b.id IS NOT NULL THEN
      o_outcome := 'booked';
    ELSE
      IF p_request_id IS NOT NULL THEN
        SELECT * INTO b FROM bookings WHERE request_id = p_request_id;
      END IF;
      IF b.id IS NOT NULL THEN
        o_outcome := 'prior';
      ELSE
        SELECT id::text INTO o_detail FROM bookings
          WHERE session_id = p_session AND participant_id = p_participant AND status IN (1, 2);
        IF FOUND THEN
          o_outcome := 'live_on_session'; RETURN;
        END IF;
        SELECT id::text INTO o_detail FROM bookings
          WHERE participant_id = p_participant AND session_date = s_date
            AND status = 1 AND kind = 1;
        IF FOUND THEN
          o_outcome := 'frontline_on_date'; RETURN;
        END IF;
        o_outcome := 'retry'; RETURN;
      END IF;
    END IF;
  END IF;

  o_booking_id := b.id::text;
  o_booking_session := b.session_id::text;
  o_booking_participant := b.participant_id::text;
  o_booking_site := b.site;
  o_booking_status := b.status;
  o_created_us := (extract(epoch FROM b.created_at) * 1000000)::bigint;
  o_updated_us := (extract(epoch FROM b.updated_at) * 1000000)::bigint;
  o_version := b.version;
  -- Branches rather than one CASE: an expression holding a query is planned
  -- again at every call, and only a retried waitlisted request needs the count.
  IF b.status <> 2 THEN
    o_waitlist_position := 0;
  ELSIF o_outcome = 'booked' THEN
    o_waitlist_position := o_waitlisted;
  ELSE
    SELECT count(*) INTO o_waitlist_position FROM bookings w
      WHERE w.session_id = b.session_id AND w.site = b.site AND w.status = 2 AND w.seq <= b.seq;
  END IF;
END;
$$;
