"""The page at / in headless Chromium against the real control plane: kube-scheduler binds
through our extender (Kubernetes backend), kwok nodes carry the inventory annotations.

What is drawn must be what /v1 says; a pod kube-scheduler binds shows without a reload;
"why pending" for a pod the extender refused gives the reasons /filter gives and that
kube-scheduler put in the pod's FailedScheduling event.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client as k8s
from playwright.sync_api import Browser

from flexai_core.model import Card

from ..dashboard.browser import (
    api,
    assert_page_matches_api,
    chromium,
    explained_on_page,
    filter_reasons,
    open_page,
    screenshot,
)
from .controlplane import ControlPlane, wait_until
from .helpers_kube import GIB, NS, cards, extender_running, failed_scheduling_messages, gpu_node, vgpu_pod, wait_bound

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with extender_running(control_plane, "--node-policy", "binpack", "--card-policy", "binpack") as p:
        yield p


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def test_the_page_follows_the_cluster(plane: ControlPlane, core_api: k8s.CoreV1Api, browser: Browser) -> None:
    base = plane.extender_url
    gpu_node(core_api, "h1", cards(2, "NVIDIA H200", 80))
    gpu_node(core_api, "a1", cards(4, "NVIDIA A100", 40, prefix="A100"))
    # An agent silent for 10 minutes (TTL 60 s), one of its cards unhealthy.
    sick = (Card(0, "OLD-0", "NVIDIA H200", 80 * GIB, healthy=False), Card(1, "OLD-1", "NVIDIA H200", 80 * GIB))
    gpu_node(core_api, "old", sick, heartbeat=datetime.now(UTC) - timedelta(minutes=10))
    vgpu_pod(core_api, "first", number=1, cores=50, memory_gib=20)
    wait_bound(core_api, ["first"], 30)
    wait_until(lambda: api(base, "/v1/pods/default/first"), 15, "the extender's view of the bound pod")
    wait_until(lambda: len(api(base, "/v1/nodes")) == 3, 15, "the extender's view of the three nodes")
    page = open_page(browser, base)
    assert sorted(assert_page_matches_api(page, base)) == ["a1", "h1", "old"]
    old = page.locator('.row[data-node="old"]')
    assert "stale" in (old.get_attribute("class") or "") and "min ago" in old.locator(".hb").inner_text()
    assert old.locator(".badge.bad").inner_text() == "1 unhealthy"
    assert old.locator('.card[data-card="0"]').get_attribute("class") == "card unhealthy"

    # kube-scheduler binds another pod: it shows on the open page.
    vgpu_pod(core_api, "second", number=2, cores=30, memory_gib=8)
    node = wait_bound(core_api, ["second"], 30)["second"].node
    page.wait_for_selector(f'.row[data-node="{node}"] [data-pod="default/second"]', timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True
    assert_page_matches_api(page, base)
    screenshot(page, "e2e-after-bind")

    # A pod no node can take: the page's reasons are /filter's, and kube-scheduler's event carries them.
    # 80% / 60 GiB: more memory than an A100 has; the H200s hold 80% and 30% by now.
    vgpu_pod(core_api, "too-big", number=1, cores=80, memory_gib=60)
    wait_until(lambda: failed_scheduling_messages(core_api, "too-big"), 30, "FailedScheduling of too-big")
    page.fill("#w-ns", NS)
    page.fill("#w-name", "too-big")
    page.click("#why-name button")
    page.locator("#explain details summary").click()
    shown = explained_on_page(page)
    pod = core_api.api_client.sanitize_for_serialization(core_api.read_namespaced_pod("too-big", NS))
    assert shown == filter_reasons(base, pod, ["a1", "h1", "old"])
    assert set(shown) == {"a1", "h1", "old"} and "heartbeat is stale" in shown["old"]
    # kube-scheduler puts the reasons inside a printf format: they carry no "%" to be mangled.
    events = " ".join(failed_scheduling_messages(core_api, "too-big"))
    assert "MISSING" not in events, events
    for reason in shown.values():
        assert reason in events, (reason, events)
    screenshot(page, "e2e-why-pending")
    assert getattr(page, "js_errors") == []
