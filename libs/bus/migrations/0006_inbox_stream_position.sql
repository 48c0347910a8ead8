-- Where each event a consumer handled sits in its stream. The greatest is how
-- far the database knows the consumer got; it is written before the ack, so
-- the durable's ack floor on the server is never past it, unless the
-- database lost what it had recorded (restored to an earlier point, or
-- replaced): the consumer then replays its stream (libs/bus/consumer.h).
-- NULL for events handled by a release before this migration; while such a
-- replica still consumes (a rolling update), nothing can be told.
ALTER TABLE inbox ADD COLUMN stream_seq bigint;
CREATE INDEX inbox_position ON inbox (consumer, stream_seq);
CREATE INDEX inbox_unplaced ON inbox (consumer, received_at) WHERE stream_seq IS NULL;
