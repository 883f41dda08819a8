"""How fast a key may send (who may send what: tierflow_common.auth). Pure: clock injected."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` events per second with bursts up to `burst`; `take` says how long to wait if short."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    updated: float = 0.0

    def take(self, n: int, now: float) -> float:
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate

    def retry_after(self, n: int) -> int:
        """Whole seconds a client should wait before `n` events fit (at least 1)."""
        return max(1, math.ceil((min(n, self.burst) - max(self.tokens, 0.0)) / self.rate))
