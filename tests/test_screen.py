"""The operator's screen (amflow_edge/web/static) in headless Chromium against a real station: mock cameras,
inspection, the HTTP API and a real broker.

One station serves every step, in the order a shift meets them: a scan appears with its machine verdict; the
station's own button decides it and the screen follows without a reload; an operator logs in at the screen and
rejects it with a reason and a comment, which goes out on MQTT like any decision; a plant system's MQTT decision
shows too. A second station, given a part none of its batch's designs fits, is unsure: the screen offers the
candidates, the operator assigns one scan and sets the next aside as not of the batch, each going out on MQTT as a
plant system's request would. Screenshots of each step are kept (tests/browser.py says where).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from amflow_edge.config.loading import load_config
from amflow_edge.panel.base import ButtonPress
from amflow_edge.qc.reasons import load_reasons
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from amflow_edge.web.server import HttpServer
from tests.browser import SCREEN, artifacts, chromium, screen_page, screenshot
from tests.mqtt_helpers import Broker, Subscriber
from tests.polling import wait_for
from tests.station_files import write_station
from tests.test_daemon_identification import PIPE_CLIP, batch_file, station_with_batch

PREFIX = "amflow/test-station"
PIN = "246801"  # [http] pin: 6 to 12 digits
SHOWN_WITHIN_MS = 3000
"""What the test allows a change to reach the screen on a loaded CI machine; benchmarks/screen_latency.py measures
the real figure against the 300 ms target."""
TITLES = {r.id: r.title for r in load_reasons().reasons}


@dataclass
class Screen:
    station: Station
    subscriber: Subscriber
    url: str
    read_url: str
    """The read-only address ([http] read_listen)."""


HTTP: dict[str, Any] = {"listen": "127.0.0.1:0", "read_listen": "127.0.0.2:0", "pin": PIN}
"""With the read-only address too (station.http.addresses[1]), on another loopback address: the same port 0
would be refused as the same address."""


@contextmanager
def serving(station: Station, broker: Broker) -> Iterator[Screen]:
    """The station started, its screen's address, and a plant subscriber to every topic of the station."""
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    try:
        station.start(RunOptions())
        assert isinstance(station.http, HttpServer)
        full, read = station.http.addresses
        yield Screen(station, subscriber, f"{full}/", f"{read}/")
    finally:
        station.shutdown()
        subscriber.close()


@pytest.fixture
def screen_station(tmp_path: Path, broker: Broker) -> Iterator[Screen]:
    config = write_station(
        tmp_path,
        broker.port,
        {
            "mock": {"scene_pool": 1},
            "inspection": {"enabled": True},
            "qc": {"policy": "every", "lockout_s": 0},
            "http": HTTP,
        },
    )
    with serving(build_station(load_config(config)), broker) as screen:
        yield screen


@pytest.fixture
def unsure_station(tmp_path: Path, broker: Broker) -> Iterator[Screen]:
    """A batch of three parts, and a tray on which the mock places only a pipe clip, which is none of them: every
    scan is left to the operator, with the batch's designs as its candidates."""
    sections: dict[str, dict[str, Any]] = {"mock": {"designs": [PIPE_CLIP]}, "http": HTTP}
    station = station_with_batch(tmp_path, broker, sections, batch_file(tmp_path / "batch"))
    with serving(station, broker) as screen:
        yield screen


