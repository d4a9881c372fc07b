-- The NPC record as the worker reads it: the row with its active shop items and keywords
-- (keywords in sort order, phrases in insertion order). One definition for the single load and
-- for the load that rides along with a claim.
CREATE OR REPLACE VIEW npcforge_npc_records AS
SELECT n.id, n.owner_id, n.name, n.script, n.walk_interval, n.floor_change, n.health_now,
       n.health_max, n.look_type::text AS look_type, n.look_type_id, n.look_item_id, n.look_head,
       n.look_body, n.look_legs, n.look_feet, n.look_addons, n.look_mount, n.greet_message,
       n.farewell_message, n.decline_message, n.no_shop_message, n.on_close_shop_message,
       n.focus_enabled, n.travel_enabled, n.voice_enabled, n.shop_enabled,
       n.shop_mode::text AS shop_mode, n.keywords_enabled,
       coalesce((
         SELECT jsonb_agg(jsonb_build_object(
                  'list_type', s.list_type, 'name', s.name, 'item_id', s.item_id,
                  'price', s.price, 'subtype', s.subtype, 'charges', s.charges,
                  'real_name', s.real_name, 'container_item_id', s.container_item_id)
                ORDER BY s.list_type, s.created_at, s.id)
           FROM npc_shop_items s
          WHERE s.npc_id = n.id AND s.deleted_at IS NULL), '[]'::jsonb) AS shop_items,
       coalesce((
         SELECT jsonb_agg(jsonb_build_object(
                  'response', k.response,
                  'phrases', coalesce((
                    SELECT jsonb_agg(p.phrase ORDER BY p.created_at, p.id)
                      FROM npc_keyword_phrases p
                     WHERE p.keyword_id = k.id AND p.deleted_at IS NULL), '[]'::jsonb))
                ORDER BY k.sort_index, k.created_at, k.id)
           FROM npc_keywords k
          WHERE k.npc_id = n.id AND k.deleted_at IS NULL), '[]'::jsonb) AS keywords
  FROM npcs n
 WHERE n.deleted_at IS NULL;
