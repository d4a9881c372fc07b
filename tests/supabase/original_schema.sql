-- The schema of the system npcforge replaces, as its Supabase migrations leave a project
-- (../shared/reference/original-design.md §1), written for these tests from those facts.
-- Applied as `postgres`, the role the Supabase CLI runs a project's migrations as.

CREATE TYPE npc_status AS ENUM ('draft', 'published');
CREATE TYPE npc_system AS ENUM ('jiddo_tfs_1_5');
CREATE TYPE npc_implementation_type AS ENUM ('xml');
CREATE TYPE npc_shop_mode AS ENUM ('trade_window', 'talk_mode');
CREATE TYPE npc_shop_item_list_type AS ENUM ('buy', 'sell');
CREATE TYPE npc_look_type AS ENUM ('player', 'monster', 'item');
CREATE TYPE generation_job_status AS ENUM ('queued', 'processing', 'succeeded', 'failed');

CREATE TABLE profiles (
  id uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
  display_name text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 255),
  created_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  updated_at timestamptz NOT NULL DEFAULT timezone('utc', now())
);
CREATE UNIQUE INDEX idx_profiles_display_name_lower ON profiles (lower(display_name));

CREATE TABLE npcs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  owner_id uuid NOT NULL REFERENCES profiles (id) ON DELETE RESTRICT,
  client_request_id uuid NOT NULL CONSTRAINT npcs_client_request_id_unique UNIQUE,
  status npc_status NOT NULL DEFAULT 'draft',
  system npc_system NOT NULL DEFAULT 'jiddo_tfs_1_5',
  implementation_type npc_implementation_type NOT NULL DEFAULT 'xml',
  name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
  script text NOT NULL DEFAULT 'default.lua' CHECK (script = 'default.lua'),
  walk_interval integer NOT NULL CHECK (walk_interval BETWEEN 0 AND 65535),
  floor_change boolean NOT NULL DEFAULT false,
  health_now integer NOT NULL CHECK (health_now BETWEEN 0 AND 65535),
  health_max integer NOT NULL CHECK (health_max BETWEEN 1 AND 65535),
  look_type npc_look_type NOT NULL,
  look_type_id integer,
  look_item_id integer,
  look_head integer,
  look_body integer,
  look_legs integer,
  look_feet integer,
  look_addons integer,
  look_mount integer CHECK (look_mount IS NULL OR look_mount >= 0),
  greet_message text NOT NULL CHECK (char_length(greet_message) BETWEEN 1 AND 512),
  farewell_message text NOT NULL CHECK (char_length(farewell_message) BETWEEN 1 AND 512),
  decline_message text NOT NULL CHECK (char_length(decline_message) BETWEEN 1 AND 512),
  no_shop_message text NOT NULL CHECK (char_length(no_shop_message) BETWEEN 1 AND 512),
  on_close_shop_message text NOT NULL CHECK (char_length(on_close_shop_message) BETWEEN 1 AND 512),
  focus_enabled boolean NOT NULL DEFAULT false,
  travel_enabled boolean NOT NULL DEFAULT false,
  voice_enabled boolean NOT NULL DEFAULT false,
  shop_enabled boolean NOT NULL DEFAULT false,
  keywords_enabled boolean NOT NULL DEFAULT false,
  shop_mode npc_shop_mode NOT NULL DEFAULT 'trade_window',
  shop_message_buy text CHECK (shop_message_buy IS NULL OR char_length(shop_message_buy) BETWEEN 1 AND 512),
  shop_message_sell text CHECK (shop_message_sell IS NULL OR char_length(shop_message_sell) BETWEEN 1 AND 512),
  content_size_bytes integer NOT NULL DEFAULT 0 CHECK (content_size_bytes BETWEEN 0 AND 262144),
  published_at timestamptz,
  first_published_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  updated_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  deleted_at timestamptz,
  generation_job_id uuid,
  generation_job_status generation_job_status,
  generation_job_started_at timestamptz,
  generation_job_error jsonb,
  CHECK (health_max >= health_now),
  CHECK ((look_type <> 'player' AND look_type <> 'monster') OR look_type_id > 0),
  CHECK ((look_type = 'item' AND look_item_id > 0) OR (look_type <> 'item' AND look_item_id IS NULL)),
  CHECK ((look_type = 'player' AND look_head BETWEEN 0 AND 132 AND look_body BETWEEN 0 AND 132
          AND look_legs BETWEEN 0 AND 132 AND look_feet BETWEEN 0 AND 132)
         OR (look_type <> 'player' AND look_head IS NULL AND look_body IS NULL
             AND look_legs IS NULL AND look_feet IS NULL)),
  CHECK ((look_type = 'player' AND look_addons BETWEEN 0 AND 3)
         OR (look_type <> 'player' AND look_addons IS NULL))
);
COMMENT ON COLUMN npcs.generation_job_id IS 'ID ostatniego zadania generacji XML';
CREATE UNIQUE INDEX idx_npcs_owner_lower_name_active ON npcs (owner_id, lower(name))
  WHERE deleted_at IS NULL;
