-- A deactivation cancels the visits the leaver arranged that no host has
-- accepted yet: found by this index rather than a scan of every session.
CREATE INDEX sessions_by_arranger ON sessions (arranged_by) WHERE arranged_by IS NOT NULL;
