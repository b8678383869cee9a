"""Headless Chromium (Debian's, from tools/browser/setup.sh) driven by Playwright, and the
checks the page tests share: what the page draws against what /v1 says.

Screenshots go to build/screenshots/ (printed as they are written) for a person to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[2]
SHOTS = REPO_ROOT / "build" / "screenshots"
SETUP = "tools/browser/setup.sh"


def chromium_path() -> str:
    path = os.environ.get("FLEXAI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(f"no chromium at {path}: run {SETUP} (make test does)", pytrace=False)  # never skip
    return path


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        # Root in CI and containers: Chromium's sandbox needs user namespaces it may not get.
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def api(base: str, path: str, body: object | None = None) -> Any:
    """GET (or POST ``body`` as JSON) on the extender, without proxies."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        return json.loads(resp.read())


def open_page(browser: Browser, base: str) -> Page:
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(base + "/")
    page.wait_for_selector(".row[data-node]")
    page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads
    setattr(page, "js_errors", errors)  # noqa: B010  (not an attribute Page declares)
    return page


def drawn_node(page: Page, name: str) -> list[dict[str, Any]]:
    """The cards of ``name`` as drawn: index, free cores and MiB, and each slice's data."""
    cards: list[dict[str, Any]] = page.evaluate(
        """(name) => [...document.querySelectorAll(`.row[data-node="${CSS.escape(name)}"] .card`)].map((c) => ({
            card: +c.dataset.card, cores_free: +c.dataset.coresFree, mib_free: +c.dataset.mibFree,
            slices: [...c.querySelectorAll('.bar:first-child .slice')].map((s) => [s.dataset.pod, s.dataset.container,
                     +s.dataset.cores, s.style.width]),
            mibs: [...c.querySelectorAll('.bar:nth-child(2) .slice')].map((s) => +s.dataset.mib),
        }))""",
        name,
    )
    return cards


def expected_node(base: str, name: str) -> list[dict[str, Any]]:
    detail = api(base, f"/v1/nodes/{name}")
    return [
        {
            "card": c["index"],
            "cores_free": c["cores_free"],
            "mib_free": c["memory_mib_free"],
            "slices": [[s["pod"], s["container"], s["cores"], f"{s['cores']}%"] for s in c["slices"]],
            "mibs": [s["memory_mib"] for s in c["slices"]],
        }
        for c in detail["card_details"]
    ]


def assert_page_matches_api(page: Page, base: str) -> list[str]:
    """Every node of /v1/nodes is drawn with the cards, slices and free capacity /v1 gives;
    the node filter brings each into view (rows are virtualised). Returns the node names."""
    names = [n["name"] for n in api(base, "/v1/nodes")]
    assert names, "the scheduler knows no node"
    for name in names:
        page.select_option("#f-node", name)
        page.wait_for_selector(f'.row[data-node="{name}"]')
        want = expected_node(base, name)
        page.wait_for_function(
            '([n, k]) => document.querySelectorAll(`.row[data-node="${n}"] .card`).length === k', arg=[name, len(want)]
        )
        assert drawn_node(page, name) == want, name
    page.select_option("#f-node", "")
    return names


def filter_reasons(base: str, pod: dict[str, Any], names: list[str]) -> dict[str, str]:
    """The reason filter gives for each node the pod does not fit. The filter verb answers a
    fitting node alone (``filter_answer`` "best"), so it is asked again without the nodes it
    answered until none fits: that answer holds every other node's reason (and its filter ends
    the reservation the one before made)."""
    left = list(names)
    while True:
        body = api(base, "/filter", {"Pod": pod, "NodeNames": left})
        if not body["NodeNames"]:
            return {**(body["FailedNodes"] or {}), **(body["FailedAndUnresolvableNodes"] or {})}
        left = [n for n in left if n not in body["NodeNames"]]


def explained_on_page(page: Page) -> dict[str, str]:
    page.wait_for_selector("#explain .verdict")
    return dict(
        page.evaluate("""() => [...document.querySelectorAll('#explain .per-node tr[data-node]')]
        .map((r) => [r.dataset.node, r.querySelector('.reason').textContent])""")
    )
