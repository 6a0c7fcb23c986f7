#!/usr/bin/env python3
"""The web console in a real browser.

Drives Debian's Chromium with Playwright through every page of the console of a running
Refold server (authentication on, an admin token), as a user would, and checks that each
page shows the same truth the API tells. A full-page screenshot of each page goes to the
screenshots folder.

    python console_test.py --url http://127.0.0.1:PORT --token ADMIN_TOKEN \
        --screenshots DIR --wasm PATH/TO/bank-account.wasm [--read-token READ_TOKEN]

The server is expected to run the modules `bank-account` (reducer), `order-summary`
(projection) and `hostile` (a reducer faulted at a `Panic` event of stream `hostile-1`),
over events in `account-*`, `order-*` and `hostile-1` streams. Numbers are never assumed:
they are read from the API. The script appends a few events of its own (streams
`console-*`), pauses and resumes `bank-account`, skips `hostile`'s faulted event and
deploys `uploaded-bank`.

Exits 0 when every check passes; otherwise prints the failed step and exits 1.
"""

import argparse
import contextlib
import hashlib
import json
import re
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 20_000
# An append rate as the dashboard shows it: "0.0", "7.5", "1,234".
RATE = re.compile(r"^[0-9][0-9,]*(\.[0-9])?$")


class Api:
    """The API itself, for the truth the pages are compared with."""

    def __init__(self, base: str, token: str):
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method, path, body=None, content_type="application/json", token=None):
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as err:
            text = err.read()
            return err.code, json.loads(text) if text else None

    def get(self, path, **params):
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        status, body = self.call("GET", path + (f"?{query}" if query else ""))
        assert status == 200, f"GET {path} answered {status}: {body}"
        return body

    def append(self, stream, event_type, data):
        status, body = self.call("POST", f"/streams/{quote(stream)}", {"type": event_type, "data": data})
        assert status == 201, f"appending to {stream} answered {status}: {body}"
        return body


def quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def grouped(n: int) -> str:
    """A number as the console shows it (en-US grouping)."""
    return f"{n:,}"


