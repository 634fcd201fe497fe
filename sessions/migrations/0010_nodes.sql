-- Node liveness: each daemon is a node, registered here and heartbeating;
-- every session row names the node holding it. Any daemon reaps the live
-- sessions of a node whose heartbeat is older than the node timeout: they
-- become 'disconnected' (their owner may resume them elsewhere until the
-- session timeout) and stop counting against the per-user cap, so a daemon
-- that dies costs its users nothing past that timeout.

CREATE TABLE IF NOT EXISTS public.mcp_nodes (
  node_id UUID PRIMARY KEY,
  host TEXT NOT NULL,
  version TEXT NOT NULL,
  started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  -- Set when another daemon reaped this one's sessions.
  reaped_at TIMESTAMPTZ
);
ALTER TABLE public.mcp_nodes ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.mcp_nodes FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.mcp_nodes TO service_role;
DROP TRIGGER IF EXISTS mcp_refuse_user_writes ON public.mcp_nodes;
CREATE TRIGGER mcp_refuse_user_writes
  BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.mcp_nodes
  FOR EACH STATEMENT EXECUTE FUNCTION public.mcp_refuse_user_writes();

ALTER TABLE public.mcp_sessions ADD COLUMN IF NOT EXISTS node_id UUID;
CREATE INDEX IF NOT EXISTS idx_mcp_sessions_live_node
  ON public.mcp_sessions(node_id) WHERE connection_status = 'connected';

-- Opening and resuming now name the node (NULL: a caller that predates
-- nodes; such a session is never reaped, only expired).
DROP FUNCTION IF EXISTS public.mcp_open_session(uuid, text, integer, jsonb);
CREATE OR REPLACE FUNCTION public.mcp_open_session(
  p_user_id uuid,
  p_session_id text,
  p_max_connections integer,
  p_metadata jsonb,
  p_node_id uuid DEFAULT NULL
) RETURNS public.mcp_sessions
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
DECLARE
  live integer;
  opened public.mcp_sessions;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('mcp_sessions:' || p_user_id::text, 0));
  SELECT count(*) INTO live FROM public.mcp_sessions
    WHERE user_id = p_user_id AND connection_status = 'connected';
  IF live >= p_max_connections THEN
    RAISE EXCEPTION 'connection limit reached'
      USING ERRCODE = 'PT429',
            DETAIL = format('at most %s concurrent connections per user; %s held', p_max_connections, live);
  END IF;
  INSERT INTO public.mcp_sessions (user_id, session_id, connection_status, metadata, node_id)
    VALUES (p_user_id, p_session_id, 'connected', coalesce(p_metadata, '{}'::jsonb), p_node_id)
    RETURNING * INTO opened;
  RETURN opened;
END
$fn$;

DROP FUNCTION IF EXISTS public.mcp_resume_session(uuid, text, integer);
CREATE OR REPLACE FUNCTION public.mcp_resume_session(
  p_user_id uuid, p_session_id text, p_max_connections integer, p_node_id uuid DEFAULT NULL
) RETURNS public.mcp_sessions
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
DECLARE
  found_row public.mcp_sessions;
  live integer;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('mcp_sessions:' || p_user_id::text, 0));
  SELECT * INTO found_row FROM public.mcp_sessions
   WHERE user_id = p_user_id AND session_id = p_session_id FOR UPDATE;
  IF NOT FOUND OR found_row.connection_status IN ('expired', 'killed') THEN
    RAISE EXCEPTION 'session not found' USING ERRCODE = 'PT404';
  END IF;
  IF found_row.connection_status = 'connected' THEN
    RAISE EXCEPTION 'session is connected' USING ERRCODE = 'PT409';
  END IF;
  SELECT count(*) INTO live FROM public.mcp_sessions
   WHERE user_id = p_user_id AND connection_status = 'connected';
  IF live >= p_max_connections THEN
    RAISE EXCEPTION 'connection limit reached' USING ERRCODE = 'PT429';
  END IF;
  UPDATE public.mcp_sessions
     SET connection_status = 'connected', last_active = now(), node_id = p_node_id
   WHERE id = found_row.id RETURNING * INTO found_row;
  RETURN found_row;
END
$fn$;

-- A daemon starting: registers its node.
CREATE OR REPLACE FUNCTION public.mcp_register_node(p_node_id uuid, p_host text, p_version text)
  RETURNS void
  LANGUAGE sql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  INSERT INTO public.mcp_nodes (node_id, host, version) VALUES (p_node_id, p_host, p_version)
  ON CONFLICT (node_id) DO UPDATE
    SET host = excluded.host, version = excluded.version,
        heartbeat_at = now(), reaped_at = NULL
$fn$;

