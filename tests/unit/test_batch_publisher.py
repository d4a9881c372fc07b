"""Group commit of finished jobs: how BatchPublisher forms batches (no database involved)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from npcforge.worker.claims import Claim, Outcome
from npcforge.worker.publisher import BatchPublisher


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


class GatedRecorder:
    """A publish step whose batches finish uploading, and then committing, only when the test
    says so: what overlaps with what does not depend on how busy the machine is."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.uploads: list[asyncio.Event] = []
        self.commits: list[asyncio.Event] = []
        self.concurrent = 0
        self.most_concurrent = 0
        self.released = False

    async def __call__(
        self, batch: list[tuple[Claim, bytes]], uploaded: Callable[[], None]
    ) -> list[Outcome]:
        upload, commit = asyncio.Event(), asyncio.Event()
        if self.released:
            upload.set()
            commit.set()
        self.batches.append(len(batch))
        self.uploads.append(upload)
        self.commits.append(commit)
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            await upload.wait()
            uploaded()
            await commit.wait()
        finally:
            self.concurrent -= 1
        return [Outcome("succeeded") for _ in batch]

    def release_all(self) -> None:
        """Let every batch, and every later one, run straight through."""
        self.released = True
        for event in (*self.uploads, *self.commits):
            event.set()


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let the loop run until `condition` holds (generous: a busy machine is slow, not wrong)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_lone_job_is_published_at_once() -> None:
    publish = Recorder(hold=0.0)
    publisher = BatchPublisher(publish, slow_after=10.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    outcome = await publisher.submit(claim(), b"<npc/>")
    assert outcome.status == "succeeded"
    assert publish.batches == [1]
    assert loop.time() - began < 5.0  # not held back for slow_after (10 s)


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
    publish = GatedRecorder()
    publisher = BatchPublisher(publish, slow_after=3600.0)
    first = asyncio.create_task(publisher.submit(claim(), b"1"))
    await until(lambda: publish.batches == [1])
    second = [asyncio.create_task(publisher.submit(claim(), b"2")) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert publish.batches == [1]  # the first batch is uploading: the three wait for it
    publish.uploads[0].set()  # ... and now commits
    await until(lambda: publish.batches == [1, 3])
    assert publish.concurrent == 2
    third = [asyncio.create_task(publisher.submit(claim(), b"3")) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert publish.batches == [1, 3]  # the second batch is uploading: the third waits
    publish.release_all()
    await asyncio.gather(first, *second, *third)
    assert publish.batches == [1, 3, 2]


async def test_a_slow_batch_lets_another_start_but_no_more_than_the_cap() -> None:
    publish = GatedRecorder()  # no upload finishes until released: every batch turns slow
    publisher = BatchPublisher(publish, slow_after=0.02, max_in_flight=2)
    jobs = [asyncio.create_task(publisher.submit(claim(), b"1"))]
    await until(lambda: publish.batches == [1])
    jobs += [asyncio.create_task(publisher.submit(claim(), b"2")) for _ in range(3)]
    # The first batch is stuck uploading: after slow_after a second one starts with whatever
    # waited by then (all three on an idle machine, fewer on a busy one).
    await until(lambda: len(publish.batches) == 2)
    jobs += [asyncio.create_task(publisher.submit(claim(), b"3")) for _ in range(2)]
    await asyncio.sleep(0.2)  # many times slow_after: still no third batch while two upload
    assert len(publish.batches) == 2 and publish.concurrent == 2
    assert sum(1 for job in jobs if not job.done()) == 6
    publish.release_all()
    outcomes = await asyncio.gather(*jobs)
    assert [o.status for o in outcomes] == ["succeeded"] * 6
    assert sum(publish.batches) == 6 and publish.batches[0] == 1
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
