-- A resource's next version: its etag, and the order in which consumers apply
-- its events (they keep the greatest). One more than the last, and never less
-- than the clock in microseconds, so that versions keep growing when the
-- database is restored to an earlier point: the rows come back with the
-- versions they had then, below those already published since, and counting
-- on from there would hand the next changes versions every consumer holds as
-- newer, so they would be dropped as stale.
CREATE FUNCTION next_version(v bigint) RETURNS bigint LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  SELECT greatest(v + 1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
$$;
