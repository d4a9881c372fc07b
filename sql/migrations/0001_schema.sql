-- npcforge schema: the NPC model of the system it replaces, plus the job queue on `npcs`.
-- Plain SQL: applies with `npcforge migrate`, psql, or the Supabase CLI. PostgreSQL >= 14.

-- gen_random_uuid() is built in since PostgreSQL 13: no pgcrypto needed.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'npc_status') THEN
    CREATE TYPE npc_status AS ENUM ('draft', 'published');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'npc_system') THEN
    CREATE TYPE npc_system AS ENUM ('jiddo_tfs_1_5');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'npc_implementation_type') THEN
    CREATE TYPE npc_implementation_type AS ENUM ('xml');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'npc_look_type') THEN
    CREATE TYPE npc_look_type AS ENUM ('player', 'monster', 'item');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'npc_shop_mode') THEN
    CREATE TYPE npc_shop_mode AS ENUM ('trade_window', 'talk_mode');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'npc_shop_item_list_type') THEN
    CREATE TYPE npc_shop_item_list_type AS ENUM ('buy', 'sell');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'generation_job_status') THEN
    CREATE TYPE generation_job_status AS ENUM ('queued', 'processing', 'succeeded', 'failed');
  END IF;
END
$$;

-- A TFS list item (shop item name, keyword phrase) may not hold the list separators.
CREATE OR REPLACE FUNCTION npcforge_list_safe(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT strpos(value, ';') = 0 AND strpos(value, ',') = 0 $$;

CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = public
AS $$
BEGIN
  NEW.updated_at := timezone('utc', now());
  RETURN NEW;
END
$$;

CREATE TABLE IF NOT EXISTS profiles (
  id uuid PRIMARY KEY,
  display_name text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 255),
  created_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  updated_at timestamptz NOT NULL DEFAULT timezone('utc', now())
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_profiles_display_name_lower ON profiles (lower(display_name));

CREATE TABLE IF NOT EXISTS npcs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  owner_id uuid NOT NULL REFERENCES profiles (id) ON DELETE RESTRICT,
  client_request_id uuid NOT NULL DEFAULT gen_random_uuid(),
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
  -- the latest generation job, denormalised on the row (as in the system replaced)
  generation_job_id uuid,
  generation_job_status generation_job_status,
  generation_job_started_at timestamptz,
  generation_job_error jsonb,
  -- queue bookkeeping
  generation_job_attempts integer NOT NULL DEFAULT 0 CHECK (generation_job_attempts >= 0),
  generation_job_run_after timestamptz,
  generation_job_queued_at timestamptz,
  generation_job_claimed_at timestamptz,
  generation_job_finished_at timestamptz,
  generation_job_updated_at timestamptz,
  generation_job_lease_owner text,
  generation_job_lease_token uuid,
  generation_job_lease_expires_at timestamptz,
  CONSTRAINT npcs_client_request_id_unique UNIQUE (client_request_id),
  CONSTRAINT npcs_health_max_ge_now CHECK (health_max >= health_now),
  CONSTRAINT npcs_look_type_id_check CHECK (
    (look_type <> 'player' AND look_type <> 'monster') OR look_type_id > 0),
  CONSTRAINT npcs_look_item_id_check CHECK (
    (look_type = 'item' AND look_item_id > 0) OR (look_type <> 'item' AND look_item_id IS NULL)),
  CONSTRAINT npcs_look_colors_check CHECK (
    (look_type = 'player'
      AND look_head BETWEEN 0 AND 132 AND look_body BETWEEN 0 AND 132
      AND look_legs BETWEEN 0 AND 132 AND look_feet BETWEEN 0 AND 132)
    OR (look_type <> 'player'
      AND look_head IS NULL AND look_body IS NULL AND look_legs IS NULL AND look_feet IS NULL)),
  CONSTRAINT npcs_look_addons_check CHECK (
    (look_type = 'player' AND look_addons BETWEEN 0 AND 3)
    OR (look_type <> 'player' AND look_addons IS NULL)),
  CONSTRAINT npcs_job_error_is_object CHECK (
    generation_job_error IS NULL OR jsonb_typeof(generation_job_error) = 'object')
);

