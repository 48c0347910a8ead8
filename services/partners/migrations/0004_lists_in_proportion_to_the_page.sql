-- connecting:no-transaction
-- Every list filter walks an index in the list's own order, so a page reads
-- about as many rows as it returns, however rare the value asked for
-- (measured over 200,000 organisations: archived ones, one in fifty, read
-- 161,000 index entries for a page of 50; a name prefix starting late in the
-- alphabet read the whole index).
--
-- Organisations are listed by name ignoring case (name_lower, then name,
-- then id), so that a name prefix, which is matched ignoring case, is a
-- range of the same index the list is read in. Contacts and offers are
-- listed by name (title) ignoring case too, the same way.
--
-- Run outside a transaction (libs/db/migrations.h): each index is built
-- CONCURRENTLY, letting writes through, and the new ones are built before
-- the ones they replace are dropped, so lists always have an index.
CREATE INDEX CONCURRENTLY IF NOT EXISTS organisations_in_name_order
  ON organisations (name_lower, name, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS organisations_by_sector_in_name_order
  ON organisations (sector, name_lower, name, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS organisations_by_region_in_name_order
  ON organisations (region, name_lower, name, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS organisations_by_status_in_name_order
  ON organisations (status, name_lower, name, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS offers_in_title_order ON offers (lower(title), title, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS offers_by_state_in_title_order
  ON offers (state, lower(title), title, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS offers_by_organisation_in_title_order
  ON offers (organisation_id, lower(title), title, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS contacts_in_name_order
  ON contacts (organisation_id, lower(display_name), display_name, id);
DROP INDEX CONCURRENTLY IF EXISTS organisations_by_name;
DROP INDEX CONCURRENTLY IF EXISTS organisations_by_name_lower;
DROP INDEX CONCURRENTLY IF EXISTS organisations_by_sector;
DROP INDEX CONCURRENTLY IF EXISTS organisations_by_region;
DROP INDEX CONCURRENTLY IF EXISTS offers_by_title;
DROP INDEX CONCURRENTLY IF EXISTS offers_by_organisation;
DROP INDEX CONCURRENTLY IF EXISTS contacts_by_organisation;
