-- Fleet-wide rate control for upstream calls (OPENROUTER_REQUESTS_PER_MINUTE and 429 pauses).
--
-- One row per limiter. Every worker sharing the database asks `npcforge_rate_acquire` for a
-- call slot (one statement, one round trip); the row lock serialises them, so the fleet
-- together never exceeds the cap. Slots are spaced evenly (GCRA with no burst): the next slot is
-- `next_slot_at`, each grant moves it on by 60 / rate seconds, so no window of 60 s holds more
-- than the cap.
--
-- When the upstream answers 429, `npcforge_rate_pause` pauses the whole fleet until
-- `paused_until`, halves `rate_factor` (the share of the cap in force) once per episode, voids
-- the slots handed out before (`pause_seq` moves on) and NOTIFYs `npcforge_rate_limits`, so
-- workers without a cap learn of the pause without polling. Each successful call reported back
-- (`p_successes`) adds one call per minute until the full cap is back (AIMD).
--
-- The state is worth nothing after a crash, so the table is UNLOGGED (no WAL per grant); the
-- functions recreate a missing row.

CREATE UNLOGGED TABLE IF NOT EXISTS npcforge_rate_limits (
  name text PRIMARY KEY,
  next_slot_at timestamptz,
  rate_factor double precision NOT NULL DEFAULT 1
    CONSTRAINT npcforge_rate_limits_factor_check CHECK (rate_factor > 0 AND rate_factor <= 1),
  paused_until timestamptz,
  pause_seq bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION npcforge_rate_lock(p_name text) RETURNS npcforge_rate_limits
LANGUAGE plpgsql SET search_path = public
AS $$
DECLARE
  v_row npcforge_rate_limits;
BEGIN
  SELECT * INTO v_row FROM npcforge_rate_limits WHERE name = p_name FOR UPDATE;
  IF NOT FOUND THEN
    INSERT INTO npcforge_rate_limits (name) VALUES (p_name) ON CONFLICT (name) DO NOTHING;
    SELECT * INTO v_row FROM npcforge_rate_limits WHERE name = p_name FOR UPDATE;
  END IF;
  RETURN v_row;
END
$$;

-- Take the next call slot under a cap of p_per_minute calls per minute.
-- wait_s: seconds until the slot (0 = call now); granted: false when that is more than
-- p_max_wait away (nothing reserved, come back later); seq: the pause generation the slot
-- belongs to (a later pause voids it); pause_s: seconds of pause still in force; rate: calls
-- per minute now allowed.
CREATE OR REPLACE FUNCTION npcforge_rate_acquire(
  p_name text,
  p_per_minute double precision,
  p_successes integer DEFAULT 0,
  p_max_wait double precision DEFAULT NULL
) RETURNS TABLE (
  wait_s double precision, granted boolean, seq bigint, pause_s double precision,
  rate double precision
)
LANGUAGE plpgsql SET search_path = public
AS $$
DECLARE
  v_now timestamptz := clock_timestamp();
  v_row npcforge_rate_limits;
  v_factor double precision;
  v_slot timestamptz;
  v_wait double precision;
BEGIN
  IF p_per_minute IS NULL OR p_per_minute <= 0 THEN
    RAISE EXCEPTION 'npcforge_rate_acquire: p_per_minute must be positive, got %', p_per_minute
      USING ERRCODE = '22023';
  END IF;
  v_row := npcforge_rate_lock(p_name);
  -- Additive increase: every reported success gives back one call per minute.
  v_factor := least(1.0, v_row.rate_factor + greatest(coalesce(p_successes, 0), 0) / p_per_minute);
  v_slot := greatest(v_now, coalesce(v_row.next_slot_at, v_now), coalesce(v_row.paused_until, v_now));
  v_wait := extract(epoch FROM v_slot - v_now);
  granted := p_max_wait IS NULL OR v_wait <= p_max_wait;
  UPDATE npcforge_rate_limits AS r
     SET next_slot_at = CASE WHEN granted
                             THEN v_slot + make_interval(secs => 60.0 / (p_per_minute * v_factor))
                             ELSE r.next_slot_at END,
         rate_factor = v_factor,
         updated_at = v_now
   WHERE r.name = p_name;
  wait_s := v_wait;
  seq := v_row.pause_seq;
  pause_s := greatest(0.0, coalesce(extract(epoch FROM v_row.paused_until - v_now), 0.0));
  rate := p_per_minute * v_factor;
  RETURN NEXT;
END
$$;

-- The upstream said "slow down" for p_seconds: pause the fleet that long (a pause already
-- reaching further is left alone), halve the rate once per episode (not again for the echoes of
-- calls that were in flight when it began), void outstanding slots and tell every worker.
CREATE OR REPLACE FUNCTION npcforge_rate_pause(p_name text, p_seconds double precision)
RETURNS TABLE (pause_s double precision, seq bigint, rate_factor double precision)
LANGUAGE plpgsql SET search_path = public
AS $$
#variable_conflict use_variable
DECLARE
  v_now timestamptz := clock_timestamp();
  v_until timestamptz := v_now + make_interval(secs => greatest(coalesce(p_seconds, 0), 0));
  v_row npcforge_rate_limits;
  v_factor double precision;
BEGIN
  v_row := npcforge_rate_lock(p_name);
  IF v_row.paused_until IS NOT NULL AND v_until <= v_row.paused_until THEN
    pause_s := extract(epoch FROM v_row.paused_until - v_now);
    seq := v_row.pause_seq;
    rate_factor := v_row.rate_factor;
    RETURN NEXT;
    RETURN;
  END IF;
  v_factor := v_row.rate_factor;
  IF v_row.paused_until IS NULL OR v_row.paused_until <= v_now THEN
    v_factor := greatest(0.05, v_factor * 0.5);  -- multiplicative decrease, floored at 5 %
  END IF;
  UPDATE npcforge_rate_limits AS r
     SET paused_until = v_until,
         next_slot_at = v_until,
         pause_seq = r.pause_seq + 1,
         rate_factor = v_factor,
         updated_at = v_now
   WHERE r.name = p_name
  RETURNING r.pause_seq INTO seq;
  pause_s := extract(epoch FROM v_until - v_now);
  rate_factor := v_factor;
  PERFORM pg_notify('npcforge_rate_limits',
    json_build_object('name', p_name, 'seq', seq, 'seconds', pause_s)::text);
  RETURN NEXT;
END
$$;

-- Supabase exposes the public schema over its REST API; the limiter is for the service only
-- (the owner, or service_role, which bypasses RLS). A bare server skips this.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon')
     AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    ALTER TABLE npcforge_rate_limits ENABLE ROW LEVEL SECURITY;
    REVOKE ALL ON TABLE npcforge_rate_limits FROM anon, authenticated;
    REVOKE EXECUTE ON FUNCTION npcforge_rate_lock(text) FROM PUBLIC, anon, authenticated;
    REVOKE EXECUTE ON FUNCTION npcforge_rate_acquire(text, double precision, integer, double precision)
      FROM PUBLIC, anon, authenticated;
    REVOKE EXECUTE ON FUNCTION npcforge_rate_pause(text, double precision)
      FROM PUBLIC, anon, authenticated;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
      GRANT SELECT, INSERT, UPDATE ON TABLE npcforge_rate_limits TO service_role;
      GRANT EXECUTE ON FUNCTION npcforge_rate_lock(text),
        npcforge_rate_acquire(text, double precision, integer, double precision),
        npcforge_rate_pause(text, double precision) TO service_role;
    END IF;
  END IF;
END
$$;
