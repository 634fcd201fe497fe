-- Per-user limits across daemons (EXAI_USER_RPM, EXAI_USER_MAX_INFLIGHT),
-- without a database write per call: a daemon leases a small slice of a
-- user's budget here and spends it locally, coming back only when the
-- slice is used up.
--
-- Calls per minute are one token bucket per user (mcp_user_rates): up to
-- rpm tokens, refilled at rpm per minute. A lease takes whole tokens out
-- of it, so the daemons together never admit more than the bucket grants,
-- plus what each still holds of a slice leased shortly before (the daemon
-- lets an unspent slice lapse after a few seconds).
--
-- Running calls are slots (mcp_user_slots): every live node holds some of
-- a user's max_in_flight and gives back the ones it no longer uses, in one
-- batched write. The slots of a reaped node no longer count.

CREATE TABLE IF NOT EXISTS public.mcp_user_rates (
  user_id UUID PRIMARY KEY,
  tokens DOUBLE PRECISION NOT NULL,
  refilled_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_mcp_user_rates_refilled ON public.mcp_user_rates(refilled_at);

CREATE TABLE IF NOT EXISTS public.mcp_user_slots (
  user_id UUID NOT NULL,
  node_id UUID NOT NULL,
  slots INTEGER NOT NULL CHECK (slots >= 0),
  PRIMARY KEY (user_id, node_id)
);

DO $tables$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['mcp_user_rates', 'mcp_user_slots'] LOOP
    EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('REVOKE ALL ON public.%I FROM PUBLIC, anon, authenticated', t);
    EXECUTE format('GRANT ALL ON public.%I TO service_role', t);
    EXECUTE format('DROP TRIGGER IF EXISTS mcp_refuse_user_writes ON public.%I', t);
    EXECUTE format('CREATE TRIGGER mcp_refuse_user_writes
                      BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.%I
                      FOR EACH STATEMENT EXECUTE FUNCTION public.mcp_refuse_user_writes()', t);
  END LOOP;
END
$tables$;

-- Leases up to p_calls of the user's calls (when p_rpm > 0) and up to
-- p_slots running-call slots for p_node_id (when p_slots > 0), atomically
-- per user. retry_after_ms: when no call was granted, how long until the
-- bucket holds one again.
CREATE OR REPLACE FUNCTION public.mcp_lease_budget(
  p_node_id uuid, p_user_id uuid,
  p_rpm integer, p_calls integer,
  p_max_in_flight integer, p_slots integer
) RETURNS TABLE (granted_calls integer, granted_slots integer, retry_after_ms integer)
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
DECLARE
  at timestamptz := clock_timestamp();
  have double precision;
  held integer;
BEGIN
  granted_calls := 0;
  granted_slots := 0;
  retry_after_ms := 0;
  PERFORM pg_advisory_xact_lock(hashtextextended('mcp_user_budget:' || p_user_id::text, 0));
  IF p_calls > 0 AND p_rpm > 0 THEN
    SELECT least(p_rpm::double precision,
                 r.tokens + extract(epoch FROM at - r.refilled_at) * p_rpm / 60.0)
      INTO have FROM public.mcp_user_rates r WHERE r.user_id = p_user_id;
    IF NOT FOUND THEN
      have := p_rpm;
    END IF;
    granted_calls := least(p_calls, floor(have)::integer);
    have := have - granted_calls;
    IF granted_calls = 0 THEN
      retry_after_ms := ceil((1 - have) * 60000.0 / p_rpm)::integer;
    END IF;
    INSERT INTO public.mcp_user_rates AS r (user_id, tokens, refilled_at)
      VALUES (p_user_id, have, at)
      ON CONFLICT (user_id) DO UPDATE SET tokens = excluded.tokens, refilled_at = excluded.refilled_at;
  END IF;
  IF p_slots > 0 THEN
    DELETE FROM public.mcp_user_slots s
     WHERE s.user_id = p_user_id AND s.node_id <> p_node_id
       AND NOT EXISTS (SELECT 1 FROM public.mcp_nodes n
                        WHERE n.node_id = s.node_id AND n.reaped_at IS NULL);
    SELECT coalesce(sum(s.slots), 0)::integer INTO held
      FROM public.mcp_user_slots s WHERE s.user_id = p_user_id;
    granted_slots := greatest(0, least(p_slots, p_max_in_flight - held));
    IF granted_slots > 0 THEN
      INSERT INTO public.mcp_user_slots AS s (user_id, node_id, slots)
        VALUES (p_user_id, p_node_id, granted_slots)
        ON CONFLICT (user_id, node_id) DO UPDATE SET slots = s.slots + excluded.slots;
    END IF;
  END IF;
  RETURN NEXT;
END
$fn$;

-- Gives back slots p_node_id no longer uses (p_slots[i] of user
-- p_user_ids[i]), in one write; forgets buckets full again long ago.
CREATE OR REPLACE FUNCTION public.mcp_release_slots(
  p_node_id uuid, p_user_ids uuid[], p_slots integer[]
) RETURNS void
  LANGUAGE sql SECURITY DEFINER
  SET search_path = public, pg_temp
AS $fn$
  UPDATE public.mcp_user_slots s SET slots = greatest(0, s.slots - t.n)
    FROM unnest(p_user_ids, p_slots) AS t(user_id, n)
   WHERE s.user_id = t.user_id AND s.node_id = p_node_id;
  DELETE FROM public.mcp_user_slots s
   USING unnest(p_user_ids) AS t(user_id)
   WHERE s.user_id = t.user_id AND s.node_id = p_node_id AND s.slots = 0;
  DELETE FROM public.mcp_user_rates WHERE refilled_at < now() - interval '10 minutes';
$fn$;

REVOKE ALL ON FUNCTION public.mcp_lease_budget(uuid, uuid, integer, integer, integer, integer) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.mcp_release_slots(uuid, uuid[], integer[]) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.mcp_lease_budget(uuid, uuid, integer, integer, integer, integer) TO service_role;
GRANT EXECUTE ON FUNCTION public.mcp_release_slots(uuid, uuid[], integer[]) TO service_role;
