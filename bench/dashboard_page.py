"""The web page at / on a 5,000-node x 8-card, half-full cluster, in headless Chromium.

The server is bench/extender_latency.py's (the real app under uvicorn in a child process,
filled through ``Extender.bind``). Reported:

- the first /v1/dashboard: bytes (plain, gzip) and time; a poll with nothing changed;
- the page: navigation to the first drawing of every node (``window.__flexaiRendered``),
  then a filter change, a pod search and a scroll, each timed inside the page, and the
  rows in the DOM (virtualised: only those in view);
- filter + prioritize latency (all 5,000 names, the same pods) while no page is open and
  while three pages poll every 2 s, side by side: the page must not slow the hot path.

    .venv/bin/python bench/dashboard_page.py [--nodes 5000] [--calls 200]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import multiprocessing as mp
import random
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import extender_latency as el  # noqa: E402  (bench/ is not a package)
from playwright.sync_api import sync_playwright  # noqa: E402


def timed_get(url: str, gz: bool) -> tuple[bytes, float]:
    req = urllib.request.Request(url, headers={"accept-encoding": "gzip" if gz else "identity"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    a = time.perf_counter()
    with opener.open(req, timeout=120) as r:
        data = r.read()
    return data, (time.perf_counter() - a) * 1e3


def hot_path(port: int, names: list[str], calls: int, seed: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    rng = random.Random(seed)
    lat = []
    for i in range(calls):
        p = el.pod(f"h{seed}-{i}", rng.choice(el.SHAPES))
        raw = json.dumps({"Pod": p, "Nodes": None, "NodeNames": names}).encode()
        a = time.perf_counter()
        conn.request("POST", "/filter", raw, {"content-type": "application/json"})
        fits = json.loads(conn.getresponse().read())["NodeNames"]
        mid = time.perf_counter()
        conn.request(
            "POST",
            "/prioritize",
            json.dumps({"Pod": p, "Nodes": None, "NodeNames": fits}).encode(),
            {"content-type": "application/json"},
        )
        conn.getresponse().read()
        lat.append((time.perf_counter() - a) * 1e3)
        _ = mid
    conn.close()
    return {"p50": el.pct(lat, 50), "p90": el.pct(lat, 90), "p99": el.pct(lat, 99), "max": max(lat)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--port", type=int, default=18941)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=el.serve, args=(args.port, args.nodes, ready), daemon=True)
    t0 = time.time()
    proc.start()
    ready.wait(900)
    url = f"http://127.0.0.1:{args.port}"
    for _ in range(300):
        try:
            timed_get(url + "/healthz", False)
            break
        except OSError:
            time.sleep(0.1)
    print(f"cluster of {args.nodes} nodes x 8 cards filled and served in {time.time() - t0:.1f}s")
    names = [f"n{i:05d}" for i in range(args.nodes)]
    hot_path(args.port, names, 20, 99)  # every shape's fit cache warm before timing

    plain, t_plain = timed_get(url + "/v1/dashboard", False)
    zipped, t_zip = timed_get(url + "/v1/dashboard", True)
    serial = json.loads(plain)["serial"]
    time.sleep(1.1)
    delta, t_delta = timed_get(f"{url}/v1/dashboard?since={serial}", False)
    summary = json.loads(plain)["summary"]
    print(
        f"/v1/dashboard full: {len(plain) / 1e6:.2f} MB plain in {t_plain:.0f} ms (the first builds every "
        f"node's JSON), {len(zipped) / 1e6:.2f} MB gzip in {t_zip:.0f} ms (cached); nothing changed: "
        f"{len(delta)} B in {t_delta:.1f} ms"
    )
    print(
        f"cluster: cores allocated {100 * summary['cores_allocated'] / summary['cores_total']:.1f}%, "
        f"stranded {summary['cores_stranded'] / 100:.1f} cards of cores, "
        f"{summary['memory_mib_stranded'] / 1024:.0f} GiB"
    )

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        loads = []
        for _ in range(3):
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            a = time.perf_counter()
            page.goto(url + "/")
            page.wait_for_function("window.__flexaiRendered !== undefined", timeout=120_000)
            wall = (time.perf_counter() - a) * 1e3
            in_page = page.evaluate("window.__flexaiRendered")
            loads.append((wall, in_page))
            page.close()
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(url + "/")
        page.wait_for_function("window.__flexaiRendered !== undefined", timeout=120_000)
        rows = page.evaluate("document.querySelectorAll('.row').length")
        cards = page.evaluate("document.querySelectorAll('.card').length")
        filt = page.evaluate("""() => { const s = document.getElementById('f-ns'); s.value = s.options[1].value;
            const a = performance.now(); s.dispatchEvent(new Event('change')); return performance.now() - a; }""")
        shown = page.evaluate("document.getElementById('shown').textContent")
        search = page.evaluate("""() => { const s = document.getElementById('f-ns'); s.value = '';
            s.dispatchEvent(new Event('change')); const i = document.getElementById('f-pod'); i.value = 'fill123';
            const a = performance.now(); i.dispatchEvent(new Event('input'));
            return new Promise((ok) => setTimeout(() => { ok(performance.now() - a - 150); }, 400)); }""")
        scroll = page.evaluate("""() => new Promise((ok) => { const v = document.getElementById('viewport');
            document.getElementById('f-pod').value = ''; document.getElementById('f-pod').dispatchEvent(new Event('input'));
            setTimeout(() => { const a = performance.now(); v.scrollTop = 200000; v.dispatchEvent(new Event('scroll'));
              requestAnimationFrame(() => requestAnimationFrame(() => ok(performance.now() - a))); }, 400); })""")
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
        print(
            f"page load to every node drawn (3 loads): wall {', '.join(f'{w:.0f}' for w, _ in loads)} ms; "
            f"in page (navigation start to drawn) {', '.join(f'{x:.0f}' for _, x in loads)} ms"
        )
        print(f"DOM: {rows} rows, {cards} cards in view of {args.nodes} nodes; JS heap {heap / 1e6:.0f} MB")
        print(
            f"namespace filter: {filt:.1f} ms ({shown}); pod search: {search:.1f} ms after the 150 ms debounce; "
            f"scroll to row 2,500: {scroll:.1f} ms to the next frame"
        )

        base = hot_path(args.port, names, args.calls, 1)
        pages = [browser.new_page() for _ in range(3)]
        for pg in pages:
            pg.goto(url + "/")
        for pg in pages:
            pg.wait_for_function("window.__flexaiRendered !== undefined", timeout=120_000)
        polled = hot_path(args.port, names, args.calls, 1)
        for pg in pages:
            pg.close()
        again = hot_path(args.port, names, args.calls, 1)
        browser.close()

    def fmt(d: dict[str, float]) -> str:
        return "  ".join(f"{k}={v:6.2f} ms" for k, v in d.items())

    print(f"filter+prioritize, all {args.nodes} names, {args.calls} calls (same pods each run):")
    print(f"  no page            {fmt(base)}")
    print(
        f"  3 pages polling    {fmt(polled)}   p50 ratio {polled['p50'] / base['p50']:.2f}, "
        f"p99 ratio {polled['p99'] / base['p99']:.2f}"
    )
    print(f"  no page again      {fmt(again)}")
    gz = gzip.compress(plain, 1)
    _ = gz
    proc.terminate()


if __name__ == "__main__":
    main()
