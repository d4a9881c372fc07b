"""Group commit of finished jobs: how BatchPublisher forms batches (no database involved)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from npcforge.worker.pipeline import BatchPublisher, Claim, Outcome


def claim() -> Claim:
    return Claim(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), 1, None, datetime.now(UTC))


class Recorder:
    """A publish step that uploads for `hold` seconds, then writes for `commit` seconds, and
    remembers each batch's size and how many batches overlapped."""

    def __init__(self, hold: float, commit: float = 0.0) -> None:
        self.hold = hold
        self.commit = commit
        self.batches: list[int] = []
        self.concurrent = 0
        self.most_concurrent = 0

    async def __call__(
        self, batch: list[tuple[Claim, bytes]], uploaded: Callable[[], None]
    ) -> list[Outcome]:
        self.batches.append(len(batch))
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            await asyncio.sleep(self.hold)
            uploaded()
            await asyncio.sleep(self.commit)
        finally:
            self.concurrent -= 1
        return [Outcome("succeeded") for _ in batch]


async def test_a_lone_job_is_published_at_once() -> None:
    publish = Recorder(hold=0.0)
    publisher = BatchPublisher(publish, slow_after=10.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    outcome = await publisher.submit(claim(), b"<npc/>")
    assert outcome.status == "succeeded"
    assert publish.batches == [1]
    assert loop.time() - began < 1.0  # not held back for slow_after


async def test_jobs_finishing_during_a_publish_form_one_next_batch() -> None:
    publish = Recorder(hold=0.05)
    publisher = BatchPublisher(publish, slow_after=10.0)
    first = asyncio.create_task(publisher.submit(claim(), b"1"))
    await asyncio.sleep(0.01)  # the first batch is in flight now
    rest = [asyncio.create_task(publisher.submit(claim(), b"n")) for _ in range(7)]
    outcomes = await asyncio.gather(first, *rest)
    assert [o.status for o in outcomes] == ["succeeded"] * 8
    assert publish.batches == [1, 7]


async def test_the_next_batch_uploads_while_the_previous_one_commits() -> None:
    publish = Recorder(hold=0.3, commit=0.6)
    publisher = BatchPublisher(publish, slow_after=10.0)
    first = asyncio.create_task(publisher.submit(claim(), b"1"))
    await asyncio.sleep(0.01)
    second = [asyncio.create_task(publisher.submit(claim(), b"2")) for _ in range(3)]
    await asyncio.sleep(0.39)  # the first batch finished uploading and is committing
    assert publish.batches == [1, 3] and publish.concurrent == 2
    third = [asyncio.create_task(publisher.submit(claim(), b"3")) for _ in range(2)]
    await asyncio.sleep(0.05)  # the second batch is still uploading: the third waits
    assert publish.batches == [1, 3]
    await asyncio.gather(first, *second, *third)
    assert publish.batches == [1, 3, 2]


async def test_a_slow_batch_lets_another_start_but_no_more_than_the_cap() -> None:
    publish = Recorder(hold=0.6)
    publisher = BatchPublisher(publish, slow_after=0.02, max_in_flight=2)
    jobs = [asyncio.create_task(publisher.submit(claim(), b"1"))]
    await asyncio.sleep(0.005)
    jobs += [asyncio.create_task(publisher.submit(claim(), b"2")) for _ in range(3)]
    await asyncio.sleep(0.1)  # the first batch turned slow: the waiting three went out
    assert publish.batches == [1, 3]
    jobs += [asyncio.create_task(publisher.submit(claim(), b"3")) for _ in range(2)]
    await asyncio.sleep(0.1)  # both slots are busy however slow they are
    assert publish.batches == [1, 3]
    await asyncio.gather(*jobs)
    assert publish.batches == [1, 3, 2]
    assert publish.most_concurrent == 2


async def test_a_failed_publish_reaches_every_job_of_its_batch_only() -> None:
    calls = 0

    async def publish(
        batch: list[tuple[Claim, bytes]], uploaded: Callable[[], None]
    ) -> list[Outcome]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        if calls == 2:
            raise ConnectionResetError("database connection lost")
        return [Outcome("succeeded") for _ in batch]

    publisher = BatchPublisher(publish, slow_after=10.0)
    first = asyncio.create_task(publisher.submit(claim(), b"1"))
    await asyncio.sleep(0.005)
    second = [asyncio.create_task(publisher.submit(claim(), b"2")) for _ in range(2)]
    results = await asyncio.gather(first, *second, return_exceptions=True)
    assert isinstance(results[0], Outcome)
    assert all(isinstance(r, ConnectionResetError) for r in results[1:])
    third = await publisher.submit(claim(), b"3")  # the publisher still works afterwards
    assert third.status == "succeeded"
