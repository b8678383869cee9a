"""Filter + prioritize latency over HTTP on a 5,000-node, 8-card, half-full demo cluster.

Runs the real extender app under uvicorn in a child process (so client and server do
not share a GIL), fills the cluster to ~50% of its cores through the same Extender.bind
the service uses, then sends, for pods of 12 recurring shapes, the calls kube-scheduler
makes (nodeCacheCapable: NodeNames): filter, then prioritize of the nodes that passed
only when more than one did (with one it binds there, without scoring), then the bind to
the node it would choose, so the tables see a live cluster's changes. The first pod of each
shape (cold cache) is timed and reported separately. ``--answer all`` runs the extender
with ``filter_answer: all`` (every fitting node, then prioritize), the way before "best".

With ``--hosts`` every node has a host (128 CPUs, 2 TiB) and every pod asks 4 CPUs per
vGPU, so prioritize scores with the host (the Kubernetes backend's path, ``host_cache``).

Every measured call is also sent, with the same body, to the floor: a do-nothing
extender on a raw uvloop + httptools + msgspec server (bench/floor_extender.py), in its own
process, alternating which goes first; the ratio ours / floor is printed per percentile.
The floor passes every node, so kube-scheduler would call its prioritize on every pod.

With ``--settle S`` the client waits S seconds after each phase of first pods, before the
next phase: a tree that completes answer tables in the background (bounded filter calls)
then does not bill that work to the next phase's calls. ``--gap-ms`` (default 1) is the pause
before each pod's calls, to either server: kube-scheduler's own work between two calls, and
what keeps one server's work after its reply (the extender's refresh) out of the other's time.

    .venv/bin/python bench/extender_latency.py [--nodes 5000] [--calls 400] [--hosts] [--settle 0] [--answer best|all] [--gap-ms 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import random
import statistics
import time
from typing import TYPE_CHECKING, Any

import floor_extender
import httpx

if TYPE_CHECKING:
    from flexai_sched.backend import MemoryBackend
    from flexai_sched.extender import Extender

SHAPES = [  # (vgpus, cores, memory GiB): a mix like the seed's users send
    (1, 20, 3),
    (1, 10, 8),
    (1, 50, 40),
    (2, 30, 16),
    (1, 100, None),
    (1, 0, 4),
    (4, 25, 20),
    (1, 5, 1),
    (2, 100, None),
    (1, 70, 60),
    (8, 10, 4),
    (1, 35, 10),
]


HOSTS = False  # --hosts (set in both processes: serve gets it as an argument)


def pod(name: str, shape: tuple[int, int, int | None]) -> dict[str, Any]:
    n, cores, mem = shape
    lim: dict[str, str] = {"cpu": str(4 * n)} if HOSTS else {}
    lim |= {"huawei.com/vgpu-number": str(n), "huawei.com/vgpu-cores": str(cores)}
    if mem is not None:
        lim["huawei.com/vgpu-memory-1Gi"] = str(mem)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "bench", "uid": f"uid-{name}"},
        "spec": {"containers": [{"name": "main", "image": "x", "resources": {"limits": lim}}]},
    }


def fill(ext: Extender, backend: MemoryBackend, names: list[str]) -> None:
    """Bind pods of the fill shapes to random nodes until half the cluster's cores are taken."""
    from flexai_sched.extender import BindError

    rng = random.Random(7)
    filled, target, i = 0, len(names) * 8 * 100 // 2, 0
    while filled < target:
        p = pod(f"fill{i}", rng.choice(SHAPES[:4] + SHAPES[5:8]))
        backend.create_pod(p)
        ext.parse(p)
        try:
            a = ext.bind("bench", f"fill{i}", f"uid-fill{i}", rng.choice(names))
            filled += sum(s.cores for s in a.slices)
        except BindError:
            pass
        i += 1