-- Adopting a database that already holds the original system's `npcs` (the CREATE above was
-- skipped): add the queue's columns. Existing rows get `generation_job_run_after` = the time of
-- this migration, so a job the old system left `queued` is due at once; one it left
-- `processing` has no lease, so the reaper takes it back. No existing column or row is changed.
ALTER TABLE npcs
  ADD COLUMN IF NOT EXISTS generation_job_attempts integer NOT NULL DEFAULT 0
    CHECK (generation_job_attempts >= 0),
  ADD COLUMN IF NOT EXISTS generation_job_run_after timestamptz DEFAULT now(),
  ADD COLUMN IF NOT EXISTS generation_job_queued_at timestamptz,
  ADD COLUMN IF NOT EXISTS generation_job_claimed_at timestamptz,
  ADD COLUMN IF NOT EXISTS generation_job_finished_at timestamptz,
  ADD COLUMN IF NOT EXISTS generation_job_updated_at timestamptz,
  ADD COLUMN IF NOT EXISTS generation_job_lease_owner text,
  ADD COLUMN IF NOT EXISTS generation_job_lease_token uuid,
  ADD COLUMN IF NOT EXISTS generation_job_lease_expires_at timestamptz;
-- The default only served the rows that were there; the enqueue trigger sets it from now on.
ALTER TABLE npcs ALTER COLUMN generation_job_run_after DROP DEFAULT;
DO $$
BEGIN
  -- The original's app always sends a client_request_id; npcforge's importer leaves it out.
  IF NOT EXISTS (SELECT 1 FROM pg_attrdef d JOIN pg_attribute a
                   ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                  WHERE d.adrelid = 'npcs'::regclass AND a.attname = 'client_request_id') THEN
    ALTER TABLE npcs ALTER COLUMN client_request_id SET DEFAULT gen_random_uuid();
  END IF;
  -- New checks on old rows: NOT VALID, so rows written before are not judged by them.
  IF NOT EXISTS (SELECT 1 FROM pg_constraint
                  WHERE conrelid = 'npcs'::regclass AND conname = 'npcs_job_error_is_object') THEN
    ALTER TABLE npcs ADD CONSTRAINT npcs_job_error_is_object CHECK (
      generation_job_error IS NULL OR jsonb_typeof(generation_job_error) = 'object') NOT VALID;
  END IF;
END
$$;

COMMENT ON COLUMN npcs.generation_job_id IS 'ID of the latest XML generation job';
COMMENT ON COLUMN npcs.generation_job_error IS 'Failure of the latest job: {"code","message","details"?,"requestId"?}';
COMMENT ON COLUMN npcs.generation_job_lease_token IS 'Fencing token of the current claim; every write after the claim checks it';

CREATE UNIQUE INDEX IF NOT EXISTS idx_npcs_owner_name_active
  ON npcs (owner_id, lower(name)) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_npcs_public_listing
  ON npcs (status, published_at, id) WHERE deleted_at IS NULL AND status = 'published';
