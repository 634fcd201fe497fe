-- Which client holds each session: a WebSocket's session is opened at the
-- upgrade, before the client's `initialize` names it, so the daemon
-- records clientInfo afterwards, for many sessions in one write. Each
-- value is cut to 128 characters here too.

CREATE OR REPLACE FUNCTION public.mcp_describe_sessions(
  p_user_ids uuid[], p_session_ids text[], p_names text[], p_versions text[]
) RETURNS void
  LANGUAGE sql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  UPDATE public.mcp_sessions s
     SET metadata = coalesce(s.metadata, '{}'::jsonb)
                    || jsonb_build_object('client_name', left(t.name, 128),
                                          'client_version', left(t.version, 128))
    FROM unnest(p_user_ids, p_session_ids, p_names, p_versions)
         AS t(user_id, session_id, name, version)
   WHERE s.user_id = t.user_id AND s.session_id = t.session_id
$fn$;

REVOKE ALL ON FUNCTION public.mcp_describe_sessions(uuid[], text[], text[], text[]) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.mcp_describe_sessions(uuid[], text[], text[], text[]) TO service_role;
