"""The delivery circuit breaker (domain/delivery.py) against a model of its rules, over random
sequences of outcomes and clock steps: it opens after `threshold` consecutive failures (one,
when the probe after a cooldown fails), refuses every attempt for `cooldown` seconds, then lets
attempts through again (half-open); any success closes it."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow_notifier.domain.delivery import CircuitBreaker

Step = tuple[str, float]  # ("ok" | "fail" | "wait", seconds waited)
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["ok", "fail"]), st.just(0.0)),
        st.tuples(st.just("wait"), st.floats(0.0, 20.0)),
    ),
    max_size=40,
)


@dataclass
class Model:
    threshold: int
    cooldown: float
    streak: int = 0  # consecutive failures
    open_since: float | None = None
    probing: bool = False

    def allows(self, now: float) -> bool:
        if self.open_since is None:
            return True
        if now - self.open_since >= self.cooldown:
            self.probing = True
            self.open_since = None
            return True
        return False

    def outcome(self, ok: bool, now: float) -> None:
        if ok:
            self.streak, self.open_since, self.probing = 0, None, False
            return
        self.streak += 1
        if self.probing or self.streak >= self.threshold:
            self.open_since, self.probing = now, False


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.floats(0.1, 10.0), steps)
def test_the_breaker_follows_its_rules(threshold: int, cooldown: float, run: list[Step]) -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=threshold, cooldown=cooldown, clock=lambda: now[0])
    model = Model(threshold, cooldown)
    for what, seconds in run:
        if what == "wait":
            now[0] += seconds
            continue
        allowed = breaker.allow()
        assert allowed == model.allows(now[0])
        if not allowed:  # the worker does not send while it is open
            assert breaker.seconds_until_probe() > 0
            continue
        if what == "ok":
            breaker.record_success()
        else:
            breaker.record_failure()
        model.outcome(what == "ok", now[0])
        assert (breaker.state == "open") == (model.open_since is not None)
        assert breaker.state != "closed" or breaker.failures < threshold


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.floats(0.1, 10.0), st.integers(0, 30))
def test_an_open_breaker_spares_the_endpoint_until_its_cooldown(
    threshold: int, cooldown: float, refused: int
) -> None:
    """However often asked while open, it lets nothing through before the cooldown, and exactly
    the next attempt once it is over."""
    now = [0.0]
    breaker = CircuitBreaker(threshold=threshold, cooldown=cooldown, clock=lambda: now[0])
    for _ in range(threshold):
        assert breaker.allow()
        breaker.record_failure()
    for i in range(refused):
        now[0] = cooldown * i / (refused + 1)
        assert not breaker.allow()
    now[0] = cooldown
    assert breaker.allow()
    assert breaker.state == "half_open"