CREATE INDEX IF NOT EXISTS idx_npcs_updated_at ON npcs (updated_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_npcs_created_at ON npcs (created_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_npcs_published_status_and_date
  ON npcs (status, published_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_npcs_generation_job_id ON npcs (generation_job_id);
CREATE INDEX IF NOT EXISTS idx_npcs_generation_job_status_started_at
  ON npcs (generation_job_status, generation_job_started_at);
-- The claim reads only this small index: queued rows in run order.
CREATE INDEX IF NOT EXISTS idx_npcs_job_queue
  ON npcs (generation_job_run_after, id) WHERE generation_job_status = 'queued';
-- The reaper reads only running rows by lease expiry.
CREATE INDEX IF NOT EXISTS idx_npcs_job_leases
  ON npcs (generation_job_lease_expires_at) WHERE generation_job_status = 'processing';

CREATE TABLE IF NOT EXISTS npc_shop_items (
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
  deleted_at timestamptz,
  CONSTRAINT npc_shop_items_name_list_safe CHECK (npcforge_list_safe(name))
);
CREATE INDEX IF NOT EXISTS idx_npc_shop_items_active
  ON npc_shop_items (npc_id, list_type, id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_npc_shop_items_npc_deleted ON npc_shop_items (npc_id, deleted_at);
CREATE INDEX IF NOT EXISTS idx_npc_shop_items_item_id ON npc_shop_items (item_id);

CREATE TABLE IF NOT EXISTS npc_keywords (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  npc_id uuid NOT NULL REFERENCES npcs (id) ON DELETE RESTRICT,
  response text NOT NULL CHECK (char_length(response) BETWEEN 1 AND 512),
  sort_index integer NOT NULL DEFAULT 0 CHECK (sort_index >= 0),
  created_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  updated_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  deleted_at timestamptz,
  CONSTRAINT npc_keywords_npc_id_id_unique UNIQUE (npc_id, id)
);
CREATE INDEX IF NOT EXISTS idx_npc_keywords_order ON npc_keywords (npc_id, deleted_at, sort_index);
CREATE UNIQUE INDEX IF NOT EXISTS idx_npc_keywords_response_active
  ON npc_keywords (npc_id, lower(response)) WHERE deleted_at IS NULL;

CREATE TABLE IF NOT EXISTS npc_keyword_phrases (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  keyword_id uuid NOT NULL,
  npc_id uuid NOT NULL,
  phrase text NOT NULL CHECK (char_length(phrase) BETWEEN 1 AND 64),
  created_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  updated_at timestamptz NOT NULL DEFAULT timezone('utc', now()),
  deleted_at timestamptz,
  CONSTRAINT npc_keyword_phrases_keyword_fk FOREIGN KEY (keyword_id, npc_id)
    REFERENCES npc_keywords (id, npc_id) ON DELETE RESTRICT,
  CONSTRAINT npc_keyword_phrases_list_safe CHECK (npcforge_list_safe(phrase))
);
-- Adopted tables: the list-separator checks, NOT VALID and for active rows only, so the
-- original app can still soft-delete (replace) an old row that holds a separator.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'npc_shop_items'::regclass
                    AND conname = 'npc_shop_items_name_list_safe') THEN
    ALTER TABLE npc_shop_items ADD CONSTRAINT npc_shop_items_name_list_safe
      CHECK (deleted_at IS NOT NULL OR npcforge_list_safe(name)) NOT VALID;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'npc_keyword_phrases'::regclass
                    AND conname = 'npc_keyword_phrases_list_safe') THEN
    ALTER TABLE npc_keyword_phrases ADD CONSTRAINT npc_keyword_phrases_list_safe
      CHECK (deleted_at IS NOT NULL OR npcforge_list_safe(phrase)) NOT VALID;
  END IF;
END
$$;
CREATE UNIQUE INDEX IF NOT EXISTS idx_npc_keyword_phrases_unique_active
  ON npc_keyword_phrases (npc_id, lower(phrase)) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_npc_keyword_phrases_keyword
  ON npc_keyword_phrases (keyword_id, deleted_at, phrase);
CREATE INDEX IF NOT EXISTS idx_npc_keyword_phrases_keyword_npc
  ON npc_keyword_phrases (keyword_id, npc_id);

CREATE TABLE IF NOT EXISTS npc_generation_attempts (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  job_id uuid NOT NULL,
  npc_id uuid NOT NULL REFERENCES npcs (id) ON DELETE CASCADE,
  attempt integer NOT NULL CHECK (attempt >= 1),
  worker_id text NOT NULL,
  started_at timestamptz NOT NULL,
  finished_at timestamptz NOT NULL DEFAULT now(),
  outcome text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'retry', 'discarded', 'released')),
  error_code text,
  error_message text,
  model text,
  generation_id text,
  request_id text,
  prompt_tokens integer,
  completion_tokens integer,
  cost numeric(14, 8),
  retries integer NOT NULL DEFAULT 0,
  duration_ms integer NOT NULL CHECK (duration_ms >= 0)
);
CREATE INDEX IF NOT EXISTS idx_npc_generation_attempts_job ON npc_generation_attempts (job_id, attempt);
CREATE INDEX IF NOT EXISTS idx_npc_generation_attempts_npc
  ON npc_generation_attempts (npc_id, started_at DESC);

-- ---------------------------------------------------------------------------------------------
-- Row rules carried over from the system replaced
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION prevent_npc_owner_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = public
AS $$
BEGIN
  IF NEW.owner_id IS DISTINCT FROM OLD.owner_id THEN
    RAISE EXCEPTION 'owner_id cannot be modified for npc %', OLD.id USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END
$$;

-- Shop items and keywords share one rule: no rows under a deleted NPC, at most 255 active ones.
-- TG_ARGV[0] names the thing in the error message.
CREATE OR REPLACE FUNCTION enforce_npc_child_limit() RETURNS trigger
LANGUAGE plpgsql SET search_path = public
AS $$
DECLARE
  active integer;
BEGIN
  IF NEW.deleted_at IS NULL THEN
    IF EXISTS (SELECT 1 FROM npcs WHERE id = NEW.npc_id AND deleted_at IS NOT NULL) THEN
      RAISE EXCEPTION 'npc % is deleted', NEW.npc_id USING ERRCODE = 'P0002';
    END IF;
    EXECUTE format('SELECT count(*) FROM %I WHERE npc_id = $1 AND deleted_at IS NULL', TG_TABLE_NAME)
      INTO active USING NEW.npc_id;
    IF active >= 255 THEN
      RAISE EXCEPTION 'npc % exceeds maximum active % limit (255)', NEW.npc_id, TG_ARGV[0]
        USING ERRCODE = 'P0001';
    END IF;
  END IF;
  RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION enforce_keyword_phrase_rules() RETURNS trigger
