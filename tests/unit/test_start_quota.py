"""The per-user sliding window on job starts."""

from __future__ import annotations

import uuid

import pytest

from npcforge.api.auth import Principal
from npcforge.api.errors import ApiError
from npcforge.api.start_quota import StartQuota


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def user() -> Principal:
    return Principal(user_id=uuid.uuid4())


def test_the_window_slides():
    clock = Clock()
    limiter = StartQuota(3, clock=clock)
    alice = user()
    for step in range(3):
        limiter.acquire(alice)
        clock.now += 10 * (step + 1)  # starts at 100, 110, 130
    clock.now = 150.0
    with pytest.raises(ApiError) as refused:
        limiter.acquire(alice)
    assert refused.value.status == 429
    assert refused.value.code == "RATE_LIMITED"
    assert refused.value.headers["Retry-After"] == "10"  # the start at 100 leaves at 160
    clock.now = 160.0
    limiter.acquire(alice)  # exactly one slot came free
    with pytest.raises(ApiError):
        limiter.acquire(alice)


def test_retry_after_is_at_least_one_second():
    clock = Clock()
    limiter = StartQuota(1, clock=clock)
    alice = user()
    limiter.acquire(alice)
    clock.now += 59.99
    with pytest.raises(ApiError) as refused:
        limiter.acquire(alice)
    assert refused.value.headers["Retry-After"] == "1"


def test_released_slots_can_be_used_again():
    limiter = StartQuota(1, clock=Clock())
    alice = user()
    handle = limiter.acquire(alice)
    limiter.release(alice, handle)
    limiter.acquire(alice)
    with pytest.raises(ApiError):
        limiter.acquire(alice)


def test_users_are_counted_separately_and_the_service_role_is_exempt():
    limiter = StartQuota(1, clock=Clock())
    alice, bob = user(), user()
    limiter.acquire(alice)
    limiter.acquire(bob)
    service = Principal(user_id=None, service_role=True)
    for _ in range(50):
        assert limiter.acquire(service) is None


def test_idle_users_are_forgotten(monkeypatch):
    monkeypatch.setattr("npcforge.api.start_quota._SWEEP_AT", 10)
    clock = Clock()
    limiter = StartQuota(5, clock=clock)
    for _ in range(10):
        limiter.acquire(user())
    clock.now += 61
    limiter.acquire(user())
    assert len(limiter._starts) == 1