CREATE INDEX idx_npcs_public_listing ON npcs (status, published_at, id)
  WHERE deleted_at IS NULL AND status = 'published';
CREATE INDEX idx_npcs_updated_at ON npcs (updated_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX idx_npcs_created_at ON npcs (created_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX idx_npcs_published_status_and_date ON npcs (status, published_at DESC)
  WHERE deleted_at IS NULL;
CREATE INDEX idx_npcs_generation_job_id ON npcs (generation_job_id);
CREATE INDEX idx_npcs_generation_job_status_started_at
  ON npcs (generation_job_status, generation_job_started_at);

CREATE TABLE npc_shop_items (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  npc_id uuid NOT NULL REFERENCES npcs (id) ON DELETE RESTRICT,
  list_type npc_shop_item_list_type NOT NULL,
  name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
  item_id integer NOT NULL CHECK (item_id > 0),
  price integer NOT NULL CHECK (price >= 0),
  subtype integer NOT NULL DEFAULT 0 CHECK (subtype >= 0),
  charges integer NOT NULL DEFAULT 0 CHECK (charges >= 0),
  real_name text CHECK (real_name IS NULL OR char_length(real_name) BETWEEN 1 AND 255),
  container_item_id integer CHECK (container_item_id IS NULL OR container_item_id > 0),
  created_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  updated_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  deleted_at timestamptz
);
CREATE INDEX idx_npc_shop_items_npc_list ON npc_shop_items (npc_id, list_type, id)
  WHERE deleted_at IS NULL;
CREATE INDEX idx_npc_shop_items_npc_deleted ON npc_shop_items (npc_id, deleted_at);
CREATE INDEX idx_npc_shop_items_item ON npc_shop_items (item_id);

CREATE TABLE npc_keywords (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  npc_id uuid NOT NULL REFERENCES npcs (id) ON DELETE RESTRICT,
  response text NOT NULL CHECK (char_length(response) BETWEEN 1 AND 512),
  sort_index integer NOT NULL DEFAULT 0 CHECK (sort_index >= 0),
  created_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  updated_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  deleted_at timestamptz,
  UNIQUE (npc_id, id)
);
CREATE INDEX idx_npc_keywords_npc_sort ON npc_keywords (npc_id, deleted_at, sort_index);
CREATE UNIQUE INDEX idx_npc_keywords_npc_response ON npc_keywords (npc_id, lower(response))
  WHERE deleted_at IS NULL;

CREATE TABLE npc_keyword_phrases (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  keyword_id uuid NOT NULL,
  npc_id uuid NOT NULL,
  phrase text NOT NULL CHECK (char_length(phrase) BETWEEN 1 AND 64),
  created_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  updated_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  deleted_at timestamptz,
  FOREIGN KEY (keyword_id, npc_id) REFERENCES npc_keywords (id, npc_id) ON DELETE RESTRICT
);
CREATE UNIQUE INDEX idx_npc_keyword_phrases_npc_phrase ON npc_keyword_phrases (npc_id, lower(phrase))
  WHERE deleted_at IS NULL;
CREATE INDEX idx_npc_keyword_phrases_keyword ON npc_keyword_phrases (keyword_id, deleted_at, phrase);
CREATE INDEX idx_npc_keyword_phrases_keyword_npc ON npc_keyword_phrases (keyword_id, npc_id);

CREATE TABLE telemetry_events (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  event_type text NOT NULL CHECK (char_length(event_type) BETWEEN 1 AND 255),
  user_id uuid REFERENCES profiles (id) ON DELETE SET NULL,
  npc_id uuid REFERENCES npcs (id) ON DELETE SET NULL,
  metadata jsonb CHECK (jsonb_typeof(metadata) IN ('object', 'null')),
  created_at timestamptz NOT NULL DEFAULT timezone('utc', now())
);
CREATE INDEX idx_telemetry_events_type_created ON telemetry_events (event_type, created_at DESC);

-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$
BEGIN
  NEW.updated_at := timezone('utc', now());
  RETURN NEW;
END $$;

CREATE FUNCTION prevent_npc_owner_change() RETURNS trigger LANGUAGE plpgsql
SET search_path = public AS $$
BEGIN
  IF NEW.owner_id <> OLD.owner_id THEN
    RAISE EXCEPTION 'owner_id cannot be modified for npc %', OLD.id;
  END IF;
  RETURN NEW;
END $$;

-- (The original compares TG_OP with a lower-case 'insert', so its insert branch never runs.)
CREATE FUNCTION enforce_npc_publish_ready() RETURNS trigger LANGUAGE plpgsql
SET search_path = public AS $$
BEGIN
  IF NEW.content_size_bytes > 262144 THEN
    RAISE EXCEPTION 'npc % content exceeds 262144 bytes', NEW.id;
  END IF;
  IF NEW.status = 'published' THEN
    IF NEW.deleted_at IS NOT NULL THEN
      RAISE EXCEPTION 'npc % is deleted and cannot be published', NEW.id;
    END IF;
    IF NEW.shop_enabled AND NOT EXISTS (SELECT 1 FROM npc_shop_items s
                                         WHERE s.npc_id = NEW.id AND s.deleted_at IS NULL) THEN
      RAISE EXCEPTION 'npc % cannot be published without active shop items', NEW.id;
    END IF;
    IF NEW.keywords_enabled AND NOT EXISTS (SELECT 1 FROM npc_keywords k
                                             WHERE k.npc_id = NEW.id AND k.deleted_at IS NULL) THEN
      RAISE EXCEPTION 'npc % cannot be published without active keyword responses', NEW.id;
    END IF;
    NEW.published_at := coalesce(NEW.published_at, timezone('utc', now()));
    IF TG_OP = 'UPDATE' THEN
      NEW.first_published_at := coalesce(OLD.first_published_at, NEW.published_at);
    ELSE
      NEW.first_published_at := NEW.published_at;
    END IF;
  ELSIF TG_OP = 'UPDATE' AND OLD.status = 'published' THEN
    NEW.published_at := NULL;
    NEW.first_published_at := OLD.first_published_at;
  END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION propagate_npc_soft_delete() RETURNS trigger LANGUAGE plpgsql
SET search_path = public AS $$
BEGIN
  IF NEW.deleted_at IS DISTINCT FROM OLD.deleted_at THEN
    UPDATE npc_shop_items SET deleted_at = NEW.deleted_at WHERE npc_id = NEW.id;
    UPDATE npc_keyword_phrases SET deleted_at = NEW.deleted_at WHERE npc_id = NEW.id;
    UPDATE npc_keywords SET deleted_at = NEW.deleted_at WHERE npc_id = NEW.id;
  END IF;
  RETURN NEW;
END $$;

-- (The original has one such function per table, shop items and keywords; TG_ARGV names it.)
CREATE FUNCTION enforce_npc_list_limit() RETURNS trigger LANGUAGE plpgsql
SET search_path = public AS $$
DECLARE
  active integer;
BEGIN
  IF (SELECT deleted_at FROM npcs WHERE id = NEW.npc_id) IS NOT NULL THEN
    RAISE EXCEPTION 'cannot modify % for deleted npc %', TG_ARGV[0], NEW.npc_id;
  END IF;
  EXECUTE format('SELECT count(*) FROM %I WHERE npc_id = $1 AND deleted_at IS NULL', TG_TABLE_NAME)
    INTO active USING NEW.npc_id;
  IF NEW.deleted_at IS NULL AND active >= 255 THEN
    RAISE EXCEPTION 'npc % exceeds maximum active % limit (255)', NEW.npc_id, TG_ARGV[0];
  END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION enforce_keyword_phrase_rules() RETURNS trigger LANGUAGE plpgsql
SET search_path = public AS $$
DECLARE
  parent npcs%ROWTYPE;
BEGIN
  SELECT * INTO parent FROM npcs WHERE id = NEW.npc_id;
  IF parent.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL THEN
    RAISE EXCEPTION 'cannot modify keyword phrases for deleted npc %', NEW.npc_id;
  END IF;
  IF parent.shop_enabled AND parent.shop_mode = 'talk_mode'
     AND lower(NEW.phrase) IN ('buy', 'sell', 'offer', 'trade', 'hi', 'hello', 'bye') THEN
    RAISE EXCEPTION 'phrase "%" is reserved for shop talk mode', NEW.phrase;
  END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION create_profile_for_new_user() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public AS $$
BEGIN
  INSERT INTO profiles (id, display_name)
  VALUES (NEW.id, left(coalesce(nullif(NEW.raw_user_meta_data ->> 'display_name', ''),
                                nullif(NEW.raw_user_meta_data ->> 'full_name', ''),
                                nullif(NEW.email, ''),
                                'user_' || left(NEW.id::text, 8)), 255))
  ON CONFLICT (id) DO NOTHING;
  RETURN NEW;
END $$;

-- Only the backend (service role) may write the job columns.
CREATE FUNCTION protect_generation_job_fields() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public AS $$
BEGIN
  IF auth.role() = 'service_role' THEN
    RETURN NEW;
  END IF;
  IF NEW.generation_job_id IS DISTINCT FROM OLD.generation_job_id
     OR NEW.generation_job_status IS DISTINCT FROM OLD.generation_job_status
     OR NEW.generation_job_started_at IS DISTINCT FROM OLD.generation_job_started_at
     OR NEW.generation_job_error IS DISTINCT FROM OLD.generation_job_error THEN
    RAISE EXCEPTION 'Modification of generation job fields is not allowed.';
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER trg_profiles_set_updated_at BEFORE UPDATE ON profiles
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER trg_npcs_set_updated_at BEFORE UPDATE ON npcs
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER trg_npcs_prevent_owner_change BEFORE UPDATE ON npcs
  FOR EACH ROW EXECUTE FUNCTION prevent_npc_owner_change();
CREATE TRIGGER trg_npcs_publish_guard BEFORE INSERT OR UPDATE ON npcs
  FOR EACH ROW EXECUTE FUNCTION enforce_npc_publish_ready();
CREATE TRIGGER trg_npcs_soft_delete_cascade AFTER UPDATE ON npcs
  FOR EACH ROW EXECUTE FUNCTION propagate_npc_soft_delete();
CREATE TRIGGER before_npcs_update_protect_job_fields BEFORE UPDATE ON npcs
  FOR EACH ROW EXECUTE FUNCTION protect_generation_job_fields();
CREATE TRIGGER trg_npc_shop_items_set_updated_at BEFORE UPDATE ON npc_shop_items
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER trg_npc_shop_items_limit BEFORE INSERT ON npc_shop_items
  FOR EACH ROW EXECUTE FUNCTION enforce_npc_list_limit('shop item');
CREATE TRIGGER trg_npc_keywords_set_updated_at BEFORE UPDATE ON npc_keywords
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER trg_npc_keywords_limit BEFORE INSERT ON npc_keywords
  FOR EACH ROW EXECUTE FUNCTION enforce_npc_list_limit('keyword');
CREATE TRIGGER trg_npc_keyword_phrases_set_updated_at BEFORE UPDATE ON npc_keyword_phrases
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER trg_npc_keyword_phrases_rules BEFORE INSERT OR UPDATE ON npc_keyword_phrases
  FOR EACH ROW EXECUTE FUNCTION enforce_keyword_phrase_rules();
CREATE TRIGGER trg_auth_users_create_profile AFTER INSERT ON auth.users
  FOR EACH ROW EXECUTE FUNCTION create_profile_for_new_user();

-- ---------------------------------------------------------------------------------------------
-- Row level security (the final state of the original's policies)

ALTER TABLE profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE npcs ENABLE ROW LEVEL SECURITY;
ALTER TABLE npc_shop_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE npc_keywords ENABLE ROW LEVEL SECURITY;
ALTER TABLE npc_keyword_phrases ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry_events ENABLE ROW LEVEL SECURITY;

CREATE POLICY profiles_select_anon ON profiles FOR SELECT TO anon USING (true);
CREATE POLICY profiles_select_authenticated ON profiles FOR SELECT TO authenticated USING (true);
CREATE POLICY profiles_update_authenticated ON profiles FOR UPDATE TO authenticated
  USING ((SELECT auth.uid()) = id) WITH CHECK ((SELECT auth.uid()) = id);

CREATE POLICY npcs_select_anon ON npcs FOR SELECT TO anon
  USING (deleted_at IS NULL AND status = 'published');
CREATE POLICY npcs_select_authenticated ON npcs FOR SELECT TO authenticated
  USING (owner_id = (SELECT auth.uid()) OR (deleted_at IS NULL AND status = 'published'));
CREATE POLICY npcs_insert_authenticated ON npcs FOR INSERT TO authenticated
  WITH CHECK (owner_id = (SELECT auth.uid()));
CREATE POLICY npcs_update_authenticated ON npcs FOR UPDATE TO authenticated
  USING (deleted_at IS NULL AND owner_id = (SELECT auth.uid()))
  WITH CHECK (owner_id = (SELECT auth.uid()));
CREATE POLICY npcs_soft_delete_authenticated ON npcs FOR UPDATE TO authenticated
  USING (deleted_at IS NULL AND owner_id = (SELECT auth.uid()))
  WITH CHECK (owner_id = (SELECT auth.uid()));

-- Shop items, keywords and phrases: the same four policies each.
DO $$
DECLARE
  child text;
BEGIN
  FOREACH child IN ARRAY ARRAY['npc_shop_items', 'npc_keywords', 'npc_keyword_phrases'] LOOP
    EXECUTE format('CREATE POLICY %I ON %I FOR SELECT TO anon USING (deleted_at IS NULL
      AND EXISTS (SELECT 1 FROM npcs parent WHERE parent.id = %I.npc_id
                     AND parent.deleted_at IS NULL AND parent.status = ''published''))',
      child || '_select_anon', child, child);
    EXECUTE format('CREATE POLICY %I ON %I FOR SELECT TO authenticated USING (deleted_at IS NULL
      AND EXISTS (SELECT 1 FROM npcs parent WHERE parent.id = %I.npc_id
                     AND parent.deleted_at IS NULL
                     AND (parent.status = ''published'' OR parent.owner_id = (SELECT auth.uid()))))',
      child || '_select_authenticated', child, child);
    EXECUTE format('CREATE POLICY %I ON %I FOR INSERT TO authenticated WITH CHECK (
      EXISTS (SELECT 1 FROM npcs parent WHERE parent.id = %I.npc_id
                 AND parent.deleted_at IS NULL AND parent.owner_id = (SELECT auth.uid())))',
      child || '_insert_authenticated', child, child);
    EXECUTE format('CREATE POLICY %I ON %I FOR UPDATE TO authenticated
      USING (EXISTS (SELECT 1 FROM npcs parent WHERE parent.id = %I.npc_id
                        AND parent.owner_id = (SELECT auth.uid())))
      WITH CHECK (EXISTS (SELECT 1 FROM npcs parent WHERE parent.id = %I.npc_id
                             AND parent.owner_id = (SELECT auth.uid())))',
      child || '_update_authenticated', child, child, child);
  END LOOP;
