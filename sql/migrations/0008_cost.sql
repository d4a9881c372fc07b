-- Cost control: fleet-wide and per-owner daily spend caps on model calls, and reuse of a file
-- whose record did not change.
--
-- The spend ledger. Each model-calling attempt is admitted by `npcforge_spend_reserve` (one
-- statement): under the fleet's row lock it checks the day's spend against the caps and, when
-- there is room, reserves the attempt's estimated cost. When the attempt's row is written to
-- npc_generation_attempts, a trigger replaces the estimate by the cost the row carries (the
-- upstream's, or tokens x price); a row without a cost (a call cut off before any usage came
-- back) keeps the estimate; the reaper's WORKER_LOST row (a crashed worker) lets it expire.
-- `npcforge_spend_days` keeps the running totals per UTC day: one row for the fleet and one per
-- NPC owner, so a check is a primary-key lookup, not a sum.
--
-- Reuse. `npcforge_generations` remembers, per NPC, what its last successful generation was
-- made from (a hash of the record, prompt, validator and model) and the stored file's size and
-- SHA-256. A job whose inputs hash the same, and whose file is still there unchanged, succeeds
-- without a model call (attempt outcome `reused`). `generation_job_force` marks a job started
-- with force: it always calls the model.

CREATE TABLE IF NOT EXISTS npcforge_spend_days (
  day date NOT NULL,
  payer text NOT NULL,  -- 'fleet', or the NPC owner's id
  amount numeric(16, 8) NOT NULL DEFAULT 0,
  PRIMARY KEY (day, payer)
);

CREATE TABLE IF NOT EXISTS npcforge_spend (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  day date NOT NULL,
  owner_id uuid,
  npc_id uuid NOT NULL,
  job_id uuid NOT NULL,
  attempt integer NOT NULL,
  model text,
  estimate numeric(14, 8) NOT NULL CHECK (estimate >= 0),
  charged numeric(14, 8),  -- NULL while the attempt runs; then what the day was charged
  reserved_at timestamptz NOT NULL DEFAULT now(),
  settled_at timestamptz
);
CREATE INDEX IF NOT EXISTS idx_npcforge_spend_open
  ON npcforge_spend (job_id, attempt) WHERE settled_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_npcforge_spend_day ON npcforge_spend (day);

CREATE TABLE IF NOT EXISTS npcforge_generations (
  npc_id uuid PRIMARY KEY REFERENCES npcs (id) ON DELETE CASCADE,
  job_id uuid NOT NULL,
  input_hash text NOT NULL,
  xml_sha256 text NOT NULL,
  size_bytes integer NOT NULL CHECK (size_bytes >= 0),
  generated_at timestamptz NOT NULL DEFAULT now()
);

-- NULL is "not forced": a new row then looks to Supabase's job-column guard (0006) like any
-- row without a job.
ALTER TABLE npcs ADD COLUMN IF NOT EXISTS generation_job_force boolean;
COMMENT ON COLUMN npcs.generation_job_force IS
  'The current job was started with force: it calls the model even when the record is unchanged';

ALTER TABLE npc_generation_attempts
  DROP CONSTRAINT IF EXISTS npc_generation_attempts_outcome_check;
ALTER TABLE npc_generation_attempts ADD CONSTRAINT npc_generation_attempts_outcome_check
  CHECK (outcome IN ('succeeded', 'reused', 'failed', 'retry', 'discarded', 'released'));

-- Admit one attempt of job p_job (NPC p_npc) that may cost up to p_estimate: refused
-- (admitted false, scope 'fleet' or 'user') when the day's spend of the fleet already reached
-- p_fleet_limit or that of the NPC's owner reached p_user_limit (NULL: no cap); otherwise the
-- estimate is reserved for both. Every admission takes the fleet's row lock first, so they are
-- serialised across all workers and no two see the same room.
CREATE OR REPLACE FUNCTION npcforge_spend_reserve(
  p_npc uuid, p_job uuid, p_attempt integer, p_model text, p_estimate numeric,
  p_fleet_limit numeric, p_user_limit numeric
) RETURNS TABLE (admitted boolean, scope text, fleet_spent numeric, owner_spent numeric)
LANGUAGE plpgsql SET search_path = public
AS $$
DECLARE
  v_day date := (clock_timestamp() AT TIME ZONE 'UTC')::date;
  v_estimate numeric := greatest(coalesce(p_estimate, 0), 0);
  v_owner uuid;
  v_fleet numeric;
  v_owner_spent numeric := 0;
BEGIN
  SELECT n.owner_id INTO v_owner FROM npcs n WHERE n.id = p_npc;
  INSERT INTO npcforge_spend_days (day, payer) VALUES (v_day, 'fleet') ON CONFLICT DO NOTHING;
  SELECT d.amount INTO v_fleet FROM npcforge_spend_days d
   WHERE d.day = v_day AND d.payer = 'fleet' FOR UPDATE;
  IF v_owner IS NOT NULL THEN
    INSERT INTO npcforge_spend_days (day, payer) VALUES (v_day, v_owner::text)
      ON CONFLICT DO NOTHING;
    SELECT d.amount INTO v_owner_spent FROM npcforge_spend_days d
     WHERE d.day = v_day AND d.payer = v_owner::text FOR UPDATE;
  END IF;
  fleet_spent := v_fleet;
  owner_spent := v_owner_spent;
  IF p_fleet_limit IS NOT NULL AND v_fleet >= p_fleet_limit THEN
    admitted := false; scope := 'fleet'; RETURN NEXT; RETURN;
  END IF;
  IF p_user_limit IS NOT NULL AND v_owner IS NOT NULL AND v_owner_spent >= p_user_limit THEN
    admitted := false; scope := 'user'; RETURN NEXT; RETURN;
  END IF;
  INSERT INTO npcforge_spend (day, owner_id, npc_id, job_id, attempt, model, estimate)
  VALUES (v_day, v_owner, p_npc, p_job, p_attempt, p_model, v_estimate);
  UPDATE npcforge_spend_days AS d SET amount = d.amount + v_estimate
   WHERE d.day = v_day AND d.payer IN ('fleet', coalesce(v_owner::text, 'fleet'));
  admitted := true; scope := NULL;
  fleet_spent := v_fleet + v_estimate;
  owner_spent := v_owner_spent + v_estimate;
  RETURN NEXT;
