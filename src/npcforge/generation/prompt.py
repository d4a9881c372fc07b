"""Prompts for the OpenRouter provider: teach the Jiddo format, hand over the whole record.

Pure: builds chat messages from an NpcRecord; nothing here does I/O or logs. The record goes
to the model as one JSON document between `<npc_record>` tags so that nothing the record fixes
(item ids, subtypes, phrases, messages, flags) is paraphrased on the way.
"""

from __future__ import annotations

import json
from typing import Any

from npcforge.generation.base import RepairRequest
from npcforge.generation.tfs import keyword_sets, shop_entry
from npcforge.npc import NpcRecord, ShopItem

RECORD_OPEN = "<npc_record>"
RECORD_CLOSE = "</npc_record>"

# Keep a repair prompt bounded even when the previous answer was absurdly large.
MAX_REPAIR_ECHO_CHARS = 65_536

_MIN_TOKENS = 1024
_MAX_TOKENS = 16_384

_SYSTEM_PROMPT = """\
You write NPC definition files for Open Tibia servers that run the Jiddo NpcSystem \
(TFS 0.x and 1.x up to 1.5: one XML file per NPC, behaviour in a shared Lua script). \
You receive one NPC record as JSON and produce the XML file for it. The record is the \
authority: copy every value it fixes exactly, invent nothing it does not allow.

DOCUMENT
- Exactly one document: the declaration <?xml version="1.0" encoding="UTF-8"?> and then one \
<npc> root element. No DOCTYPE, no entity declarations, no comments, no CDATA, no other \
processing instructions, no Lua, no markdown.
- Attribute values in double quotes. Inside every attribute value escape & as &amp;, < as &lt;, \
> as &gt;, " as &quot; and ' as &apos;, and a line break as &#10;. Write all other text as it \
is, including non-ASCII letters.
- Indent children by two spaces; self-close elements without children.

ELEMENTS, IN THIS ORDER
1. <npc name="..." script="..." walkinterval="..." floorchange="..."> from the record's name, \
script, walk_interval and floor_change (floorchange is 1 when true, 0 when false).
2. <health now="..." max="..."/> from health.now and health.max.
3. <look .../> by look.type:
   - "player": type="type_id" head body legs feet addons, all from the record; add \
mount="..." only when look.mount is set.
   - "monster": type="type_id", plus mount="..." only when look.mount is set.
   - "item": typeex="item_id" and nothing else.
4. Optionally <voices> (see ADDITIONS).
5. <parameters> holding <parameter key="..." value="..."/> elements.

PARAMETERS THE RECORD FIXES
- Messages: one parameter per entry of "messages", using the entry's name as the key \
(message_greet, message_farewell, message_decline, message_noshop, message_oncloseshop) and its \
text, unchanged, as the value. |PLAYERNAME| is a placeholder the server fills in: keep it \
verbatim, never replace or translate it.
- Shop, only when shop.enabled is true (otherwise no shop parameters at all):
  - module_shop = 1
  - shop_buyable = the items in shop.buy (the ones a player BUYS from the NPC)
  - shop_sellable = the items in shop.sell (the ones a player SELLS to the NPC)
  - every item carries "entry", the exact text the server needs for it: join the entries with \
; in record order, with no spaces around the separators. A list with no items is an empty \
value (value=""). Never drop, merge, reorder, reprice or rewrite an entry.
  - Why the entries look as they do: TFS reads a shop_buyable entry as \
name,itemid,price[,subType][,realName] but a shop_sellable entry as \
name,itemid,price[,realName][,subType] (the order differs), and skips empty fields. subType is \
the fluid type or the charges; realName is the name shown in the trade window. The first field \
is the word a player says in "buy <name>", so it is written like a keyword (below).
- Keywords, only when keywords.enabled is true (otherwise no keyword parameters at all):
  - module_keywords = 1
  - The server splits the keywords value on ; into sets and each set on , into words that \
must ALL appear in what the player says. Synonyms therefore must be separate sets: every \
phrase becomes its own set.
  - The server lower-cases what the player says and finds each keyword anywhere in it as a \
Lua pattern, taking the first set that matches. So a keyword is written in lower case, with \
each of the characters ^$()%.[]*+-? escaped by a % before it, and a phrase that contains \
another one comes first. keywords.sets lists every set in the required order, already written \
that way: the value is their "keyword" texts joined by ; (never by , or spaces).
  - keyword_reply1, keyword_reply2, ... : one per set, numbered from 1 in the same order; the \
value is the response of keywords.entries[set.entry].
  Example: entries [{"response": "I sell herbs.", "phrases": ["Job", "work"]}, \
{"response": "Ask the guard.", "phrases": ["anti-venom"]}] with sets [{"keyword": "job", \
"entry": 0}, {"keyword": "work", "entry": 0}, {"keyword": "anti%-venom", "entry": 1}] become \
keywords="job;work;anti%-venom", keyword_reply1="I sell herbs.", keyword_reply2="I sell herbs.", \
keyword_reply3="Ask the guard."

ADDITIONS (the only things you may add)
- When flags.voice_enabled is true: a <voices> element before <parameters> with a few \
<voice text="..." interval2="..." margin="..." yell="no"/> lines that fit the character \
(interval2 and margin are whole numbers).
- Extra Jiddo messages the record leaves open: message_placedinqueue, message_alreadyfocused, \
message_walkaway, message_idletimeout; and, only when the shop is enabled, trade messages such \
as message_sendtrade.
Nothing else: no other elements, attributes or parameters, and never a change to anything the \
record fixes. Put the parameters in this order: the five messages, the keyword parameters, the \
shop parameters, then any additions.
"""

