-- Supabase's API roles (anon, authenticated through PostgREST) against npcforge's objects:
-- close what 0002 left open, on a fresh project and on one adopted from the original system.
--
-- * The job-column guard. 0002's trigger function was SECURITY DEFINER and asked `current_user`,
--   which inside such a function is its owner, so it never fired. This one runs as the caller and
--   also asks the request's JWT role (auth.role()), which a SECURITY DEFINER function called by
--   that request cannot change. It covers INSERT too (a row inserted `queued` is a job start).
-- * Child rows (shop items, keywords, phrases): 0002's FOR ALL policies let a signed-in user
--   hard-DELETE them and read their own soft-deleted rows. They become INSERT and UPDATE policies
--   with the original's rules (no DELETE policy: soft delete only); the anon reads of published
--   NPCs' lists that the original allowed are added. Policies of the same name that a project
--   already has (the original's) are kept as they are.
-- * The soft-delete cascade runs as the tables' owner (see below).
-- * npcforge's own objects that PostgREST would serve to anyone: the records view (it reads as
--   its owner, past RLS), the migration ledger, and `npcforge_enqueue` (job starts from the
--   browser go through the API, which applies the per-user start limit).
--
-- Everything is guarded: a bare PostgreSQL only gets the ledger's row level security.

ALTER TABLE IF EXISTS npcforge_schema_migrations ENABLE ROW LEVEL SECURITY;

DO $outer$
DECLARE
  child text;
  policy text[];
BEGIN
  IF to_regclass('auth.users') IS NULL
     OR to_regprocedure('auth.uid()') IS NULL
     OR to_regprocedure('auth.role()') IS NULL
     OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon')
     OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated')
     OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    RAISE NOTICE 'npcforge: not a Supabase database, skipping Supabase-only parts';
    RETURN;
  END IF;

  EXECUTE $f$
    CREATE OR REPLACE FUNCTION protect_generation_job_fields() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = public
    AS $body$
    DECLARE
      before jsonb;
      after jsonb;
    BEGIN
      IF current_user::text NOT IN ('anon', 'authenticated')
         AND coalesce(auth.role(), '') NOT IN ('anon', 'authenticated') THEN
        RETURN NEW;  -- the service role, the worker, the API, an operator's SQL
      END IF;
      SELECT coalesce(jsonb_object_agg(key, value), '{}') INTO after
        FROM jsonb_each(to_jsonb(NEW))
       WHERE key LIKE 'generation\_job\_%' OR key = 'content_size_bytes';
      IF TG_OP = 'INSERT' THEN
        -- A new row starts with no job: every job column empty, no attempts, no file.
        before := (SELECT jsonb_object_agg(key, CASE key
                                                  WHEN 'generation_job_attempts' THEN '0'::jsonb
                                                  WHEN 'content_size_bytes' THEN '0'::jsonb
                                                  ELSE 'null'::jsonb END)
                     FROM jsonb_object_keys(after) AS key);
      ELSE
        SELECT coalesce(jsonb_object_agg(key, value), '{}') INTO before
          FROM jsonb_each(to_jsonb(OLD))
         WHERE key LIKE 'generation\_job\_%' OR key = 'content_size_bytes';
      END IF;
      IF after IS DISTINCT FROM before THEN
        RAISE EXCEPTION 'Modification of generation job fields is not allowed.'
          USING ERRCODE = '42501',
                HINT = 'Start generation through the npcforge API (POST /api/npcs/{id}/generate).';
      END IF;
      RETURN NEW;
    END
    $body$;
  $f$;
  EXECUTE 'DROP TRIGGER IF EXISTS before_npcs_update_protect_job_fields ON npcs';
  EXECUTE 'CREATE TRIGGER before_npcs_update_protect_job_fields BEFORE INSERT OR UPDATE ON npcs
           FOR EACH ROW EXECUTE FUNCTION protect_generation_job_fields()';

  -- A signed-in user's soft delete of their NPC cascades to its rows. Run as the user, the
  -- cascade's UPDATEs saw none of them (the read policies hide rows of a deleted NPC), so the
  -- rows stayed active; as the owner of the tables it reaches exactly the NPC's own rows.
  EXECUTE 'ALTER FUNCTION propagate_npc_soft_delete() SECURITY DEFINER';

  FOREACH child IN ARRAY ARRAY['npc_shop_items', 'npc_keywords', 'npc_keyword_phrases'] LOOP
    EXECUTE format('DROP POLICY IF EXISTS %I ON %I', child || '_write', child);
    -- [name suffix, definition]; UPDATE is not tied to the parent's deleted state, so soft-
    -- deleting an NPC can cascade to its rows.
    FOREACH policy SLICE 1 IN ARRAY ARRAY[
      ['_select_anon', 'FOR SELECT TO anon USING (deleted_at IS NULL AND EXISTS (SELECT 1
         FROM npcs n WHERE n.id = npc_id AND n.deleted_at IS NULL AND n.status = ''published''))'],
      ['_insert_authenticated', 'FOR INSERT TO authenticated WITH CHECK (EXISTS (SELECT 1
         FROM npcs n WHERE n.id = npc_id AND n.deleted_at IS NULL
           AND n.owner_id = (SELECT auth.uid())))'],
      ['_update_authenticated', 'FOR UPDATE TO authenticated
         USING (EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id AND n.owner_id = (SELECT auth.uid())))
         WITH CHECK (EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id
           AND n.owner_id = (SELECT auth.uid())))']
    ] LOOP
      IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'public' AND tablename = child
                        AND policyname = child || policy[1]) THEN
        EXECUTE format('CREATE POLICY %I ON %I ', child || policy[1], child) || policy[2];
      END IF;
    END LOOP;
  END LOOP;

  EXECUTE 'REVOKE ALL ON TABLE npcforge_npc_records FROM PUBLIC, anon, authenticated';
  EXECUTE 'REVOKE EXECUTE ON FUNCTION npcforge_enqueue(uuid, boolean) FROM PUBLIC, anon, authenticated';
  IF to_regclass('npcforge_schema_migrations') IS NOT NULL THEN
    EXECUTE 'REVOKE ALL ON TABLE npcforge_schema_migrations FROM PUBLIC, anon, authenticated';
  END IF;
  EXECUTE 'GRANT SELECT ON TABLE npcforge_npc_records TO service_role';
  EXECUTE 'GRANT EXECUTE ON FUNCTION npcforge_enqueue(uuid, boolean) TO service_role';
END
$outer$;
