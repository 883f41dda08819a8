"""The console's pure parts: sessions (idle expiry, CSRF), the lag/rate samples behind the
charts, the simulation heat map, and where sign-in may send a browser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tierflow_console.domain.heatmap import HeatRow, heat_colour, heat_rows
from tierflow_console.domain.samples import Sample, SampleWindow
from tierflow_console.domain.sessions import Flash, SessionStore
from tierflow_console.entrypoints.web_auth import form_time, safe_next

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)


def test_a_session_lives_while_used_and_dies_when_idle() -> None:
    store = SessionStore(timedelta(minutes=30))
    session = store.open("tf_key", T0)
    assert store.get(session.session_id, T0 + timedelta(minutes=29)) is not None
    # Use restarts the idle clock: 29 + 29 minutes after opening it is still alive.
    assert store.get(session.session_id, T0 + timedelta(minutes=58)) is not None
    assert store.get(session.session_id, T0 + timedelta(minutes=89)) is None
    assert store.get(session.session_id, T0 + timedelta(minutes=90)) is None
    assert len(store) == 0


def test_closing_a_session_drops_it_and_its_flash() -> None:
    store = SessionStore(timedelta(hours=1))
    session = store.open("tf_key", T0)
    store.flash(session.session_id, Flash("ok", "done"))
    store.close(session.session_id)
    assert store.get(session.session_id, T0) is None
    assert store.take_flash(session.session_id) is None


def test_a_flash_is_shown_once() -> None:
    store = SessionStore(timedelta(hours=1))
    session = store.open("tf_key", T0)
    store.flash(session.session_id, Flash("error", "no"))
    assert store.take_flash(session.session_id) == Flash("error", "no")
    assert store.take_flash(session.session_id) is None


def test_sessions_have_distinct_unguessable_ids_and_csrf_tokens() -> None:
    store = SessionStore(timedelta(hours=1))
    sessions = [store.open("tf_key", T0) for _ in range(50)]
    ids = {s.session_id for s in sessions} | {s.csrf_token for s in sessions}
    assert len(ids) == 100
    assert all(len(s.session_id) >= 40 for s in sessions)


@given(st.text(max_size=60))
def test_only_the_session_token_passes_the_csrf_check(presented: str) -> None:
    session = SessionStore(timedelta(hours=1)).open("tf_key", T0)
    assert session.csrf_matches(presented) == (presented == session.csrf_token)
    assert session.csrf_matches(session.csrf_token)
    assert not session.csrf_matches(None)


def test_rates_come_from_end_offsets_between_samples() -> None:
    window = SampleWindow(timedelta(hours=1))
    for i, end in enumerate((0, 100, 400, 400)):
        window.add(Sample(T0 + timedelta(seconds=10 * i), {}, {"customer-events": end}))
    assert [p.value for p in window.rate("customer-events")] == [10.0, 30.0, 0.0]
    assert window.current_rate("customer-events") == 0.0
    assert window.rate("unknown") == []


def test_a_broker_that_lost_its_log_gives_no_negative_rate() -> None:
    window = SampleWindow(timedelta(hours=1))
    for i, end in enumerate((500, 20, 50)):
        window.add(Sample(T0 + timedelta(seconds=i), {}, {"t": end}))
    assert [p.value for p in window.rate("t")] == [30.0]


def test_lag_is_summed_per_group_and_old_samples_leave_the_window() -> None:
    window = SampleWindow(timedelta(minutes=60))
    lag = {("classifier", "customer-events", 0): 5, ("classifier", "customer-events", 1): 7}
    window.add(Sample(T0, {**lag, ("notifier", "changes", 0): 1}, {}))
    window.add(Sample(T0 + timedelta(minutes=30), lag, {}))
    series = window.lag_by_group()
    assert [p.value for p in series["classifier"]] == [12.0, 12.0]
    assert [p.value for p in series["notifier"]] == [1.0, 0.0]
    window.add(Sample(T0 + timedelta(minutes=61), {}, {}))
    assert len(window.samples) == 2
    assert window.samples[0].at == T0 + timedelta(minutes=30)


def test_the_heat_map_shows_counts_and_each_rows_share() -> None:
    targets, rows = heat_rows({"gold": {"gold": 3, "silver": 1}, "silver": {"silver": 5}})
    assert targets == ["gold", "silver"]
    assert rows[0] == HeatRow("gold", 4, ((3, 0.75), (1, 0.25)))
    assert rows[1] == HeatRow("silver", 5, ((0, 0.0), (5, 1.0)))
    assert heat_colour(0.0) != heat_colour(1.0)
    assert "color:#fff" in heat_colour(1.0)


@given(st.text(max_size=40))
def test_sign_in_only_sends_a_browser_to_a_page_of_this_console(target: str) -> None:
    where = safe_next(target)
    assert where.startswith("/")
    assert not where.startswith("//")
    assert "\\" not in where
    assert where in (target, "/")


def test_sign_in_keeps_a_local_path_and_refuses_elsewhere() -> None:
    assert safe_next("/customers?q=c-1") == "/customers?q=c-1"
    for bad in ("https://evil.example", "//evil.example", "/\\evil.example", "", None):
        assert safe_next(bad) == "/"


def test_a_form_time_without_zone_is_utc_and_nonsense_is_no_time() -> None:
    assert form_time("2026-12-01T14:30") == datetime(2026, 12, 1, 14, 30, tzinfo=UTC)
    assert form_time(" 2026-12-01T14:30:05+08:00 ") == datetime(2026, 12, 1, 6, 30, 5, tzinfo=UTC)
    assert form_time("") is None
    assert form_time(None) is None
    assert form_time("yesterday") is None
