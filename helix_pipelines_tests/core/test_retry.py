import pytest

from helix_pipelines.core.retry import RetryBudget, retry_after_of, retrying


class Flaky(Exception):
    transient = True

    def __init__(self, retry_after_s=None):
        super().__init__("flaky")
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class FakeSleep:
    def __init__(self):
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def failing(times, error_factory=Flaky, result="ok"):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise error_factory()
        return result

    call.calls = calls
    return call


def test_succeeds_after_transient_failures():
    sleep = FakeSleep()
    call = failing(2)
    assert retrying(RetryBudget(), sleep=sleep)(call) == "ok"
    assert len(call.calls) == 3 and len(sleep.waits) == 2


def test_attempts_are_bounded_and_the_last_error_is_reraised():
    sleep = FakeSleep()
    call = failing(100)
    with pytest.raises(Flaky):
        retrying(RetryBudget(attempts=4, deadline_s=None), sleep=sleep)(call)
    assert len(call.calls) == 4 and len(sleep.waits) == 3


def test_backoff_grows_exponentially_within_the_jitter_and_the_cap():
    sleep = FakeSleep()
    budget = RetryBudget(attempts=8, initial_s=0.5, max_s=10.0, jitter_s=0.5, deadline_s=None)
    with pytest.raises(Flaky):
        retrying(budget, sleep=sleep)(failing(100))
    for attempt, wait in enumerate(sleep.waits):
        base = 0.5 * 2**attempt
        assert min(base, 10.0) <= wait <= min(base + 0.5, 10.0)
    assert sleep.waits[-1] == 10.0


def test_retry_after_is_a_minimum_wait():
    sleep = FakeSleep()
    budget = RetryBudget(attempts=3, initial_s=0.1, jitter_s=0.0, max_s=1.0, deadline_s=None)
    with pytest.raises(Flaky):
        retrying(budget, sleep=sleep)(failing(100, lambda: Flaky(retry_after_s=7.0)))
    assert sleep.waits == [7.0, 7.0]  # above max_s too: the server's word wins


def test_terminal_errors_are_not_retried():
    sleep = FakeSleep()
    call = failing(5, lambda: ValueError("bad input"))
    with pytest.raises(ValueError):
        retrying(RetryBudget(), sleep=sleep)(call)
    assert len(call.calls) == 1 and sleep.waits == []


def test_retry_if_is_pluggable():
    call = failing(1, lambda: ValueError("retry me anyway"))
    sleep = FakeSleep()
    assert retrying(RetryBudget(), sleep=sleep, retry_if=lambda e: True)(call) == "ok"


def test_no_sleep_is_started_past_the_deadline():
    sleep = FakeSleep()
    budget = RetryBudget(attempts=10, initial_s=1.0, jitter_s=0.0, max_s=100.0, deadline_s=3.0)
    call = failing(100)
    with pytest.raises(Flaky):
        retrying(budget, sleep=sleep)(call)
    assert sleep.waits == [1.0, 2.0]  # 1 + 2 + 4 would end past 3 s
    assert len(call.calls) == 3


def test_on_retry_sees_the_error_the_attempt_and_the_wait():
    seen = []
    budget = RetryBudget(attempts=3, initial_s=1.0, jitter_s=0.0, deadline_s=None)
    retrying(budget, sleep=FakeSleep(), on_retry=lambda *args: seen.append(args))(failing(2))
    assert [(type(e), attempt, wait) for e, attempt, wait in seen] == [
        (Flaky, 1, 1.0),
        (Flaky, 2, 2.0),
    ]


def test_iterator_form():
    sleep = FakeSleep()
    call = failing(1)
    for attempt in retrying(RetryBudget(), sleep=sleep):
        with attempt:
            result = call()
    assert result == "ok" and len(sleep.waits) == 1


def test_each_use_starts_a_fresh_budget():
    retry = retrying(RetryBudget(attempts=2, deadline_s=None), sleep=FakeSleep())
    assert retry(failing(1)) == "ok"
    assert retry(failing(1)) == "ok"


@pytest.mark.parametrize(
    "value, expected", [(None, 0.0), (2.5, 2.5), (3, 3.0), (-1.0, 0.0), (True, 0.0), ("9", 0.0)]
)
def test_retry_after_of(value, expected):
    error = Exception()
    if value is not None:
        error.retry_after_s = value
    assert retry_after_of(error) == expected


def test_invalid_budget_is_rejected():
    with pytest.raises(ValueError):
        RetryBudget(attempts=0)
