-- ListSessions by host_contact_id (a host's visits, e.g. to find a new host
-- for those of one who left), in the listing's order.
CREATE INDEX sessions_by_host ON sessions (host_contact_id, session_date, start_time, id)
  WHERE host_contact_id IS NOT NULL;
