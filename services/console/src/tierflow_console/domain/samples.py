"""What the overview charts plot: periodic samples of consumer lag and topic end offsets, kept
for a window (an hour by default), and the rates and lag series derived from them."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Sample:
    at: datetime
    # (group, topic, partition) → records behind the end of the partition
    lag: Mapping[tuple[str, str, int], int]
    # topic → sum of the end offsets of its partitions (records ever written)
    ends: Mapping[str, int]


@dataclass(frozen=True)
class Point:
    at: datetime
    value: float


@dataclass
class SampleWindow:
    window: timedelta
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        while self.samples and sample.at - self.samples[0].at > self.window:
            self.samples.popleft()

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def groups(self) -> list[str]:
        return sorted({g for s in self.samples for (g, _, _) in s.lag})

    def lag_by_group(self) -> dict[str, list[Point]]:
        """Each group's total lag over its partitions, sample by sample."""
        series: dict[str, list[Point]] = {g: [] for g in self.groups()}
        for sample in self.samples:
            totals: dict[str, int] = {}
            for (group, _, _), lag in sample.lag.items():
                totals[group] = totals.get(group, 0) + lag
            for group, points in series.items():
                points.append(Point(sample.at, float(totals.get(group, 0))))
        return series

    def rate(self, topic: str) -> list[Point]:
        """Records per second written to `topic` between consecutive samples."""
        return list(_rates((s.at, s.ends.get(topic)) for s in self.samples))

    def current_rate(self, topic: str) -> float | None:
        rates = self.rate(topic)
        return rates[-1].value if rates else None


def _rates(points: Iterable[tuple[datetime, int | None]]) -> Iterable[Point]:
    previous: tuple[datetime, int] | None = None
    for at, end in points:
        if end is None:
            previous = None
            continue
        if previous is not None:
            seconds = (at - previous[0]).total_seconds()
            # An end offset that went down means the broker lost its log: no rate, not negative.
            if seconds > 0 and end >= previous[1]:
                yield Point(at, (end - previous[1]) / seconds)
        previous = (at, end)
