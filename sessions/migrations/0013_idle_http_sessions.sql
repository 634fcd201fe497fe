-- Abandoned HTTP sessions never lock their user out, on any daemon: the
-- daemon holding an HTTP session marks it idle (idle_since: when its last
-- request ended) once it has had no request in flight and no stream open
-- for the idle grace, and unmarks it when it is used again, in batches.
-- A daemon opening or resuming a session for a user at the cap first
-- takes that user's least recently used idle session, wherever it is
-- held: it becomes 'expired' (an HTTP session cannot be resumed; its
-- client opens a new one on 404), and the daemon holding it ends it when
-- it next asks which of its sessions ended elsewhere (mcp_ended_sessions).

ALTER TABLE public.mcp_sessions ADD COLUMN IF NOT EXISTS idle_since TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS idx_mcp_sessions_idle
  ON public.mcp_sessions(user_id, idle_since)
  WHERE connection_status = 'connected' AND idle_since IS NOT NULL;

-- Marks sessions idle since p_idle_since[i], or in use again (NULL).
CREATE OR REPLACE FUNCTION public.mcp_mark_idle(
  p_user_ids uuid[], p_session_ids text[], p_idle_since timestamptz[]
) RETURNS void
  LANGUAGE sql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  UPDATE public.mcp_sessions s SET idle_since = t.idle_since
    FROM unnest(p_user_ids, p_session_ids, p_idle_since) AS t(user_id, session_id, idle_since)
   WHERE s.user_id = t.user_id AND s.session_id = t.session_id
     AND s.connection_status = 'connected'
$fn$;

-- Under the user's advisory lock: ends the user's least recently used
-- idle session, if there is one; whether it did.
CREATE OR REPLACE FUNCTION public.mcp_take_idle_session(p_user_id uuid)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
DECLARE
  taken public.mcp_sessions.id%TYPE;
BEGIN
  SELECT id INTO taken FROM public.mcp_sessions
   WHERE user_id = p_user_id AND connection_status = 'connected' AND idle_since IS NOT NULL
   ORDER BY idle_since LIMIT 1 FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  UPDATE public.mcp_sessions SET connection_status = 'expired', idle_since = NULL
   WHERE id = taken;
  RETURN true;
END
$fn$;

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
  -- Exactly at the cap: an idle session makes room (past it, one would not).
  IF live = p_max_connections
     AND public.mcp_take_idle_session(p_user_id) THEN
    live := live - 1;
  END IF;
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
  -- Exactly at the cap: an idle session makes room (past it, one would not).
  IF live = p_max_connections
     AND public.mcp_take_idle_session(p_user_id) THEN
    live := live - 1;
  END IF;
  IF live >= p_max_connections THEN
    RAISE EXCEPTION 'connection limit reached' USING ERRCODE = 'PT429';
  END IF;
  UPDATE public.mcp_sessions
     SET connection_status = 'connected', last_active = now(), node_id = p_node_id,
         idle_since = NULL
   WHERE id = found_row.id RETURNING * INTO found_row;
  RETURN found_row;
END
$fn$;

-- Which of p_session_ids (the sessions a daemon holds) ended elsewhere:
-- killed by an administrator, or expired (idle past the session timeout,
-- or an idle HTTP session taken for a new connection at the cap).
CREATE OR REPLACE FUNCTION public.mcp_ended_sessions(p_session_ids text[])
  RETURNS TABLE (session_id text, connection_status text)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  SELECT s.session_id, s.connection_status FROM public.mcp_sessions s
   WHERE s.session_id = ANY (p_session_ids) AND s.connection_status IN ('killed', 'expired')
$fn$;

REVOKE ALL ON FUNCTION public.mcp_mark_idle(uuid[], text[], timestamptz[]) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_take_idle_session(uuid) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_open_session(uuid, text, integer, jsonb, uuid) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_resume_session(uuid, text, integer, uuid) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_ended_sessions(text[]) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.mcp_mark_idle(uuid[], text[], timestamptz[]) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_open_session(uuid, text, integer, jsonb, uuid) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_resume_session(uuid, text, integer, uuid) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_ended_sessions(text[]) TO service_role;