_JSON_ANSWER = """
ANSWER
Reply with a JSON object that has exactly one key, "xml", whose value is the complete XML \
document as a string.
"""

_XML_ANSWER = """
ANSWER
Reply with the XML document only: start at <?xml and end at </npc>, with no code fences and no \
words before or after it.
"""


def record_for_prompt(npc: NpcRecord) -> dict[str, Any]:
    """The record as the model sees it: every field the XML depends on, keyed for the format."""
    look = npc.look
    return {
        "name": npc.name,
        "script": npc.script,
        "walk_interval": npc.walk_interval,
        "floor_change": npc.floor_change,
        "health": {"now": npc.health_now, "max": npc.health_max},
        "look": {
            "type": look.type,
            "type_id": look.type_id,
            "item_id": look.item_id,
            "head": look.head,
            "body": look.body,
            "legs": look.legs,
            "feet": look.feet,
            "addons": look.addons,
            "mount": look.mount,
        },
        "messages": {
            "message_greet": npc.messages.greet,
            "message_farewell": npc.messages.farewell,
            "message_decline": npc.messages.decline,
            "message_noshop": npc.messages.no_shop,
            "message_oncloseshop": npc.messages.on_close_shop,
        },
        "flags": {
            "focus_enabled": npc.focus_enabled,
            "travel_enabled": npc.travel_enabled,
            "voice_enabled": npc.voice_enabled,
        },
        "shop": {
            "enabled": npc.shop_enabled,
            "mode": npc.shop_mode,
            "buy": [_shop_item(item) for item in npc.buy_items],
            "sell": [_shop_item(item) for item in npc.sell_items],
        },
        "keywords": {
            "enabled": npc.keywords_enabled,
            "entries": [
                {"response": keyword.response, "phrases": list(keyword.phrases)}
                for keyword in npc.keywords
            ],
            "sets": _keyword_sets(npc),
        },
    }


def _keyword_sets(npc: NpcRecord) -> list[dict[str, Any]]:
    """The sets in the order TFS needs, each with the index of the entry it answers for."""
    return [{"keyword": s.keyword, "entry": s.entry} for s in keyword_sets(npc)]


