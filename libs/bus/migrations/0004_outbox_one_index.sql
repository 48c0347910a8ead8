-- One index per outbox row instead of three. Since 0003 the relay deletes a
-- row once JetStream has acknowledged it, so every row in the table is
-- pending: outbox_pending indexed exactly the rows of the primary key, and the
-- relay's claim (WHERE sent_at IS NULL ORDER BY seq) walks the primary key
-- just as well. The event id is a random UUID drawn by gen_random_uuid();
-- nothing looks a row up by it, so its unique index cost every event an
-- insert into a random page and guarded nothing a v4 UUID does not.
DROP INDEX outbox_pending;
ALTER TABLE outbox DROP CONSTRAINT outbox_id_key;