LANGUAGE plpgsql SET search_path = public
AS $$
DECLARE
  parent npcs%ROWTYPE;
BEGIN
  SELECT * INTO parent FROM npcs WHERE id = NEW.npc_id;
  IF parent.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL THEN
    RAISE EXCEPTION 'npc % is deleted', NEW.npc_id USING ERRCODE = 'P0002';
  END IF;
  IF parent.shop_enabled AND parent.shop_mode = 'talk_mode' AND NEW.deleted_at IS NULL
     AND lower(NEW.phrase) IN ('buy', 'sell', 'offer', 'trade', 'hi', 'hello', 'bye') THEN
    RAISE EXCEPTION 'keyword phrase "%" is reserved in talk_mode shops', NEW.phrase
      USING ERRCODE = '23514';
  END IF;
  RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION propagate_npc_soft_delete() RETURNS trigger
LANGUAGE plpgsql SET search_path = public
AS $$
BEGIN
  IF NEW.deleted_at IS DISTINCT FROM OLD.deleted_at THEN
    UPDATE npc_keyword_phrases SET deleted_at = NEW.deleted_at
      WHERE npc_id = NEW.id AND (deleted_at IS NULL OR deleted_at = OLD.deleted_at);
    UPDATE npc_keywords SET deleted_at = NEW.deleted_at
      WHERE npc_id = NEW.id AND (deleted_at IS NULL OR deleted_at = OLD.deleted_at);
    UPDATE npc_shop_items SET deleted_at = NEW.deleted_at
      WHERE npc_id = NEW.id AND (deleted_at IS NULL OR deleted_at = OLD.deleted_at);
  END IF;
  RETURN NULL;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The job queue: enqueue by plain UPDATE
-- ---------------------------------------------------------------------------------------------

-- A transition to 'queued' from no job, 'succeeded' or 'failed' -- or any change of job id while
-- queued/processing (a force) -- starts a new job: fresh id unless the statement chose one,
-- stamps, clears error and attempts. 'processing' -> 'queued' with the same id is the worker
-- handing its own job back (retry or shutdown): the id and attempt count stay.
-- Notifications carry a constant payload, so PostgreSQL folds all of one transaction into one.
CREATE OR REPLACE FUNCTION npcforge_on_job_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = public
AS $$
DECLARE
  old_status generation_job_status;
  old_job uuid;
  new_job boolean;
BEGIN
  IF TG_OP = 'UPDATE' THEN
    old_status := OLD.generation_job_status;
    old_job := OLD.generation_job_id;
  END IF;

  IF NEW.generation_job_status IS DISTINCT FROM old_status
     OR NEW.generation_job_id IS DISTINCT FROM old_job
     OR (TG_OP = 'UPDATE' AND NEW.generation_job_error IS DISTINCT FROM OLD.generation_job_error) THEN
    NEW.generation_job_updated_at := clock_timestamp();
  END IF;

  IF NEW.generation_job_status IS DISTINCT FROM 'queued' THEN
    RETURN NEW;
  END IF;

  new_job := old_status IS NULL
          OR old_status IN ('succeeded', 'failed')
          OR NEW.generation_job_id IS DISTINCT FROM old_job;

  IF new_job THEN
    IF NEW.generation_job_id IS NULL OR NEW.generation_job_id IS NOT DISTINCT FROM old_job THEN
      NEW.generation_job_id := gen_random_uuid();
    END IF;
    NEW.generation_job_started_at := clock_timestamp();
    NEW.generation_job_queued_at := NEW.generation_job_started_at;
    NEW.generation_job_updated_at := NEW.generation_job_started_at;
    NEW.generation_job_error := NULL;
    NEW.generation_job_attempts := 0;
    NEW.generation_job_claimed_at := NULL;
    NEW.generation_job_finished_at := NULL;
    IF TG_OP = 'INSERT' OR NEW.generation_job_run_after IS NOT DISTINCT FROM OLD.generation_job_run_after
       OR NEW.generation_job_run_after IS NULL THEN
      NEW.generation_job_run_after := NEW.generation_job_started_at;
    END IF;
  ELSIF old_status = 'queued' THEN
    RETURN NEW;  -- queued again with the same id: nothing to do
  ELSE
    -- processing -> queued, same id: hand-back; run_after set by the statement or now
    IF NEW.generation_job_run_after IS NULL
       OR NEW.generation_job_run_after IS NOT DISTINCT FROM OLD.generation_job_run_after THEN
      NEW.generation_job_run_after := clock_timestamp();
    END IF;
  END IF;

  NEW.generation_job_lease_owner := NULL;
  NEW.generation_job_lease_token := NULL;
  NEW.generation_job_lease_expires_at := NULL;
  PERFORM pg_notify('npcforge_jobs', '');
  RETURN NEW;
