-- Partners: organisations, their host contacts, and their offers.
-- Enum columns hold the proto enum numbers (stable: protos are versioned).

CREATE TABLE organisations (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  request_id  text UNIQUE,
  name        text COLLATE "C" NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  name_lower  text COLLATE "C" GENERATED ALWAYS AS (lower(name)) STORED,
  ods_code    text CHECK (ods_code ~ '^[A-Z0-9]{3,10}$'),
  sector      int NOT NULL CHECK (sector > 0),
  region      int NOT NULL CHECK (region > 0),
  status      int NOT NULL DEFAULT 1 CHECK (status BETWEEN 1 AND 3),
  description text NOT NULL DEFAULT '',
  version     bigint NOT NULL DEFAULT 1,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX organisations_ods_code_key ON organisations (ods_code) WHERE ods_code IS NOT NULL;
CREATE INDEX organisations_by_name ON organisations (name, id);
CREATE INDEX organisations_by_name_lower ON organisations (name_lower);
CREATE INDEX organisations_by_sector ON organisations (sector, name, id);
CREATE INDEX organisations_by_region ON organisations (region, name, id);

CREATE TABLE contacts (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  organisation_id uuid NOT NULL REFERENCES organisations (id),
  request_id      text UNIQUE,
  display_name    text COLLATE "C" NOT NULL,
  email           text NOT NULL,
  phone           text NOT NULL DEFAULT '',
  job_title       text NOT NULL DEFAULT '',
  version         bigint NOT NULL DEFAULT 1,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contacts_by_organisation ON contacts (organisation_id, display_name, id);
CREATE UNIQUE INDEX contacts_email_key ON contacts (organisation_id, lower(email));

CREATE TABLE offers (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  organisation_id  uuid NOT NULL REFERENCES organisations (id),
  request_id       text UNIQUE,
  title            text COLLATE "C" NOT NULL,
  setting          int NOT NULL CHECK (setting > 0),
  description      text NOT NULL DEFAULT '',
  capacity_per_day int NOT NULL CHECK (capacity_per_day BETWEEN 1 AND 100),
  weekdays         int[] NOT NULL,
  requirements     text[] NOT NULL DEFAULT '{}',
  host_contact_id  uuid REFERENCES contacts (id),
  state            int NOT NULL DEFAULT 1 CHECK (state BETWEEN 1 AND 3),
  version          bigint NOT NULL DEFAULT 1,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX offers_by_title ON offers (title, id);
CREATE INDEX offers_by_organisation ON offers (organisation_id, title, id);
CREATE INDEX offers_by_host ON offers (host_contact_id) WHERE host_contact_id IS NOT NULL;
