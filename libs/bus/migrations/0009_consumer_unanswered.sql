-- Events whose handling began and never answered (libs/bus/consumer.h): the
-- process crashed, was killed or was stopped while on them. A consumer
-- counts a start here, in a commit of its own, only for an event delivered
-- again, and deletes the row with the event's outcome. Past three starts
-- without an answer the event is dead-lettered without running its handler
-- again, so that an event which brings the process down cannot keep it down
-- (JetStream itself no longer gives up on an event: it used to drop it
-- after a number of deliveries, without a trace).
CREATE TABLE consumer_unanswered (
  consumer   text NOT NULL,
  event_id   text NOT NULL,
  starts     int NOT NULL,
  last_start timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, event_id)
);
