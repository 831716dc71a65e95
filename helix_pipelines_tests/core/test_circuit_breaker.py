import pytest

from helix_pipelines.core.circuit_breaker import (
    BreakerConfig,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    admit,
    effective_state,
    initial_state,
    on_failure,
    on_success,
)
from helix_pipelines.core.errors import is_transient
from helix_pipelines.core.shared_state import MemoryStateStore

CONFIG = BreakerConfig(failure_threshold=3, recovery_s=30.0, probe_timeout_s=60.0)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_breaker(clock=None, store=None):
    clock = clock or FakeClock()
    store = store or MemoryStateStore()
    breaker = CircuitBreaker(
        store, failure_threshold=3, recovery_s=30.0, probe_timeout_s=60.0, clock=clock
    )
    return breaker, clock, store


def fail(breaker, times):
    for _ in range(times):
        breaker.record_failure()


# --- pure transitions --------------------------------------------------------------------------


def test_pure_closed_counts_failures_and_opens_at_the_threshold():
    state = initial_state()
    state = on_failure(state, 10.0, CONFIG)
    state = on_failure(state, 11.0, CONFIG)
    assert state["state"] == "closed" and state["consecutive_failures"] == 2
    state = on_failure(state, 12.0, CONFIG)
    assert state == initial_state() | {
        "state": "open",
        "consecutive_failures": 3,
        "opened_at": 12.0,
        "probe_started_at": None,
    }


def test_pure_absent_state_reads_as_closed():
    assert effective_state(None, 0.0, CONFIG) is CircuitState.CLOSED
    assert admit(None, 0.0, CONFIG)[1] == 0.0


def test_pure_success_resets_failures():
    state = on_failure(initial_state(), 1.0, CONFIG)
    assert on_success(state, 2.0) == initial_state()


def test_pure_admit_claims_one_probe_after_recovery():
    opened = on_failure({"state": "closed", "consecutive_failures": 2}, 0.0, CONFIG)
    assert admit(opened, 29.9, CONFIG)[1] == pytest.approx(0.1)
    probing, wait = admit(opened, 30.0, CONFIG)
    assert wait == 0.0 and probing["state"] == "half_open"
    assert probing["probe_started_at"] == 30.0
    assert admit(probing, 31.0, CONFIG)[1] == pytest.approx(59.0)


def test_pure_late_failure_while_open_does_not_delay_recovery():
    opened = on_failure({"consecutive_failures": 2}, 0.0, CONFIG)
    later = on_failure(opened, 20.0, CONFIG)
    assert later["opened_at"] == 0.0 and later["consecutive_failures"] == 4


# --- the breaker through a store -----------------------------------------------------------------


def test_closed_lets_calls_through_until_the_threshold():
    breaker, _, _ = make_breaker()
    fail(breaker, 2)
    breaker.before_call()
    assert breaker.state() is CircuitState.CLOSED
    fail(breaker, 1)
    assert breaker.state() is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as caught:
        breaker.before_call()
    assert caught.value.retry_in_s == pytest.approx(30.0)


def test_a_success_between_failures_resets_the_count():
    breaker, _, _ = make_breaker()
    fail(breaker, 2)
    breaker.record_success()
    fail(breaker, 2)
    assert breaker.state() is CircuitState.CLOSED


def test_open_reads_as_half_open_after_recovery_and_admits_exactly_one_probe():
    breaker, clock, store = make_breaker()
    other_process = CircuitBreaker(store, failure_threshold=3, recovery_s=30.0, clock=clock)
    fail(breaker, 3)
    clock.now += 30.0
    assert breaker.state() is CircuitState.HALF_OPEN
    breaker.before_call()  # the probe
    with pytest.raises(CircuitOpenError):
        other_process.before_call()
    with pytest.raises(CircuitOpenError):
        breaker.before_call()


def test_successful_probe_closes():
    breaker, clock, _ = make_breaker()
    fail(breaker, 3)
    clock.now += 30.0
    breaker.before_call()
    breaker.record_success()
    assert breaker.snapshot() == {
        "state": "closed",
        "consecutive_failures": 0,
        "opened_at": None,
        "retry_in_s": 0.0,
        "blocked": None,
    }
    breaker.before_call()


def test_failed_probe_reopens_and_restarts_the_recovery_timer():
    breaker, clock, _ = make_breaker()
    fail(breaker, 3)
    clock.now += 30.0
    breaker.before_call()
    clock.now += 5.0
    breaker.record_failure()
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["opened_at"] == clock.now
    assert snapshot["retry_in_s"] == pytest.approx(30.0)
    clock.now += 29.0
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    clock.now += 1.0
    breaker.before_call()


