"""End to end in headless Chromium: the dashboard shows what the usage log holds, live.

Playwright drives Debian's chromium (``/usr/bin/chromium``; Playwright's own browser download
is not used). Under ``CI=true`` a missing browser fails the test instead of skipping it. A
screenshot of the page is written to ``test-output/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_usage_log import UsageRecord

from .conftest import ADMIN_KEY, GatewayProcess, chat_bodies, serve_gateway

ROOT = Path(__file__).resolve().parents[3]
SCREENSHOT = ROOT / "test-output" / "dashboard.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The gateway of the other tests, with a response cache (so the page shows hits)."""
    root = tmp_path_factory.mktemp("dashboard")
    yield from serve_gateway(
        upstream,
        root,
        LLMPROXY_GATEWAY_MAX_BODY="1000000",
        LLMPROXY_CACHE_URL=f"sqlite:///{root}/data/cache.db",
    )


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        path = None
    if path is None:
        message = "the dashboard test needs Debian's chromium and playwright (dev.py installs both)"
        if os.environ.get("CI"):
            pytest.fail(message + ": it must run in CI")
        pytest.skip(message)
    profile = tempfile.mkdtemp(prefix="llmproxy-chromium-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=path,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1500},
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(autouse=True)
def signed_out(browser: Any) -> None:
    """Each test starts signed out: cookies are per host, not per port, so a session from
    another test's gateway on 127.0.0.1 would otherwise skip the login form."""
    browser.clear_cookies()


def number(text: str) -> float:
    return float(text.replace(",", "").replace("$", "").strip())


def wait_for_refresh(page: Any) -> None:
    version = int(page.get_attribute("body", "data-version") or 0)
    page.wait_for_function(f"Number(document.body.dataset.version) > {version}", timeout=15_000)


def test_dashboard_shows_the_usage_log_live(
    gateway: GatewayProcess, upstream: FakeOpenAI, browser: Any
) -> None:
    keys = {
        "ann": gateway.key("ann", "tokens:100000/month"),
        "bob": gateway.key("bob", "usd:5/day", "requests:100/minute"),
    }
    limited = gateway.key("cy", "requests:1/minute")
    sdks = {
        u: openai.OpenAI(base_url=gateway.url + "/v1", api_key=k, max_retries=0)
        for u, k in keys.items()
    }
    for i in range(3):
        sdks["ann"].chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"hello number {i}"}],
            extra_headers={"X-Session-Id": "e2e-ann"},
        )
    for _chunk in sdks["bob"].chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "stream a few words back"}],
        stream=True,
        stream_options={"include_usage": True},
    ):
        pass
    # The same request twice, asking for the cache: one upstream call, then one cache hit.
    dee = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key("dee"), max_retries=0)
    sent = len(chat_bodies(upstream))
    for _ in range(2):
        dee.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "cache this one"}],
            extra_headers={"x-llmproxy-cache": "on"},
        )
    assert len(chat_bodies(upstream)) == sent + 1
    cy = openai.OpenAI(base_url=gateway.url + "/v1", api_key=limited, max_retries=0)
    cy.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError):
        cy.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )

    page = browser.new_page()
    page.goto(gateway.url + "/dashboard")
    assert page.locator("input[name=key]").is_visible()  # the login form first
    page.fill("input[name=key]", ADMIN_KEY)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard")
    page.wait_for_function("Number(document.body.dataset.version) >= 1", timeout=15_000)

    log = gateway.usage_log()
    try:
        expected_calls = len(log.recent(10_000))
        page.wait_for_function(
            f"document.getElementById('summary-calls').dataset.value === '{expected_calls}'",
            timeout=15_000,
        )
        total = log.summary()
        assert number(page.inner_text("#summary-calls")) == total.calls
        assert number(page.inner_text("#summary-errors")) == total.errors
        assert number(page.inner_text("#summary-input")) == total.input_tokens
        assert number(page.inner_text("#summary-output")) == total.output_tokens
        assert number(page.inner_text("#summary-tokens")) == total.total_tokens
        assert number(page.inner_text("#summary-cost")) == pytest.approx(total.cost, abs=1e-6)
        assert total.cache_hits == 1  # dee's second call
        rate = 100 * total.cache_hits / total.calls
        assert page.inner_text("#summary-cache") == f"1 ({rate:.1f}%)"
        assert page.get_attribute("#summary-cache", "data-value") == "1"
        assert rate > 0
        for dim in ("model", "alias", "user", "key"):
            rows = page.locator(f"#totals-{dim} tbody tr[data-group]")
            shown = {
                rows.nth(i).get_attribute("data-group"): (
                    number(rows.nth(i).locator(".calls").inner_text()),
                    number(rows.nth(i).locator(".tokens").inner_text()),
                    number(rows.nth(i).locator(".cost").inner_text()),
                )
                for i in range(rows.count())
            }
            want = {t.group: (t.calls, t.total_tokens, t.cost) for t in log.totals(dim)}
            assert shown.keys() == want.keys(), dim
            for group, (calls, tokens, cost) in want.items():
                assert shown[group][:2] == (calls, tokens), (dim, group)
                assert shown[group][2] == pytest.approx(cost, abs=1e-6), (dim, group)
            # one bar chart of tokens and one of spend per dimension
            assert page.locator(f"#by-{dim} svg[data-metric=total_tokens] rect").count() >= 1
            assert page.locator(f"#by-{dim} svg[data-metric=cost]").count() == 1
        # budgets: used / limit / reset of each key's budget, as the ledger has them
        ann_id = keys["ann"].split("-")[2]
        ann_budget = page.locator(
            f'#budgets tr[data-budget="key-tokens-100000-month|key:{ann_id}"]'
        )
        ann_tokens = sum(t.total_tokens for t in log.totals("key") if t.group == ann_id)
        assert (
            number(ann_budget.locator(".used").inner_text().removesuffix(" tokens")) == ann_tokens
        )
        assert ann_budget.locator(".limit").inner_text() == "100,000 tokens"
        assert "UTC" in ann_budget.locator(".resets").inner_text()
        # rate-limit hits
        hits = {h.policy: h.hits for h in log.limit_hits()}
        row = page.locator('#limits tr[data-policy="key-requests-1-60s"]')
        assert number(row.locator(".hits").inner_text()) == hits["key-requests-1-60s"]
        # prices: each model called, its rates, where they came from and their date
        prices = page.locator("#prices tbody tr[data-model]")
        assert {prices.nth(i).get_attribute("data-model") for i in range(prices.count())} == {
            t.group for t in log.totals("model")
        }
        mini = page.locator('#prices tr[data-model="openai/gpt-4o-mini"]')
        assert mini.locator(".origin").inner_text().startswith("genai-prices ")
        assert mini.locator(".input").inner_text() == "$0.15"
        assert mini.locator(".as-of").inner_text().startswith("20")
        # recent calls, newest first, with a link to the session's history
        assert page.locator("#recent tbody tr.call").count() == min(expected_calls, 50)

        # live: a call made while the page is open shows up without a reload
        before = total.calls
        sdks["ann"].chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "one more"}],
            extra_headers={"X-Session-Id": "e2e-ann"},
        )
        page.wait_for_function(
            f"document.getElementById('summary-calls').dataset.value === '{before + 1}'",
            timeout=15_000,
        )
        wait_for_refresh(page)
        assert number(page.inner_text("#summary-tokens")) == log.summary().total_tokens
        # A price by the hour says so, as llmproxy prices does (DeepSeek's off-peak hours).
        log.add(
            [
                UsageRecord(
                    time.time(), "deepseek/deepseek-flash", "deepseek", None, None, None, 10, 2
                )
            ]
        )
        hourly = page.locator('#prices tr[data-model="deepseek/deepseek-flash"]')
        hourly.locator(".note.varies").wait_for(timeout=15_000)
        assert hourly.locator(".note.varies").inner_text() == "varies by hour"
        assert hourly.locator(".origin").inner_text().startswith("genai-prices ")
        assert mini.locator(".note").count() == 0
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 10_000

        page.locator("#recent a[href='/dashboard/sessions/e2e-ann']").first.click()
        page.wait_for_url("**/dashboard/sessions/e2e-ann")
        assert page.inner_text("#message-count") == "8"
        assert "Echo: hello number 0" in page.inner_text("#history")
    finally:
        log.close()
        page.close()


