"""The demo cluster served by ``flexai-sched serve`` (a real process, as ``make demo`` runs it)
and a headless Chromium for the page tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from ..e2e.controlplane import free_port, http_ok
from .browser import chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope: Playwright's sync API runs an event loop on this thread while it lives, and
    # a second one (tests/e2e/test_dashboard_page.py) refuses to start beside it.
    with chromium() as b:
        yield b


@pytest.fixture
def demo_url(tmp_path: Path) -> Iterator[str]:
    """A fresh demo cluster per test: binds in one test do not show in the next."""
    port = free_port()
    exe = Path(sys.executable).with_name("flexai-sched")
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not http_ok(url + "/readyz"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"flexai-sched serve did not start: {(tmp_path / 'demo.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
