"""The page at / in headless Chromium, against the demo cluster of ``make demo``."""

from __future__ import annotations

from playwright.sync_api import Browser, Page

from flexai_sched import demo

from ..sched.fixtures import limits, pod
from .browser import (
    api,
    assert_page_matches_api,
    explained_on_page,
    filter_reasons,
    open_page,
    screenshot,
)


def no_js_errors(page: Page) -> None:
    assert getattr(page, "js_errors") == []  # noqa: B009  (set by browser.open_page)


def test_the_page_draws_every_card_and_slice_as_v1_says(browser: Browser, demo_url: str) -> None:
    page = open_page(browser, demo_url)
    names = assert_page_matches_api(page, demo_url)
    assert sorted(names) == ["gpu-a100", "gpu-h200-a", "gpu-h200-b", "gpu-t4"]
    # To scale: an H200 card (141 GiB) is drawn wider than an A100 (80 GiB) in proportion.
    widths = page.evaluate("""() => ['gpu-h200-a', 'gpu-a100'].map((n) =>
        document.querySelector(`.row[data-node="${n}"] .card`).getBoundingClientRect().width)""")
    assert abs(widths[0] / widths[1] - 143771 / 81920) < 0.05
    # The summary is the API's.
    summary = api(demo_url, "/v1/dashboard")["summary"]
    shown = page.locator('#totals [data-key="Cores allocated"] dd').inner_text()
    assert shown.startswith(f"{100 * summary['cores_allocated'] / summary['cores_total']:.1f}%")
    assert summary["cores_stranded"] > 0  # the demo's card 0 of gpu-h200-a: 5% no shape can use
    screenshot(page, "demo-overview")
    no_js_errors(page)


def test_a_bind_shows_without_a_reload(browser: Browser, demo_url: str) -> None:
    page = open_page(browser, demo_url)
    assert page.locator('[data-pod="default/llm"]').count() == 0
    p = pod("llm", {"name": "vllm", "resources": {"limits": limits(1, cores=20, memory_gib=3)}}, uid="u-1")
    assert api(demo_url, "/filter", {"Pod": p, "NodeNames": ["gpu-t4"]})["NodeNames"] == ["gpu-t4"]
    assert api(demo_url, "/bind", {"PodName": "llm", "PodNamespace": "default", "PodUID": "u-1", "Node": "gpu-t4"}) == {
        "Error": ""
    }
    page.wait_for_selector('.row[data-node="gpu-t4"] [data-pod="default/llm"]', timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True
    assert_page_matches_api(page, demo_url)
    screenshot(page, "demo-after-bind")
    no_js_errors(page)


def test_why_pending_gives_the_filters_reasons(browser: Browser, demo_url: str) -> None:
    page = open_page(browser, demo_url)
    names = [n["name"] for n in api(demo_url, "/v1/nodes")]
    # The demo's waiting pod, from the list on the page.
    waiting = demo.waiting()[0]
    page.click('#waiting button[data-name="finetune-70b"]')
    page.locator("#explain details summary").click()
    assert explained_on_page(page) == filter_reasons(demo_url, waiting, names)
    plan = page.locator("#explain .plan").inner_text()
    assert "move alice/notebook from gpu-h200-a" in plan and "then research/finetune-70b fits on gpu-h200-a" in plan
    # The closest card is outlined on the map; "Show on the map" brings its node alone into view.
    page.click("#explain button[data-show]")
    page.wait_for_function("document.querySelectorAll('.row[data-node]').length === 1")
    assert page.locator(".card.closest").evaluate("(c) => [c.closest('.row').dataset.node, +c.dataset.card]") == [
        "gpu-h200-a",
        2,
    ]
    page.wait_for_selector("#detail h2:has-text('gpu-h200-a')")
    screenshot(page, "demo-why-pending")
    page.select_option("#f-node", "")
    # A manifest typed in: too much memory for a T4, whole cards elsewhere taken or not.
    manifest = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: big, namespace: default}\nspec:\n  containers:\n"
        "  - name: main\n    resources:\n      limits: {huawei.com/vgpu-number: '1', huawei.com/vgpu-cores: '50',"
        " huawei.com/vgpu-memory-1Gi: '100'}\n"
    )
    page.fill("#w-yaml", manifest)
    page.click("#why-yaml button")
    page.wait_for_selector("#explain .verdict:has-text('default/big')")
    page.locator("#explain details summary").click()
    big = pod("big", limits(1, cores=50, memory_gib=100))
    assert explained_on_page(page) == filter_reasons(demo_url, big, names)
    no_js_errors(page)


def test_filters_search_and_keyboard(browser: Browser, demo_url: str) -> None:
    page = open_page(browser, demo_url)
    page.select_option("#f-ns", "alice")
    page.wait_for_function("document.querySelectorAll('.row[data-node]').length === 1")
    assert page.locator(".row[data-node]").get_attribute("data-node") == "gpu-h200-a"
    assert page.locator(".slice.hit").first.get_attribute("data-pod") == "alice/notebook"
    page.select_option("#f-ns", "")
    page.select_option("#f-model", "Tesla T4")
    page.wait_for_function("document.querySelectorAll('.row[data-node]').length === 1")
    page.select_option("#f-model", "")
    page.fill("#f-pod", "sweep")
    page.wait_for_function("document.querySelectorAll('.row[data-node]').length === 1")
    assert page.locator(".row[data-node]").get_attribute("data-node") == "gpu-h200-b"
    page.fill("#f-pod", "")
    page.wait_for_function("document.querySelectorAll('.row[data-node]').length === 4")
    # Keyboard: rows take focus; arrows move between rows; Enter selects.
    page.focus('.row[data-node="gpu-a100"]')
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.dataset.node") == "gpu-h200-a"
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail h2:has-text('gpu-h200-a')")
    assert page.locator("#detail tbody tr").filter(has_text="alice/notebook").count() == 1
    # Every control has a label.
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter((e) => !e.labels || !e.labels.length).map((e) => e.id)""")
    assert unlabelled == []
    screenshot(page, "demo-keyboard-detail")
    no_js_errors(page)
