-- Every list filter walks an index in the list's own order, so a page reads
-- about as many rows as it returns, however rare the value asked for
-- (measured over 200,000 organisations: archived ones, one in fifty, read
-- 161,000 index entries for a page of 50; a name prefix starting late in the
-- alphabet read the whole index).
--
-- Organisations are listed by name ignoring case (name_lower, then name,
-- then id), so that a name prefix, which is matched ignoring case, is a
-- range of the same index the list is read in.
DROP INDEX organisations_by_name;
DROP INDEX organisations_by_name_lower;
DROP INDEX organisations_by_sector;
DROP INDEX organisations_by_region;
CREATE INDEX organisations_by_name ON organisations (name_lower, name, id);
CREATE INDEX organisations_by_sector ON organisations (sector, name_lower, name, id);
CREATE INDEX organisations_by_region ON organisations (region, name_lower, name, id);
CREATE INDEX organisations_by_status ON organisations (status, name_lower, name, id);

CREATE INDEX offers_by_state ON offers (state, title, id);
