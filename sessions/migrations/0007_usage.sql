-- Usage: one row per provider call (who, in which session, which tool and
-- model, tokens, latency, outcome). Users read their own rows; only the
-- daemon (service_role) writes, through mcp_record_usage.

CREATE TABLE IF NOT EXISTS public.mcp_usage (
  id BIGSERIAL PRIMARY KEY,
  user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  session_id TEXT,
  tool TEXT NOT NULL,
  provider TEXT NOT NULL,
  model TEXT NOT NULL,
  prompt_tokens BIGINT NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
  completion_tokens BIGINT NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
  latency_ms INTEGER NOT NULL CHECK (latency_ms >= 0),
  outcome TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_mcp_usage_user_id_created_at
  ON public.mcp_usage(user_id, created_at);

ALTER TABLE public.mcp_usage ENABLE ROW LEVEL SECURITY;

DO $policies$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'public'
                 AND tablename = 'mcp_usage'
                 AND policyname = 'Users can view own usage') THEN
    CREATE POLICY "Users can view own usage" ON public.mcp_usage
      FOR SELECT USING (auth.uid() = user_id);
  END IF;
END
$policies$;

REVOKE ALL ON public.mcp_usage FROM anon, authenticated;
GRANT SELECT ON public.mcp_usage TO authenticated;
GRANT ALL ON public.mcp_usage TO service_role;
GRANT USAGE, SELECT ON SEQUENCE public.mcp_usage_id_seq TO service_role;

-- Records one provider call.
CREATE OR REPLACE FUNCTION public.mcp_record_usage(
  p_user_id uuid, p_session_id text, p_tool text, p_provider text, p_model text,
  p_prompt_tokens bigint, p_completion_tokens bigint, p_latency_ms integer, p_outcome text
) RETURNS void
  LANGUAGE sql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  INSERT INTO public.mcp_usage (user_id, session_id, tool, provider, model,
                                prompt_tokens, completion_tokens, latency_ms, outcome)
  VALUES (p_user_id, p_session_id, p_tool, p_provider, p_model,
          p_prompt_tokens, p_completion_tokens, p_latency_ms, p_outcome);
$fn$;

-- A user's totals, per model.
CREATE OR REPLACE FUNCTION public.mcp_usage_totals(p_user_id uuid)
  RETURNS TABLE (model text, calls bigint, errors bigint,
                 prompt_tokens bigint, completion_tokens bigint)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  SELECT u.model, count(*), count(*) FILTER (WHERE u.outcome <> 'ok'),
         coalesce(sum(u.prompt_tokens), 0)::bigint,
         coalesce(sum(u.completion_tokens), 0)::bigint
    FROM public.mcp_usage u
   WHERE u.user_id = p_user_id
   GROUP BY u.model
   ORDER BY u.model
$fn$;

REVOKE ALL ON FUNCTION public.mcp_record_usage(uuid, text, text, text, text, bigint, bigint, integer, text)
  FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_usage_totals(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.mcp_record_usage(uuid, text, text, text, text, bigint, bigint, integer, text)
  TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_usage_totals(uuid) TO service_role;
