-- Record order and the rules TFS imposes on list values (SPEC §7).
--
-- 1. Shop items, keywords and keyword phrases get an explicit `position`: a default drawn from
--    one sequence, so rows keep the order in which they were written, also when a whole list is
--    written in one statement or transaction (where created_at ties, and ids are random).
--    Existing rows get positions from the order they were read in until now.
-- 2. New writes may not hold what TFS cannot express (CHECKs NOT VALID, a trigger for phrases);
--    rows already stored are left as they are, and a job that meets one fails RECORD_INVALID.
-- 3. The records view reads the lists in position order and carries row ids.
--
-- Written to apply on npcforge's own schema and on a database that holds the original system's
-- tables and data: nothing here assumes npcforge created the tables, their constraints or
-- their triggers.

CREATE SEQUENCE IF NOT EXISTS npcforge_record_position AS bigint;

DO $$
DECLARE
  spec record;
  trg record;
  disabled text[];
  states "char"[];
  top bigint := 0;
  got bigint;
BEGIN
  FOR spec IN
    SELECT * FROM (VALUES
      ('npc_shop_items', 'created_at, id'),
      ('npc_keywords', 'created_at, id'),
      ('npc_keyword_phrases', 'created_at, id')) AS t(tbl, current_order)
  LOOP
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = spec.tbl
                  AND column_name = 'position') THEN
      CONTINUE;
    END IF;
    EXECUTE format('ALTER TABLE %I ADD COLUMN position bigint', spec.tbl);
    -- Number the existing rows without firing their row triggers: an UPDATE would stamp
    -- updated_at on every row, and the phrase rules of some schemas refuse any change to a row
    -- under a soft-deleted NPC. Only the triggers enabled now are switched off and back on.
    disabled := '{}';
    states := '{}';
    FOR trg IN
      SELECT tgname, tgenabled FROM pg_trigger
       WHERE tgrelid = spec.tbl::regclass AND NOT tgisinternal AND tgenabled <> 'D'
    LOOP
      EXECUTE format('ALTER TABLE %I DISABLE TRIGGER %I', spec.tbl, trg.tgname);
      disabled := disabled || trg.tgname::text;
      states := states || trg.tgenabled;
    END LOOP;
    EXECUTE format(
      'UPDATE %1$I AS t SET position = o.n
         FROM (SELECT id, row_number() OVER (ORDER BY %2$s) AS n FROM %1$I) AS o
        WHERE t.id = o.id',
      spec.tbl, spec.current_order);
    FOR i IN 1 .. coalesce(array_length(disabled, 1), 0) LOOP
      EXECUTE format('ALTER TABLE %I ENABLE %s TRIGGER %I', spec.tbl,
                     CASE states[i] WHEN 'A' THEN 'ALWAYS' WHEN 'R' THEN 'REPLICA' ELSE '' END,
                     disabled[i]);
    END LOOP;
    EXECUTE format('SELECT coalesce(max(position), 0) FROM %I', spec.tbl) INTO got;
    top := greatest(top, got);
  END LOOP;
  IF top > 0 THEN
    PERFORM setval('npcforge_record_position', greatest(top, (SELECT last_value FROM npcforge_record_position)));
  END IF;
END
$$;

ALTER TABLE npc_shop_items ALTER COLUMN position SET DEFAULT nextval('npcforge_record_position');
ALTER TABLE npc_shop_items ALTER COLUMN position SET NOT NULL;
ALTER TABLE npc_keywords ALTER COLUMN position SET DEFAULT nextval('npcforge_record_position');
ALTER TABLE npc_keywords ALTER COLUMN position SET NOT NULL;
ALTER TABLE npc_keyword_phrases ALTER COLUMN position SET DEFAULT nextval('npcforge_record_position');
ALTER TABLE npc_keyword_phrases ALTER COLUMN position SET NOT NULL;
COMMENT ON COLUMN npc_shop_items.position IS 'Order within the NPC''s list: insertion order unless set';
COMMENT ON COLUMN npc_keywords.position IS 'Order among keywords of equal sort_index: insertion order unless set';
COMMENT ON COLUMN npc_keyword_phrases.position IS 'Order within the keyword: insertion order unless set';

CREATE INDEX IF NOT EXISTS idx_npc_shop_items_position
  ON npc_shop_items (npc_id, position) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_npc_keyword_phrases_position
  ON npc_keyword_phrases (keyword_id, position) WHERE deleted_at IS NULL;