def test_a_probe_that_never_reports_back_is_replaced_after_the_probe_timeout():
    breaker, clock, _ = make_breaker()
    fail(breaker, 3)
    clock.now += 30.0
    breaker.before_call()  # this probe's process dies
    clock.now += 59.0
    with pytest.raises(CircuitOpenError) as caught:
        breaker.before_call()
    assert caught.value.retry_in_s == pytest.approx(1.0)
    clock.now += 1.0
    breaker.before_call()  # a new probe


def test_snapshot_while_open():
    breaker, clock, _ = make_breaker()
    fail(breaker, 3)
    opened_at = clock.now
    clock.now += 10.0
    assert breaker.snapshot() == {
        "state": "open",
        "consecutive_failures": 3,
        "opened_at": opened_at,
        "retry_in_s": pytest.approx(20.0),
        "blocked": None,
    }


def test_state_is_stored_under_its_name_as_json():
    breaker, _, store = make_breaker()
    fail(breaker, 1)
    assert store.read("embeddings_api")["consecutive_failures"] == 1


def test_circuit_open_error_is_transient_and_carries_a_retry_after():
    error = CircuitOpenError("embeddings_api", 12.0)
    assert is_transient(error)
    assert error.retry_after_s == 12.0


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError):
        BreakerConfig(failure_threshold=0)


# --- blocks: refusals no wait cures ------------------------------------------------------------


def blockable(clock, store, fingerprint="setup-a"):
    return CircuitBreaker(
        store, failure_threshold=3, recovery_s=30.0, probe_timeout_s=60.0, clock=clock,
        block_retry_s=3600.0, parked_retry_s=900.0, fingerprint=fingerprint,
    )  # fmt: skip


def test_a_block_holds_calls_back_for_the_long_backoff_with_its_reason():
    clock, store = FakeClock(), MemoryStateStore()
    breaker = blockable(clock, store)
    breaker.block("quota", "out of quota")
    for elapsed in (0.0, 30.0, 600.0, 3599.0):  # recovery_s alone would have let a probe by
        clock.now += elapsed - (clock.now - 1_700_000_000.0)
        snapshot = breaker.snapshot()
        assert snapshot["state"] == "open"
        assert snapshot["blocked"] == {"reason": "quota", "message": "out of quota"}
        with pytest.raises(CircuitOpenError):
            breaker.before_call()
    clock.now += 1.0
    breaker.before_call()  # the long back-off is over: one probe
    assert breaker.snapshot()["state"] == "half_open"
    assert breaker.snapshot()["blocked"] is None


def test_a_changed_setup_probes_at_once_and_a_success_lifts_the_block():
    clock, store = FakeClock(), MemoryStateStore()
    blockable(clock, store, "setup-a").block("auth", "key refused")
    fixed = blockable(clock, store, "setup-b")
    assert fixed.snapshot()["state"] == "half_open" and fixed.snapshot()["blocked"] is None
    fixed.before_call()
    with pytest.raises(CircuitOpenError):
        blockable(clock, store, "setup-a").before_call()  # one probe at a time
    fixed.record_success()
    assert blockable(clock, store, "setup-a").snapshot()["state"] == "closed"


# --- parked pairs: when they may go back to pending ---------------------------------------------


def test_parked_pairs_are_released_once_the_circuit_recovered_after_they_were_parked():
    clock, store = FakeClock(), MemoryStateStore()
    breaker = blockable(clock, store)
    breaker.note_parked()
    assert breaker.release_due() is None  # closed, but nothing says the API got better
    fail(breaker, 3)
    assert breaker.release_due() is None  # open
    clock.now += 30.0
    assert breaker.release_due() is not None  # half-open: parked pairs may be the probe
    breaker.before_call()
    assert breaker.release_due() is None  # a probe is out
    breaker.record_success()  # closed after having been open
    checked_at = breaker.release_due()
    assert checked_at == clock.now
    breaker.released(checked_at)
    assert breaker.release_due() is None


def test_parked_pairs_are_released_after_the_parked_backoff_without_a_recovery():
    clock, store = FakeClock(), MemoryStateStore()
    breaker = blockable(clock, store)
    breaker.note_parked()
    clock.now += 899.0
    assert breaker.release_due() is None
    clock.now += 1.0
    checked_at = breaker.release_due()
    assert checked_at is not None
    clock.now += 5.0
    breaker.note_parked()  # parked while the release ran: remembered for the next one
    breaker.released(checked_at)
    assert breaker.release_due() is None
    clock.now += 900.0
    assert breaker.release_due() is not None