def serve(
    port: int,
    nodes: int,
    ready: mp.synchronize.Event,
    hosts: bool = False,
    tables: str = "default",
    answer: str = "best",
) -> None:
    global HOSTS
    HOSTS = hosts
    import uvicorn

    from flexai_sched import demo
    from flexai_sched.app import create_app
    from flexai_sched.backend import MemoryBackend
    from flexai_sched.config import Settings
    from flexai_sched.extender import Extender
    from flexai_sched.state import ClusterState

    inv = demo.inventory(
        {
            "nodes": [
                {"name": f"n{i:05d}", "cards": [{"model": "NVIDIA H200", "memoryMiB": 143771, "count": 8}]}
                for i in range(nodes)
            ]
        }
    )
    state = ClusterState()
    backend = MemoryBackend(inv)
    backend.start(state)
    if hosts:
        for n in inv:
            state.set_host_capacity(n.name, 128_000, 2 * 1024 * 1024)
    ext = Extender(state, backend, Settings(filter_answer=answer))
    if tables != "default":  # answer tables on or off against the extender's default
        ext.tables = tables == "on"
    fill(ext, backend, [n.name for n in inv])
    app = create_app(ext, start_backend=False)
    ready.set()
    # As ``flexai-sched serve`` runs it: filter and prioritize answered in the protocol.
    from flexai_sched.fastpath import protocol

    uvicorn.run(app, http=protocol(app.state.hot), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--port", type=int, default=18931)
    ap.add_argument("--hosts", action="store_true", help="nodes with host CPU/memory; pods ask for CPU")
    ap.add_argument("--tables", choices=("default", "on", "off"), default="default", help="Extender.tables")
    ap.add_argument("--settle", type=float, default=0.0, help="seconds to wait after each phase of first pods")
    ap.add_argument(
        "--gap-ms",
        type=float,
        default=1.0,
        help="pause before each pod's calls: kube-scheduler's own filter plugins take 1-3 ms a pod at 1,000-5,000 nodes",
    )
    ap.add_argument("--answer", choices=("best", "all"), default="best", help="Settings.filter_answer")
    args = ap.parse_args()
    global HOSTS
    HOSTS = args.hosts
    ready = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(
        target=serve, args=(args.port, args.nodes, ready, args.hosts, args.tables, args.answer), daemon=True
    )
    t0 = time.time()
    proc.start()
    floor = mp.get_context("spawn").Process(target=floor_extender.serve, args=(args.port + 1,), daemon=True)
    floor.start()
    ready.wait(600)
    url = f"http://127.0.0.1:{args.port}"
    names = [f"n{i:05d}" for i in range(args.nodes)]
    rng = random.Random(11)
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(300):  # server up?
            try:
                client.get("/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        print(f"cluster filled and served in {time.time() - t0:.1f}s")
    # The measured calls use the stdlib's HTTP client on one kept-alive connection: it adds
    # far less client time than httpx, closer to kube-scheduler's Go client.
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
    floor_conn = http.client.HTTPConnection("127.0.0.1", args.port + 1, timeout=30)
    h = {"content-type": "application/json"}

    def post(path: str, body: object, c: http.client.HTTPConnection = conn) -> tuple[Any, float]:
        raw = json.dumps(body).encode()
        a = time.perf_counter()
        c.request("POST", path, raw, h)
        data = c.getresponse().read()
        took = (time.perf_counter() - a) * 1e3  # the client's JSON decoding is not the server's time
        return json.loads(data), took

    for _ in range(300):  # floor up?
        try:
            post("/filter", {"Pod": {}, "NodeNames": []}, floor_conn)
            break
        except OSError:
            floor_conn.close()
            time.sleep(0.1)

    def settle() -> None:
        if args.settle:
            time.sleep(args.settle)
            conn.close()  # uvicorn closes a connection idle for 5 s: the next request opens another
            floor_conn.close()

    def one_pod(p: dict[str, Any], sent: list[str], c: http.client.HTTPConnection) -> tuple[float, float | None, Any]:
        """The calls kube-scheduler makes for a pod: filter, then prioritize of the nodes that
        passed only when more than one did (with one it binds there). Returns both times
        (prioritize None when not called) and the node it would bind to."""
        # kube-scheduler's own work for the pod comes first (its filter plugins); neither server
        # is timed while the other still works on its previous call.
        time.sleep(args.gap_ms / 1000)
        fr, ta = post("/filter", {"Pod": p, "Nodes": None, "NodeNames": sent}, c)
        fits = fr["NodeNames"] or []
        if len(fits) < 2:
            return ta, None, fits[0] if fits else None
        pr, tb = post("/prioritize", {"Pod": p, "Nodes": None, "NodeNames": fits}, c)
        return ta, tb, max(pr, key=lambda h: h["Score"])["Host"]

    def bind(p: dict[str, Any], where: str | None) -> None:
        """As kube-scheduler does once it has chose a node: the pod's room is taken (and its
        reservation ends), as in a live cluster."""
        if where is not None:
            meta = p["metadata"]
            post("/bind", {"PodName": meta["name"], "PodNamespace": "bench", "PodUID": meta["uid"], "Node": where})

    def first_pods(label: str, sent_of: Any, mem_of: Any) -> None:
        cold: list[float] = []
        cold_floor: list[float] = []
        for j, (n, cores, mem) in enumerate(SHAPES):  # the first pod of each shape computes every node's fit
            p = pod(f"{label[0]}{j}", (n, cores, mem_of(mem)))
            sent = sent_of()
            ta, tb, where = one_pod(p, sent, conn)
            cold.append(ta + (tb or 0.0))
            fa, fb, _ = one_pod(p, sent, floor_conn)
            cold_floor.append(fa + (fb or 0.0))
            bind(p, where)
        print(
            f"first pod of a new shape, {label}: per pod mean={statistics.mean(cold):.1f} ms "
            f"p50={statistics.median(cold):.1f} ms max={max(cold):.1f} ms (floor: mean={statistics.mean(cold_floor):.1f} ms)"
        )

    first_pods(f"{len(names)} names", lambda: names, lambda mem: mem)
    settle()
    # As kube-scheduler sends it at this size (10% of the nodes): 12 more shapes never seen.
    sample = max(1, len(names) // 10)
    first_pods(f"{sample} names", lambda: rng.sample(names, sample), lambda mem: (mem or 80) + 1)
    settle()

    def report(k: str, xs: list[float], fs: list[float]) -> None:
        print(
            f"{k:18s} p50={pct(xs, 50):6.2f} ms  p90={pct(xs, 90):6.2f} ms  p99={pct(xs, 99):6.2f} ms  "
            f"max={max(xs):6.2f} ms  ({len(xs)} calls)"
        )
        print(
            f"{'  floor':18s} p50={pct(fs, 50):6.2f} ms  p90={pct(fs, 90):6.2f} ms  p99={pct(fs, 99):6.2f} ms  "
            f"max={max(fs):6.2f} ms"
        )
        print(
            f"{'  ours / floor':18s} p50={pct(xs, 50) / pct(fs, 50):6.2f}x    p90={pct(xs, 90) / pct(fs, 90):6.2f}x"
            f"    p99={pct(xs, 99) / pct(fs, 99):6.2f}x"
        )

    # kube-scheduler stops looking once it has enough feasible nodes (percentageOfNodesToScore:
    # 10% of 5,000), so real calls carry ~500 names; all 5,000 is the worst case.
    for label, count in (("all nodes", len(names)), ("10% sample", max(1, len(names) // 10))):
        lat: dict[str, list[float]] = {"filter": [], "prioritize": [], "per pod": []}
        flat: dict[str, list[float]] = {"filter": [], "prioritize": [], "per pod": []}
        for i in range(args.calls):
            p = pod(f"p{label[0]}{i}", rng.choice(SHAPES))
            sent = rng.sample(names, count) if count < len(names) else names
            if i % 2:  # the floor first on odd calls: neither side always finds a warm cache
                fa, fb, _ = one_pod(p, sent, floor_conn)
            ta, tb, where = one_pod(p, sent, conn)
            if not i % 2:
                fa, fb, _ = one_pod(p, sent, floor_conn)
            lat["filter"].append(ta)
            flat["filter"].append(fa)
            if tb is not None:
                lat["prioritize"].append(tb)
            flat["prioritize"].append(fb or 0.0)
            lat["per pod"].append(ta + (tb or 0.0))
            flat["per pod"].append(fa + (fb or 0.0))
            bind(p, where)
        print(f"-- {label}: {count} names per call, {args.calls} pods (filter answer: {args.answer})")
        for k, xs in lat.items():
            if xs:
                report(k, xs, flat[k])
    conn.request("GET", "/v1/nodes")
    alloc = json.loads(conn.getresponse().read())
    used = statistics.mean(n["cores_allocated_pct"] for n in alloc)
    print(f"nodes={args.nodes} cards/node=8 cores allocated={used:.1f}%")
    proc.terminate()
    floor.terminate()


if __name__ == "__main__":
    main()