def _shop_item(item: ShopItem) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": item.name,
        "item_id": item.item_id,
        "price": item.price,
        "subtype": item.subtype,
    }
    if item.charges:
        entry["charges"] = item.charges
    if item.real_name:
        entry["real_name"] = item.real_name
    if item.container_item_id is not None:
        entry["container_item_id"] = item.container_item_id
    entry["entry"] = shop_entry(item)
    return entry


def _counts(npc: NpcRecord) -> str:
    lines = []
    if npc.shop_enabled:
        lines.append(
            f"- shop_buyable has {len(npc.buy_items)} item(s), "
            f"shop_sellable has {len(npc.sell_items)} item(s)."
        )
    if npc.keywords_enabled:
        sets = sum(len(keyword.phrases) for keyword in npc.keywords)
        lines.append(f"- keywords has {sets} set(s), so keyword_reply1..keyword_reply{sets}.")
    return "\n".join(lines)


def system_prompt(*, json_answer: bool = True) -> str:
    """The system turn: the rules, and the answer's form (`{"xml": ...}`, else bare XML)."""
    return _SYSTEM_PROMPT + (_JSON_ANSWER if json_answer else _XML_ANSWER)


def user_prompt(record_json: str, counts: str = "") -> str:
    """The user turn for a record already written as the prompt's JSON (`record_for_prompt`),
    with the counts to check before answering, if any."""
    check = f"\n\nCheck before answering:\n{counts}" if counts else ""
    return (
        "Write the Jiddo NPC XML file for this record.\n\n"
        f"{RECORD_OPEN}\n{record_json}\n{RECORD_CLOSE}{check}"
    )


def _user_prompt(npc: NpcRecord) -> str:
    return user_prompt(json.dumps(record_for_prompt(npc), ensure_ascii=False), _counts(npc))


def _repair_prompt(repair: RepairRequest) -> str:
    findings = "\n".join(f"- {finding}" for finding in repair.findings) or "- (no details)"
    return (
        "A validator checked your document against the record and found these problems:\n"
        f"{findings}\n\n"
        "Write the whole document again with every problem fixed and everything else kept as "
        "the record requires."
    )


def build_messages(
    npc: NpcRecord, repair: RepairRequest | None = None, *, json_answer: bool = True
) -> list[dict[str, str]]:
    """Chat messages for one generation. `json_answer` asks for `{"xml": ...}`, else bare XML.

    A repair replays the previous answer as the assistant's turn and adds the findings.
    """
    messages = [
        {"role": "system", "content": system_prompt(json_answer=json_answer)},
        {"role": "user", "content": _user_prompt(npc)},
    ]
    if repair is not None:
        previous = repair.previous_xml
        if len(previous) > MAX_REPAIR_ECHO_CHARS:
            previous = previous[:MAX_REPAIR_ECHO_CHARS] + "\n[… truncated]"
        messages.append({"role": "assistant", "content": previous})
        messages.append({"role": "user", "content": _repair_prompt(repair)})
    return messages


def max_tokens_for(npc: NpcRecord) -> int:
    """A completion budget sized to the record: generous, since truncation costs a whole retry.

    Counts the characters the XML must carry (each keyword reply repeats once per phrase), allows
    for JSON string escaping and a little invented text, at ~3 characters per token.
    """
    chars = 900  # declaration, root, health, look, module switches
    chars += sum(len(text) + 50 for text in _message_texts(npc))
    if npc.shop_enabled:
        chars += sum(len(item.name) + 24 for item in npc.shop_items) + 120
    if npc.keywords_enabled:
        for keyword in npc.keywords:
            for phrase in keyword.phrases:
                chars += len(phrase) + len(keyword.response) + 60
    if npc.voice_enabled:
        chars += 600
    estimate = int(chars / 3 * 1.5) + 256
    return max(_MIN_TOKENS, min(_MAX_TOKENS, estimate))


def _message_texts(npc: NpcRecord) -> tuple[str, ...]:
    m = npc.messages
    return (m.greet, m.farewell, m.decline, m.no_shop, m.on_close_shop)
