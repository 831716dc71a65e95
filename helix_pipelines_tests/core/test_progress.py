from helix_pipelines.core.progress import (
    Cadence,
    Meter,
    describe_embedding,
    describe_import,
    format_bytes,
    format_duration,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_meter_gives_percent_rate_and_time_left():
    clock = FakeClock()
    meter = Meter(1000, clock=clock)
    clock.now += 10
    snap = meter.update(250)
    assert snap.percent == 25.0
    assert snap.rate == 25.0
    assert snap.eta_s == 30.0


def test_meter_counts_a_resumed_start_in_percent_not_in_rate():
    clock = FakeClock()
    meter = Meter(1000, start=500, clock=clock)
    clock.now += 5
    snap = meter.update(600)
    assert snap.percent == 60.0 and snap.rate == 20.0 and snap.eta_s == 20.0


def test_meter_never_goes_backwards_and_is_unknown_without_total_or_rate():
    clock = FakeClock()
    meter = Meter(None, clock=clock)
    assert meter.snapshot().eta_s is None and meter.snapshot().percent is None
    clock.now += 1
    meter.update(50)
    assert meter.update(20).done == 50


def test_cadence_is_due_at_most_once_per_interval():
    clock = FakeClock()
    cadence = Cadence(5, clock=clock)
    assert not cadence.due()
    clock.now += 5
    assert cadence.due()
    assert not cadence.due()
    clock.now += 4.9
    assert not cadence.due()
    clock.now += 0.2
    assert cadence.due()


def test_formats():
    assert format_duration(None) == "?"
    assert format_duration(42.4) == "42s"
    assert format_duration(185) == "3m 05s"
    assert format_duration(7620) == "2h 07m"
    assert format_bytes(999) == "999 B"
    assert format_bytes(140_000_000) == "140.0 MB"


def test_descriptions_hold_percent_rate_and_time_left():
    clock = FakeClock()
    file, rows = Meter(1000, clock=clock), Meter(None, clock=clock)
    clock.now += 2
    line = describe_import(file.update(500), rows.update(10_000))
    assert "50.0% of the file" in line and "5,000 rows/s" in line and "time left 2s" in line
    pairs = Meter(100, clock=clock)
    clock.now += 1
    line = describe_embedding(pairs.update(10), "rate limit")
    assert "10.0% embedded" in line and line.endswith("waiting: rate limit")
