-- What each create request asked for (libs/server/resource.h, RequestDigest):
-- a retry under the same request_id gets the resource it made, another
-- request under it REQUEST_ID_REUSED (AIP-155). Before, an organisation
-- compared nothing and a contact or an offer only its organisation, so a
-- request_id reused for a different organisation returned the first one as
-- if it were the one asked for. NULL for rows made before (and by a replica
-- of an earlier release during a rolling update): those are compared as
-- before. Columns without a default: no table rewrite.
ALTER TABLE organisations ADD COLUMN request_digest text;
ALTER TABLE contacts ADD COLUMN request_digest text;
ALTER TABLE offers ADD COLUMN request_digest text;
