-- Released with the repeatable migrations' new texts (repeatable.lock):
-- book_sites books a batch's bookings, of any sessions and sites, in one
-- call (book_site took one site's); book_session and book_site stay, as
-- calls of it, for the replicas of the releases before while a rolling
-- update replaces them.
SELECT 1;
