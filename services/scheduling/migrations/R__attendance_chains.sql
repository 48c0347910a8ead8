-- attendance chains: keeps each attendance fact's ten c_prev*/o_prev*
-- columns (0010_attendance_chains.sql says what they mean and why) as facts
-- are recorded and corrected away, whatever writes them. A repeatable
-- migration (libs/db/migrations.h): re-applied when this text changes, and
-- then it also puts every chain right (rebuild_attendance_chains).

-- The chains, in one place: the column, whose visits it links (owner), and
-- the group they share (NULL: all of the owner's visits).
CREATE OR REPLACE FUNCTION attendance_chain_defs(OUT chain text, OUT owner text, OUT grp text)
RETURNS SETOF record LANGUAGE sql IMMUTABLE AS $$
  VALUES ('c_prev', 'participant_id', NULL::text),
         ('c_prev_sector', 'participant_id', 'sector'),
         ('c_prev_region', 'participant_id', 'region'),
         ('c_prev_directorate', 'participant_id', 'directorate'),
         ('c_prev_grade', 'participant_id', 'grade'),
         ('o_prev', 'organisation_id', NULL),
         ('o_prev_sector', 'organisation_id', 'sector'),
         ('o_prev_region', 'organisation_id', 'region'),
         ('o_prev_directorate', 'organisation_id', 'directorate'),
         ('o_prev_grade', 'organisation_id', 'grade')
$$;

-- One writer at a time per connector's chains and per organisation's, always
-- taken in this order; under READ COMMITTED each statement after it sees the
-- facts the previous holder committed. The trigger below takes them; a
-- transaction deleting a fact takes them first (before the DELETE locks the
-- row, which the holder may be about to relink), or it may deadlock with
-- one recording a fact of the same connector or organisation.
CREATE OR REPLACE FUNCTION lock_attendance_chains(p_participant uuid, p_organisation uuid)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  -- A snapshot taken before the wait would miss what the holder committed.
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'attendance facts are written under READ COMMITTED only (this is %)',
      current_setting('transaction_isolation');
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('attendance chains: connector'),
                                hashtext(p_participant::text));
  PERFORM pg_advisory_xact_lock(hashtext('attendance chains: organisation'),
                                hashtext(p_organisation::text));
END;
$$;

-- Links a fact being inserted into its chains (BEFORE INSERT: its own
-- columns are set in NEW) and unlinks one deleted (AFTER DELETE). Either
-- way the fact after it in each chain gets a new predecessor date.
--
-- The function is written out here from attendance_chain_defs(), one
-- subquery per chain (\sf attendance_chains_maintain shows it), so that its
-- statements are static and each connection plans them once: built as
-- dynamic SQL, planned at every call, an attendance record took 3.1 ms of
-- database time among 500,000 facts; it takes 1.4 ms so, and 0.7 ms without
-- the chains (make bench).
DO $generate$
DECLARE
  prevs text;    -- the subqueries finding each chain's predecessor, in order
  nexts text;    -- and its successor
  targets text;  -- NEW.<chain>, in order
  olds text;     -- OLD.<chain>, in order
  sets text;     -- <chain> = the new link where that chain's successor is this row
