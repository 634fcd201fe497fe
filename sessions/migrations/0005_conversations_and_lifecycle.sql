-- Conversation threads (the continuation_id handles tools hand out), and the
-- rest of the session lifecycle as atomic functions: resume and kill.
-- Errors use PostgREST's PTxyz convention (answered with HTTP xyz):
-- PT404 not found (or another user's), PT409 attached elsewhere,
-- PT422 turn limit reached, PT429 connection limit reached.

CREATE TABLE IF NOT EXISTS public.mcp_conversations (
  continuation_id TEXT PRIMARY KEY,
  user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  turns INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_mcp_conversations_user_id ON public.mcp_conversations(user_id);

CREATE TABLE IF NOT EXISTS public.mcp_conversation_turns (
  continuation_id TEXT NOT NULL
    REFERENCES public.mcp_conversations(continuation_id) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  role TEXT NOT NULL,
  content TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (continuation_id, seq)
);

ALTER TABLE public.mcp_conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.mcp_conversation_turns ENABLE ROW LEVEL SECURITY;

DO $policies$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'public'
                 AND tablename = 'mcp_conversations'
                 AND policyname = 'Users can view own conversations') THEN
    CREATE POLICY "Users can view own conversations" ON public.mcp_conversations
      FOR SELECT USING (auth.uid() = user_id);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'public'
                 AND tablename = 'mcp_conversation_turns'
                 AND policyname = 'Users can view own conversation turns') THEN
    CREATE POLICY "Users can view own conversation turns" ON public.mcp_conversation_turns
      FOR SELECT USING (auth.uid() = user_id);
  END IF;
END
$policies$;

REVOKE ALL ON public.mcp_conversations, public.mcp_conversation_turns FROM anon, authenticated;
GRANT SELECT ON public.mcp_conversations, public.mcp_conversation_turns TO authenticated;
GRANT ALL ON public.mcp_conversations, public.mcp_conversation_turns TO service_role;

-- Re-attaches a user's disconnected session within the per-user limit.
CREATE OR REPLACE FUNCTION public.mcp_resume_session(
  p_user_id uuid, p_session_id text, p_max_connections integer
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
  UPDATE public.mcp_sessions SET connection_status = 'connected', last_active = now()
   WHERE id = found_row.id RETURNING * INTO found_row;
  RETURN found_row;
END
$fn$;

-- An administrator ends a session.
CREATE OR REPLACE FUNCTION public.mcp_kill_session(p_session_id text)
  RETURNS public.mcp_sessions
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
DECLARE
  killed public.mcp_sessions;
BEGIN
  UPDATE public.mcp_sessions SET connection_status = 'killed'
   WHERE session_id = p_session_id RETURNING * INTO killed;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'session not found' USING ERRCODE = 'PT404';
  END IF;
  RETURN killed;
END
$fn$;

-- Starts a conversation, dropping the user's conversations past the timeout.
CREATE OR REPLACE FUNCTION public.mcp_create_conversation(
  p_user_id uuid, p_continuation_id text, p_timeout_secs integer
) RETURNS void
  LANGUAGE sql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  DELETE FROM public.mcp_conversations
   WHERE user_id = p_user_id AND updated_at < now() - make_interval(secs => p_timeout_secs);
  INSERT INTO public.mcp_conversations (continuation_id, user_id) VALUES (p_continuation_id, p_user_id);
$fn$;

-- Appends a turn to a user's live conversation; returns the new turn count.
CREATE OR REPLACE FUNCTION public.mcp_append_turn(
  p_user_id uuid, p_continuation_id text, p_role text, p_content text,
  p_max_turns integer, p_timeout_secs integer
) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
DECLARE
  current_turns integer;
BEGIN
  SELECT turns INTO current_turns FROM public.mcp_conversations
   WHERE continuation_id = p_continuation_id AND user_id = p_user_id
     AND updated_at >= now() - make_interval(secs => p_timeout_secs)
   FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'conversation not found' USING ERRCODE = 'PT404';
  END IF;
  IF current_turns >= p_max_turns THEN
    RAISE EXCEPTION 'turn limit reached' USING ERRCODE = 'PT422';
  END IF;
  INSERT INTO public.mcp_conversation_turns (continuation_id, seq, user_id, role, content)
    VALUES (p_continuation_id, current_turns + 1, p_user_id, p_role, p_content);
  UPDATE public.mcp_conversations SET turns = current_turns + 1, updated_at = now()
   WHERE continuation_id = p_continuation_id;
  RETURN current_turns + 1;
END
$fn$;

-- The turns of a user's live conversation, oldest first.
CREATE OR REPLACE FUNCTION public.mcp_read_conversation(
  p_user_id uuid, p_continuation_id text, p_timeout_secs integer
) RETURNS TABLE (role text, content text)
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM public.mcp_conversations c
                  WHERE c.continuation_id = p_continuation_id AND c.user_id = p_user_id
                    AND c.updated_at >= now() - make_interval(secs => p_timeout_secs)) THEN
    RAISE EXCEPTION 'conversation not found' USING ERRCODE = 'PT404';
  END IF;
  RETURN QUERY SELECT t.role, t.content FROM public.mcp_conversation_turns t
    WHERE t.continuation_id = p_continuation_id ORDER BY t.seq;
END
$fn$;

REVOKE ALL ON FUNCTION public.mcp_resume_session(uuid, text, integer) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_kill_session(text) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_create_conversation(uuid, text, integer) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_append_turn(uuid, text, text, text, integer, integer) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_read_conversation(uuid, text, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.mcp_resume_session(uuid, text, integer) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_kill_session(text) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_create_conversation(uuid, text, integer) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_append_turn(uuid, text, text, text, integer, integer) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_read_conversation(uuid, text, integer) TO service_role;
