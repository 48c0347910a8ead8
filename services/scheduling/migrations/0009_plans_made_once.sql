-- Released with the repeatable migrations' new texts (repeatable.lock):
-- book_session's waitlist position no longer plans a query at every call, and
-- lock_participants (new) takes the batch's share locks with a plan made once.
SELECT 1;
