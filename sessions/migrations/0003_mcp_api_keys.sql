-- API keys: only the SHA-256 of each secret is kept. Users may read their own
-- keys' metadata through the API, never the hash, and never create or alter
-- keys there (that is the daemon's and the CLI's job, as the service role).
CREATE TABLE IF NOT EXISTS public.mcp_api_keys (
  key_id TEXT PRIMARY KEY,
  user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  name TEXT,
  secret_hash BYTEA NOT NULL CHECK (length(secret_hash) = 32),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  expires_at TIMESTAMPTZ,
  revoked_at TIMESTAMPTZ,
  last_used_at TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS idx_mcp_api_keys_user_id ON public.mcp_api_keys(user_id);

ALTER TABLE public.mcp_api_keys ENABLE ROW LEVEL SECURITY;

DO $policies$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_policies
                 WHERE schemaname = 'public' AND tablename = 'mcp_api_keys'
                   AND policyname = 'Users can view own API keys') THEN
    CREATE POLICY "Users can view own API keys" ON public.mcp_api_keys
      FOR SELECT USING (auth.uid() = user_id);
  END IF;
END
$policies$;

REVOKE ALL ON public.mcp_api_keys FROM anon, authenticated;
GRANT SELECT (key_id, user_id, name, created_at, expires_at, revoked_at, last_used_at)
  ON public.mcp_api_keys TO authenticated;
GRANT ALL ON public.mcp_api_keys TO service_role;