BEGIN
  SELECT string_agg(format('(SELECT x.session_date FROM attendance_facts x WHERE %s AND '
                           '(x.session_date, x.booking_id) < (f.session_date, f.booking_id) '
                           'ORDER BY x.session_date DESC, x.booking_id DESC LIMIT 1)', same),
                    E',\n           ' ORDER BY n),
         string_agg(format('(SELECT x.booking_id FROM attendance_facts x WHERE %s AND '
                           '(x.session_date, x.booking_id) > (f.session_date, f.booking_id) '
                           'ORDER BY x.session_date, x.booking_id LIMIT 1)', same),
                    E',\n           ' ORDER BY n),
         string_agg(format('NEW.%I', chain), ', ' ORDER BY n),
         string_agg(format('OLD.%I', chain), ', ' ORDER BY n),
         string_agg(format('%1$I = CASE WHEN successor = successors[%2$s] THEN links[%2$s] '
                           'ELSE %1$I END', chain, n), E',\n          ' ORDER BY n)
    INTO prevs, nexts, targets, olds, sets
    FROM (SELECT d.chain, d.n,
                 format('x.%1$I = f.%1$I', d.owner) ||
                   CASE WHEN d.grp IS NULL THEN '' ELSE format(' AND x.%1$I = f.%1$I', d.grp) END
                   AS same
            FROM attendance_chain_defs() WITH ORDINALITY d(chain, owner, grp, n)) c;
  EXECUTE format($function$
CREATE OR REPLACE FUNCTION attendance_chains_maintain() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
  f attendance_facts;
  successors uuid[];  -- per chain, the fact after this one
  links date[];       -- per chain, that fact's new predecessor date
  successor uuid;
BEGIN
  IF TG_OP = 'INSERT' THEN f := NEW; ELSE f := OLD; END IF;
  PERFORM lock_attendance_chains(f.participant_id, f.organisation_id);
  IF TG_OP = 'INSERT' THEN
    IF EXISTS (SELECT 1 FROM attendance_facts x WHERE x.booking_id = f.booking_id) THEN
      RETURN NULL;  -- already recorded: skipped, as ON CONFLICT DO NOTHING would
    END IF;
    SELECT %1$s
      INTO %3$s;
    links := array_fill(f.session_date, ARRAY[%6$s]);
  ELSE
    links := ARRAY[%4$s];  -- what the deleted fact followed
  END IF;
  SELECT ARRAY[%2$s]
    INTO successors;
  -- In booking id order: two writers relinking facts of each other's (one
  -- sharing the connector, the other the organisation) never wait on each
  -- other in a circle.
  FOR successor IN SELECT DISTINCT s FROM unnest(successors) s WHERE s IS NOT NULL ORDER BY s LOOP
    UPDATE attendance_facts
      SET %5$s
      WHERE booking_id = successor;
  END LOOP;
  IF TG_OP = 'INSERT' THEN RETURN NEW; END IF;
  RETURN NULL;
END;
$body$
$function$, prevs, nexts, targets, olds, sets, (SELECT count(*) FROM attendance_chain_defs()));
END;
$generate$;

-- A fact's place in its chains is fixed: one recorded wrongly is deleted and
-- recorded again, which relinks it.
CREATE OR REPLACE FUNCTION attendance_chains_keys_fixed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF (NEW.booking_id, NEW.session_date, NEW.participant_id, NEW.organisation_id, NEW.sector,
      NEW.region, NEW.directorate, NEW.grade) IS DISTINCT FROM
     (OLD.booking_id, OLD.session_date, OLD.participant_id, OLD.organisation_id, OLD.sector,
      OLD.region, OLD.directorate, OLD.grade) THEN
    RAISE EXCEPTION
      'attendance_facts: % changes what its figures chains are ordered and grouped by',
      OLD.booking_id
      USING HINT = 'Delete the fact and insert it again.';
  END IF;
  RETURN NEW;
END;
$$;

-- Every chain recomputed from the facts, writing only the rows that differ;
-- returns how many did. Holds off writers of facts meanwhile.
CREATE OR REPLACE FUNCTION rebuild_attendance_chains() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  windows text;
  sets text;
  differs text;
  n bigint;
BEGIN
  LOCK TABLE attendance_facts IN SHARE ROW EXCLUSIVE MODE;
  SELECT string_agg(format('lag(session_date) OVER (PARTITION BY %I%s '
                           'ORDER BY session_date, booking_id) AS %I',
                           owner, CASE WHEN grp IS NULL THEN '' ELSE format(', %I', grp) END,
                           chain), ', '),
         string_agg(format('%1$I = w.%1$I', chain), ', '),
         string_agg(format('f.%1$I IS DISTINCT FROM w.%1$I', chain), ' OR ')
    INTO windows, sets, differs FROM attendance_chain_defs();
  EXECUTE format('UPDATE attendance_facts f SET %s FROM (SELECT booking_id, %s FROM '
                 'attendance_facts) w WHERE f.booking_id = w.booking_id AND (%s)',
                 sets, windows, differs);
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END;
$$;

LOCK TABLE attendance_facts IN SHARE ROW EXCLUSIVE MODE;
DROP TRIGGER IF EXISTS attendance_chains_link ON attendance_facts;
CREATE TRIGGER attendance_chains_link BEFORE INSERT ON attendance_facts
  FOR EACH ROW EXECUTE FUNCTION attendance_chains_maintain();
DROP TRIGGER IF EXISTS attendance_chains_unlink ON attendance_facts;
CREATE TRIGGER attendance_chains_unlink AFTER DELETE ON attendance_facts
  FOR EACH ROW EXECUTE FUNCTION attendance_chains_maintain();
DROP TRIGGER IF EXISTS attendance_chains_keys_fixed ON attendance_facts;
CREATE TRIGGER attendance_chains_keys_fixed BEFORE UPDATE ON attendance_facts
  FOR EACH ROW EXECUTE FUNCTION attendance_chains_keys_fixed();
SELECT rebuild_attendance_chains();