-- Roles that insert rows directly (Supabase's API roles) draw positions too.
DO $$
DECLARE
  role_name text;
BEGIN
  FOREACH role_name IN ARRAY ARRAY['authenticated', 'service_role'] LOOP
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
      EXECUTE format('GRANT USAGE ON SEQUENCE npcforge_record_position TO %I', role_name);
    END IF;
  END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- What TFS cannot express, refused for new writes
-- ---------------------------------------------------------------------------------------------

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'npc_shop_items'::regclass
                   AND conname = 'npc_shop_items_name_list_safe') THEN
    ALTER TABLE npc_shop_items ADD CONSTRAINT npc_shop_items_name_list_safe
      CHECK (strpos(name, ';') = 0 AND strpos(name, ',') = 0) NOT VALID;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'npc_shop_items'::regclass
                   AND conname = 'npc_shop_items_real_name_list_safe') THEN
    ALTER TABLE npc_shop_items ADD CONSTRAINT npc_shop_items_real_name_list_safe
      CHECK (real_name IS NULL OR (strpos(real_name, ';') = 0 AND strpos(real_name, ',') = 0))
      NOT VALID;
  END IF;
  -- TFS has one field for the fluid type and the charges of a rune.
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'npc_shop_items'::regclass
                   AND conname = 'npc_shop_items_one_subtype') THEN
    ALTER TABLE npc_shop_items ADD CONSTRAINT npc_shop_items_one_subtype
      CHECK (subtype = 0 OR charges = 0 OR subtype = charges) NOT VALID;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'npc_keyword_phrases'::regclass
                   AND conname = 'npc_keyword_phrases_list_safe') THEN
    ALTER TABLE npc_keyword_phrases ADD CONSTRAINT npc_keyword_phrases_list_safe
      CHECK (strpos(phrase, ';') = 0 AND strpos(phrase, ',') = 0) NOT VALID;
  END IF;
END
$$;

-- Why a keyword phrase cannot be one (NULL if it can): the NPC system answers these words
-- itself (greetings, farewells, trade, yes, no; buy and sell in a talk-mode shop), and TFS
-- finds a keyword anywhere in the player's lower-cased message, so a phrase inside one of those
-- words would answer it too. The importer and the worker apply the full rules; this is the part
-- a single row can be judged on.
CREATE OR REPLACE FUNCTION npcforge_keyword_phrase_problem(phrase text, talk_mode boolean)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT CASE
    WHEN said = word THEN format('is a word the NPC system answers itself ("%s")', word)
    ELSE format('would also answer when the player says "%s"', word)
  END
  FROM (SELECT lower(btrim(phrase)) AS said) AS p,
       unnest(ARRAY['hi', 'hello', 'bye', 'farewell', 'trade', 'yes', 'no']
              || CASE WHEN talk_mode THEN ARRAY['buy', 'sell'] ELSE ARRAY[]::text[] END) AS word
  WHERE said <> '' AND strpos(word, said) > 0
  LIMIT 1
$$;

CREATE OR REPLACE FUNCTION npcforge_check_keyword_phrase() RETURNS trigger
LANGUAGE plpgsql SET search_path = public
AS $$
DECLARE
  talk boolean;
  problem text;
BEGIN
  IF NEW.deleted_at IS NOT NULL THEN
    RETURN NEW;
  END IF;
  SELECT n.shop_enabled AND n.shop_mode = 'talk_mode' INTO talk FROM npcs n WHERE n.id = NEW.npc_id;
  problem := npcforge_keyword_phrase_problem(NEW.phrase, coalesce(talk, false));
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION 'keyword phrase "%" %', NEW.phrase, problem USING ERRCODE = '23514';
  END IF;
  RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS trg_npc_keyword_phrases_tfs ON npc_keyword_phrases;
CREATE TRIGGER trg_npc_keyword_phrases_tfs BEFORE INSERT OR UPDATE OF phrase ON npc_keyword_phrases
  FOR EACH ROW EXECUTE FUNCTION npcforge_check_keyword_phrase();

-- ---------------------------------------------------------------------------------------------
-- The record as the worker reads it, lists in position order, with row ids
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE VIEW npcforge_npc_records AS
SELECT n.id, n.owner_id, n.name, n.script, n.walk_interval, n.floor_change, n.health_now,
       n.health_max, n.look_type::text AS look_type, n.look_type_id, n.look_item_id, n.look_head,
       n.look_body, n.look_legs, n.look_feet, n.look_addons, n.look_mount, n.greet_message,
       n.farewell_message, n.decline_message, n.no_shop_message, n.on_close_shop_message,
       n.focus_enabled, n.travel_enabled, n.voice_enabled, n.shop_enabled,
       n.shop_mode::text AS shop_mode, n.keywords_enabled,
       coalesce((
         SELECT jsonb_agg(jsonb_build_object(
                  'id', s.id, 'list_type', s.list_type, 'name', s.name, 'item_id', s.item_id,
                  'price', s.price, 'subtype', s.subtype, 'charges', s.charges,
                  'real_name', s.real_name, 'container_item_id', s.container_item_id)
                ORDER BY s.list_type, s.position)
           FROM npc_shop_items s
          WHERE s.npc_id = n.id AND s.deleted_at IS NULL), '[]'::jsonb) AS shop_items,
       coalesce((
         SELECT jsonb_agg(jsonb_build_object(
                  'id', k.id,
                  'response', k.response,
                  'phrases', coalesce(ph.phrases, '[]'::jsonb),
                  'phrase_ids', coalesce(ph.ids, '[]'::jsonb))
                ORDER BY k.sort_index, k.position)
           FROM npc_keywords k
           LEFT JOIN LATERAL (
             SELECT jsonb_agg(p.phrase ORDER BY p.position) AS phrases,
                    jsonb_agg(p.id ORDER BY p.position) AS ids
               FROM npc_keyword_phrases p
              WHERE p.keyword_id = k.id AND p.deleted_at IS NULL) ph ON true
          WHERE k.npc_id = n.id AND k.deleted_at IS NULL), '[]'::jsonb) AS keywords
  FROM npcs n
 WHERE n.deleted_at IS NULL;
