-- Parts that only make sense on a Supabase project: the auth.users link, row level security for
-- the `authenticated` role, and protection of the job columns from non-service roles.
-- Every statement is guarded, so a bare PostgreSQL skips this file's effects.

DO $outer$
BEGIN
  IF to_regclass('auth.users') IS NULL
     OR to_regprocedure('auth.uid()') IS NULL
     OR to_regprocedure('auth.role()') IS NULL
     OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated')
     OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    RAISE NOTICE 'npcforge: not a Supabase database, skipping Supabase-only parts';
    RETURN;
  END IF;

  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'profiles_id_auth_users_fk') THEN
    EXECUTE 'ALTER TABLE profiles ADD CONSTRAINT profiles_id_auth_users_fk
             FOREIGN KEY (id) REFERENCES auth.users (id) ON DELETE CASCADE NOT VALID';
  END IF;

  EXECUTE $f$
    CREATE OR REPLACE FUNCTION create_profile_for_new_user() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public
    AS $body$
    BEGIN
      INSERT INTO profiles (id, display_name)
      VALUES (NEW.id, left(coalesce(
        nullif(NEW.raw_user_meta_data->>'display_name', ''),
        nullif(NEW.raw_user_meta_data->>'full_name', ''),
        nullif(NEW.email, ''),
        'user_' || left(NEW.id::text, 8)), 255))
      ON CONFLICT (id) DO NOTHING;
      RETURN NEW;
    END
    $body$;
  $f$;
  EXECUTE 'DROP TRIGGER IF EXISTS trg_auth_users_create_profile ON auth.users';
  EXECUTE 'CREATE TRIGGER trg_auth_users_create_profile AFTER INSERT ON auth.users
           FOR EACH ROW EXECUTE FUNCTION public.create_profile_for_new_user()';

  -- Only the backend (service role, or a direct connection that is not a PostgREST role) may
  -- write the job columns; browser sessions enqueue through the API.
  EXECUTE $f$
    CREATE OR REPLACE FUNCTION protect_generation_job_fields() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public
    AS $body$
    BEGIN
      IF current_user IN ('authenticated', 'anon') AND coalesce(auth.role(), '') <> 'service_role'
         AND (NEW.generation_job_id IS DISTINCT FROM OLD.generation_job_id
           OR NEW.generation_job_status IS DISTINCT FROM OLD.generation_job_status
           OR NEW.generation_job_started_at IS DISTINCT FROM OLD.generation_job_started_at
           OR NEW.generation_job_error IS DISTINCT FROM OLD.generation_job_error
           OR NEW.generation_job_attempts IS DISTINCT FROM OLD.generation_job_attempts
           OR NEW.generation_job_run_after IS DISTINCT FROM OLD.generation_job_run_after
           OR NEW.generation_job_lease_owner IS DISTINCT FROM OLD.generation_job_lease_owner
           OR NEW.generation_job_lease_token IS DISTINCT FROM OLD.generation_job_lease_token
           OR NEW.generation_job_lease_expires_at IS DISTINCT FROM OLD.generation_job_lease_expires_at
           OR NEW.content_size_bytes IS DISTINCT FROM OLD.content_size_bytes) THEN
        RAISE EXCEPTION 'Modification of generation job fields is not allowed.'
          USING ERRCODE = '42501';
      END IF;
      RETURN NEW;
    END
    $body$;
  $f$;
  EXECUTE 'DROP TRIGGER IF EXISTS before_npcs_update_protect_job_fields ON npcs';
  EXECUTE 'CREATE TRIGGER before_npcs_update_protect_job_fields BEFORE UPDATE ON npcs
           FOR EACH ROW EXECUTE FUNCTION protect_generation_job_fields()';

  EXECUTE 'ALTER TABLE profiles ENABLE ROW LEVEL SECURITY';
  EXECUTE 'ALTER TABLE npcs ENABLE ROW LEVEL SECURITY';
  EXECUTE 'ALTER TABLE npc_shop_items ENABLE ROW LEVEL SECURITY';
  EXECUTE 'ALTER TABLE npc_keywords ENABLE ROW LEVEL SECURITY';
  EXECUTE 'ALTER TABLE npc_keyword_phrases ENABLE ROW LEVEL SECURITY';
  EXECUTE 'ALTER TABLE npc_generation_attempts ENABLE ROW LEVEL SECURITY';

  EXECUTE 'DROP POLICY IF EXISTS profiles_select ON profiles';
  EXECUTE 'CREATE POLICY profiles_select ON profiles FOR SELECT TO anon, authenticated USING (true)';
  EXECUTE 'DROP POLICY IF EXISTS profiles_update_own ON profiles';
  EXECUTE 'CREATE POLICY profiles_update_own ON profiles FOR UPDATE TO authenticated
           USING ((SELECT auth.uid()) = id) WITH CHECK ((SELECT auth.uid()) = id)';

  EXECUTE 'DROP POLICY IF EXISTS npcs_select_anon ON npcs';
  EXECUTE 'CREATE POLICY npcs_select_anon ON npcs FOR SELECT TO anon
           USING (deleted_at IS NULL AND status = ''published'')';
  EXECUTE 'DROP POLICY IF EXISTS npcs_select_authenticated ON npcs';
  EXECUTE 'CREATE POLICY npcs_select_authenticated ON npcs FOR SELECT TO authenticated
           USING (owner_id = (SELECT auth.uid()) OR (deleted_at IS NULL AND status = ''published''))';
  EXECUTE 'DROP POLICY IF EXISTS npcs_insert_authenticated ON npcs';
  EXECUTE 'CREATE POLICY npcs_insert_authenticated ON npcs FOR INSERT TO authenticated
           WITH CHECK (owner_id = (SELECT auth.uid()))';
  EXECUTE 'DROP POLICY IF EXISTS npcs_update_authenticated ON npcs';
  EXECUTE 'CREATE POLICY npcs_update_authenticated ON npcs FOR UPDATE TO authenticated
           USING (deleted_at IS NULL AND owner_id = (SELECT auth.uid()))
           WITH CHECK (owner_id = (SELECT auth.uid()))';

  EXECUTE 'DROP POLICY IF EXISTS npc_shop_items_select ON npc_shop_items';
  EXECUTE 'CREATE POLICY npc_shop_items_select ON npc_shop_items FOR SELECT TO authenticated
           USING (deleted_at IS NULL AND EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id
             AND n.deleted_at IS NULL AND (n.status = ''published'' OR n.owner_id = (SELECT auth.uid()))))';
  EXECUTE 'DROP POLICY IF EXISTS npc_shop_items_write ON npc_shop_items';
  EXECUTE 'CREATE POLICY npc_shop_items_write ON npc_shop_items FOR ALL TO authenticated
           USING (EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id AND n.owner_id = (SELECT auth.uid())))
           WITH CHECK (EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id AND n.owner_id = (SELECT auth.uid())))';

  EXECUTE 'DROP POLICY IF EXISTS npc_keywords_select ON npc_keywords';
  EXECUTE 'CREATE POLICY npc_keywords_select ON npc_keywords FOR SELECT TO authenticated
           USING (deleted_at IS NULL AND EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id
             AND n.deleted_at IS NULL AND (n.status = ''published'' OR n.owner_id = (SELECT auth.uid()))))';
  EXECUTE 'DROP POLICY IF EXISTS npc_keywords_write ON npc_keywords';
  EXECUTE 'CREATE POLICY npc_keywords_write ON npc_keywords FOR ALL TO authenticated
           USING (EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id AND n.owner_id = (SELECT auth.uid())))
           WITH CHECK (EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id AND n.owner_id = (SELECT auth.uid())))';

  EXECUTE 'DROP POLICY IF EXISTS npc_keyword_phrases_select ON npc_keyword_phrases';
  EXECUTE 'CREATE POLICY npc_keyword_phrases_select ON npc_keyword_phrases FOR SELECT TO authenticated
           USING (deleted_at IS NULL AND EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id
             AND n.deleted_at IS NULL AND (n.status = ''published'' OR n.owner_id = (SELECT auth.uid()))))';
  EXECUTE 'DROP POLICY IF EXISTS npc_keyword_phrases_write ON npc_keyword_phrases';
  EXECUTE 'CREATE POLICY npc_keyword_phrases_write ON npc_keyword_phrases FOR ALL TO authenticated
           USING (EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id AND n.owner_id = (SELECT auth.uid())))
           WITH CHECK (EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id AND n.owner_id = (SELECT auth.uid())))';

  EXECUTE 'DROP POLICY IF EXISTS npc_generation_attempts_select ON npc_generation_attempts';
  EXECUTE 'CREATE POLICY npc_generation_attempts_select ON npc_generation_attempts FOR SELECT
           TO authenticated USING (EXISTS (SELECT 1 FROM npcs n WHERE n.id = npc_id
             AND n.owner_id = (SELECT auth.uid())))';
END
$outer$;