def next_event(subscriber: Subscriber, event: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(subscriber.next(topic=f"{PREFIX}/event/{event}", timeout_s=120).payload)["data"]
    return data


def event_of(subscriber: Subscriber, event: str, scan: str) -> dict[str, Any]:
    """The next `event` about `scan`; those about other scans (an inspection finishing meanwhile) are passed over."""
    while (data := next_event(subscriber, event))["uuid"] != scan:
        pass
    return data


def verdict_of(scan: dict[str, Any]) -> str:
    if scan["qc_operator"] is not None:
        return "pass" if scan["qc_operator"] else "fail"
    if scan["qc_needs_review"]:
        return "review"
    return "pass" if scan["qc_machine"] else "fail"


def shows(page: Page, scan: dict[str, Any], words: str) -> None:
    """The verdict box shows this version of the scan, its verdict in colour and in words, and its reasons."""
    verdict = page.locator("#verdict")
    expect(verdict).to_have_attribute("data-scan", scan["uuid"], timeout=SHOWN_WITHIN_MS)
    expect(verdict).to_have_attribute("data-modified", scan["modified"], timeout=SHOWN_WITHIN_MS)
    expect(verdict).to_have_attribute("data-verdict", verdict_of(scan))
    expect(page.locator("#verdict-word")).to_have_text(verdict_of(scan), ignore_case=True)
    expect(page.locator("#scan-facts")).to_contain_text(words)
    for reason in scan["qc_reasons"]:
        expect(page.locator("#verdict-reasons")).to_contain_text(TITLES[reason])


def test_the_screen_follows_the_station_and_the_operator_rejects_a_part(screen_station: Screen, tmp_path: Path) -> None:
    station, subscriber = screen_station.station, screen_station.subscriber
    shots = artifacts(tmp_path)
    with chromium() as browser:
        page, errors = screen_page(browser, screen_station.url)
        expect(page.locator("#link")).to_have_attribute("data-live", "true")
        expect(page.locator("#verdict")).to_have_attribute("data-verdict", "idle")
        expect(page.locator("#health")).to_contain_text("Cameras 5/5")
        expect(page.locator("#health")).to_contain_text("Broker")
        # The page runs under the station's Content-Security-Policy (no inline script, style or event handler): a
        # violation would be a console error, and the errors are checked at the end.
        assert "default-src 'self'" in page.request.get(screen_station.url).headers["content-security-policy"]

        # A scan: it appears, is inspected, and its machine verdict shows with the reasons in words.
        result = station.loop.capture(Trigger(source="test"))
        assert result.ok and result.uuid
        captured = next_event(subscriber, "scan.capture")
        machine = next_event(subscriber, "scan.quality_control")
        assert machine["uuid"] == captured["uuid"] == result.uuid
        shows(page, machine, "asks for a person" if machine["qc_needs_review"] else "the inspection")
        expect(page.locator("#views button.view")).to_have_count(6)  # five cameras and the inspection's overlays
        # The tiles show thumbnails as wide as a tile; the full 2448 px images are for the zoom only.
        tile = page.locator("#views button.view img").first
        expect(tile).to_have_attribute("src", re.compile(rf"^/api/scan/{result.uuid}/thumbnail/1/\?w=\d+$"))
        # Polled from here: wait_for_function polls with `new Function` in the page, which the screen's CSP forbids.
        assert wait_for(lambda: page.evaluate("document.querySelector('#views button.view img')?.naturalWidth > 0"), 30)
        assert tile.evaluate("img => img.naturalWidth") <= 960
        expect(page.locator("#recent .recent-item")).to_have_count(1)
        screenshot(page, shots, "1-machine-verdict")

        # Tap a camera: its full image, zoomable; the arrow keys move to the next camera; Esc closes.
        page.locator("#views button.view").nth(1).click()
        zoom = page.locator("#zoom")
        expect(zoom).to_be_visible()
        expect(page.locator("#zoom-title")).to_have_text("cam02")
        assert wait_for(lambda: page.evaluate("document.getElementById('zoom-image')?.naturalWidth > 0"), 30)
        page.keyboard.press("ArrowRight")
        expect(page.locator("#zoom-title")).to_have_text("cam03")
        page.keyboard.press("+")
        screenshot(page, shots, "2-zoom")
        page.keyboard.press("Escape")
        expect(zoom).to_be_hidden()

        # The station's own button approves: the screen follows without a reload.
        page.evaluate("window.__notReloaded = true")
        assert station.panel.press(ButtonPress("approve", "test:panel", datetime.now(UTC))) is not None
        approved = next_event(subscriber, "scan.quality_control")
        assert approved["qc_operator"] is True
        shows(page, approved, "Approved by the operator")

        # The operator picks a reason, writes a comment and rejects: asked to log in first, the reject follows.
        page.get_by_role("button", name=TITLES["dimensional_deviation"]).click()
        page.get_by_label("Comment").fill("layer shift at 12 mm")
        page.get_by_role("button", name="Reject").click()
        login = page.locator("#login")
        expect(login).to_be_visible()
        page.get_by_label("Station PIN").fill("0000")
        page.get_by_label("Operator name").fill("badge-0417")
        page.locator("#login-submit").click()
        expect(page.locator("#login-message")).not_to_be_empty()  # a wrong PIN is refused and said so
        page.get_by_label("Station PIN").fill(PIN)
        page.locator("#login-submit").click()
        expect(login).to_be_hidden()
        expect(page.locator("#operator-name")).to_have_text("Operator: badge-0417")
        rejected = next_event(subscriber, "scan.quality_control")
        assert (rejected["uuid"], rejected["qc_operator"], rejected["qc_pass"]) == (result.uuid, False, False)
        assert rejected["qc_reasons"] == ["dimensional_deviation"]
        assert rejected["qc_comment"] == "layer shift at 12 mm"
        shows(page, rejected, "Rejected by the operator")
        expect(page.locator("#verdict-reasons")).to_contain_text("layer shift at 12 mm")
        record = station.events.record(result.uuid)
        assert record is not None and record.station.decisions[-1].device == "http:badge-0417"
        screenshot(page, shots, "3-rejected-by-the-operator")

        # A plant system approves over MQTT.
        subscriber.publish(f"{PREFIX}/request/qc", json.dumps({"scan": result.uuid, "pass": True}).encode())
        plant = next_event(subscriber, "scan.quality_control")
        shows(page, plant, "Approved by the operator")
        decisions = len(record_of(station, result.uuid).station.decisions)

        # A barcode scanner typing "A123⏎" while no field has focus decides nothing: the key A waits for Enter,
        # another key cancels it, and the Enter (also on a focused decision button) only asks again.
        page.keyboard.type("A123\n")
        expect(page.locator("#decide-message")).to_contain_text("Not sent")
        page.keyboard.press("Escape")
        expect(page.locator("#key-confirm")).to_be_hidden()
        # The operator's key R, then Enter at a hand's pace: it rejects.
        page.keyboard.press("r")
        expect(page.locator("#key-confirm")).to_contain_text("Press Enter to reject")
        page.wait_for_timeout(300)
        page.keyboard.press("Enter")
        by_key = next_event(subscriber, "scan.quality_control")
        assert by_key["qc_operator"] is False
        shows(page, by_key, "Rejected by the operator")
        assert len(record_of(station, result.uuid).station.decisions) == decisions + 1  # the scanner's made none
        assert page.evaluate("window.__notReloaded") is True

        # A press on Approve as the next part's scan arrives: the decision belongs to the scan shown at the press,
        # which is no longer on the screen at the release, so it is refused in words, not sent for the new part.
        button = page.locator("#approve").bounding_box()
        assert button is not None
        page.mouse.move(button["x"] + button["width"] / 2, button["y"] + button["height"] / 2)
        page.mouse.down()

        second = station.loop.capture(Trigger(source="test"))
        assert second.ok and second.uuid
        expect(page.locator("#verdict")).to_have_attribute("data-scan", second.uuid, timeout=SHOWN_WITHIN_MS)
        page.mouse.up()
        expect(page.locator("#decide-message")).to_contain_text("The part on the screen changed")
        assert record_of(station, second.uuid).station.decisions == []
        assert len(record_of(station, result.uuid).station.decisions) == decisions + 1

        # The next part on the tray has taken the screen; the recent scans lead back to the first, and Esc to live.
        expect(page.locator("#recent .recent-item")).to_have_count(2)
        page.locator(f"#recent .recent-item[data-key='{result.uuid}']").click()
        expect(page.locator("#verdict")).to_have_attribute("data-scan", result.uuid)
        expect(page.locator("#history-bar")).to_be_visible()
        expect(page.locator("#verdict")).to_have_attribute("data-verdict", "fail")
        page.keyboard.press("Escape")
        expect(page.locator("#history-bar")).to_be_hidden()
        expect(page.locator("#verdict")).to_have_attribute("data-scan", second.uuid)
        assert page.evaluate("window.__notReloaded") is True

        page.get_by_role("button", name="Log out").click()
        expect(page.locator("#operator-name")).to_have_text("Not logged in")
        # The one failed request the page met was the wrong PIN's, which it answered in words.
        assert errors == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]

        # The read-only address shows the station but takes no decision (403 to every POST): a login is refused
        # there, and the screen then says "View only" and offers no decision.
        viewer, _ = screen_page(browser, screen_station.read_url)
        expect(viewer.locator("#link")).to_have_attribute("data-live", "true")
        expect(viewer.locator("#verdict")).to_have_attribute("data-scan", second.uuid)
        viewer.get_by_role("button", name="Log in").click()
        viewer.get_by_label("Operator name").fill("badge-0417")
        viewer.get_by_label("Station PIN").fill(PIN)
        viewer.locator("#login-submit").click()
        expect(viewer.locator("#login")).to_be_hidden()
        expect(viewer.locator("#operator-name")).to_have_text("View only")
        expect(viewer.locator("#view-only")).to_be_visible()
        for hidden in ("#approve", "#reject", "#comment", "#login-button"):
            expect(viewer.locator(hidden)).to_be_hidden()
        screenshot(viewer, shots, "7-view-only")

        # A login kept from before the station restarted (its tokens live in memory only), on a station whose
        # reads need one (read_token): the stream and the reads answer 401 (mocked here). The screen drops the
        # login, says why and asks; signed in, it follows the station again.
        stale = browser.new_page(viewport=SCREEN, has_touch=True)
        kept = {"token": "from-before-the-restart", "operator": "badge-0417", "expires_at": "2999-01-01T00:00:00Z"}
        stale.add_init_script(f"sessionStorage.setItem('amflow.operator', {json.dumps(json.dumps(kept))})")
        for route in ("**/api/events/", "**/api/state/", "**/api/scans/*"):
            stale.route(route, lambda r: r.fulfill(status=401, json={"error": "reading needs a credential"}))
        stale.goto(screen_station.url)
        expect(stale.locator("#sign-in-needed")).to_contain_text("Your sign-in expired")
        expect(stale.locator("#link")).to_have_text("Sign-in needed")
        expect(stale.locator("#operator-name")).to_have_text("Not logged in")
        expect(stale.locator("#login")).to_be_visible()
        screenshot(stale, shots, "8-sign-in-expired")
        stale.unroute_all()
        expect(stale.locator("#login-message")).to_have_text("Your sign-in expired: sign in again to see the scans.")
        expect(stale.get_by_label("Operator name")).to_have_value("badge-0417")  # only the PIN to type again
        stale.get_by_label("Station PIN").fill(PIN)
        stale.locator("#login-submit").click()
        expect(stale.locator("#link")).to_have_attribute("data-live", "true")
        expect(stale.locator("#sign-in-needed")).to_be_hidden()
        expect(stale.locator("#verdict")).to_have_attribute("data-scan", second.uuid)


