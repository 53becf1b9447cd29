"""The operator pages (``/alerts``, ``/alerts/{id}``, ``/cycles``) over a real alert: simulated S1
traffic (length hacking) in the store, the real analyzer run once, the real app on a free port, on
SQLite and PostgreSQL. Plain HTTP checks what each role may see and do and what the charts hold;
a headless Chromium (Debian's, driven by Playwright) signs in as an admin and opens a cycle."""

from __future__ import annotations

import math
import re
import shutil
import uuid
import xml.etree.ElementTree as ET
from datetime import timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, update

from monitor.analyze.runner import Analyzer
from monitor.analyze.segments import SegmentScheme
from monitor.api.alert_view import timeline
from monitor.api.app import create_app
from monitor.api.context import AppContext
from monitor.api.pages import COOKIE
from monitor.api.server import ApiServer
from monitor.config import Settings
from monitor.health import HealthState
from monitor.scoring.base import ProducerRewardScorer
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from monitor.store.models import Alert, RelabelCycle, Turn
from tests.analysis_data import REFERENCE, s1_traffic, write
from tests.helpers import api_key

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SVG = "{http://www.w3.org/2000/svg}"
#: Planted in the raw text of the alert's top example: the page must show placeholders, and markup as text.
PLANTED_PROMPT = "Hi, this is Tom Baker <script>alert(1)</script>: my card 4111 1111 1111 1111 was charged twice."
PLANTED_RESPONSE = "Dear Tom Baker, write to tom.baker@example.com and we will refund it."


@pytest.fixture(scope="module")
def traffic() -> list:
    return s1_traffic()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ops(request, tmp_path_factory, pg_databases, traffic):
    """An analysed store with a firing S1 alert, served by the real app: ``(url, sessions, alert)``."""
    url = (f"sqlite:///{tmp_path_factory.mktemp('ops') / 'monitor.db'}" if request.param == "sqlite"
           else pg_databases())
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    write(sessions, traffic)
    settings = Settings(database_url=url, analyze_reference_labels=REFERENCE, analyze_window_minutes=10,
                        analyze_drift_rows=150)
    Analyzer(settings, sessions).run_once(publish=False)
    with sessions.begin() as session:
        alert = session.scalars(select(Alert).where(Alert.mode == "verbosity").order_by(Alert.id)).first()
        assert alert is not None and alert.evidence["top_examples"], "S1 raised no verbosity alert"
        planted = alert.evidence["top_examples"][0]["event_id"]
        session.execute(update(Turn).where(Turn.event_id == uuid.UUID(planted))
                        .values(prompt=PLANTED_PROMPT, response=PLANTED_RESPONSE))
        session.expunge(alert)
    server = ApiServer(create_app(AppContext(settings, engine, sessions, HealthState(), CollectorRegistry(),
                                             ProducerRewardScorer())), "127.0.0.1", 0)
    server.start()
    yield server.url, sessions, alert, url
    server.stop()
    engine.dispose()


def key_of(url: str, role: str) -> str:
    return api_key(url, role)["Authorization"].removeprefix("Bearer ")


def signed_in(base: str, url: str, role: str) -> httpx.Client:
    http = httpx.Client(base_url=base, timeout=300, follow_redirects=False)
    http.cookies.set(COOKIE, key_of(url, role))
    return http


def svg_in(page: str, figure: str) -> ET.Element:
    """The SVG inside ``<figure id="...">`` of ``page``, parsed as XML."""
    found = re.search(rf'<figure id="{figure}">\s*(<svg.*?</svg>)', page, re.S)
    assert found, f"no SVG in figure {figure}"
    return ET.fromstring(found.group(1))


def series_values(svg: ET.Element, name: str) -> list[float]:
    group = next(g for g in svg.iter(f"{SVG}g") if g.get("data-series") == name)
    return [float(c.get("data-value", "nan")) for c in group.iter(f"{SVG}circle")]


def cycles_of(sessions, alert_id: int) -> list[int]:
    with sessions() as session:
        return list(session.scalars(select(RelabelCycle.id).where(RelabelCycle.alert_id == alert_id)
                                    .order_by(RelabelCycle.id)))


