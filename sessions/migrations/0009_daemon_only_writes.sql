-- Rows users cannot forge. Every exai table is written by the daemon alone
-- (through its SECURITY DEFINER functions, or as the service role); users
-- read their own rows through RLS and write none, so nothing the daemon
-- enforces or lists can be set by the user it limits.
--
-- Three layers, each enough alone, so that a project whose table, policies
-- or grants were made by hand from the plan (or whose grants Supabase's
-- default privileges filled in: ALL to anon and authenticated on every new
-- table) ends in the same state:
--   1. privileges: anon and authenticated keep SELECT where they had it,
--      nothing else;
--   2. the plan's INSERT and UPDATE policies on mcp_sessions keep their
--      names but admit no row;
--   3. a statement trigger refuses INSERT, UPDATE, DELETE and TRUNCATE by
--      anon or authenticated, whatever a later GRANT says.

-- 1. Privileges.
REVOKE ALL ON public.mcp_sessions FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.mcp_sessions TO authenticated;

REVOKE ALL ON public.mcp_conversations, public.mcp_conversation_turns, public.mcp_usage
  FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.mcp_conversations, public.mcp_conversation_turns, public.mcp_usage
  TO authenticated;

-- mcp_api_keys keeps its column grants (every column but secret_hash).
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON public.mcp_api_keys
  FROM PUBLIC, anon, authenticated;

REVOKE ALL ON SEQUENCE public.mcp_usage_id_seq FROM PUBLIC, anon, authenticated;

-- The migration ledger: the daemon's alone. Deleting a row made every
-- daemon refuse to start; inserting a future name skipped that migration.
ALTER TABLE public.exai_migrations ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.exai_migrations FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.exai_migrations TO service_role;

-- 2. The plan's write policies, kept by name, admitting nothing.
DO $policies$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_policies
              WHERE schemaname = 'public' AND tablename = 'mcp_sessions'
                AND policyname = 'Users can insert own sessions') THEN
    ALTER POLICY "Users can insert own sessions" ON public.mcp_sessions WITH CHECK (false);
  END IF;
  IF EXISTS (SELECT 1 FROM pg_policies
              WHERE schemaname = 'public' AND tablename = 'mcp_sessions'
                AND policyname = 'Users can update own sessions') THEN
    ALTER POLICY "Users can update own sessions" ON public.mcp_sessions
      USING (false) WITH CHECK (false);
  END IF;
END
$policies$;

-- 3. The trigger. Not SECURITY DEFINER: current_user is whoever runs the
-- statement, which inside the daemon's functions is their owner.
CREATE OR REPLACE FUNCTION public.mcp_refuse_user_writes() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = public, pg_temp
AS $fn$
BEGIN
  IF current_user IN ('anon', 'authenticated') THEN
    RAISE EXCEPTION 'permission denied: % is written only by the exai daemon', TG_TABLE_NAME
      USING ERRCODE = '42501';
  END IF;
  RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION public.mcp_refuse_user_writes() FROM PUBLIC, anon, authenticated;

DO $triggers$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['mcp_sessions', 'mcp_api_keys', 'mcp_conversations',
                           'mcp_conversation_turns', 'mcp_usage', 'exai_migrations'] LOOP
    EXECUTE format('DROP TRIGGER IF EXISTS mcp_refuse_user_writes ON public.%I', t);
    EXECUTE format('CREATE TRIGGER mcp_refuse_user_writes
                      BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.%I
                      FOR EACH STATEMENT EXECUTE FUNCTION public.mcp_refuse_user_writes()', t);
  END LOOP;
END
$triggers$;
