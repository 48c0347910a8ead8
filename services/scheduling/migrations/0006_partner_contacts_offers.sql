-- Partner contacts and offers, projected from PARTNERS events as the
-- organisations are, so that a session's host_contact_id and offer_id must
-- name a contact (not removed) or a published offer of the session's
-- organisation. A removed contact stays as a tombstone (version = max) so
-- that a late or redelivered event about it cannot bring it back.
CREATE TABLE partner_contacts (
  id              uuid PRIMARY KEY,
  organisation_id uuid NOT NULL,
  display_name    text NOT NULL,
  removed         boolean NOT NULL DEFAULT false,
  version         bigint NOT NULL,
  updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE partner_offers (
  id              uuid PRIMARY KEY,
  organisation_id uuid NOT NULL,
  title           text NOT NULL,
  state           int NOT NULL,
  version         bigint NOT NULL,
  updated_at      timestamptz NOT NULL DEFAULT now()
);
