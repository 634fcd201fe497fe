-- Conversations grow by whole exchanges (a question and its answer) in one
-- call: a conversation starts with its first turns, and turns are appended
-- together or not at all. One round trip per exchange instead of three.
-- Errors as in 0005: PT404 not found (or another user's), PT422 turn limit.

CREATE OR REPLACE FUNCTION public.mcp_start_conversation(
  p_user_id uuid, p_continuation_id text, p_roles text[], p_contents text[],
  p_max_turns integer, p_timeout_secs integer
) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
DECLARE
  n integer := coalesce(array_length(p_roles, 1), 0);
BEGIN
  IF n <> coalesce(array_length(p_contents, 1), 0) THEN
    RAISE EXCEPTION 'roles and contents differ in length' USING ERRCODE = '22023';
  END IF;
  IF n > p_max_turns THEN
    RAISE EXCEPTION 'turn limit reached' USING ERRCODE = 'PT422';
  END IF;
  DELETE FROM public.mcp_conversations
   WHERE user_id = p_user_id AND updated_at < now() - make_interval(secs => p_timeout_secs);
  INSERT INTO public.mcp_conversations (continuation_id, user_id, turns)
    VALUES (p_continuation_id, p_user_id, n);
  INSERT INTO public.mcp_conversation_turns (continuation_id, seq, user_id, role, content)
    SELECT p_continuation_id, t.i, p_user_id, p_roles[t.i], p_contents[t.i]
      FROM generate_series(1, n) AS t(i);
  RETURN n;
END
$fn$;

CREATE OR REPLACE FUNCTION public.mcp_append_turns(
  p_user_id uuid, p_continuation_id text, p_roles text[], p_contents text[],
  p_max_turns integer, p_timeout_secs integer
) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
DECLARE
  current_turns integer;
  n integer := coalesce(array_length(p_roles, 1), 0);
BEGIN
  IF n <> coalesce(array_length(p_contents, 1), 0) THEN
    RAISE EXCEPTION 'roles and contents differ in length' USING ERRCODE = '22023';
  END IF;
  SELECT turns INTO current_turns FROM public.mcp_conversations
   WHERE continuation_id = p_continuation_id AND user_id = p_user_id
     AND updated_at >= now() - make_interval(secs => p_timeout_secs)
   FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'conversation not found' USING ERRCODE = 'PT404';
  END IF;
  IF current_turns + n > p_max_turns THEN
    RAISE EXCEPTION 'turn limit reached' USING ERRCODE = 'PT422';
  END IF;
  INSERT INTO public.mcp_conversation_turns (continuation_id, seq, user_id, role, content)
    SELECT p_continuation_id, current_turns + t.i, p_user_id, p_roles[t.i], p_contents[t.i]
      FROM generate_series(1, n) AS t(i);
  UPDATE public.mcp_conversations SET turns = current_turns + n, updated_at = now()
   WHERE continuation_id = p_continuation_id;
  RETURN current_turns + n;
END
$fn$;

-- The one-turn-at-a-time functions of 0005 are replaced.
DROP FUNCTION IF EXISTS public.mcp_create_conversation(uuid, text, integer);
DROP FUNCTION IF EXISTS public.mcp_append_turn(uuid, text, text, text, integer, integer);

REVOKE ALL ON FUNCTION public.mcp_start_conversation(uuid, text, text[], text[], integer, integer)
  FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_append_turns(uuid, text, text[], text[], integer, integer)
  FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.mcp_start_conversation(uuid, text, text[], text[], integer, integer)
  TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_append_turns(uuid, text, text[], text[], integer, integer)
  TO service_role;
