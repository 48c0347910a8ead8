-- Fewer index entries per booking. seq needs no index of its own (a sequence
-- never repeats; every query by seq goes through an index that ends in seq),
-- and bookings without a request_id need no entry in its unique index.
ALTER TABLE bookings DROP CONSTRAINT bookings_seq_key;
CREATE UNIQUE INDEX bookings_by_request_id ON bookings (request_id) WHERE request_id IS NOT NULL;
ALTER TABLE bookings DROP CONSTRAINT bookings_request_id_key;
