-- Tells every replica's organisation cache which row changed (delivered at commit).
CREATE FUNCTION organisations_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('partners_organisation_changed', OLD.id::text);
  RETURN NULL;
END $$;
CREATE TRIGGER organisations_notify AFTER UPDATE OR DELETE ON organisations
  FOR EACH ROW EXECUTE FUNCTION organisations_notify();
