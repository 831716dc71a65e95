import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helix_pipelines.core.rate_limit import (
    RateLimiter,
    RateLimits,
    RateLimitTimeout,
    Window,
)
from helix_pipelines.core.shared_state import MemoryStateStore

T0 = 1_700_000_000.25  # a realistic wall-clock value, not on a slot boundary


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_limiter(rpm=10, tpm=1000, clock=None, store=None, **kwargs):
    clock = clock or FakeClock()
    store = store or MemoryStateStore()
    return RateLimiter(RateLimits(rpm, tpm), store, clock=clock, **kwargs), clock, store


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        RateLimits(0, 10)


def test_grants_up_to_rpm_then_waits_for_the_oldest_slot_to_age_out():
    limiter, clock, _ = make_limiter(rpm=3)
    assert [limiter.try_acquire(1) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.try_acquire(1)
    # Granted in slot floor(T0); it stops counting 61 slots later.
    assert wait == pytest.approx((int(T0) + 61) - T0)
    clock.now += wait
    assert limiter.try_acquire(1) == 0.0


def test_a_refused_request_consumes_nothing():
    limiter, _, store = make_limiter(rpm=1)
    limiter.try_acquire(5)
    before = store.read("embeddings")
    assert limiter.try_acquire(5) > 0
    assert store.read("embeddings") == before


def test_tokens_limit_applies_independently_of_requests():
    limiter, clock, _ = make_limiter(rpm=100, tpm=100)
    assert limiter.try_acquire(60) == 0.0
    assert limiter.try_acquire(30) == 0.0
    assert limiter.try_acquire(20) > 0
    assert limiter.try_acquire(10) == 0.0  # smaller requests still fit


def test_no_second_burst_within_the_first_minute():
    """A full bucket plus refill would grant ~2R in the first minute: the window does not."""
    limiter, clock, _ = make_limiter(rpm=60)
    for _ in range(60):
        assert limiter.try_acquire(0) == 0.0
    for _ in range(59):
        clock.now += 1.0
        assert limiter.try_acquire(0) > 0


def test_request_larger_than_tpm_is_granted_on_an_empty_window_and_then_ages_out():
    limiter, clock, _ = make_limiter(rpm=100, tpm=100)
    assert limiter.try_acquire(10) == 0.0
    wait = limiter.try_acquire(500)
    assert wait > 0  # waits for the window to empty ...
    clock.now += wait
    assert limiter.try_acquire(500) == 0.0  # ... then is granted instead of deadlocking
    wait = limiter.try_acquire(1)
    assert 60 < wait <= 61  # and everything else waits until it has aged out
    clock.now += wait
    assert limiter.try_acquire(1) == 0.0


def test_negative_tokens_are_rejected():
    limiter, _, _ = make_limiter()
    with pytest.raises(ValueError):
        limiter.try_acquire(-1)


def test_limiters_sharing_a_store_share_the_limit():
    clock = FakeClock()
    store = MemoryStateStore()
    first, _, _ = make_limiter(rpm=4, clock=clock, store=store)
    second, _, _ = make_limiter(rpm=4, clock=clock, store=store)
    granted = [lim.try_acquire(1) == 0.0 for lim in (first, second) * 3]
    assert granted.count(True) == 4


def test_pause_for_blocks_every_process_until_it_ends():
    clock = FakeClock()
    store = MemoryStateStore()
    first, _, _ = make_limiter(clock=clock, store=store)
    second, _, _ = make_limiter(clock=clock, store=store)
    first.pause_for(7.5)
    assert second.try_acquire(1) == pytest.approx(7.5)
    first.pause_for(2.0)  # a shorter pause does not shorten the existing one
    clock.now += 7.5
    assert second.try_acquire(1) == 0.0


def test_observe_lowers_the_window_when_the_server_has_less_left():
    limiter, clock, _ = make_limiter(rpm=10, tpm=1000)
    limiter.observe(2, None, 30.0, None)
    assert [limiter.try_acquire(1) for _ in range(3)][:2] == [0.0, 0.0]
    wait = limiter.try_acquire(1)
    assert 29 <= wait <= 31  # the phantom usage ages out when the server resets


def test_observe_with_more_left_on_the_server_changes_nothing():
    limiter, _, store = make_limiter(rpm=10, tpm=1000)
    limiter.try_acquire(100)
    before = store.read("embeddings")
    limiter.observe(50, 5000, 1.0, 1.0)
    assert store.read("embeddings") == before


def test_observe_zero_remaining_pauses_until_reset():
    limiter, _, _ = make_limiter(rpm=10, tpm=1000)
    limiter.observe(5, 0, 1.0, 12.0)
    assert limiter.try_acquire(1) == pytest.approx(12.0, abs=1.0)


def test_acquire_sleeps_through_the_injected_sleep_and_counts_waits():
    limiter, clock, _ = make_limiter(rpm=2)
    assert limiter.acquire(1, sleep=clock.sleep) == 0.0
    assert limiter.acquire(1, sleep=clock.sleep) == 0.0
    waited = limiter.acquire(1, sleep=clock.sleep)
    assert waited == pytest.approx(sum(clock.sleeps)) and waited > 60
    assert (limiter.stats.grants, limiter.stats.waits) == (3, 1)
    assert limiter.stats.total_wait_s == pytest.approx(waited)


def test_acquire_raises_at_once_when_the_grant_would_come_past_the_deadline():
    limiter, clock, _ = make_limiter(rpm=1)
    limiter.acquire(1, sleep=clock.sleep)
    with pytest.raises(RateLimitTimeout) as caught:
        limiter.acquire(1, sleep=clock.sleep, deadline=clock.now + 10)
    assert clock.sleeps == [] and caught.value.retry_after_s > 10
    assert caught.value.transient is True
    assert limiter.stats.timeouts == 1


def test_reconfigured_slot_width_keeps_the_usage():
    clock = FakeClock()
    store = MemoryStateStore()
    old, _, _ = make_limiter(rpm=2, clock=clock, store=store)
    old.try_acquire(1)
    old.try_acquire(1)
    new, _, _ = make_limiter(rpm=2, clock=clock, store=store, window=Window(slot_s=0.5))
    assert new.try_acquire(1) > 0


# --- the sliding-window guarantee -------------------------------------------------------------


def simulate(limits, window, clients, minutes, seed):
    """Clients always ready with one more request; returns [(time, tokens)] of the grants."""
    rng = random.Random(seed)
    clock = FakeClock(T0 + rng.random())
    store = MemoryStateStore()
    limiters = [RateLimiter(limits, store, clock=clock, window=window) for _ in range(clients)]
    max_tokens = max(1, limits.tpm // 50)
    wanted = [rng.randint(0, max_tokens) for _ in limiters]
    ready_at = [clock.now] * clients
    end = clock.now + minutes * 60
    grants = []
    while True:
        i = min(range(clients), key=ready_at.__getitem__)
        if ready_at[i] >= end:
            return grants, end - minutes * 60
        clock.now = max(clock.now, ready_at[i])
        wait = limiters[i].try_acquire(wanted[i])
        if wait == 0.0:
            grants.append((clock.now, wanted[i]))
            wanted[i] = rng.randint(0, max_tokens)
        else:
            ready_at[i] = clock.now + wait


def busiest_window(grants, length=60.0):
    """Most requests and tokens in any closed window [t, t + length]."""
    most_requests = most_tokens = 0
    start, tokens = 0, 0
    for end, (t, size) in enumerate(grants):
        tokens += size
        while grants[start][0] < t - length:
            tokens -= grants[start][1]
            start += 1
        most_requests = max(most_requests, end - start + 1)
        most_tokens = max(most_tokens, tokens)
    return most_requests, most_tokens


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rpm=st.integers(1, 240),
    tpm=st.integers(50, 200_000),
    clients=st.integers(1, 4),
    slot_s=st.sampled_from([0.5, 1.0, 2.0]),
    seed=st.integers(0, 2**32),
)
def test_no_window_exceeds_the_limits_and_throughput_stays_near_the_ceiling(
    rpm, tpm, clients, slot_s, seed
):
    limits = RateLimits(rpm, tpm)
    minutes = 15
    grants, _ = simulate(limits, Window(slot_s=slot_s), clients, minutes, seed)
    most_requests, most_tokens = busiest_window(grants)
    assert most_requests <= rpm
    assert most_tokens <= tpm
    request_share = len(grants) / (rpm * minutes)
    token_share = sum(size for _, size in grants) / (tpm * minutes)
    assert max(request_share, token_share) >= 0.9
