"""The annotator page in a real headless Chromium (Debian's, driven by Playwright): an annotator
signs in, labels three items (one with the keyboard), skips none, and the labels are in the store.
Plus the page's refusals over plain HTTP: no cookie, a viewer's key, labels outside the rubric."""

from __future__ import annotations

import shutil

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.server import ApiServer
from monitor.health import HealthState
from monitor.ingest.records import KafkaRecord
from monitor.scoring.base import ProducerRewardScorer
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import ReviewAnnotation, ReviewAudit
from tests.analysis_data import write_records
from tests.factories import conversation, wire
from tests.helpers import api_key

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def page_server(migrated_url: str, topic_settings):
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    records = []
    for i in range(3):
        response = f"<b>Reply</b> {i}: you can freeze card 4111 1111 1111 1111 in the app."
        event = conversation(f"c-{i}", response=response, reward=0.8137)
        event["messages"][0]["content"] = f"Hi, this is Tom Baker, question {i} <script>alert(1)</script>"
        records.append(KafkaRecord("conversations", 0, i, f"c-{i}".encode(), wire(event)))
    write_records(sessions, records)
    context = AppContext(topic_settings(database_url=migrated_url), engine, sessions, HealthState(),
                         CollectorRegistry(), ProducerRewardScorer())
    assert context.review.enqueue_conversations([f"c-{i}" for i in range(3)], "test") == 3
    server = ApiServer(create_app(context), "127.0.0.1", 0)
    server.start()
    yield server.url, sessions
    server.stop()
    engine.dispose()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium")
def test_an_annotator_labels_three_items_in_a_real_browser(page_server, migrated_url: str) -> None:
    from playwright.sync_api import sync_playwright

    url, sessions = page_server
    key = api_key(migrated_url, "annotator")["Authorization"].removeprefix("Bearer ")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{url}/review")
            assert page.url.endswith("/review/login")
            page.fill("#key", "mon_" + "x" * 43)
            page.click("#sign-in")
            assert "unknown" in page.inner_text("p.error")
            page.fill("#key", key)
            page.click("#sign-in")
            for n in range(3):
                page.wait_for_selector("#response")
                text = page.inner_text("#conversation")
                assert "[CARD]" in text and "4111" not in text and "Tom Baker" not in text
                assert "<script>" in text  # shown as text, never run
                assert "0.8137" not in page.content()  # the reward is never on the page
                if n == 1:  # a submit without every answer: the browser's own required check stops it
                    shown = page.inner_text("#conversation h3")
                    page.click("#submit")
                    assert page.inner_text("#conversation h3") == shown and page.locator("#error").count() == 0
                for name, value in (("helpfulness", "4"), ("honesty", "5"), ("harmless", "yes"),
                                    ("compliance", "not_applicable"), ("overpromise", "no"),
                                    ("length", "too_long"), ("tone", "flattering")):
                    page.check(f'input[name="{name}"][value="{value}"]')
                if n == 2:  # keyboard: 2 for overall, Enter to submit
                    page.click("h3")
                    page.keyboard.press("2")
                    assert page.is_checked('input[name="overall"][value="2"]')
                    with page.expect_navigation():
                        page.keyboard.press("Enter")
                else:
                    page.check(f'input[name="overall"][value="{n + 3}"]')
                    page.fill("#comment", f"wordy {n}")
                    with page.expect_navigation():
                        page.click("#submit")
                assert f"Saved item {n + 1}" in page.inner_text("p.notice")
            assert page.locator("#nothing-left").count() == 1
        finally:
            browser.close()
    with sessions() as session:
        stored = list(session.scalars(select(ReviewAnnotation).order_by(ReviewAnnotation.id)))
        actions = [a.action for a in session.scalars(select(ReviewAudit))]
    assert [a.labels["overall"] for a in stored] == [3, 4, 2]
    assert all(a.labels["length"] == "too_long" and a.labels["tone"] == "flattering" for a in stored)
    assert [a.comment for a in stored] == ["wordy 0", "wordy 1", None]
    assert len({a.annotator for a in stored}) == 1 and actions.count("annotated") == 3


def test_the_page_refuses_what_the_api_refuses(page_server, migrated_url: str) -> None:
    url, sessions = page_server
    with httpx.Client(base_url=url, timeout=60, follow_redirects=False) as http:
        assert http.get("/review").headers["location"] == "/review/login"
        viewer = api_key(migrated_url, "viewer")["Authorization"].removeprefix("Bearer ")
        refused = http.post("/review/login", data={"key": viewer})
        assert refused.status_code == 401 and "not an annotator" in refused.text
        key = api_key(migrated_url, "annotator")["Authorization"].removeprefix("Bearer ")
        signed = http.post("/review/login", data={"key": key})
        assert signed.status_code == 303 and "httponly" in signed.headers["set-cookie"].lower()
        assert "samesite=strict" in signed.headers["set-cookie"].lower()
        http.cookies.set("monitor_review_key", key, path="/review")
        page = http.get("/review")
        assert page.status_code == 200 and "&lt;script&gt;" in page.text and "<script>alert" not in page.text
        lease = page.text.split('name="lease_id" value="')[1].split('"')[0]
        item = page.text.split("/review/items/")[1].split("/")[0]
        bad = http.post(f"/review/items/{item}/annotate", data={"lease_id": lease, "overall": "9"})
        assert bad.status_code == 422 and "must be one of" in bad.text and f"item {item}" in bad.text
        with sessions() as session:
            assert session.scalar(select(ReviewAnnotation.id)) is None
        gone = http.post(f"/review/items/{item}/annotate", data={"lease_id": "not-a-lease", "overall": "3"})
        assert gone.status_code == 404 and "not found" in gone.text
