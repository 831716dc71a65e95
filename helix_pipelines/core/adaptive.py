"""Batch size that adapts to a target time per batch, within bounds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AdaptiveBatchSize:
    """Multiplicative adjustment towards `target_s` per batch, damped so one slow batch does not
    halve throughput; `shrink()` after a batch missed its deadline."""

    initial: int = 5000
    minimum: int = 100
    maximum: int = 50_000
    target_s: float = 1.0
    fixed: bool = False

    def __post_init__(self) -> None:
        self.current = max(self.minimum, min(self.initial, self.maximum))

    def record(self, rows: int, seconds: float) -> None:
        if self.fixed or rows < self.current // 2 or seconds <= 0:
            return  # a short final batch says nothing about the right size
        ratio = self.target_s / seconds
        damped = max(0.5, min(2.0, ratio**0.5))
        self.current = max(self.minimum, min(self.maximum, int(self.current * damped)))

    def shrink(self) -> int:
        self.current = max(self.minimum, self.current // 2)
        return self.current
