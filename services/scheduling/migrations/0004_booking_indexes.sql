-- Fewer index entries per booking. seq needs no index of its own (a sequence
-- never repeats; every query by seq goes through an index that ends in seq),
-- and bookings without a request_id need no entry in its unique index.
ALTER TABLE bookings DROP CONSTRAINT bookings_seq_key;
CREATE UNIQUE INDEX bookings_by_request_id ON bookings (request_id) WHERE request_id IS NOT NULL;
ALTER TABLE bookings DROP CONSTRAINT bookings_request_id_key;

-- Every booking rewrites its site's counters, so a popular site's row gets a
-- new version per booking. With the default fillfactor a page is pruned only
-- when nearly full, and each lock of the row walked a chain of ~100 dead
-- versions; at 10 % the page is pruned on almost every visit.
ALTER TABLE session_sites SET (fillfactor = 10);
