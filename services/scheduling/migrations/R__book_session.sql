-- book_sites: a batch's bookings, in the order given, every rule checked
-- for each under its site's row lock (services/scheduling/store.cc sends
-- it; BookStatement, BookRun). The group committer hands it each batch of
-- bookings in the batch's lock order (libs/db/group_commit.h, Combine), so
-- a batch costs one call rather than one per booking, and the bookings of
-- one site next to each other (a run) take its lock and write its counters
-- once; a batch of one costs what one booking did before. A common batch
-- (new requests, distinct people, sessions that are not events, no free
-- seat while people wait) is booked in one statement, with the same rules
-- and results as the loop that books any other batch one by one (since
-- 0020: a statement per booking costs an executor start each, and together
-- they were most of a booking's database time). A repeatable
-- migration: this file is the one definition of the rules, re-applied
-- whenever it changes (libs/db/migrations.h); 0003 and 0005 are its
-- history.
-- Returns a row per booking, in the order given: the outcome ('booked',
-- 'prior', or the rule that refused it), the booking, the booked site's
-- capacity and counters after it, and the session (the os_* columns,
-- formatted as store.cc reads a session; os_sites: the sites before this
-- booking). The os_* columns are NULL when the session does not exist and
-- when the request_id had already booked before the call.
DROP FUNCTION IF EXISTS book_session(uuid, uuid, text, text);
DROP FUNCTION IF EXISTS book_site(uuid, text, uuid[], text[]);
DROP FUNCTION IF EXISTS book_sites(uuid[], text[], uuid[], text[]);
DROP FUNCTION IF EXISTS book_sites_raced();

-- book_sites' set-based path raises this when a booking it decided on could
-- not be inserted: a concurrent transaction, uncommitted when the decisions
-- were read, took its request_id, its place on the session or its date
-- (the insert waits for it, and meets a unique index's violation once it
-- commits). The counters and the later bookings' seats were decided with
-- it, so the whole statement is undone; the batch runs again (a
-- serialization failure: libs/db/group_commit.h), and then sees what the
-- other committed.
CREATE FUNCTION book_sites_raced() RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'book_sites: a booking met a concurrent one with the same key'
    USING ERRCODE = 'serialization_failure';
END;
$$;

CREATE FUNCTION book_sites(p_sessions uuid[], p_sites text[], p_participants uuid[], p_request_ids text[],
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
RETURNS SETOF record
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
-- The loop: per booking, three statements (the request_id's lookup, the
-- context, the insert), and a site's lock once per run of its bookings, as
-- each costs an executor start. The set-based path before it: two
-- statements per batch. Generic plans (plan_cache_mode): planned once per
-- connection, not for each batch's arrays.
DECLARE
  n int := cardinality(p_participants);
  r0 int := 1;  -- the run: bookings r0 .. r1, of one session's site
  r1 int;
  p_session uuid;  -- the run's session and site
  p_site text;
  priors uuid[] := '{}';  -- the bookings a retried request_id had made before the call
  fresh int;  -- the run's bookings not retried
  locked boolean;  -- the run's site is locked
  s_kind int;
  s_date date;
  s_began boolean;
  cap int; conf int; wait int;  -- the run's site's counters, kept here through the run
  moved boolean;  -- counters changed and not yet written
  b bookings%ROWTYPE;
  p uuid;
  rid text;
  prior_id uuid;
  live_id text;
  frontline_id text;
  new_status int;
  fast boolean;
BEGIN
  IF n IS NULL OR n = 0 THEN
    RETURN;
  END IF;
  IF cardinality(p_sessions) IS DISTINCT FROM n OR cardinality(p_sites) IS DISTINCT FROM n
     OR cardinality(p_request_ids) IS DISTINCT FROM n THEN
    RAISE EXCEPTION 'book_sites: % sessions, % sites, % people, % request ids',
      cardinality(p_sessions), cardinality(p_sites), n, cardinality(p_request_ids);
  END IF;
  -- The common batch in two statements instead of four or five per booking
  -- (an executor start each, most of a booking's cost in the database): new
  -- requests, distinct people, sites of sessions that are not events, and
  -- none with a free seat while people wait (the rule of who is owed it).
  -- The first statement checks that and, only then, locks the batch's sites
  -- in the order given, as the loop below would; the second reads every
  -- booking's context, decides, inserts and writes the counters at once.
  -- Any other batch goes through the loop below, under the same locks; so
  -- does every batch of a session that sets connecting.book_one_by_one to
  -- on (the tests compare the two; an operator's way back to the loop).
  BEGIN
    SELECT CASE
             WHEN current_setting('connecting.book_one_by_one', true) IS DISTINCT FROM 'on'
              AND '' = ALL (p_sites)
              AND NOT EXISTS (SELECT 1 FROM bookings x WHERE x.request_id = ANY (p_request_ids))
              AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = ANY (p_sessions) AND s.kind = 2)
              AND (SELECT count(DISTINCT x) FROM unnest(p_participants) x) = n
              AND (SELECT count(DISTINCT x) = count(x) FROM unnest(p_request_ids) x)
             THEN (SELECT count(*) FILTER (WHERE NOT (l.confirmed < l.capacity AND l.waitlisted > 0))
                     FROM (SELECT ss.capacity, ss.confirmed, ss.waitlisted
                             FROM unnest(p_sessions, p_sites) WITH ORDINALITY AS u(session_id, site, i)
                             JOIN session_sites ss ON ss.session_id = u.session_id AND ss.site = u.site
                            ORDER BY u.i
                              FOR UPDATE OF ss) l) = n
             ELSE false
           END
      INTO fast;
    IF fast THEN
      -- Per site, from its counters before the batch (c0, w0; never a free
      -- seat while people wait, checked above) and k, the site's bookings so
      -- far (this one included): a booking is confirmed while c0 + k fits,
      -- and the counters after it are least(c0 + k, capacity) and w0 + the
      -- overflow. A refusal (outcome not NULL) takes no seat. The insert is a
      -- plain one, in a block that turns a unique violation into
      -- book_sites_raced(): ON CONFLICT DO NOTHING checked every unique index
      -- of bookings (four) before each insert checked them again, about a
      -- twentieth of the backend's time (perf, 2026-12-05), where the block
      -- costs one subtransaction per batch. The block begins before the
      -- sites are locked: a row locked by the transaction and updated in a
      -- subtransaction of it takes a multixact (each site, each batch).
      RETURN QUERY
      WITH ctx AS MATERIALIZED (
        SELECT u.i, u.session_id, u.site, u.participant_id, u.request_id,
               -- FOR SHARE, as below: a deactivation waits for this booking.
               COALESCE((SELECT pp.status FROM participants pp
                          WHERE pp.id = u.participant_id FOR SHARE), 0) AS p_status,
               s.kind, s.status AS s_status, s.session_date,
               (s.session_date + s.start_time) AT TIME ZONE 'Europe/London' <= now() AS began,
               COALESCE((SELECT po.status FROM partner_organisations po
                          WHERE po.id = s.organisation_id), 0) AS org_status,
               (SELECT x.id::text FROM bookings x WHERE x.session_id = u.session_id
                  AND x.participant_id = u.participant_id AND x.status IN (1, 2)) AS live_id,
               (SELECT x.id::text FROM bookings x WHERE s.kind = 1
                  AND x.participant_id = u.participant_id AND x.session_date = s.session_date
                  AND x.status = 1 AND x.kind = 1) AS frontline_id,
               ss.capacity, ss.confirmed AS c0, ss.waitlisted AS w0,
               s.id::text AS sid, s.title, s.organisation_id::text AS org,
               COALESCE(s.offer_id::text, '') AS offer, COALESCE(s.host_contact_id::text, '') AS host,
               to_char(s.session_date, 'YYYY-MM-DD') AS sdate, to_char(s.start_time, 'HH24:MI') AS sstart,
               to_char(s.end_time, 'HH24:MI') AS send, s.broadcast_link,
               COALESCE(s.arranged_by::text, '') AS arranged_by,
               (extract(epoch FROM s.created_at) * 1000000)::bigint AS s_created,
               (extract(epoch FROM s.updated_at) * 1000000)::bigint AS s_updated, s.version
          FROM unnest(p_sessions, p_sites, p_participants, p_request_ids) WITH ORDINALITY
                 AS u(session_id, site, participant_id, request_id, i)
          JOIN sessions s ON s.id = u.session_id
          JOIN session_sites ss ON ss.session_id = u.session_id AND ss.site = u.site),
      decided AS (
        SELECT c.*, CASE WHEN c.p_status = 0 THEN 'no_participant'
                         WHEN c.p_status <> 1 THEN 'participant_inactive'
                         WHEN c.s_status <> 2 THEN 'not_scheduled'  -- SCHEDULED
                         WHEN c.began THEN 'began'
                         WHEN c.org_status <> 1 THEN 'partner_inactive'
                         WHEN c.live_id IS NOT NULL THEN 'live_on_session'
                         WHEN c.frontline_id IS NOT NULL THEN 'frontline_on_date'
                    END AS outcome
          FROM ctx c),
      ranked AS MATERIALIZED (
        SELECT d.*, count(*) FILTER (WHERE d.outcome IS NULL)
                      OVER (PARTITION BY d.session_id, d.site ORDER BY d.i) AS k
          FROM decided d),
      ins AS (
        -- In the order given, so that seq (the waitlist's order) follows it.
        INSERT INTO bookings (request_id, session_id, site, participant_id, status, session_date,
                              kind)
          SELECT r.request_id, r.session_id, r.site, r.participant_id,
                 CASE WHEN r.c0 + r.k <= r.capacity THEN 1 ELSE 2 END, r.session_date, r.kind
            FROM ranked r WHERE r.outcome IS NULL ORDER BY r.i
          RETURNING *),
      upd AS (
        UPDATE session_sites ss SET confirmed = ss.confirmed + n.confirmed,
                                    waitlisted = ss.waitlisted + n.waitlisted
          FROM (SELECT nb.session_id, nb.site, count(*) FILTER (WHERE nb.status = 1) AS confirmed,
                       count(*) FILTER (WHERE nb.status = 2) AS waitlisted
                  FROM ins nb GROUP BY nb.session_id, nb.site) n
         WHERE ss.session_id = n.session_id AND ss.site = n.site)
      SELECT COALESCE(r.outcome, 'booked'),
             CASE r.outcome WHEN 'live_on_session' THEN r.live_id
                            WHEN 'frontline_on_date' THEN r.frontline_id END,
             nb.id::text, nb.session_id::text, nb.participant_id::text, nb.site, nb.status,
             CASE WHEN nb.id IS NULL THEN NULL WHEN nb.status <> 2 THEN 0
                  ELSE r.w0 + greatest(0, r.c0 + r.k - r.capacity) END::bigint,
             (extract(epoch FROM nb.created_at) * 1000000)::bigint,
             (extract(epoch FROM nb.updated_at) * 1000000)::bigint, nb.version,
             r.capacity, least(r.c0 + r.k, r.capacity)::int,
             (r.w0 + greatest(0, r.c0 + r.k - r.capacity))::int,
             r.p_status, r.org_status, r.s_status,
             r.sid, r.kind, r.title, r.org, r.offer, r.host, r.sdate, r.sstart, r.send,
             r.broadcast_link, r.arranged_by, r.s_status, r.s_created, r.s_updated, r.version,
             -- The site before this booking: the counters after the ones before.
             E'\x1f' || r.capacity || E'\x1f' ||
               least(r.c0 + r.k - (r.outcome IS NULL)::int, r.capacity) || E'\x1f' ||
               (r.w0 + greatest(0, r.c0 + r.k - (r.outcome IS NULL)::int - r.capacity))
        FROM ranked r LEFT JOIN ins nb ON nb.participant_id = r.participant_id  -- distinct people
       ORDER BY r.i;
    END IF;
  EXCEPTION WHEN unique_violation THEN
    PERFORM book_sites_raced();
  END;
  IF fast THEN
    RETURN;
  END IF;

  -- A retry of a request that already booked gets that booking back, without
  -- waiting for any site's lock.
  FOR i IN 1 .. n LOOP
    IF p_request_ids[i] IS NOT NULL THEN
      SELECT x.id INTO prior_id FROM bookings x WHERE x.request_id = p_request_ids[i];
      IF FOUND THEN
        priors[i] := prior_id;  -- (an element past the array's end reads NULL)
      END IF;
    END IF;
  END LOOP;

  -- Run by run: the bookings of one session's site next to each other.
  WHILE r0 <= n LOOP
    p_session := p_sessions[r0];
    p_site := p_sites[r0];
    r1 := r0;
    fresh := CASE WHEN priors[r0] IS NULL THEN 1 ELSE 0 END;
    WHILE r1 < n AND p_sessions[r1 + 1] = p_session AND p_sites[r1 + 1] = p_site LOOP
      r1 := r1 + 1;
      IF priors[r1] IS NULL THEN
        fresh := fresh + 1;
      END IF;
    END LOOP;
    locked := false;
    moved := false;
    IF fresh > 0 THEN
      -- The site's row lock serialises every seat change for this site (counts
      -- and arrival order). CancelSession takes it too, so the session is read
      -- after it and a booking never lands in a session cancelled meanwhile.
      SELECT ss.capacity, ss.confirmed, ss.waitlisted INTO cap, conf, wait
        FROM session_sites ss WHERE ss.session_id = p_session AND ss.site = p_site FOR UPDATE;
      locked := FOUND;
    END IF;

    FOR i IN r0 .. r1 LOOP
      p := p_participants[i];
      rid := p_request_ids[i];
      o_outcome := NULL; o_detail := NULL; b := NULL;
      -- (The context statement below sets every other column; each assignment
      -- costs, so the common path makes no others.)
      o_capacity := cap; o_confirmed := conf; o_waitlisted := wait;

      IF priors[i] IS NOT NULL THEN
        SELECT * INTO b FROM bookings WHERE id = priors[i];
        o_outcome := 'prior';
        o_capacity := NULL; o_confirmed := NULL; o_waitlisted := NULL;
        o_participant_status := NULL; o_partner_status := NULL; o_session_status := NULL;
        os_id := NULL; os_kind := NULL; os_title := NULL; os_organisation_id := NULL;
        os_offer_id := NULL; os_host_contact_id := NULL; os_date := NULL; os_start := NULL;
        os_end := NULL; os_broadcast_link := NULL; os_arranged_by := NULL; os_status := NULL;
        os_created_us := NULL; os_updated_us := NULL; os_version := NULL; os_sites := NULL;
      ELSE
        -- The person's context with the session's (read again for each: as
        -- cheap as a statement of its own once per run, and a booking alone
        -- is one statement). FOR SHARE: a deactivation holds the participant's
        -- row until it commits (its bookings cancelled); waiting here and
        -- reading what it committed keeps a leaver from booking in between.
        -- The insert's foreign-key check would only have waited, then booked
        -- anyway.
        SELECT COALESCE((SELECT pp.status FROM participants pp WHERE pp.id = p FOR SHARE), 0),
               s.kind, s.status, s.session_date,
               (s.session_date + s.start_time) AT TIME ZONE 'Europe/London' <= now(),
               COALESCE((SELECT po.status FROM partner_organisations po
                         WHERE po.id = s.organisation_id), 0),
               (SELECT x.id FROM bookings x WHERE rid IS NOT NULL AND x.request_id = rid),
               (SELECT x.id::text FROM bookings x WHERE x.session_id = p_session
                  AND x.participant_id = p AND x.status IN (1, 2)),
               (SELECT x.id::text FROM bookings x WHERE s.kind = 1
                  AND x.participant_id = p AND x.session_date = s.session_date
                  AND x.status = 1 AND x.kind = 1),
               s.id::text, s.kind, s.title, s.organisation_id::text, COALESCE(s.offer_id::text, ''),
               COALESCE(s.host_contact_id::text, ''), to_char(s.session_date, 'YYYY-MM-DD'),
               to_char(s.start_time, 'HH24:MI'), to_char(s.end_time, 'HH24:MI'), s.broadcast_link,
               COALESCE(s.arranged_by::text, ''), s.status,
               (extract(epoch FROM s.created_at) * 1000000)::bigint,
               (extract(epoch FROM s.updated_at) * 1000000)::bigint, s.version,
               -- Only an event has more than the one site, '', that is locked
               -- above. This site's counters are the run's so far, written at
               -- its end.
               COALESCE(CASE WHEN s.kind <> 2 AND p_site = '' THEN
                          E'\x1f' || cap || E'\x1f' || conf || E'\x1f' || wait
                        END,
                        (SELECT string_agg(ss.site || E'\x1f' || ss.capacity || E'\x1f' ||
                                           CASE WHEN locked AND ss.site = p_site THEN conf
                                                ELSE ss.confirmed END || E'\x1f' ||
                                           CASE WHEN locked AND ss.site = p_site THEN wait
                                                ELSE ss.waitlisted END, E'\x1e'
                                           ORDER BY ss.ordinal)
                           FROM session_sites ss WHERE ss.session_id = s.id))
          INTO o_participant_status, s_kind, o_session_status, s_date, s_began, o_partner_status,
               prior_id, live_id, frontline_id,
               os_id, os_kind, os_title, os_organisation_id, os_offer_id, os_host_contact_id,
               os_date, os_start, os_end, os_broadcast_link, os_arranged_by, os_status,
               os_created_us, os_updated_us, os_version, os_sites
          FROM sessions s WHERE s.id = p_session;
        IF NOT FOUND THEN
          o_participant_status := COALESCE(
            (SELECT pp.status FROM participants pp WHERE pp.id = p), 0);
        END IF;
        IF o_participant_status = 0 THEN
          o_outcome := 'no_participant';
        ELSIF o_participant_status <> 1 THEN
          o_outcome := 'participant_inactive';
        ELSIF s_kind IS NULL THEN
          o_outcome := 'no_session';
        ELSIF o_session_status <> 2 THEN  -- SCHEDULED
          o_outcome := 'not_scheduled';
        ELSIF s_began THEN
          o_outcome := 'began';
        ELSIF o_partner_status <> 1 THEN
          o_outcome := 'partner_inactive';
        ELSIF s_kind <> 2 AND p_site <> '' THEN
          o_outcome := 'site_not_allowed';
        ELSIF s_kind = 2 AND p_site = '' THEN
          o_outcome := 'site_required';
        ELSIF NOT locked THEN
          o_outcome := 'no_site';
        ELSIF prior_id IS NOT NULL THEN  -- a concurrent retry committed while we waited
          SELECT * INTO b FROM bookings WHERE id = prior_id;
          o_outcome := 'prior';
        ELSIF live_id IS NOT NULL THEN
          o_outcome := 'live_on_session';
          o_detail := live_id;
        ELSIF frontline_id IS NOT NULL THEN
          o_outcome := 'frontline_on_date';
          o_detail := frontline_id;
        ELSE
          new_status := CASE WHEN conf < cap THEN 1 ELSE 2 END;
          -- A free seat while people wait: someone in line may be owed it
          -- (their other visit that date ended and the hand-on has not run
          -- yet: a process stopped in between). Then the newcomer waits behind
          -- them, and the service, seeing a waitlisted booking beside a free
          -- seat, hands the seat on. Nested IFs: the outer test is a plain
          -- expression, so the common path runs no query for it.
          -- (The rule of who could take it: the view, migration 0012.)
          IF new_status = 1 AND wait > 0 THEN
            IF EXISTS (SELECT 1 FROM waiting_who_could_take_a_seat w
                        WHERE w.session_id = p_session AND w.site = p_site) THEN
              new_status := 2;
            END IF;
          END IF;
          -- Bookings of other sites and sessions are not under our lock: the
          -- unique indexes decide between them (one confirmed frontline visit
          -- per date, one live booking per session, one booking per
          -- request_id), and a loser finds out below which rule it met. The
          -- counters move only with a row.
          IF new_status = 1 THEN
            conf := conf + 1;
          ELSE
            wait := wait + 1;
          END IF;
          IF i < r1 THEN
            INSERT INTO bookings (request_id, session_id, site, participant_id, status,
                                  session_date, kind)
              VALUES (rid, p_session, p_site, p, new_status, s_date, s_kind)
              ON CONFLICT DO NOTHING
              RETURNING * INTO b;
            moved := moved OR b.id IS NOT NULL;
          ELSE
            -- The run's last booking writes the counters with its row (one
            -- statement: a run of one costs no more than that), and so does
            -- the loop's end if it wrote none.
            WITH ins AS (
              INSERT INTO bookings (request_id, session_id, site, participant_id, status,
                                    session_date, kind)
                VALUES (rid, p_session, p_site, p, new_status, s_date, s_kind)
                ON CONFLICT DO NOTHING
                RETURNING *),
            upd AS (
              UPDATE session_sites SET confirmed = conf, waitlisted = wait
                WHERE session_id = p_session AND site = p_site AND EXISTS (SELECT 1 FROM ins))
            SELECT * INTO b FROM ins;
            moved := moved AND b.id IS NULL;
          END IF;
          IF b.id IS NOT NULL THEN
            o_outcome := 'booked';
            o_confirmed := conf;
            o_waitlisted := wait;
          ELSE
            IF new_status = 1 THEN  -- not booked after all
              conf := conf - 1;
            ELSE
              wait := wait - 1;
            END IF;
            IF rid IS NOT NULL THEN
              SELECT * INTO b FROM bookings WHERE request_id = rid;
            END IF;
            IF b.id IS NOT NULL THEN
              o_outcome := 'prior';
            ELSE
              SELECT id::text INTO o_detail FROM bookings
                WHERE session_id = p_session AND participant_id = p AND status IN (1, 2);
              IF FOUND THEN
                o_outcome := 'live_on_session';
              ELSE
                SELECT id::text INTO o_detail FROM bookings
                  WHERE participant_id = p AND session_date = s_date AND status = 1 AND kind = 1;
                o_outcome := CASE WHEN FOUND THEN 'frontline_on_date' ELSE 'retry' END;
              END IF;
            END IF;
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
      -- Branches rather than one CASE: an expression holding a query is
      -- planned again at every call, and only a retried waitlisted request
      -- needs the count.
      IF b.id IS NULL THEN
        o_waitlist_position := NULL;
      ELSIF b.status <> 2 THEN
        o_waitlist_position := 0;
      ELSIF o_outcome = 'booked' THEN
        o_waitlist_position := wait;
      ELSE
        SELECT count(*) INTO o_waitlist_position FROM bookings w
          WHERE w.session_id = b.session_id AND w.site = b.site AND w.status = 2 AND w.seq <= b.seq;
      END IF;
      RETURN NEXT;
    END LOOP;

    IF moved THEN
      UPDATE session_sites SET confirmed = conf, waitlisted = wait
        WHERE session_id = p_session AND site = p_site;
    END IF;

    r0 := r1 + 1;
  END LOOP;
END;
$$;

-- book_session (one booking) and book_site (a run of one site's bookings),
-- as book_sites: kept for the replicas of the releases before book_sites
-- while a rolling update replaces them (they call them); nothing in this
-- release calls them. Drop them in a later release.
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
LANGUAGE sql AS $$
  SELECT * FROM book_sites(ARRAY[p_session], ARRAY[p_site], ARRAY[p_participant],
                           ARRAY[p_request_id]);
$$;

CREATE FUNCTION book_site(p_session uuid, p_site text, p_participants uuid[], p_request_ids text[],
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
RETURNS SETOF record
LANGUAGE sql AS $$
  SELECT * FROM book_sites(array_fill(p_session, ARRAY[cardinality(p_participants)]),
                           array_fill(p_site, ARRAY[cardinality(p_participants)]),
                           p_participants, p_request_ids);
$$;
