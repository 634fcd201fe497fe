-- What must be atomic, as functions the daemon calls directly (postgres
-- backend) or through PostgREST's /rest/v1/rpc (supabase backend).
-- Every function is SECURITY DEFINER with a fixed search_path, and only the
-- service role may call it.

-- Opens a live session for a user, under a per-user lock, unless the user
-- already holds p_max_connections live ones: then SQLSTATE PT429, which
-- PostgREST answers with HTTP 429. Daemons sharing one database therefore
-- cannot together exceed the limit.
CREATE OR REPLACE FUNCTION public.mcp_open_session(
  p_user_id uuid,
  p_session_id text,
  p_max_connections integer,
  p_metadata jsonb
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
            DETAIL = format('at most %s concurrent connections per user', p_max_connections);
  END IF;
  INSERT INTO public.mcp_sessions (user_id, session_id, connection_status, metadata)
    VALUES (p_user_id, p_session_id, 'connected', coalesce(p_metadata, '{}'::jsonb))
    RETURNING * INTO opened;
  RETURN opened;
END
$fn$;

-- Marks one of a user's live sessions disconnected. Returns whether the
-- session exists for that user (closing a session that is not live is a
-- no-op, not an error).
CREATE OR REPLACE FUNCTION public.mcp_close_session(p_user_id uuid, p_session_id text)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
BEGIN
  UPDATE public.mcp_sessions
     SET connection_status = 'disconnected', last_active = now()
   WHERE user_id = p_user_id AND session_id = p_session_id
     AND connection_status = 'connected';
  RETURN FOUND OR EXISTS (
    SELECT 1 FROM public.mcp_sessions
     WHERE user_id = p_user_id AND session_id = p_session_id);
END
$fn$;

-- Records activity on a batch of live sessions in one statement; each
-- session is named with its owner. Returns how many were live.
CREATE OR REPLACE FUNCTION public.mcp_touch_sessions(p_user_ids uuid[], p_session_ids text[])
  RETURNS integer
  LANGUAGE sql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  WITH touched AS (
    UPDATE public.mcp_sessions s SET last_active = now()
      FROM unnest(p_user_ids, p_session_ids) AS t(user_id, session_id)
     WHERE s.user_id = t.user_id AND s.session_id = t.session_id
       AND s.connection_status = 'connected'
    RETURNING 1)
  SELECT count(*)::integer FROM touched
$fn$;

-- Expires sessions idle for longer than p_idle_seconds; returns them.
CREATE OR REPLACE FUNCTION public.mcp_expire_sessions(p_idle_seconds integer)
  RETURNS SETOF public.mcp_sessions
  LANGUAGE sql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  UPDATE public.mcp_sessions SET connection_status = 'expired'
   WHERE connection_status IN ('connected', 'disconnected')
     AND last_active < now() - make_interval(secs => p_idle_seconds)
  RETURNING *
$fn$;

REVOKE ALL ON FUNCTION public.mcp_open_session(uuid, text, integer, jsonb) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_close_session(uuid, text) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_touch_sessions(uuid[], text[]) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_expire_sessions(integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.mcp_open_session(uuid, text, integer, jsonb) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_close_session(uuid, text) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_touch_sessions(uuid[], text[]) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_expire_sessions(integer) TO service_role;