-- A daemon's heartbeat, with the activity of its sessions in the same
-- write: records both, then reaps every other node silent for longer than
-- p_node_timeout_secs. was_reaped says whether this node had itself been
-- reaped (a long pause): it is registered again, and must re-assert the
-- sessions it still holds (mcp_reassert_sessions).
CREATE OR REPLACE FUNCTION public.mcp_node_heartbeat(
  p_node_id uuid, p_host text, p_version text,
  p_user_ids uuid[], p_session_ids text[], p_node_timeout_secs integer
) RETURNS TABLE (was_reaped boolean, reaped_sessions integer)
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
DECLARE
  me public.mcp_nodes;
  freed integer;
BEGIN
  SELECT * INTO me FROM public.mcp_nodes WHERE node_id = p_node_id FOR UPDATE;
  -- Registered at start, so a missing row was reaped and cleaned up.
  was_reaped := NOT FOUND OR me.reaped_at IS NOT NULL;
  PERFORM public.mcp_register_node(p_node_id, p_host, p_version);
  UPDATE public.mcp_sessions s SET last_active = now()
    FROM unnest(p_user_ids, p_session_ids) AS t(user_id, session_id)
   WHERE s.user_id = t.user_id AND s.session_id = t.session_id
     AND s.connection_status = 'connected';
  WITH dead AS (
    UPDATE public.mcp_nodes SET reaped_at = now()
     WHERE reaped_at IS NULL AND node_id <> p_node_id
       AND heartbeat_at < now() - make_interval(secs => p_node_timeout_secs)
    RETURNING node_id
  ), reaped AS (
    UPDATE public.mcp_sessions SET connection_status = 'disconnected'
     WHERE connection_status = 'connected' AND node_id IN (SELECT node_id FROM dead)
    RETURNING 1
  )
  SELECT count(*)::integer INTO freed FROM reaped;
  reaped_sessions := freed;
  -- Nodes reaped a day ago are history.
  DELETE FROM public.mcp_nodes WHERE reaped_at < now() - interval '1 day';
  RETURN NEXT;
END
$fn$;

-- A reaped daemon that came back claims the sessions it really still
-- holds, each within its user's cap, in the order given. Returns the ones
-- it may not keep (resumed elsewhere, killed, expired, or over the cap):
-- the daemon closes those connections.
CREATE OR REPLACE FUNCTION public.mcp_reassert_sessions(
  p_node_id uuid, p_user_ids uuid[], p_session_ids text[], p_max_connections integer
) RETURNS SETOF text
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
DECLARE
  i integer;
  found_row public.mcp_sessions;
  live integer;
BEGIN
  FOR i IN 1 .. coalesce(array_length(p_session_ids, 1), 0) LOOP
    PERFORM pg_advisory_xact_lock(hashtextextended('mcp_sessions:' || p_user_ids[i]::text, 0));
    SELECT * INTO found_row FROM public.mcp_sessions
     WHERE user_id = p_user_ids[i] AND session_id = p_session_ids[i] FOR UPDATE;
    IF NOT FOUND THEN
      RETURN NEXT p_session_ids[i];
      CONTINUE;
    END IF;
    IF found_row.connection_status = 'connected' AND found_row.node_id = p_node_id THEN
      CONTINUE;
    END IF;
    IF found_row.connection_status <> 'disconnected' OR found_row.node_id IS DISTINCT FROM p_node_id THEN
      RETURN NEXT p_session_ids[i];
      CONTINUE;
    END IF;
    SELECT count(*) INTO live FROM public.mcp_sessions
     WHERE user_id = p_user_ids[i] AND connection_status = 'connected';
    IF live >= p_max_connections THEN
      RETURN NEXT p_session_ids[i];
      CONTINUE;
    END IF;
    UPDATE public.mcp_sessions SET connection_status = 'connected', last_active = now()
     WHERE id = found_row.id;
  END LOOP;
END
$fn$;

-- Whether a node's heartbeat is current, for /readyz.
CREATE OR REPLACE FUNCTION public.mcp_node_status(p_node_id uuid)
  RETURNS TABLE (heartbeat_age_secs double precision, reaped boolean)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  SELECT extract(epoch FROM now() - heartbeat_at)::double precision, reaped_at IS NOT NULL
    FROM public.mcp_nodes WHERE node_id = p_node_id
$fn$;

REVOKE ALL ON FUNCTION public.mcp_open_session(uuid, text, integer, jsonb, uuid) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_resume_session(uuid, text, integer, uuid) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_register_node(uuid, text, text) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_node_heartbeat(uuid, text, text, uuid[], text[], integer) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_reassert_sessions(uuid, uuid[], text[], integer) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_node_status(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.mcp_open_session(uuid, text, integer, jsonb, uuid) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_resume_session(uuid, text, integer, uuid) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_register_node(uuid, text, text) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_node_heartbeat(uuid, text, text, uuid[], text[], integer) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_reassert_sessions(uuid, uuid[], text[], integer) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_node_status(uuid) TO service_role;
