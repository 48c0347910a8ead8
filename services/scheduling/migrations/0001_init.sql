-- Scheduling: participants, sessions, bookings, the partner projection and
-- attendance facts for the programme figures. Enum columns hold proto numbers.

-- What scheduling knows of partner organisations, from PARTNERS events only.
CREATE TABLE partner_organisations (
  id         uuid PRIMARY KEY,
  name       text NOT NULL,
  status     int NOT NULL,
  sector     int NOT NULL,
  region     int NOT NULL,
  version    bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE participants (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  request_id   text UNIQUE,
  staff_number text NOT NULL UNIQUE,
  display_name text COLLATE "C" NOT NULL,
  email        text NOT NULL,
  grade        int NOT NULL CHECK (grade > 0),
  directorate  text NOT NULL,
  status       int NOT NULL DEFAULT 1,
  version      bigint NOT NULL DEFAULT 1,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX participants_by_name ON participants (display_name, id);

CREATE TABLE sessions (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  request_id      text UNIQUE,
  kind            int NOT NULL CHECK (kind BETWEEN 1 AND 3),
  title           text NOT NULL,
  organisation_id uuid NOT NULL,
  offer_id        uuid,
  host_contact_id uuid,
  session_date    date NOT NULL,
  start_time      time NOT NULL,
  end_time        time NOT NULL CHECK (end_time > start_time),
  broadcast_link  text NOT NULL DEFAULT '',
  arranged_by     uuid REFERENCES participants (id),
  status          int NOT NULL,
  version         bigint NOT NULL DEFAULT 1,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_by_date ON sessions (session_date, start_time, id);
CREATE INDEX sessions_by_organisation ON sessions (organisation_id, session_date, start_time, id);

-- One row per bookable place; its row lock serialises bookings for it, and
-- `confirmed` never exceeds `capacity` (checked here as a last line of defence).
CREATE TABLE session_sites (
  session_id uuid NOT NULL REFERENCES sessions (id),
  site       text NOT NULL,
  capacity   int NOT NULL CHECK (capacity BETWEEN 1 AND 1000),
  confirmed  int NOT NULL DEFAULT 0,
  ordinal    int NOT NULL,
  PRIMARY KEY (session_id, site),
  CHECK (confirmed BETWEEN 0 AND capacity)
);

CREATE TABLE bookings (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  request_id     text UNIQUE,
  seq            bigserial NOT NULL UNIQUE,  -- arrival order (FIFO waitlist)
  session_id     uuid NOT NULL REFERENCES sessions (id),
  site           text NOT NULL,
  participant_id uuid NOT NULL REFERENCES participants (id),
  status         int NOT NULL,
  -- Copied from the session so the one-visit-per-date rule is an index.
  session_date   date NOT NULL,
  kind           int NOT NULL,
  version        bigint NOT NULL DEFAULT 1,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now()
);
-- A participant holds at most one live booking per session ...
CREATE UNIQUE INDEX bookings_one_per_session ON bookings (session_id, participant_id)
  WHERE status IN (1, 2);
-- ... and at most one confirmed frontline visit per date.
CREATE UNIQUE INDEX bookings_one_frontline_per_date ON bookings (participant_id, session_date)
  WHERE status = 1 AND kind = 1;
CREATE INDEX bookings_waitlist ON bookings (session_id, site, seq) WHERE status = 2;
CREATE INDEX bookings_by_session ON bookings (session_id, seq);
CREATE INDEX bookings_by_participant ON bookings (participant_id, seq);

-- One row per attended frontline visit, written with the attendance: the
-- programme figures aggregate this (indexed by date) instead of scanning bookings.
CREATE TABLE attendance_facts (
  booking_id      uuid PRIMARY KEY REFERENCES bookings (id),
  session_date    date NOT NULL,
  participant_id  uuid NOT NULL,
  organisation_id uuid NOT NULL,
  host_contact_id uuid,
  sector          int NOT NULL,
  region          int NOT NULL,
  directorate     text NOT NULL,
  grade           int NOT NULL
);
CREATE INDEX attendance_facts_by_date ON attendance_facts (session_date);
CREATE INDEX attendance_facts_by_participant ON attendance_facts (participant_id, session_date);
