"""Percentiles of a stage's minibatch durations, in bounded memory.

The first :data:`EXACT_SAMPLES` durations of a stage are kept one by one, and
its percentiles (``p90_time``, ``p99_time`` of
:class:`~neuraxle_stream.stats.StageStats`) are exact; past that bound, the
durations go to a histogram of log-spaced bins (1% apart, from 0.1 µs), so a
percentile is within ±0.5% of the truth whatever the length of the run.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

__all__ = ["EXACT_SAMPLES", "Durations"]

#: Durations kept one by one per stage; beyond, percentiles come from a log histogram (±0.5%).
EXACT_SAMPLES = 10_000
_BIN_BASE = 1e-7
_BIN_RATIO = math.log(1.01)


class Durations:
    """Minibatch durations of one stage: exact percentiles, then a log histogram past a bound."""

    def __init__(self) -> None:
        self.samples: list[float] | None = []
        self.histogram: Counter[int] = Counter()
        self.count = 0

    def add(self, seconds: float) -> None:
        """Count one duration."""
        self.count += 1
        if self.samples is not None:
            self.samples.append(seconds)
            if len(self.samples) > EXACT_SAMPLES:
                for s in self.samples:
                    self.histogram[_bin(s)] += 1
                self.samples = None
        else:
            self.histogram[_bin(seconds)] += 1

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0 to 1) of the durations counted; 0 when none was."""
        if self.count == 0:
            return 0.0
        if self.samples is not None:
            return float(np.quantile(self.samples, q))
        rank = q * (self.count - 1)
        seen = 0
        for b in sorted(self.histogram):
            seen += self.histogram[b]
            if seen > rank:
                return _BIN_BASE * math.exp((b + 0.5) * _BIN_RATIO)
        return 0.0  # pragma: no cover - the loop always returns


def _bin(seconds: float) -> int:
    return int(math.log(max(seconds, _BIN_BASE) / _BIN_BASE) / _BIN_RATIO)
