-- Released with the repeatable migrations' new texts (repeatable.lock):
-- book_sites books a common batch (new requests, distinct people, sessions
-- that are not events, no free seat while people wait) in one statement,
-- its sites locked together first, instead of statement by statement; any
-- other batch as before. book_sites_raced() is new with it. book_sites and
-- lock_participants plan their statements without sequential scans.
SELECT 1;