END $$;

CREATE POLICY telemetry_events_select_service_role ON telemetry_events FOR SELECT TO service_role
  USING (true);
CREATE POLICY telemetry_events_select_authenticated ON telemetry_events FOR SELECT TO authenticated
  USING (user_id = (SELECT auth.uid()));
CREATE POLICY telemetry_events_insert_authenticated ON telemetry_events FOR INSERT TO authenticated
  WITH CHECK (user_id = (SELECT auth.uid())
              AND (npc_id IS NULL OR EXISTS (SELECT 1 FROM npcs parent WHERE parent.id = npc_id
                                                AND parent.owner_id = (SELECT auth.uid()))));

-- ---------------------------------------------------------------------------------------------
-- The RPCs the app writes lists through (SECURITY DEFINER: they check ownership themselves)

CREATE FUNCTION bulk_replace_npc_shop_items(p_npc_id uuid, p_items jsonb)
RETURNS SETOF npc_shop_items LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
  owner uuid;
  item jsonb;
BEGIN
  IF p_npc_id IS NULL THEN
    RAISE EXCEPTION 'INVALID_NPC_ID' USING ERRCODE = '22023';
  END IF;
  SELECT n.owner_id INTO owner FROM npcs n WHERE n.id = p_npc_id AND n.deleted_at IS NULL;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'NPC_NOT_FOUND' USING ERRCODE = 'P0002';
  END IF;
  IF coalesce(auth.role(), '') <> 'service_role' AND owner IS DISTINCT FROM auth.uid() THEN
    RAISE EXCEPTION 'NPC_ACCESS_FORBIDDEN' USING ERRCODE = '42501';
  END IF;
  IF jsonb_typeof(p_items -> 'items') IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'INVALID_ITEMS_PAYLOAD' USING ERRCODE = '22P02';
  END IF;
  IF jsonb_array_length(p_items -> 'items') > 255 THEN
    RAISE EXCEPTION 'NPC_SHOP_ITEM_LIMIT_EXCEEDED' USING ERRCODE = 'P0001';
  END IF;
  UPDATE npc_shop_items s SET deleted_at = timezone('utc', now())
   WHERE s.npc_id = p_npc_id AND s.deleted_at IS NULL;
  FOR item IN SELECT value FROM jsonb_array_elements(p_items -> 'items') LOOP
    RETURN QUERY
      INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price, subtype, charges,
                                  real_name, container_item_id)
      VALUES (p_npc_id, (item ->> 'listType')::npc_shop_item_list_type, item ->> 'name',
              (item ->> 'itemId')::integer, (item ->> 'price')::integer,
              coalesce((item ->> 'subtype')::integer, 0), coalesce((item ->> 'charges')::integer, 0),
              nullif(btrim(item ->> 'realName'), ''),
              nullif(item ->> 'containerItemId', '')::integer)
      RETURNING *;
  END LOOP;
