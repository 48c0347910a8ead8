-- Transactional outbox: one row per event, written in the business transaction.
CREATE TABLE outbox (
  seq         bigserial PRIMARY KEY,
  id          uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
  subject     text NOT NULL,
  type        text NOT NULL,
  source      text NOT NULL,
  ce_subject  text NOT NULL DEFAULT '',
  payload     text NOT NULL,
  traceparent text NOT NULL DEFAULT '',
  created_at  timestamptz NOT NULL DEFAULT now(),
  sent_at     timestamptz
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Wakes the relay at commit (NOTIFY is delivered only when the transaction commits).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('connecting_outbox', '');
  RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
  FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Inbox: events a consumer has applied; the row commits with the effect.
CREATE TABLE inbox (
  consumer    text NOT NULL,
  event_id    text NOT NULL,
  subject     text NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, event_id)
);

-- Events a consumer gave up on (invalid, or failing after every redelivery).
CREATE TABLE dead_letters (
  consumer   text NOT NULL,
  event_id   text NOT NULL,
  subject    text NOT NULL,
  type       text NOT NULL DEFAULT '',
  payload    text NOT NULL,
  error      text NOT NULL,
  deliveries bigint NOT NULL,
  failed_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, event_id)
);