def test_a_viewer_signs_in_and_sees_the_alerts_evidence(ops) -> None:
    base, sessions, alert, url = ops
    with httpx.Client(base_url=base, timeout=120, follow_redirects=False) as http:
        asked = http.get(f"/alerts/{alert.id}")
        assert asked.status_code == 303 and asked.headers["location"] == f"/login?next=/alerts/{alert.id}"
        signed = http.post("/login", data={"key": key_of(url, "viewer"), "next": f"/alerts/{alert.id}"})
        assert signed.status_code == 303 and signed.headers["location"] == f"/alerts/{alert.id}"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and re.search(r"path=/(;|$)", cookie)
        listing = http.get("/alerts")
        assert listing.status_code == 200 and f'href="/alerts/{alert.id}"' in listing.text
        # Prometheus alert rules link here with the segment: only its alerts are listed.
        mine = http.get("/alerts", params={"segment": alert.segment})
        elsewhere = http.get("/alerts", params={"segment": "no-such/*/*"})
        assert f'href="/alerts/{alert.id}"' in mine.text and f'href="/alerts/{alert.id}"' not in elsewhere.text
        page = http.get(f"/alerts/{alert.id}")
    assert page.status_code == 200, page.text
    text = page.text

    timeline_svg = svg_in(text, "timeline")
    assert {g.get("data-series") for g in timeline_svg.iter(f"{SVG}g") if g.get("data-series")} == {
        "reward", "satisfaction"}
    rewards, satisfaction = series_values(timeline_svg, "reward"), series_values(timeline_svg, "satisfaction")
    assert len(rewards) >= 12 and len(satisfaction) >= 12 and all(0 <= s <= 1 for s in satisfaction)
    # Length hacking: the reward rises while users' satisfaction falls.
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 and sum(satisfaction[-4:]) / 4 < sum(satisfaction[:4]) / 4
    assert "mean RM reward" in text and "right axis, 0 to 1" in text  # the caption says what is plotted
    assert any(m.findtext(f"{SVG}text") == "alert" for m in timeline_svg.iter(f"{SVG}g") if m.get("class") == "marker")

    by_mode = alert.evidence["attribution"]["by_mode"]
    bars = {r.get("data-label"): float(r.get("data-value", "nan"))
            for r in svg_in(text, "attribution-modes").iter(f"{SVG}rect") if r.get("class") == "bar"}
    assert bars.keys() == by_mode.keys()
    assert all(math.isclose(bars[mode], by_mode[mode], rel_tol=1e-5, abs_tol=1e-9) for mode in by_mode)
    assert min(bars, key=lambda mode: bars[mode]) == "verbosity"
    signals = svg_in(text, "attribution-signals")
    assert "length_tokens" in {r.get("data-label") for r in signals.iter(f"{SVG}rect")}

    examples = text.split('id="examples"')[1].split('id="drift"')[0]
    assert examples.count('class="example"') == len(alert.evidence["top_examples"])
    assert "[CARD]" in examples and "[EMAIL]" in examples and "[NAME]" in examples
    assert "4111" not in text and "Tom Baker" not in text and "tom.baker@example.com" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in examples and "<script>alert" not in text

    drift = text.split('id="drift"')[1].split('id="relabel-card"')[0]
    assert "drift in" in drift and "length_tokens" in drift
    relabel = text.split('id="relabel"')[1].split("</form>")[0]
    assert 'id="open-cycle" disabled' in relabel and 'id="admins-only"' in relabel


def test_the_timeline_bins_are_the_segments_turns(ops) -> None:
    _, sessions, alert, _ = ops
    with sessions() as session:
        bins = timeline(session, SegmentScheme.from_settings(Settings()), alert.segment, alert.started_at,
                        timedelta(minutes=10))
        turns = list(session.execute(select(Turn.ts, Turn.score, Turn.satisfaction)
                                     .where(Turn.domain == alert.segment.split("/")[0],
                                            Turn.ts >= bins[0].start, Turn.ts < bins[-1].end)))
    assert len(bins) == 24 and bins[0].start <= alert.started_at < bins[-1].end
    assert sum(b.rewards for b in bins) == sum(score is not None for _, score, _ in turns) > 1000
    for b in bins[::5]:
        inside = [(score, sat) for ts, score, sat in turns if b.start <= ts < b.end]
        scored = [score for score, _ in inside if score is not None]
        rated = [sat for _, sat in inside if sat is not None]
        assert b.rewards == len(scored) and b.ratings == len(rated)
        assert b.reward is not None and math.isclose(b.reward, sum(scored) / len(scored), rel_tol=1e-9)
        assert b.satisfaction is not None and math.isclose(b.satisfaction, sum(rated) / len(rated), rel_tol=1e-9)


def test_annotators_and_viewers_are_refused_what_is_not_theirs(ops) -> None:
    base, sessions, alert, url = ops
    before = cycles_of(sessions, alert.id)
    with httpx.Client(base_url=base, timeout=60, follow_redirects=False) as http:
        annotator = key_of(url, "annotator")
        refused = http.post("/login", data={"key": annotator, "next": "/cycles"})
        assert refused.status_code == 403 and "viewer or admin key" in refused.text
        unknown = http.post("/login", data={"key": "mon_" + "x" * 43})
        assert unknown.status_code == 401 and "unknown or revoked" in unknown.text
        elsewhere = http.post("/login", data={"key": key_of(url, "viewer"), "next": "//evil.example/x"})
        assert elsewhere.headers["location"] == "/alerts"
        http.cookies.clear()
        http.cookies.set(COOKIE, annotator)
        for path in (f"/alerts/{alert.id}", "/alerts", "/cycles"):
            page = http.get(path)
            assert page.status_code == 403 and "has the role annotator" in page.text, path
        assert http.post(f"/alerts/{alert.id}/relabel", data={"size": "5", "form_token": "t"}).status_code == 403
        http.cookies.clear()
        signed_out = http.post(f"/alerts/{alert.id}/relabel", data={"size": "5", "form_token": "t"})
        assert signed_out.headers["location"] == f"/login?next=/alerts/{alert.id}"  # back to the page, not the POST
    with signed_in(base, url, "viewer") as viewer:
        page = viewer.get(f"/alerts/{alert.id}")
        token = page.text.split('name="form_token" value="')[1].split('"')[0]
        posted = viewer.post(f"/alerts/{alert.id}/relabel", data={"size": "5", "strategy": "random",
                                                                  "form_token": token})
        assert posted.status_code == 403 and "needs an admin key" in posted.text
        missing = viewer.get("/alerts/999999")
        assert missing.status_code == 404 and "alert 999999 not found" in missing.text
        assert viewer.get("/cycles/999999").status_code == 404
    assert cycles_of(sessions, alert.id) == before


