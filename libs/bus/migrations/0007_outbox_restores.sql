-- Restores the outbox relays found: the database behind the events its
-- stream holds (libs/bus/outbox.h). A row stays open until
-- `--republish --after-restore` settles it, so the alert holds until an
-- operator acts, whichever replica saw the restore and whatever was
-- published since. At most one is open at a time.
CREATE TABLE outbox_restores (
  detected_at  timestamptz NOT NULL DEFAULT now(),
  database_seq bigint NOT NULL,  -- the database's outbox sequence when found
  stream_seq   bigint NOT NULL,  -- the highest outbox row its stream was known to hold
  settled_at   timestamptz
);
CREATE UNIQUE INDEX outbox_restores_one_open ON outbox_restores ((true)) WHERE settled_at IS NULL;