END $$;

CREATE FUNCTION bulk_replace_npc_keywords(p_npc_id uuid, p_owner_id uuid, p_keywords jsonb)
RETURNS TABLE (id uuid, npc_id uuid, response text, sort_index integer, created_at timestamptz,
               updated_at timestamptz, phrases jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
#variable_conflict use_column
DECLARE
  owner uuid;
  entry jsonb;
  keyword uuid;
  phrase text;
BEGIN
  SELECT n.owner_id INTO owner FROM npcs n WHERE n.id = p_npc_id AND n.deleted_at IS NULL;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'NPC_NOT_FOUND' USING ERRCODE = 'P0002';
  END IF;
  IF owner IS DISTINCT FROM p_owner_id
     OR (coalesce(auth.role(), '') <> 'service_role' AND owner IS DISTINCT FROM auth.uid()) THEN
    RAISE EXCEPTION 'NPC_ACCESS_FORBIDDEN' USING ERRCODE = '42501';
  END IF;
  IF jsonb_array_length(p_keywords -> 'items') > 255 THEN
    RAISE EXCEPTION 'NPC_KEYWORD_LIMIT_EXCEEDED' USING ERRCODE = 'P0001';
  END IF;
  UPDATE npc_keyword_phrases p SET deleted_at = timezone('utc', now())
   WHERE p.npc_id = p_npc_id AND p.deleted_at IS NULL;
  UPDATE npc_keywords k SET deleted_at = timezone('utc', now())
   WHERE k.npc_id = p_npc_id AND k.deleted_at IS NULL;
  FOR entry IN SELECT value FROM jsonb_array_elements(p_keywords -> 'items') LOOP
    IF char_length(btrim(entry ->> 'response')) NOT BETWEEN 1 AND 512 THEN
      RAISE EXCEPTION 'INVALID_KEYWORD_RESPONSE' USING ERRCODE = '22P02';
    END IF;
    IF jsonb_typeof(entry -> 'phrases') IS DISTINCT FROM 'array'
       OR jsonb_array_length(entry -> 'phrases') = 0 THEN
      RAISE EXCEPTION 'INVALID_KEYWORD_PHRASES' USING ERRCODE = '22P02';
    END IF;
    INSERT INTO npc_keywords (npc_id, response, sort_index)
    VALUES (p_npc_id, btrim(entry ->> 'response'), (entry ->> 'sortIndex')::integer)
    RETURNING npc_keywords.id INTO keyword;
    FOR phrase IN SELECT btrim(value) FROM jsonb_array_elements_text(entry -> 'phrases') LOOP
      IF char_length(phrase) NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION 'INVALID_KEYWORD_PHRASE' USING ERRCODE = '22P02';
      END IF;
      INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase) VALUES (keyword, p_npc_id, phrase);
    END LOOP;
  END LOOP;
  RETURN QUERY
    SELECT k.id, k.npc_id, k.response, k.sort_index, k.created_at, k.updated_at,
           coalesce((SELECT jsonb_agg(jsonb_build_object('id', p.id, 'phrase', p.phrase)
                                      ORDER BY p.created_at, p.id)
                       FROM npc_keyword_phrases p
                      WHERE p.keyword_id = k.id AND p.deleted_at IS NULL), '[]'::jsonb)
      FROM npc_keywords k
     WHERE k.npc_id = p_npc_id AND k.deleted_at IS NULL
     ORDER BY k.sort_index, k.created_at, k.id;
END $$;

GRANT EXECUTE ON FUNCTION bulk_replace_npc_shop_items(uuid, jsonb) TO authenticated;
GRANT EXECUTE ON FUNCTION bulk_replace_npc_keywords(uuid, uuid, jsonb) TO authenticated;
