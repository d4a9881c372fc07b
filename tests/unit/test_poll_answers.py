"""Kept poll answers: served only for the very state they were made from, and bounded."""

from __future__ import annotations

import uuid

from npcforge.api.polling import PollAnswers

STATE = ("succeeded", 12, None, "2026-11-25T10:00:00Z", 1)


def test_an_answer_is_served_only_for_the_same_row_values_and_bytes():
    answers = PollAnswers()
    npc = uuid.uuid4()
    data = b"<npc name='A'/>"
    answers.put(npc, STATE, data, b'{"xml":"A"}')
    assert answers.get(npc, STATE, data) == b'{"xml":"A"}'
    assert answers.get(npc, tuple(STATE), bytes(bytearray(data))) == b'{"xml":"A"}'  # equal, new
    assert answers.get(npc, STATE, b"<npc name='B'/>") is None
    assert answers.get(npc, STATE, None) is None
    assert answers.get(npc, (*STATE[:4], 2), data) is None
    assert answers.get(uuid.uuid4(), STATE, data) is None
    answers.put(npc, ("processing", None, None, "t", 1), None, b'{"xml":null}')
    assert answers.get(npc, STATE, data) is None  # replaced, not added
    assert len(answers) == 1
    assert answers.get(npc, ("processing", None, None, "t", 1), None) == b'{"xml":null}'


def test_entries_and_bytes_are_bounded_oldest_first():
    answers = PollAnswers(max_entries=3, max_bytes=100)
    npcs = [uuid.uuid4() for _ in range(5)]
    for npc in npcs:
        answers.put(npc, STATE, None, b"x" * 10)
    assert len(answers) == 3
    assert [answers.get(npc, STATE, None) is not None for npc in npcs] == [False, False] + [
        True
    ] * 3
    # 80 bytes (answer and object): the oldest goes for the entry cap, the rest still fit.
    answers.put(npcs[0], STATE, b"d" * 40, b"y" * 40)
    assert answers.get(npcs[0], STATE, b"d" * 40) == b"y" * 40
    assert [answers.get(npc, STATE, None) is not None for npc in npcs[2:]] == [False, True, True]
    assert answers.size_bytes == 100
    answers.put(npcs[2], STATE, None, b"w" * 15)  # over the byte budget: oldest out until it fits
    assert [answers.get(npc, STATE, None) is not None for npc in npcs[3:]] == [False, False]
    assert answers.size_bytes == 95
    answers.put(npcs[1], STATE, None, b"z" * 101)  # larger than the whole budget: not kept
    assert answers.get(npcs[1], STATE, None) is None
    assert answers.size_bytes == 95
