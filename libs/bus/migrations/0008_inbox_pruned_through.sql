-- How far each consumer's inbox has been pruned (libs/bus/consumer.h):
-- every event of the stream created at `stream_created` (JetStream's
-- creation time, in nanoseconds) up to `through_seq` was acknowledged, so
-- it had taken effect (or been dead-lettered) before, and its inbox row may
-- be gone. A replay from the start of that stream skips them by this mark;
-- a stream made anew numbers its events from 1 again, and the mark does not
-- apply to it.
CREATE TABLE inbox_pruned (
  consumer       text PRIMARY KEY,
  stream_created bigint NOT NULL,
  through_seq    bigint NOT NULL
);