def pretty(value) -> str:
    """JSON as the console pretty-prints it (JSON.stringify with two spaces)."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def by_testid(page: Page, testid: str, **attrs):
    selector = f'[data-testid="{testid}"]' + "".join(f'[data-{k}="{v}"]' for k, v in attrs.items())
    return page.locator(selector)


class Run:
    """The browser session, the API, the screenshots, and the step being checked."""

    def __init__(self, args, page: Page):
        self.args = args
        self.page = page
        self.api = Api(args.url, args.token)
        self.shots = Path(args.screenshots)
        self.shots.mkdir(parents=True, exist_ok=True)
        self.step_name = "start"
        self.dialogs = []
        self.problems = []

    @contextlib.contextmanager
    def step(self, name):
        self.step_name = name
        started = time.monotonic()
        print(f"[console] {name} …", flush=True)
        yield
        print(f"[console] {name}: ok ({time.monotonic() - started:.1f} s)", flush=True)

    def shot(self, name):
        # Let fonts and the last refresh settle, then take the whole page.
        self.page.wait_for_timeout(300)
        self.page.screenshot(path=str(self.shots / name), full_page=True)

    def nav(self, testid, page_name):
        self.page.click(f'[data-testid="{testid}"]')
        expect(self.page.locator("#view")).to_have_attribute("data-page", page_name)


def check_login(run: Run):
    page, args = run.page, run.args
    page.goto(args.url + "/")
    login = page.locator("#login")
    expect(login).to_be_visible()
    expect(by_testid(page, "login-reason")).to_contain_text("requires a token")
    run.shot("01-login.png")

    page.fill("#login-token", f"wrong-{uuid.uuid4().hex}")
    page.click("#login-submit")
    expect(by_testid(page, "login-error")).to_be_visible()
    expect(by_testid(page, "login-error")).to_contain_text("refused")
    expect(login).to_be_visible()

    page.fill("#login-token", args.token)
    page.click("#login-submit")
    expect(login).to_be_hidden()
    stored = page.evaluate("localStorage.getItem('refold.token')")
    assert stored == args.token, "the token is kept in localStorage"


def check_dashboard(run: Run):
    page, api = run.page, run.api
    run.nav("nav-dashboard", "dashboard")
    modules = {m["name"]: m for m in api.get("/projections")["projections"]}
    for name in ("bank-account", "order-summary", "hostile"):
        assert name in modules, f"the server runs {name} (API: {sorted(modules)})"
    head = api.get("/health")["head"]
    expect(by_testid(page, "dash-head")).to_have_text(grouped(head))
    expect(by_testid(page, "dash-modules")).to_have_text(grouped(len(modules)))
    for name, module in modules.items():
        row = by_testid(page, "module-row", name=name)
        expect(row).to_have_count(1)
        expect(row.locator('[data-testid="module-status"]')).to_have_text(module["status"])
        expect(row.locator('[data-testid="module-lag"]')).to_have_text(grouped(module["lag"]))
    expect(by_testid(page, "module-row", name="hostile").locator('[data-testid="module-status"]')).to_have_text("faulted")
    expect(by_testid(page, "module-error-row", name="hostile")).to_contain_text("hostile panic")

    # The append rate: a burst of appends shows as a rate above zero, then the head follows.
    expect(by_testid(page, "dash-rate")).to_have_text(RATE)
    for i in range(40):
        api.append(f"console-rate-{i % 4}", "RateProbe", {"i": i})
    expect(by_testid(page, "dash-rate")).not_to_have_text("0.0", timeout=8_000)
    head = api.get("/health")["head"]
    expect(by_testid(page, "dash-head")).to_have_text(grouped(head))
    expect(by_testid(page, "dash-recent").locator('[data-testid="log-row"]').first).to_have_attribute("data-position", str(head - 1))
    run.shot("02-dashboard.png")


def listed_streams(page: Page):
    return by_testid(page, "stream-row").evaluate_all("rows => rows.map(r => r.dataset.stream)")


def check_streams(run: Run):
    page, api = run.page, run.api
    run.nav("nav-streams", "streams")
    expect(by_testid(page, "streams-table")).to_be_visible()
    first_page = [s["stream"] for s in api.get("/streams", limit=50)["streams"]]
    expect(by_testid(page, "stream-row")).to_have_count(len(first_page))
    assert listed_streams(page) == first_page, f"streams page 1: {listed_streams(page)} != {first_page}"
    run.shot("03-streams.png")

    # By category: the select lists every category; choosing one filters by `<category>-`.
    page.select_option('[data-testid="streams-category"]', "order")
    expected = [s["stream"] for s in api.get("/streams", prefix="order-", limit=50)["streams"]]
    expect(by_testid(page, "streams-prefix")).to_have_value("order-")
    expect(by_testid(page, "stream-row")).to_have_count(len(expected))
    assert listed_streams(page) == expected, f"category order: {listed_streams(page)} != {expected}"

    # By prefix.
    page.fill('[data-testid="streams-prefix"]', "account-")
    page.click('[data-testid="streams-filter"]')
    expected = [s["stream"] for s in api.get("/streams", prefix="account-", limit=50)["streams"]]
    assert expected and all(s.startswith("account-") for s in expected), expected
    expect(by_testid(page, "stream-row")).to_have_count(len(expected))
    shown = listed_streams(page)
    assert shown == expected, f"prefix account-: {shown} != {expected}"
    assert all(s.startswith("account-") for s in shown), shown

    # One stream, newest first, then the next (older) page.
    by_testid(page, "stream-row", stream="account-1").locator("a").first.click()
    expect(page.locator("#view")).to_have_attribute("data-page", "streams-detail")
    expect(by_testid(page, "stream-name")).to_have_text("account-1")
    reading = api.get("/streams/account-1", direction="backward", limit=20)
    compare_events(page, reading["events"], "account-1 newest first")
    last = reading["events"][0]["revision"]
    expect(by_testid(page, "stream-info")).to_contain_text(f"last revision {grouped(last)}")
    run.shot("04-stream-account-1.png")
    if reading["next"] is not None:
        page.click('[data-testid="stream-next"]')
        older = api.get("/streams/account-1", direction="backward", limit=20, **{"from": reading["next"]})
        expect(by_testid(page, "event").first).to_have_attribute("data-revision", str(older["events"][0]["revision"]))
        compare_events(page, older["events"], "account-1 older page")
    page.click('[data-testid="stream-oldest"]')
    oldest = api.get("/streams/account-1", direction="forward", limit=20, **{"from": 0})
    expect(by_testid(page, "event").first).to_have_attribute("data-revision", "0")
    compare_events(page, oldest["events"], "account-1 oldest first")


def compare_events(page: Page, events, what):
    expect(by_testid(page, "event")).to_have_count(len(events))
    shown = by_testid(page, "event").evaluate_all(
        """cards => cards.map(c => ({
            revision: Number(c.dataset.revision),
            position: Number(c.dataset.position),
            id: c.querySelector('[data-testid=event-id]').textContent,
            type: c.querySelector('[data-testid=event-type]').textContent,
            recorded: c.querySelector('[data-testid=event-recorded] time').getAttribute('datetime'),
            data: c.querySelector('[data-testid=event-data]').textContent,
            metadata: c.querySelector('[data-testid=event-metadata]').textContent,
        }))"""
    )
    for card, event in zip(shown, events):
        where = f"{what}, revision {event['revision']}"
        assert card["revision"] == event["revision"], f"{where}: revision {card['revision']}"
        assert card["position"] == event["position"], f"{where}: position {card['position']}"
        assert card["id"] == event["id"], f"{where}: id {card['id']}"
        assert card["type"] == event["type"], f"{where}: type {card['type']}"
        assert card["recorded"] == event["recorded_at"], f"{where}: recorded_at {card['recorded']}"
        assert json.loads(card["data"]) == event["data"], f"{where}: data {card['data']}"
        assert card["data"] == pretty(event["data"]), f"{where}: data not pretty-printed: {card['data']!r}"
        assert json.loads(card["metadata"]) == event["metadata"], f"{where}: metadata {card['metadata']}"


def check_global_log(run: Run):
    page, api = run.page, run.api
    run.nav("nav-all", "all")
    page.fill('[data-testid="all-type"]', "Deposited")
    page.fill('[data-testid="all-category"]', "account")
    page.click('[data-testid="all-apply"]')
    expected = api.get("/all", type="Deposited", category="account", limit=50, **{"from": 0})["events"]
    rows = by_testid(page, "all-table").locator('[data-testid="log-row"]')
    expect(rows).to_have_count(len(expected))
    shown = rows.evaluate_all("rows => rows.map(r => [Number(r.dataset.position), r.cells[1].textContent, r.cells[3].textContent])")
    assert shown == [[e["position"], e["stream"], e["type"]] for e in expected], f"filtered log: {shown[:5]} …"
    # The data of a row opens to pretty-printed JSON.
    first = rows.first
    first.locator("summary").click()
    expect(first.locator('[data-testid="log-data"]')).to_have_text(pretty(expected[0]["data"]))
    run.shot("05-all.png")


def check_tail(run: Run):
    page, api = run.page, run.api
    run.nav("nav-tail", "tail")
    status = by_testid(page, "tail-status")
    expect(status).to_have_attribute("data-state", "live")
    marker = uuid.uuid4().hex[:12]
    first_type = f"ConsoleTail{marker}"
    appended = api.append("console-tail-1", first_type, {"marker": marker, "note": "<b>not html</b>"})
    row = by_testid(page, "tail-event", type=first_type)
    expect(row).to_have_count(1, timeout=10_000)
    expect(row).to_have_attribute("data-position", str(appended["first_position"]))
    expect(row.locator("summary")).to_contain_text("<b>not html</b>")
    run.shot("06-tail.png")

    # Paused, nothing new shows; resumed, the tail continues where it stopped.
    page.click('[data-testid="tail-pause"]')
    expect(status).to_have_attribute("data-state", "paused")
    second_type = f"ConsoleTailPaused{marker}"
    api.append("console-tail-1", second_type, {"marker": marker})
    page.wait_for_timeout(1500)
    expect(by_testid(page, "tail-event", type=second_type)).to_have_count(0)
    page.click('[data-testid="tail-pause"]')
    expect(by_testid(page, "tail-event", type=second_type)).to_have_count(1, timeout=10_000)
    expect(by_testid(page, "tail-event").first).to_have_attribute("data-type", second_type)
    page.click('[data-testid="tail-clear"]')
    expect(by_testid(page, "tail-event")).to_have_count(0)


def check_modules(run: Run):
    page, api = run.page, run.api
    run.nav("nav-modules", "modules")
    modules = api.get("/projections")["projections"]
    for module in modules:
        row = by_testid(page, "module-row", name=module["name"])
        expect(row.locator('[data-testid="module-status"]')).to_have_text(module["status"])
    expect(by_testid(page, "module-row", name="hostile")).to_have_attribute("data-status", "faulted")
    expect(by_testid(page, "module-row", name="hostile").locator('[data-testid="module-progress"]')).to_contain_text("stopped at position")
    expect(by_testid(page, "module-error-row", name="hostile")).to_contain_text("hostile panic")
    run.shot("07-modules.png")

    # The faulted module: where it stopped, what the guest said, then Skip.
    fault = api.get("/projections/hostile")["fault"]
    assert fault and fault["event_type"] == "Panic", f"hostile is faulted at a Panic event: {fault}"
    by_testid(page, "module-row", name="hostile").locator('[data-testid="module-link"]').click()
    expect(page.locator("#view")).to_have_attribute("data-page", "modules-detail")
    expect(by_testid(page, "module-name")).to_have_text("hostile")
    expect(by_testid(page, "module-status")).to_have_text("faulted")
    expect(by_testid(page, "fault-message")).to_contain_text("hostile panic")
    expect(by_testid(page, "fault-position")).to_have_text(str(fault["position"]))
    expect(by_testid(page, "fault-event-id")).to_have_text(fault["event_id"])
    expect(by_testid(page, "fault-event-type")).to_have_text("Panic")
    expect(by_testid(page, "fault-stream")).to_have_text(fault["stream"])
    expect(by_testid(page, "fault-log")).to_contain_text("hostile panic")
    expect(by_testid(page, "module-log")).to_contain_text("hostile panic")
    expect(by_testid(page, "action-skip")).to_be_enabled()
    run.shot("08-module-hostile-faulted.png")

    asked = len(run.dialogs)
    page.click('[data-testid="action-skip"]')
    expect(by_testid(page, "module-message")).to_contain_text("Skip")
    assert len(run.dialogs) == asked + 1 and "Skip" in run.dialogs[-1], f"Skip asks first: {run.dialogs[asked:]}"
    expect(by_testid(page, "module-status")).to_have_text("running", timeout=30_000)
    expect(by_testid(page, "fault")).to_have_count(0)
    letter = by_testid(page, "dead-letter", position=fault["position"])
    expect(letter).to_have_count(1)
    expect(letter).to_contain_text("hostile panic")
    after = api.get("/projections/hostile")
    assert after["position"] > fault["position"], f"hostile moved past its event: {after['position']}"
    run.shot("08b-module-hostile-skipped.png")

    # Pause and resume bank-account.
    run.nav("nav-modules", "modules")
    by_testid(page, "module-row", name="bank-account").locator('[data-testid="module-link"]').click()
    expect(by_testid(page, "module-name")).to_have_text("bank-account")
    expect(by_testid(page, "module-status")).to_have_text("running")
    details = api.get("/projections/bank-account")
    expect(by_testid(page, "module-position")).to_have_text(grouped(details["position"]))
    expect(by_testid(page, "module-version")).to_have_attribute("title", details["version"])
    page.click('[data-testid="action-pause"]')
    expect(by_testid(page, "module-status")).to_have_text("paused")
    expect(by_testid(page, "module-message")).to_contain_text("paused")
    assert api.get("/projections/bank-account")["status"] == "paused", "the API says paused"
    page.click('[data-testid="action-resume"]')
    expect(by_testid(page, "module-status")).to_have_text("running")
    assert api.get("/projections/bank-account")["status"] == "running", "the API says running"
    expect(by_testid(page, "versions-table").locator('[data-testid="version-row"]')).to_have_count(len(details["versions"]))
    run.shot("09-module-bank-account.png")


def check_forbidden(run: Run):
    """A read token may look but not act: the console says so."""
    page, args = run.page, run.args
    page.evaluate("token => localStorage.setItem('refold.token', token)", args.read_token)
    page.goto(args.url + "/#/modules/bank-account")
    page.reload()
    expect(by_testid(page, "module-status")).to_have_text("running")
    page.click('[data-testid="action-pause"]')
    expect(by_testid(page, "module-message")).to_contain_text("Your token's role cannot do this")
    assert run.api.get("/projections/bank-account")["status"] == "running", "a read token paused nothing"
    page.evaluate("token => localStorage.setItem('refold.token', token)", args.token)
    page.goto(args.url + "/#/")
    page.reload()
    expect(by_testid(page, "dash-modules")).not_to_have_text("…")


def check_state(run: Run):
    page, api = run.page, run.api
    run.nav("nav-state", "state")
    page.select_option('[data-testid="state-module"]', "bank-account")
    expect(page.locator('[data-testid="state-stream"]')).to_be_visible()
    page.fill('[data-testid="state-stream"]', "account-1")
    page.click('[data-testid="state-submit"]')
    truth = api.get("/projections/bank-account/streams/account-1")
    expect(by_testid(page, "state-revision-shown")).to_have_text(grouped(truth["revision"]))
    shown = by_testid(page, "state-json").text_content()
    assert json.loads(shown) == truth["state"], f"state of account-1: {shown} != {truth['state']}"
    assert shown == pretty(truth["state"]), f"state not pretty-printed: {shown!r}"
    run.shot("10-state-reducer.png")

    # Time travel: the state at revision 0.
    page.fill('[data-testid="state-revision"]', "0")
    page.click('[data-testid="state-submit"]')
    past = api.get("/projections/bank-account/streams/account-1", revision=0)
    expect(by_testid(page, "state-revision-shown")).to_have_text("0")
    expect(by_testid(page, "state-json")).to_have_text(pretty(past["state"]))

    # The projection's keys under a prefix read from the API.
    page.select_option('[data-testid="state-module"]', "order-summary")
    expect(page.locator('[data-testid="state-prefix"]')).to_be_visible()
    first = api.get("/projections/order-summary/state", limit=1)["items"]
    assert first, "order-summary has keys"
    prefix = first[0]["key"].split("/")[0] + "/"
    page.fill('[data-testid="state-prefix"]', prefix)
    page.click('[data-testid="state-submit"]')
    listing = api.get("/projections/order-summary/state", prefix=prefix, limit=50)["items"]
    rows = by_testid(page, "state-item")
    expect(rows).to_have_count(len(listing))
    shown = rows.evaluate_all(
        "rows => rows.map(r => [r.dataset.key, r.querySelector('[data-testid=state-value]').textContent])"
    )
    for (key, value), item in zip(shown, listing):
        assert key == item["key"] and key.startswith(prefix), f"key {key} != {item['key']}"
        assert json.loads(value) == item["value"], f"value of {key}: {value} != {item['value']}"
    run.shot("11-state-projection.png")


def check_deploy(run: Run):
    page, api, args = run.page, run.api, run.args
    wasm = Path(args.wasm).read_bytes()
    run.nav("nav-deploy", "deploy")
    page.fill('[data-testid="deploy-name"]', "uploaded-bank")
    page.set_input_files('[data-testid="deploy-file"]', args.wasm)
    page.click('[data-testid="deploy-submit"]')
    result = by_testid(page, "deploy-result")
    expect(result).to_be_visible(timeout=120_000)
    expect(result).to_contain_text("uploaded-bank")
    expect(by_testid(page, "deploy-version")).to_have_text(hashlib.sha256(wasm).hexdigest())
    run.shot("12-deploy.png")

    # Bytes that are not a component: the API's own message is shown.
    with tempfile.TemporaryDirectory() as folder:
        bad = Path(folder) / "not-a-module.wasm"
        bad.write_bytes(b"this is not a WebAssembly component\n")
        status, answer = api.call("PUT", "/projections/console-broken", bad.read_bytes(), "application/wasm")
        assert status in (400, 422), f"the API refuses bad bytes: {status} {answer}"
        message = answer["error"]["message"]
        page.fill('[data-testid="deploy-name"]', "console-broken")
        page.set_input_files('[data-testid="deploy-file"]', str(bad))
        page.click('[data-testid="deploy-submit"]')
        expect(by_testid(page, "deploy-error")).to_contain_text(message, timeout=60_000)
    run.shot("13-deploy-error.png")

    run.nav("nav-modules", "modules")
    expect(by_testid(page, "module-row", name="uploaded-bank")).to_have_count(1)
    expect(by_testid(page, "module-row", name="console-broken")).to_have_count(0)
    names = [m["name"] for m in api.get("/projections")["projections"]]
    assert "uploaded-bank" in names, f"uploaded-bank deployed: {names}"
    by_testid(page, "module-row", name="uploaded-bank").locator('[data-testid="module-link"]').click()
    expect(by_testid(page, "module-name")).to_have_text("uploaded-bank")
    expect(by_testid(page, "module-status")).to_have_text("running", timeout=60_000)
    run.shot("14-module-uploaded.png")


def check_groups(run: Run):
    """A consumer group: one event acked, one parked; the pages show what the API says,
    and the replay button puts the parked event back."""
    page, api = run.page, run.api
    status, body = api.call("PUT", "/subscriptions/console-shipping", {"source": {"category": "console"}, "types": ["GroupProbe"]})
    assert status == 201, f"creating a group answered {status}: {body}"
    api.append("console-group-1", "GroupProbe", {"n": 1})
    api.append("console-group-2", "GroupProbe", {"n": 2})
    status, polled = api.call("POST", "/subscriptions/console-shipping/poll?max=2&worker=console-worker")
    assert status == 200 and len(polled["messages"]) == 2, f"poll answered {status}: {polled}"
    first, second = polled["messages"]
    status, body = api.call("POST", "/subscriptions/console-shipping/ack", {"leases": [first["lease"]]})
    assert status == 200 and body["acked"] == 1, body
    status, body = api.call("POST", "/subscriptions/console-shipping/nack", {"leases": [second["lease"]], "action": "park", "reason": "console probe"})
    assert status == 200 and body["nacked"] == 1, body
    truth = api.get("/subscriptions/console-shipping")
    run.nav("nav-groups", "groups")
    row = by_testid(page, "group-row", name="console-shipping")
    expect(row).to_have_count(1)
    expect(row.locator('[data-testid="group-acked"]')).to_have_text(grouped(truth["acked"]))
    expect(row.locator('[data-testid="group-parked"]')).to_have_text("1")
    expect(row.locator('[data-testid="group-position"]')).to_have_text(grouped(truth["position"]))
    run.shot("08-groups.png")
    row.locator('[data-testid="group-link"]').click()
    expect(page.locator("#view")).to_have_attribute("data-page", "groups-detail")
    expect(by_testid(page, "group-parked")).to_have_text("1")
    expect(by_testid(page, "worker-row", name="console-worker")).to_have_count(1)
    parked = by_testid(page, "parked-row", position=str(second["event"]["position"]))
    expect(parked).to_contain_text("console probe")
    run.shot("09-group.png")
    by_testid(page, "group-replay").click()
    expect(by_testid(page, "group-parked")).to_have_text("0", timeout=8_000)
    assert api.get("/subscriptions/console-shipping")["parked"] == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:7420")
    parser.add_argument("--token", required=True, help="an admin token")
    parser.add_argument("--screenshots", required=True, help="folder for the PNG screenshots")
    parser.add_argument("--wasm", required=True, help="a reducer component to deploy (bank-account.wasm)")
    parser.add_argument("--read-token", help="optional: a read token, to check the console's 403 message")
    args = parser.parse_args()
    args.url = args.url.rstrip("/")

    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page = context.new_page()
        run = Run(args, page)

        def on_dialog(dialog):
            run.dialogs.append(dialog.message)
            dialog.accept()

        def on_console(message):
            if message.type == "error" and "Content Security Policy" in message.text:
                run.problems.append(f"CSP violation: {message.text}")

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda err: run.problems.append(f"uncaught error in the page: {err}"))
        page.on("console", on_console)

        steps = [
            ("1. login", check_login),
            ("2. dashboard", check_dashboard),
            ("3. streams", check_streams),
            ("3b. global log", check_global_log),
            ("4. live tail", check_tail),
            ("5. modules", check_modules),
        ]
        if args.read_token:
            steps.append(("5b. read token", check_forbidden))
        steps += [("6. state", check_state), ("7. deploy", check_deploy), ("8. consumer groups", check_groups)]
        try:
            for name, check in steps:
                with run.step(name):
                    check(run)
            assert not run.problems, "the page reported problems:\n" + "\n".join(run.problems)
        except Exception as err:  # noqa: BLE001 - any failure ends the run with its step
            failed = run.step_name.replace(" ", "-").replace(".", "")
            with contextlib.suppress(Exception):
                page.screenshot(path=str(run.shots / f"failed-{failed}.png"), full_page=True)
            traceback.print_exc()
            print(f"\nFAILED at step {run.step_name}: {err}", file=sys.stderr)
            if run.problems:
                print("the page reported:\n" + "\n".join(run.problems), file=sys.stderr)
            browser.close()
            sys.exit(1)
        browser.close()
    print(f"[console] every check passed in {time.monotonic() - started:.1f} s; screenshots in {args.screenshots}")


if __name__ == "__main__":
    main()
