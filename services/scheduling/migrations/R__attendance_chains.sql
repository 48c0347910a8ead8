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
CREATE OR REPLACE FUNCTION attendance_chains_maintain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  f attendance_facts;
  d record;
  same text;
  link date;
  next_id uuid;
  links jsonb := '{}';
  -- booking id -> {chain: its new predecessor date}
  nexts jsonb := '{}';
  id text;
  sets text;
BEGIN
  IF TG_OP = 'INSERT' THEN f := NEW; ELSE f := OLD; END IF;
  PERFORM lock_attendance_chains(f.participant_id, f.organisation_id);
  IF TG_OP = 'INSERT' AND EXISTS (SELECT 1 FROM attendance_facts x
                                  WHERE x.booking_id = f.booking_id) THEN
    RETURN NULL;  -- already recorded: skipped, as ON CONFLICT DO NOTHING would
  END IF;
  FOR d IN SELECT * FROM attendance_chain_defs() LOOP
    same := format('x.%1$I = ($1).%1$I', d.owner);
    IF d.grp IS NOT NULL THEN
      same := same || format(' AND x.%1$I = ($1).%1$I', d.grp);
    END IF;
    IF TG_OP = 'INSERT' THEN
      EXECUTE format('SELECT x.session_date FROM attendance_facts x WHERE %s AND '
                     '(x.session_date, x.booking_id) < (($1).session_date, ($1).booking_id) '
                     'ORDER BY x.session_date DESC, x.booking_id DESC LIMIT 1', same)
        INTO link USING f;
      links := links || jsonb_build_object(d.chain, link);
    END IF;
    EXECUTE format('SELECT x.booking_id FROM attendance_facts x WHERE %s AND '
                   '(x.session_date, x.booking_id) > (($1).session_date, ($1).booking_id) '
                   'ORDER BY x.session_date, x.booking_id LIMIT 1', same)
      INTO next_id USING f;
    IF next_id IS NOT NULL THEN
      -- After an insert it follows this fact; after a delete, what this one followed.
      nexts := jsonb_set(nexts, ARRAY[next_id::text],
                         COALESCE(nexts -> next_id::text, '{}') ||
                         jsonb_build_object(d.chain,
                                            CASE TG_OP WHEN 'INSERT' THEN to_jsonb(f.session_date)
                                                       ELSE to_jsonb(f) -> d.chain END));
    END IF;
  END LOOP;
  -- In booking id order: two writers relinking facts of each other's (one
  -- sharing the connector, the other the organisation) never wait on each
  -- other in a circle.
  FOR id IN SELECT k FROM jsonb_object_keys(nexts) k ORDER BY k::uuid LOOP
    SELECT string_agg(format('%1$I = ($2 ->> %1$L)::date', c), ', ') INTO sets
      FROM jsonb_object_keys(nexts -> id) c;
    EXECUTE format('UPDATE attendance_facts SET %s WHERE booking_id = $1', sets)
      USING id::uuid, nexts -> id;
  END LOOP;
  IF TG_OP = 'INSERT' THEN
    RETURN jsonb_populate_record(NEW, links);
  END IF;
  RETURN NULL;
END;
$$;

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
