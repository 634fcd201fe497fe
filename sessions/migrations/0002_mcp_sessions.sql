-- mcp_sessions exactly as the multi-user plan defines it, its two indexes and
-- its three row-level security policies. Every statement is safe to run on a
-- project where the table and policies were already created by hand.
CREATE TABLE IF NOT EXISTS public.mcp_sessions (
  id UUID DEFAULT gen_random_uuid() PRIMARY KEY,
  user_id UUID REFERENCES auth.users(id) ON DELETE CASCADE,
  session_id VARCHAR(255) UNIQUE NOT NULL,
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  last_active TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  connection_status VARCHAR(50) DEFAULT 'disconnected',
  metadata JSONB DEFAULT '{}'::jsonb
);

CREATE INDEX IF NOT EXISTS idx_mcp_sessions_user_id ON public.mcp_sessions(user_id);
CREATE INDEX IF NOT EXISTS idx_mcp_sessions_session_id ON public.mcp_sessions(session_id);
-- Counting a user's live sessions inside the atomic open.
CREATE INDEX IF NOT EXISTS idx_mcp_sessions_user_status
  ON public.mcp_sessions(user_id, connection_status);

ALTER TABLE public.mcp_sessions ENABLE ROW LEVEL SECURITY;

DO $policies$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_policies
                 WHERE schemaname = 'public' AND tablename = 'mcp_sessions'
                   AND policyname = 'Users can view own sessions') THEN
    CREATE POLICY "Users can view own sessions" ON public.mcp_sessions
      FOR SELECT USING (auth.uid() = user_id);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_policies
                 WHERE schemaname = 'public' AND tablename = 'mcp_sessions'
                   AND policyname = 'Users can insert own sessions') THEN
    CREATE POLICY "Users can insert own sessions" ON public.mcp_sessions
      FOR INSERT WITH CHECK (auth.uid() = user_id);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_policies
                 WHERE schemaname = 'public' AND tablename = 'mcp_sessions'
                   AND policyname = 'Users can update own sessions') THEN
    CREATE POLICY "Users can update own sessions" ON public.mcp_sessions
      FOR UPDATE USING (auth.uid() = user_id);
  END IF;
END
$policies$;

-- The API roles: users through RLS, never anon; the service role for the daemon.
REVOKE ALL ON public.mcp_sessions FROM anon;
GRANT SELECT, INSERT, UPDATE ON public.mcp_sessions TO authenticated;
GRANT ALL ON public.mcp_sessions TO service_role;