# Every table, and the card (section) holding it: the table must fit the card's content box.
OVERFLOWS = """() => [...document.querySelectorAll("main table")].map((table) => {
  const card = table.closest("section");
  const style = getComputedStyle(card);
  const room = card.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  return {
    table: table.id, rows: table.tBodies[0].rows.length, width: table.scrollWidth, room: room,
    cardScrolls: card.scrollWidth > card.clientWidth,
  };
})"""


def sign_in(page: Any, gateway: GatewayProcess) -> None:
    page.goto(gateway.url + "/dashboard")
    if page.locator("input[name=key]").count():  # the browser profile may hold a session
        page.fill("input[name=key]", ADMIN_KEY)
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard")
    page.wait_for_function("Number(document.body.dataset.version) >= 1", timeout=15_000)


def test_every_table_fits_its_card_at_common_widths(gateway: GatewayProcess, browser: Any) -> None:
    # Long names and wide values everywhere: users, sessions, several budgets per key with big
    # limits and calendar resets, rate-limit refusals.
    specs = ("tokens:250000000/month", "usd:1500/day", "requests:6000/hour", "tokens:99999999/7d")
    for i in range(4):
        user = f"billing-department-nightly-reporting-service-{i}"
        key = gateway.key(user, *specs)
        sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        sdk.chat.completions.create(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": f"quarterly figures, part {i}"}],
            extra_headers={"X-Session-Id": f"quarterly-report-{'generation-' * 6}{i}"},
        )
    tight = gateway.key("rate-limited-integration-test-account", "requests:1/minute")
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tight, max_retries=0)
    sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "b"}]
        )

    page = browser.new_page()
    try:
        sign_in(page, gateway)
        # The usage log is written in the background: wait for the last call (the refusal).
        page.wait_for_function(
            "document.querySelector('#totals-user tr[data-group=\"rate-limited-integration-test-"
            "account\"] .errors')?.dataset.value === '1'",
            timeout=15_000,
        )
        for width in (1280, 1440, 1920):
            page.set_viewport_size({"width": width, "height": 1200})
            wait_for_refresh(page)  # redrawn at this width, with every call above
            tables = page.evaluate(OVERFLOWS)
            by_id = {t["table"]: t for t in tables}
            assert set(by_id) == {
                "totals-model",
                "totals-alias",
                "totals-user",
                "totals-key",
                "budgets",
                "prices",
                "limits",
                "recent",
            }, width
            assert by_id["budgets"]["rows"] >= 17 and by_id["recent"]["rows"] >= 6, width
            too_wide = [t for t in tables if t["width"] > t["room"] or t["cardScrolls"]]
            assert too_wide == [], width
    finally:
        page.close()
