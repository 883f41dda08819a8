"""The console as people use it: Debian's Chromium, driven by Playwright, against the whole
pipeline running as processes (ingest, classifier, notifier, console) on real servers.

Screenshots of each page go to $TIERFLOW_CONSOLE_SCREENSHOTS when set (docs/console is made
that way), else to the test's temporary directory.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.access import api_key_sync
from tests.browser import browser
from tests.e2e.conftest import Pipeline, running_pipeline
from tests.support import Servers, ServiceProcess
from tierflow_common.auth import Role

pytestmark = pytest.mark.e2e
DEADLINE_S = 60.0


@dataclass
class Stack:
    pipeline: Pipeline
    console: ServiceProcess
    read_key: str
    shots: Path

    @property
    def url(self) -> str:
        return self.console.url


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def event(
    kind: str, event_id: str, customer: str, at: datetime, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "shop",
        "type": kind,
        "subject": customer,
        "time": at.isoformat(),
        "data": data,
    }


def purchase(
    event_id: str, customer: str, at: datetime, amount: str, currency: str = "USD"
) -> dict[str, Any]:
    return event(
        "purchase",
        event_id,
        customer,
        at,
        {"order_id": event_id, "amount": amount, "currency": currency},
    )


@pytest.fixture(scope="module")
def stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("console-logs")
    shots = Path(os.environ.get("TIERFLOW_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    fast = {"CLASSIFIER_DISTRIBUTION_SNAPSHOT_S": "2", "CONSOLE_SAMPLE_INTERVAL_S": "1"}
    with running_pipeline(servers, logs, fast) as pipeline:
        env = {
            **pipeline.env,
            "CONSOLE_INGEST_URL": pipeline.ingest.url,
            "CONSOLE_CLASSIFIER_URL": pipeline.classifier.url,
            "CONSOLE_NOTIFIER_URL": pipeline.notifier.url,
        }
        console = ServiceProcess("console", env, logs)
        console.start()
        try:
            seed(pipeline)
            yield Stack(pipeline, console, api_key_sync(pipeline.database, {Role.READ}), shots)
        finally:
            console.stop()


def seed(pipeline: Pipeline) -> None:
    """Customers to find: a VIP (three large orders: an account-manager task), a regular, and
    one paying in a currency the rule set has no rate for (dead-lettered until it has)."""
    now = datetime.now(UTC)
    # A store to look at: 40 customers with one to three orders of 90 to 890.
    crowd = [
        purchase(
            f"crowd-{i}-{n}", f"c-{i:03d}", now - timedelta(days=9 * n + i % 7), f"{90 + 20 * i}"
        )
        for i in range(40)
        for n in range(1 + i % 3)
    ]
    events = [
        *crowd,
        # A month apart, the last a few days ago: VIP, and in the middle of its own rhythm.
        *(
            purchase(f"vip-{n}", "c-vip", now - timedelta(days=days), "2500.00")
            for n, days in enumerate((62, 33, 4))
        ),
        purchase("reg-1", "c-regular", now - timedelta(days=3), "40.00"),
        purchase("krw-1", "c-krw", now - timedelta(days=1), "50000", currency="KRW"),
    ]
    response = httpx.post(
        pipeline.ingest.url + "/v1/events:batch",
        json=events,
        headers={**pipeline.auth, "content-type": "application/cloudevents-batch+json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(events), response.text

    def classified() -> bool:
        got = httpx.get(
            pipeline.classifier.url + "/v1/customers/c-vip", headers=pipeline.auth, timeout=5
        )
        return got.status_code == 200 and got.json()["dimensions"]["value_tier"]["label"] == "VIP"

    wait_for("c-vip classified VIP", classified)


@pytest.fixture(scope="module")
def chromium(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    # After the stack: Playwright's sync API runs an event loop in this thread, and the
    # stack's set-up calls asyncio.run (migrations, topics), which refuses to nest.
    with browser(tmp_path_factory.mktemp("downloads")) as launched:
        yield launched


def sign_in(chromium: Browser, stack: Stack, key: str, start: str = "/") -> Page:
    page = chromium.new_context(
        viewport={"width": 1400, "height": 1000}, accept_downloads=True
    ).new_page()
    page.goto(stack.url + start)
    expect(page.get_by_role("heading", name="Sign in to the tierflow console")).to_be_visible()
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(stack.url + start) + r"$"))
    return page


def shoot(page: Page, stack: Stack, name: str, *, full: bool = True) -> None:
    """A picture of the page for docs/console (long tables: the first screen only)."""
    page.screenshot(path=str(stack.shots / f"{name}.png"), full_page=full)


def test_anonymous_visitors_get_the_sign_in_page_and_no_customer_data(
    chromium: Browser, stack: Stack
) -> None:
    page = chromium.new_page()
    for path in ("/", "/customers", "/customers/c-vip", "/actions", "/dead-letters", "/topics"):
        page.goto(stack.url + path)
        expect(page.get_by_role("heading", name="Sign in to the tierflow console")).to_be_visible()
        # No customer data: neither labels nor amounts (the path itself is in the form's `next`).
        assert "VIP" not in page.content()
        assert "2500" not in page.content()
    # A script without a key gets a problem document, not data.
    anonymous = httpx.get(stack.url + "/customers?q=c-vip", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    page.goto(stack.url + "/login")
    page.get_by_label("API key").fill("tf_nope_" + "x" * 40)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Unknown or revoked API key")
    shoot(page, stack, "sign-in")


def test_the_session_cookie_is_http_only_and_same_site_strict(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        form = client.get("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert token is not None
        # Without the sign-in form's own cookie (a form posted from elsewhere): refused.
        forged = httpx.post(
            stack.url + "/login", data={"api_key": stack.pipeline.key, "login_token": "x"}
        )
        assert forged.status_code == 403
        assert "tierflow_console_session" not in str(forged.headers.get_list("set-cookie"))
        signed = client.post(
            "/login", data={"api_key": stack.read_key, "login_token": token.group(1)}
        )
        assert signed.status_code == 303
        cookie = next(
            c for c in signed.headers.get_list("set-cookie") if "tierflow_console_session" in c
        )
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert stack.read_key not in cookie
        assert client.get("/customers/c-vip").status_code == 200


def test_an_operator_finds_a_customer_sees_why_and_overrides_the_label_until_it_expires(
    chromium: Browser, stack: Stack
) -> None:
    page = sign_in(chromium, stack, stack.pipeline.key, "/customers")
    # Search by id and by label.
    page.get_by_label("Customer id").fill("c-vip")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_test_id("total")).to_have_text("1")
    page.goto(stack.url + "/customers")
    page.locator("select[name='label.value_tier']").select_option("VIP")
    page.get_by_role("button", name="Search").click()
    rows = page.get_by_test_id("customers").locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("c-vip")
    page.goto(stack.url + "/customers?label.value_tier=regular&spend_max=45")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("c-regular")
    page.goto(stack.url + "/customers")
    shoot(page, stack, "customers", full=False)

    # The customer, explained: label, rule, inputs, version, and the timeline.
    page.goto(stack.url + "/customers/c-vip")
    expect(page.get_by_test_id("label-value_tier")).to_have_text("VIP")
    vip_row = page.locator("tr[data-dimension='value_tier']")
    expect(vip_row).to_contain_text("value_tier.rules[0]")
    expect(vip_row).to_contain_text("spend_window")
    expect(page.get_by_test_id("timeline")).to_contain_text("VIP")
    expect(page.get_by_test_id("customer-actions")).to_contain_text("account_manager_assignment")
    shoot(page, stack, "customer")

    # Override c-regular's tier for a few seconds: it flows through the classifier, is
    # explained as an override, and lifts itself.
    page.goto(stack.url + "/customers/c-regular")
    expect(page.get_by_test_id("label-value_tier")).to_have_text("regular")
    expires = datetime.now(UTC) + timedelta(seconds=12)
    form = page.get_by_test_id("override-form")
    form.locator("select[name='dimension']").select_option("value_tier")
    form.locator("input[name='label']").fill("VIP")
    form.locator("input[name='reason']").fill("key account, per sales director")
    form.locator("input[name='expires_at']").fill(expires.strftime("%Y-%m-%dT%H:%M:%S"))
    form.get_by_role("button", name="Override").click()
    expect(page.get_by_test_id("flash")).to_contain_text("Override of value_tier to VIP")

    def label_is(label: str) -> bool:
        page.reload()
        return page.get_by_test_id("label-value_tier").inner_text() == label

    wait_for("the override in force", lambda: label_is("VIP"))
    expect(page.get_by_test_id("reason-value_tier")).to_have_text("override")
    expect(page.locator("tr[data-dimension='value_tier']")).to_contain_text("per sales director")
    expect(page.get_by_test_id("timeline")).to_contain_text("override:")
    shoot(page, stack, "customer-override")
    wait_for("the override to expire", lambda: label_is("regular"))
    expect(page.get_by_test_id("timeline")).to_contain_text("override_expired:")

    audit = httpx.get(
        stack.pipeline.classifier.url + "/v1/audit", headers=stack.pipeline.auth, timeout=10
    ).json()
    assert any("overrides" in str(entry.get("route")) for entry in audit["items"]), audit


def test_an_operator_exports_the_filtered_table_as_csv(chromium: Browser, stack: Stack) -> None:
    page = sign_in(chromium, stack, stack.pipeline.key, "/customers")
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    expect(page.get_by_test_id("export-status")).to_contain_text("exported")
    text = Path(download.value.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["customer_id"] for r in rows} >= {"c-vip", "c-regular"}
    vip = next(r for r in rows if r["customer_id"] == "c-vip")
    assert vip["value_tier"] == "VIP"


def test_an_operator_works_the_action_queue(chromium: Browser, stack: Stack) -> None:
    page = sign_in(chromium, stack, stack.pipeline.key, "/actions")
    row = page.locator("tr[data-action]", has_text="account_manager_assignment").first
    expect(row).to_contain_text("c-vip")
    shoot(page, stack, "actions", full=False)
    action_id = row.get_attribute("data-action")
    row.get_by_role("button", name="Ack").click()
    expect(page.get_by_test_id("flash")).to_contain_text("acked")
    page.goto(stack.url + "/actions?status=acked")
    row = page.locator(f"tr[data-action='{action_id}']")
    expect(row.get_by_test_id("status")).to_have_text("acked")
    row.get_by_role("button", name="Complete").click()
    expect(page.get_by_test_id("flash")).to_contain_text("completed (done)")
    got = httpx.get(
        f"{stack.pipeline.notifier.url}/v1/actions/{action_id}",
        headers=stack.pipeline.auth,
        timeout=10,
    ).json()
    assert got["status"] == "done"
    assert got["outcome"] == "done"


def test_a_dead_letter_is_redriven_after_the_rule_set_learns_the_rate(
    chromium: Browser, stack: Stack
) -> None:
    page = sign_in(chromium, stack, stack.pipeline.key, "/dead-letters")

    def dead_letter_shown() -> bool:
        page.reload()
        return "KRW" in page.get_by_test_id("dead-letters").inner_text()

    wait_for("the KRW purchase in the classifier's dead letters", dead_letter_shown)
    expect(page.get_by_test_id("dead-letters")).to_contain_text("data.currency")
    shoot(page, stack, "dead-letters")

    # The fix: a rule set with a KRW rate, simulated (heat map) and activated from /rules.
    page.goto(stack.url + "/rules")
    body = page.locator("textarea[name='body']")
    body.fill(body.input_value().replace('  USD: "1"\n', '  USD: "1"\n  KRW: "0.00072"\n', 1))
    page.get_by_role("button", name="Simulate").click()
    expect(page.get_by_test_id("simulation")).to_be_visible()
    expect(page.get_by_test_id("heat-value_tier")).to_contain_text("VIP")
    shoot(page, stack, "rules")
    candidate = page.locator("input[name='version']").input_value()
    page.get_by_test_id("activate-form").get_by_role("button").click()
    expect(page.get_by_test_id("flash")).to_contain_text("Activated")

    # Redrive once the classifier has the new rule set in force (the page says which is).
    def in_force() -> bool:
        page.goto(stack.url + "/rules")
        return candidate in page.get_by_test_id("active-version").inner_text().split()[0]

    wait_for("the new rule set in force", in_force)

    page.goto(stack.url + "/dead-letters")
    page.locator("tr[data-offset]", has_text="KRW").get_by_role("button", name="Redrive").click()
    expect(page.get_by_test_id("flash")).to_contain_text("Redrove 1 record")

    def applied() -> dict[str, Any] | None:
        got = httpx.get(
            stack.pipeline.classifier.url + "/v1/customers/c-krw",
            headers=stack.pipeline.auth,
            timeout=5,
        )
        return got.json() if got.status_code == 200 else None

    customer = wait_for("the redriven purchase applied", applied)
    assert customer["features"]["purchases_lifetime"] == 1
    # Redriving it again is harmless: the ledger drops an event it has applied.
    page.goto(stack.url + "/dead-letters")
    page.locator("tr[data-offset]", has_text="KRW").get_by_role("button", name="Redrive").click()
    expect(page.get_by_test_id("flash")).to_contain_text("Redrove 1 record")
    page.goto(f"{stack.url}/topics?topic={stack.pipeline.topics.customer_events}&event_id=krw-1")
    # The original and the two redriven copies are on the topic ...
    expect(page.get_by_test_id("records").locator("tbody tr")).to_have_count(3)
    # ... and the purchase counts once: a later purchase of the same customer (same partition,
    # so applied after both copies) brings the count to 2, not 3.
    later = purchase("krw-2", "c-krw", datetime.now(UTC), "10.00")
    sent = httpx.post(
        stack.pipeline.ingest.url + "/v1/events",
        json=later,
        headers={**stack.pipeline.auth, "content-type": "application/cloudevents+json"},
        timeout=10,
    )
    assert sent.status_code == 202, sent.text

    def counted() -> int:
        found = applied()
        return int(found["features"]["purchases_lifetime"]) if found else 0

    wait_for("the later purchase applied", lambda: counted() >= 2)
    assert counted() == 2


def test_the_overview_shows_health_lag_and_distributions(chromium: Browser, stack: Stack) -> None:
    page = sign_in(chromium, stack, stack.pipeline.key)

    def lag_sampled() -> bool:
        page.reload()
        return page.get_by_test_id("lag-table").locator("tbody tr td.num").count() > 0

    wait_for("a lag sample", lag_sampled)
    for service in ("ingest", "classifier", "notifier"):
        expect(page.get_by_test_id(f"health-{service}")).to_contain_text("ready")
    expect(page.get_by_test_id("lag-table")).to_contain_text(stack.pipeline.topics.customer_events)
    expect(page.get_by_test_id("distribution").locator("svg").first).to_be_visible()
    expect(page.get_by_test_id("distribution")).to_contain_text("VIP")

    def history_drawn() -> bool:
        page.reload()
        return page.get_by_test_id("distribution-history").locator("svg .series").count() > 0

    wait_for("the distribution over time", history_drawn)
    shoot(page, stack, "overview")
    page.goto(
        stack.url + "/topics?topic=" + stack.pipeline.topics.customer_events + "&customer=c-vip"
    )
    records = page.get_by_test_id("records").locator("tbody tr")
    expect(records).to_have_count(3)
    expect(records.first).to_contain_text("ce_type")
    shoot(page, stack, "topics")


def test_a_read_only_key_sees_but_cannot_operate(chromium: Browser, stack: Stack) -> None:
    page = sign_in(chromium, stack, stack.read_key, "/customers/c-regular")
    expect(page.get_by_test_id("label-value_tier")).to_be_visible()
    expect(page.get_by_test_id("override-form")).to_have_count(0)
    page.goto(stack.url + "/actions?status=")
    expect(page.get_by_role("button", name="Ack")).to_have_count(0)
    # Forging the form anyway: the console refuses (role), and so would the service.
    status = page.evaluate(
        """async () => {
            const body = new URLSearchParams({csrf_token: window.TIERFLOW_CSRF, dimension:
              'value_tier', label: 'VIP', reason: 'forged'});
            const r = await fetch('/customers/c-regular/override', {method: 'POST', body});
            return r.status;
        }"""
    )
    assert status == 403
    # A signed-in operator's form without the session's CSRF token is refused too.
    operator = sign_in(chromium, stack, stack.pipeline.key, "/customers/c-regular")
    status = operator.evaluate(
        """async () => {
            const body = new URLSearchParams({csrf_token: 'stale', dimension: 'value_tier',
              label: 'VIP', reason: 'cross-site'});
            const r = await fetch('/customers/c-regular/override', {method: 'POST', body});
            return r.status;
        }"""
    )
    assert status == 403
    got = httpx.get(
        stack.pipeline.classifier.url + "/v1/customers/c-regular",
        headers=stack.pipeline.auth,
        timeout=5,
    ).json()
    assert got["dimensions"]["value_tier"]["label"] == "regular"
    assert got["dimensions"]["value_tier"]["reason"] != "override"
