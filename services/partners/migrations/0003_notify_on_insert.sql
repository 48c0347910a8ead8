-- New organisations change list pages too: notify on INSERT as well (creation
-- is rare, so the NOTIFY lock on these commits costs little).
DROP TRIGGER organisations_notify ON organisations;
CREATE OR REPLACE FUNCTION organisations_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('partners_organisation_changed',
                    CASE WHEN TG_OP = 'DELETE' THEN OLD.id::text ELSE NEW.id::text END);
  RETURN NULL;
END $$;
CREATE TRIGGER organisations_notify AFTER INSERT OR UPDATE OR DELETE ON organisations
  FOR EACH ROW EXECUTE FUNCTION organisations_notify();
