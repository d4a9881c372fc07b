-- The web console (`/console`): what it reads that the queue did not keep.
--
-- * npcforge_workers: one row per live worker process, upserted by its heartbeat every few
--   seconds, deleted when it drains; a row whose `expires_at` passed (a worker that died) is
--   deleted by the next heartbeat of any worker.
-- * npc_xml_versions: the last successful XML files of each NPC (at most 5 per NPC; the
--   publish that adds one drops the oldest beyond that), written in the transaction of the
--   fenced publish, so a superseded job never leaves one. The console diffs the newest two.
-- * NOTIFY npcforge_job_events when a job's state changes: one statement-level trigger per
--   event with transition tables, and a constant payload, so PostgreSQL folds every
--   notification of a transaction into one, however many rows it changed (as for enqueue).
--   Lease renewals and other bookkeeping change no state and notify nothing.
-- * Indexes for the console's bounded reads: jobs by last change, by status, by name prefix.
--
-- On Supabase the new tables have row level security on and no policy, and anon and
-- authenticated hold no privilege on them: only the owner and the service role read them.

CREATE TABLE IF NOT EXISTS npcforge_workers (
  worker_id text PRIMARY KEY,
  hostname text NOT NULL,
  pid integer NOT NULL,
  concurrency integer NOT NULL CHECK (concurrency >= 0),
  in_flight integer NOT NULL DEFAULT 0 CHECK (in_flight >= 0),
  state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'draining')),
  started_at timestamptz NOT NULL DEFAULT now(),
  seen_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS npc_xml_versions (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  npc_id uuid NOT NULL REFERENCES npcs (id) ON DELETE CASCADE,
  job_id uuid NOT NULL,
  xml text NOT NULL,
  size_bytes integer NOT NULL CHECK (size_bytes >= 0),
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_npc_xml_versions_npc ON npc_xml_versions (npc_id, id DESC);

-- The jobs list, newest change first, and the console's "what changed since" read.
CREATE INDEX IF NOT EXISTS idx_npcs_job_updated
  ON npcs (generation_job_updated_at DESC, id DESC)
  WHERE generation_job_status IS NOT NULL AND deleted_at IS NULL;
-- Jobs of one status by last change: capped counts (index-only), finished over the last hour
-- and day, the newest failures, the list filtered by status.
CREATE INDEX IF NOT EXISTS idx_npcs_job_status_updated
  ON npcs (generation_job_status, generation_job_updated_at DESC, id DESC)
  WHERE deleted_at IS NULL;
-- The list filtered by error code (failed jobs), newest change first.
CREATE INDEX IF NOT EXISTS idx_npcs_job_failed_code
  ON npcs ((generation_job_error ->> 'code'), generation_job_updated_at DESC, id DESC)
  WHERE generation_job_status = 'failed' AND deleted_at IS NULL;
-- The list's "name starts with" filter.
CREATE INDEX IF NOT EXISTS idx_npcs_name_prefix
  ON npcs (lower(name) text_pattern_ops) WHERE deleted_at IS NULL;

CREATE OR REPLACE FUNCTION npcforge_notify_job_events() RETURNS trigger
LANGUAGE plpgsql SET search_path = public
AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF EXISTS (SELECT 1 FROM new_rows WHERE generation_job_status IS NOT NULL) THEN
      PERFORM pg_notify('npcforge_job_events', '');
    END IF;
  ELSIF EXISTS (
    SELECT 1
      FROM new_rows n
      JOIN old_rows o ON o.id = n.id
     WHERE n.generation_job_status IS DISTINCT FROM o.generation_job_status
        OR n.generation_job_id IS DISTINCT FROM o.generation_job_id
        OR n.generation_job_updated_at IS DISTINCT FROM o.generation_job_updated_at
  ) THEN
    PERFORM pg_notify('npcforge_job_events', '');
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS trg_npcs_job_events_update ON npcs;
CREATE TRIGGER trg_npcs_job_events_update AFTER UPDATE ON npcs
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION npcforge_notify_job_events();
DROP TRIGGER IF EXISTS trg_npcs_job_events_insert ON npcs;
CREATE TRIGGER trg_npcs_job_events_insert AFTER INSERT ON npcs
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION npcforge_notify_job_events();

ALTER TABLE npcforge_workers ENABLE ROW LEVEL SECURITY;
ALTER TABLE npc_xml_versions ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon')
     AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    EXECUTE 'REVOKE ALL ON TABLE npcforge_workers, npc_xml_versions FROM PUBLIC, anon, authenticated';
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    EXECUTE 'GRANT SELECT ON TABLE npcforge_workers, npc_xml_versions TO service_role';
  END IF;
END
$$;