def test_an_admin_opens_one_cycle_however_often_the_form_is_sent(ops) -> None:
    base, sessions, alert, url = ops
    before = cycles_of(sessions, alert.id)
    with signed_in(base, url, "admin") as admin:
        page = admin.get(f"/alerts/{alert.id}")
        assert 'id="open-cycle" disabled' not in page.text
        token = page.text.split('name="form_token" value="')[1].split('"')[0]
        assert token != admin.get(f"/alerts/{alert.id}").text.split('name="form_token" value="')[1].split('"')[0]

        bad = admin.post(f"/alerts/{alert.id}/relabel", data={"size": "0", "strategy": "random", "form_token": token})
        assert bad.status_code == 422 and 'id="error"' in bad.text and "size" in bad.text
        assert 'id="timeline"' in bad.text and 'value="0"' in bad.text  # the page again, with what was sent
        odd = admin.post(f"/alerts/{alert.id}/relabel", data={"size": "3", "strategy": "loudest", "form_token": token})
        assert odd.status_code == 422 and "strategy" in odd.text

        form = {"size": "6", "strategy": "random", "form_token": token}
        first = admin.post(f"/alerts/{alert.id}/relabel", data=form)
        assert first.status_code == 303, first.text[:2000]
        second = admin.post(f"/alerts/{alert.id}/relabel", data=form)
        assert second.status_code == 303
        opened = int(first.headers["location"].split("opened=")[1].split("&")[0])
        assert first.headers["location"] == f"/cycles?opened={opened}&created=1"
        assert second.headers["location"] == f"/cycles?opened={opened}&created=0"
        assert cycles_of(sessions, alert.id) == [*before, opened]

        clash = admin.post(f"/alerts/{alert.id}/relabel", data={**form, "size": "7"})
        assert clash.status_code == 409 and "another request" in clash.text
        assert cycles_of(sessions, alert.id) == [*before, opened]

        listing = admin.get(f"/cycles?opened={opened}&created=1")
        assert listing.status_code == 200 and f"Opened cycle {opened}." in listing.text
        row = listing.text.split(f'id="cycle-{opened}"')[1].split("</tr>")[0]
        assert f'href="/alerts/{alert.id}"' in row and "random" in row and "<progress" in row
        assert f'href="/v1/relabel-cycles/{opened}/export?format=jsonl"' in row
        detail = admin.get(f"/cycles/{opened}")
        assert detail.status_code == 200 and 'id="rm-audit"' in detail.text and "Preferences so far" in detail.text
        assert f'href="/cycles/{opened}"' in admin.get(f"/alerts/{alert.id}").text
    with sessions() as session:
        cycle = session.get(RelabelCycle, opened)
        assert cycle is not None and cycle.request["size"] == 6 and cycle.request["strategy"] == "random"
        assert cycle.alert_id == alert.id and cycle.created_by.startswith("admin-")
        assert session.scalar(select(func.count()).select_from(RelabelCycle)
                              .where(RelabelCycle.idempotency_key == token)) == 1


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium")
def test_an_admin_opens_a_cycle_from_the_alert_page_in_a_real_browser(ops) -> None:
    from playwright.sync_api import sync_playwright

    base, sessions, alert, url = ops
    before = cycles_of(sessions, alert.id)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{base}/alerts/{alert.id}")
            assert page.url.endswith(f"/login?next=/alerts/{alert.id}")
            page.fill("#key", key_of(url, "admin"))
            page.click("#sign-in")
            page.wait_for_selector("#timeline svg")
            assert page.url.endswith(f"/alerts/{alert.id}")
            assert page.locator("#timeline svg g.series").count() == 2
            assert page.locator("#timeline svg circle").count() >= 24
            assert page.locator("#attribution-modes svg rect.bar").count() >= 2
            box = page.locator("#timeline svg").bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 150  # drawn, not collapsed
            assert "<script>" in page.inner_text("#examples")  # shown as text, never run
            page.fill("#size", "4")
            page.select_option("#strategy", "uncertainty")
            with page.expect_navigation(timeout=240_000):
                page.click("#open-cycle")
            assert "/cycles?opened=" in page.url
            opened = int(page.url.split("opened=")[1].split("&")[0])
            assert f"Opened cycle {opened}." in page.inner_text("#notice")
            row = page.locator(f"#cycle-{opened}")
            assert "uncertainty" in row.inner_text() and row.locator("progress").count() == 1
        finally:
            browser.close()
    assert cycles_of(sessions, alert.id) == [*before, opened]
