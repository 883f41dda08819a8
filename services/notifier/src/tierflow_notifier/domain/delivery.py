"""Retry timing and the per-endpoint circuit breaker. Pure: clock and randomness are injected."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


def backoff_delay(attempt: int, *, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Seconds before retry number `attempt` (1 = first retry): exponential, capped, with
    "equal jitter" (half fixed, half random) so synchronized failures spread out without ever
    retrying immediately."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + rand() * ceiling / 2


@dataclass
class CircuitBreaker:
    """Closed until `threshold` consecutive failures; then open for `cooldown` seconds, after
    which one probe batch is let through (half-open): success closes it, failure re-opens it.

    While open, deliveries are not attempted, so a dead endpoint does not burn their attempts.
    """

    threshold: int
    cooldown: float
    clock: Callable[[], float]
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = field(default=0.0)

    def allow(self) -> bool:
        if self.state == "open" and self.clock() - self.opened_at >= self.cooldown:
            self.state = "half_open"
        return self.state != "open"

    def seconds_until_probe(self) -> float:
        if self.state != "open":
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def record_success(self) -> None:
        self.state = "closed"
        self.failures = 0

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self.state = "open"
            self.opened_at = self.clock()
