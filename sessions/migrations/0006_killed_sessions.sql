-- Which of a daemon's live sessions an administrator killed (checked every
-- few seconds by each daemon, for the sessions it holds).
CREATE OR REPLACE FUNCTION public.mcp_killed_sessions(p_session_ids text[])
  RETURNS SETOF text
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  SELECT session_id FROM public.mcp_sessions
   WHERE session_id = ANY (p_session_ids) AND connection_status = 'killed'
$fn$;

REVOKE ALL ON FUNCTION public.mcp_killed_sessions(text[]) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.mcp_killed_sessions(text[]) TO service_role;
