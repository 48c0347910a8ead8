-- Released with the change to book_session that waits a newcomer behind
-- someone in line owed a free seat (R__book_session.sql, repeatable.lock).
SELECT 1;