END
$$;

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
     SET generation_job_status = 'queued', generation_job_id = gen_random_uuid()
   WHERE n.id = npcforge_enqueue.npc_id
  RETURNING n.generation_job_id INTO job;
  RETURN job;
END
$$;

DROP TRIGGER IF EXISTS trg_npcs_set_updated_at ON npcs;
-- `updated_at` is the record's last change: queue bookkeeping (claims, lease renewals) leaves it.
CREATE TRIGGER trg_npcs_set_updated_at BEFORE UPDATE OF
    owner_id, client_request_id, status, system, implementation_type, name, script, walk_interval,
    floor_change, health_now, health_max, look_type, look_type_id, look_item_id, look_head,
    look_body, look_legs, look_feet, look_addons, look_mount, greet_message, farewell_message,
    decline_message, no_shop_message, on_close_shop_message, focus_enabled, travel_enabled,
    voice_enabled, shop_enabled, keywords_enabled, shop_mode, shop_message_buy, shop_message_sell,
    content_size_bytes, published_at, first_published_at, deleted_at
  ON npcs FOR EACH ROW EXECUTE FUNCTION set_updated_at();
DROP TRIGGER IF EXISTS trg_npcs_prevent_owner_change ON npcs;
CREATE TRIGGER trg_npcs_prevent_owner_change BEFORE UPDATE OF owner_id ON npcs
  FOR EACH ROW EXECUTE FUNCTION prevent_npc_owner_change();
DROP TRIGGER IF EXISTS trg_npcs_job_change ON npcs;
CREATE TRIGGER trg_npcs_job_change BEFORE INSERT OR UPDATE ON npcs
  FOR EACH ROW EXECUTE FUNCTION npcforge_on_job_change();
DROP TRIGGER IF EXISTS trg_npcs_soft_delete ON npcs;
CREATE TRIGGER trg_npcs_soft_delete AFTER UPDATE OF deleted_at ON npcs
  FOR EACH ROW EXECUTE FUNCTION propagate_npc_soft_delete();

DROP TRIGGER IF EXISTS trg_profiles_set_updated_at ON profiles;
CREATE TRIGGER trg_profiles_set_updated_at BEFORE UPDATE ON profiles
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
DROP TRIGGER IF EXISTS trg_npc_shop_items_set_updated_at ON npc_shop_items;
CREATE TRIGGER trg_npc_shop_items_set_updated_at BEFORE UPDATE ON npc_shop_items
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
DROP TRIGGER IF EXISTS trg_npc_shop_items_limit ON npc_shop_items;
CREATE TRIGGER trg_npc_shop_items_limit BEFORE INSERT ON npc_shop_items
  FOR EACH ROW EXECUTE FUNCTION enforce_npc_child_limit('shop item');
DROP TRIGGER IF EXISTS trg_npc_keywords_set_updated_at ON npc_keywords;
CREATE TRIGGER trg_npc_keywords_set_updated_at BEFORE UPDATE ON npc_keywords
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
DROP TRIGGER IF EXISTS trg_npc_keywords_limit ON npc_keywords;
CREATE TRIGGER trg_npc_keywords_limit BEFORE INSERT ON npc_keywords
  FOR EACH ROW EXECUTE FUNCTION enforce_npc_child_limit('keyword');
DROP TRIGGER IF EXISTS trg_npc_keyword_phrases_set_updated_at ON npc_keyword_phrases;
CREATE TRIGGER trg_npc_keyword_phrases_set_updated_at BEFORE UPDATE ON npc_keyword_phrases
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
DROP TRIGGER IF EXISTS trg_npc_keyword_phrases_rules ON npc_keyword_phrases;
CREATE TRIGGER trg_npc_keyword_phrases_rules BEFORE INSERT OR UPDATE ON npc_keyword_phrases
  FOR EACH ROW EXECUTE FUNCTION enforce_keyword_phrase_rules();