END
$$;

-- An attempt row settles its reservation: the estimate is replaced by the row's cost (kept
-- when the row has none), or released when the reaper wrote the row for a crashed worker.
CREATE OR REPLACE FUNCTION npcforge_spend_settle() RETURNS trigger
LANGUAGE plpgsql SET search_path = public
AS $$
DECLARE
  v_row npcforge_spend;
  v_charge numeric;
BEGIN
  SELECT * INTO v_row FROM npcforge_spend
   WHERE job_id = NEW.job_id AND attempt = NEW.attempt AND settled_at IS NULL
   ORDER BY id DESC LIMIT 1;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  v_charge := CASE WHEN NEW.error_code = 'WORKER_LOST' THEN 0
                   ELSE coalesce(NEW.cost, v_row.estimate) END;
  -- The fleet's row first, as in npcforge_spend_reserve: no lock-order deadlock.
  UPDATE npcforge_spend_days AS d SET amount = greatest(d.amount + v_charge - v_row.estimate, 0)
   WHERE d.day = v_row.day AND d.payer = 'fleet';
  IF v_row.owner_id IS NOT NULL THEN
    UPDATE npcforge_spend_days AS d SET amount = greatest(d.amount + v_charge - v_row.estimate, 0)
     WHERE d.day = v_row.day AND d.payer = v_row.owner_id::text;
  END IF;
  UPDATE npcforge_spend SET charged = v_charge, settled_at = now() WHERE id = v_row.id;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS trg_npc_generation_attempts_spend ON npc_generation_attempts;
CREATE TRIGGER trg_npc_generation_attempts_spend AFTER INSERT ON npc_generation_attempts
  FOR EACH ROW EXECUTE FUNCTION npcforge_spend_settle();

-- A job's force ends with the job: the next one, started by any statement that does not ask
-- for force (a plain `UPDATE ... SET generation_job_status = 'queued'`), is not forced.
CREATE OR REPLACE FUNCTION npcforge_job_force_done() RETURNS trigger
LANGUAGE plpgsql SET search_path = public
AS $$
BEGIN
  IF NEW.generation_job_status IN ('succeeded', 'failed') THEN
    NEW.generation_job_force := NULL;
  END IF;
  RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS trg_npcs_job_force ON npcs;
CREATE TRIGGER trg_npcs_job_force BEFORE UPDATE OF generation_job_status ON npcs
  FOR EACH ROW EXECUTE FUNCTION npcforge_job_force_done();

-- npcforge_enqueue(npc, force): force now also means "call the model even if nothing changed".
CREATE OR REPLACE FUNCTION npcforge_enqueue(npc_id uuid, force boolean DEFAULT false)
RETURNS uuid
LANGUAGE plpgsql SET search_path = public
AS $$
DECLARE
  current_status generation_job_status;
  job uuid;
BEGIN
  SELECT n.generation_job_status INTO current_status
    FROM npcs n WHERE n.id = npcforge_enqueue.npc_id AND n.deleted_at IS NULL FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'NPC_NOT_FOUND: npc % does not exist or is deleted', npcforge_enqueue.npc_id
      USING ERRCODE = 'P0002';
  END IF;
  IF current_status IN ('queued', 'processing') AND NOT force THEN
    RAISE EXCEPTION 'GENERATION_JOB_CONFLICT: a generation job is already % for npc %',
      current_status, npcforge_enqueue.npc_id USING ERRCODE = '55P03';
  END IF;
  UPDATE npcs n
     SET generation_job_status = 'queued', generation_job_id = gen_random_uuid(),
         generation_job_force = coalesce(npcforge_enqueue.force, false)
   WHERE n.id = npcforge_enqueue.npc_id
  RETURNING n.generation_job_id INTO job;
  RETURN job;
END
$$;

-- Supabase exposes the public schema over its REST API: the ledger and the reuse table are for
-- the service only. A bare server skips this.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon')
     AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    ALTER TABLE npcforge_spend_days ENABLE ROW LEVEL SECURITY;
    ALTER TABLE npcforge_spend ENABLE ROW LEVEL SECURITY;
    ALTER TABLE npcforge_generations ENABLE ROW LEVEL SECURITY;
    REVOKE ALL ON TABLE npcforge_spend_days, npcforge_spend, npcforge_generations
      FROM anon, authenticated;
    REVOKE EXECUTE ON FUNCTION
      npcforge_spend_reserve(uuid, uuid, integer, text, numeric, numeric, numeric)
      FROM PUBLIC, anon, authenticated;
    REVOKE EXECUTE ON FUNCTION npcforge_enqueue(uuid, boolean) FROM PUBLIC, anon, authenticated;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
      GRANT SELECT, INSERT, UPDATE, DELETE
        ON TABLE npcforge_spend_days, npcforge_spend, npcforge_generations TO service_role;
      GRANT EXECUTE ON FUNCTION
        npcforge_spend_reserve(uuid, uuid, integer, text, numeric, numeric, numeric)
        TO service_role;
    END IF;
  END IF;
END
$$;