def record_of(station: Station, scan: str) -> Any:
    record = station.events.record(scan)
    assert record is not None
    return record


def candidate_parts(station: Station, scan: str) -> list[str]:
    """The part_ids the screen should offer for a scan the station left to the operator, best candidate first."""
    waiting = [a for a in station.state().awaiting_identification if a.scan == scan]
    assert len(waiting) == 1, f"the station's state names {scan} as awaiting the operator {len(waiting)} times"
    parts = station.sessions.current.parts
    return [p.part_id for c in waiting[0].candidates for p in parts if p.design_material == c.design_material]


def test_the_operator_tells_the_station_which_part_it_was_not_sure_of(unsure_station: Screen, tmp_path: Path) -> None:
    station, subscriber = unsure_station.station, unsure_station.subscriber
    parts = {p.part_id: p for p in station.sessions.current.parts}
    copies = sum(p.copies for p in parts.values())
    shots = artifacts(tmp_path)
    with chromium() as browser:
        page, errors = screen_page(browser, unsure_station.url)
        expect(page.locator("#link")).to_have_attribute("data-live", "true")
        expect(page.locator("#batch-body .batch-total")).to_have_text(f"0 of {copies} parts found")
        page.evaluate("window.__notReloaded = true")

        # A part of no design of the batch: the station will not choose, and the screen asks which part it is.
        first = station.loop.capture(Trigger(source="test"))
        assert first.ok and first.uuid
        unsure = next_event(subscriber, "scan.quality_control")
        assert unsure["uuid"] == first.uuid
        assert (unsure["design_material"], unsure["assignment"], unsure["qc_needs_review"]) == (None, None, True)
        offered = candidate_parts(station, first.uuid)
        assert offered, "the station offered no part of the batch"
        chosen = parts[offered[-1]]  # the one the operator taps; the event must name exactly this part
        expect(page.locator("#verdict")).to_have_attribute("data-scan", first.uuid, timeout=SHOWN_WITHIN_MS)
        identify = page.locator("#identify")
        expect(identify).to_be_visible(timeout=SHOWN_WITHIN_MS)
        waiting = station.state().awaiting_identification[0]
        expect(page.locator("#identify-reason")).to_have_text(waiting.reason)
        buttons = page.locator("#candidates button.candidate")
        expect(buttons).to_have_count(len(offered) + 2)
        keys = [buttons.nth(i).get_attribute("data-key") for i in range(len(offered) + 2)]
        assert keys == [*offered, "other", "reject"]
        expect(page.locator(f"#candidates button[data-key='{chosen.part_id}']")).to_contain_text(chosen.part_title)
        screenshot(page, shots, "4-which-part-is-it")

        # The operator knows better than the station: "Another part…" lists every part of the batch, and the one
        # tapped there (one the station did not offer, if the batch has one) is assigned like an offered one.
        chosen = parts[next((p for p in parts if p not in offered), offered[-1])]
        page.locator("#candidates button[data-key='other']").click()
        picker = page.locator("#parts-dialog")
        expect(picker).to_be_visible()
        expect(picker.locator("button.candidate")).to_have_count(len(parts))
        picker.locator(f"button[data-key='{chosen.part_id}']").click()
        expect(picker).to_be_hidden()
        expect(page.locator("#login")).to_be_visible()
        page.get_by_label("Operator name").fill("badge-0417")
        page.get_by_label("Station PIN").fill(PIN)
        page.locator("#login-submit").click()
        assigned = next_event(subscriber, "scan.assign")
        assert assigned["uuid"] == first.uuid
        assert assigned["assignment"]["part_id"] == chosen.part_id and assigned["assignment"]["manual"] is True
        assert assigned["design_material"] == chosen.design_material
        assert chosen.output is not None and assigned["output"] == chosen.output.model_dump(mode="json")
        expect(identify).to_be_hidden(timeout=SHOWN_WITHIN_MS)
        expect(page.locator("#part-title")).to_have_text(chosen.part_title)
        expect(page.locator(f"#recent .recent-item[data-key='{first.uuid}']")).to_contain_text(chosen.part_title)
        expect(page.locator("#batch-body .batch-total")).to_have_text(f"1 of {copies} parts found")
        row = page.locator("#batch-body .part-row", has_text=chosen.part_title)
        expect(row.locator(".part-count")).to_have_text(f"1/{chosen.copies}")
        screenshot(page, shots, "5-assigned-by-the-operator")

        # The next scan is no part of the batch at all: the operator says so, and that goes out too.
        second = station.loop.capture(Trigger(source="test"))
        assert second.ok and second.uuid
        event_of(subscriber, "scan.quality_control", second.uuid)
        expect(page.locator("#verdict")).to_have_attribute("data-scan", second.uuid, timeout=SHOWN_WITHIN_MS)
        expect(identify).to_be_visible(timeout=SHOWN_WITHIN_MS)
        page.locator("#candidates button[data-key='reject']").click()  # logged in: no question asked
        rejected = next_event(subscriber, "scan.reject")
        assert rejected["uuid"] == second.uuid
        assert (rejected["assignment"], rejected["output"], rejected["design_material"]) == (None, None, None)
        assert rejected["qc_comment"] == "Not a part of this batch"
        expect(identify).to_be_hidden(timeout=SHOWN_WITHIN_MS)
        expect(page.locator("#verdict")).to_have_attribute("data-verdict", "not_in_batch")
        expect(page.locator("#part-title")).to_have_text("Not a part of this batch")
        expect(page.locator(f"#recent .recent-item[data-key='{second.uuid}']")).to_contain_text("not in batch")
        expect(page.locator("#batch-body .batch-total")).to_have_text(f"1 of {copies} parts found")
        screenshot(page, shots, "6-not-a-part-of-this-batch")

        # A plant system takes the first scan's assignment back: not the part on the tray, so the station publishes
        # no new state for it, and the screen's count follows the event.
        subscriber.publish(f"{PREFIX}/request/unassign", json.dumps({"scan": first.uuid}).encode())
        assert next_event(subscriber, "scan.unassign")["uuid"] == first.uuid
        expect(page.locator("#batch-body .batch-total")).to_have_text(f"0 of {copies} parts found")
        expect(row.locator(".part-count")).to_have_text(f"0/{chosen.copies}")
        assert page.evaluate("window.__notReloaded") is True

        # Ten minutes without a touch on a shared screen: the next touch finds the login ended, before it can act.
        expect(page.locator("#idle-left")).to_have_text("logs out after 10 min idle")
        page.evaluate("sessionStorage.setItem('amflow.active_at', String(Date.now() - 11 * 60 * 1000))")
        page.locator("#verdict").click()
        expect(page.locator("#operator-name")).to_have_text("Not logged in")
        expect(page.locator("#decide-message")).to_have_text("Logged out after 10 minutes without use.")
        expect(page.locator("#idle-left")).to_be_empty()
        assert errors == []
