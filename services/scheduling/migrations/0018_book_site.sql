-- Released with the repeatable migrations' new texts (repeatable.lock):
-- book_site books a run of people into one session's site, taking its lock
-- and reading the session once for them all; book_session stays, as a call
-- of it, for the replicas of the release before while a rolling update
-- replaces them.
SELECT 1;
