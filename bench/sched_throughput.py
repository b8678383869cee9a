"""Scheduling throughput through the real kube-scheduler, with and without our extender.

One kwok cluster per node count (kine + kube-apiserver + kwok + kube-scheduler 1.34 from
tools/controlplane/build.sh, the e2e harness), every node annotated with a 4-card GPU
inventory as flexai_node writes it. Our extender runs on the Kubernetes backend
(``flexai-sched serve --kubeconfig``), as deployed. Three runs on the same nodes:

- ``plain / no extender``   pods without vGPU requests, kube-scheduler alone
- ``plain / extender``      the same pods, kube-scheduler configured with our extender
                            (managedResources: kube-scheduler never calls it for these pods)
- ``vgpu / extender``       pods asking 1 vGPU of 20% / 2 GiB: filter and bind go through
                            the extender (and prioritize with ``--answer all``: the
                            extender's filter then passes every fitting node)
- ``vgpu / alone``           the same vGPU pods, kube-scheduler alone (the nodes advertise
                            the vGPU resources, as the device plugin makes them do): what
                            kube-scheduler itself pays for a pod with extended resources
- ``vgpu / floor`` (--floor) the same vGPU pods, kube-scheduler configured with the
                            do-nothing extender of bench/floor_extender.py (filter and
                            prioritize only, every node fits, all score 0; kube-scheduler
                            binds): what the extender round trip costs by itself

For each, two measures:

- ``stream``: pods created from 8 threads while the scheduler runs; pods/s =
  pods / (last bound - first created), "from creation to bound".
- ``burst``: pods created while kube-scheduler is stopped, then it starts; pods/s =
  (pods - 1) / (last bound - first bound): the scheduler's own rate, creation aside.

Bind times are taken from a watch on the pods. kube-scheduler's client runs at
qps/burst 5000 (its default of 50 qps would cap every run at ~50 pods/s).

    .venv/bin/python bench/sched_throughput.py [--nodes 100 1000 5000] [--pods 500] [--modes burst]
        [--floor] [--score-percent P] [--answer best|all] [--profile DIR]

``--profile DIR`` records, for each burst, CPU profiles of kube-scheduler and kube-apiserver
(their /debug/pprof, read with ``go tool pprof -top``) and of the extender (py-spy, raw
stacks), for the first ``--profile-seconds`` of the burst.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client as k8s  # noqa: E402
from kubernetes.watch.watch import iter_resp_lines  # noqa: E402

from flexai_core import annotations as ann  # noqa: E402
from flexai_core import resources as res  # noqa: E402
from flexai_core.model import Card  # noqa: E402
from tests.e2e.controlplane import ControlPlane, flexai_sched_extender, wait_until  # noqa: E402

BIN = Path.home() / ".cache" / "flexai" / "controlplane" / "bin"
NS = "default"
CARDS = tuple(Card(i, f"GPU-{i}", "NVIDIA H200", 80 * 1024, 5) for i in range(4))


def node_body(name: str, inventory: str) -> k8s.V1Node:
    # The vGPU resources as flexai-node's device plugin advertises them on a node of 4 cards.
    res_ = {
        "cpu": "64",
        "memory": "512Gi",
        "pods": "250",
        res.VGPU_NUMBER: "40",
        res.VGPU_CORES: "400",
        res.VGPU_MEMORY: "320",
    }
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(
            name=name,
            annotations={"kwok.x-k8s.io/node": "fake", ann.NODE_INVENTORY: inventory},
            labels={"type": "kwok", "kubernetes.io/hostname": name},
        ),
        status=k8s.V1NodeStatus(capacity=dict(res_), allocatable=dict(res_)),
    )


def pod_body(name: str, vgpu: bool) -> k8s.V1Pod:
    limits = {res.VGPU_NUMBER: "1", res.VGPU_CORES: "20", res.VGPU_MEMORY: "2"} if vgpu else None
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="main",
                    image="registry.invalid/fake:1",
                    resources=k8s.V1ResourceRequirements(requests={"cpu": "10m", "memory": "16Mi"}, limits=limits),
                )
            ],
            termination_grace_period_seconds=0,
        ),
    )


def parallel(fn: Callable[[int], object], n: int, threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as ex:
        for f in [ex.submit(fn, i) for i in range(n)]:
            f.result()


class BindClock:
    """Watches pods; records when each was first seen bound."""

    def __init__(self, core: k8s.CoreV1Api) -> None:
        self.bound: dict[str, float] = {}
        self._core = core
        self._stop = False
        meta = core.list_namespaced_pod(NS, limit=1).metadata
        assert meta is not None
        rv = meta.resource_version
        self._thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self._thread.start()

    def _run(self, rv: str) -> None:
        while not self._stop:
            try:
                resp: Any = self._core.list_namespaced_pod(
                    NS,
                    watch=True,
                    resource_version=rv,
                    timeout_seconds=30,
                    allow_watch_bookmarks=True,
                    _preload_content=False,
                )
                for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                    if self._stop:
                        break
                    if not line:
                        continue
                    ev = json.loads(line)
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    name = obj["metadata"].get("name")
                    if ev["type"] in ("ADDED", "MODIFIED") and (obj.get("spec") or {}).get("nodeName"):
                        self.bound.setdefault(name, time.monotonic())
                resp.release_conn()
            except Exception as e:  # the plane going away at the end, or a dropped stream
                if not self._stop:
                    print(f"    (bind clock: {type(e).__name__}: {e}; watching again)", flush=True)

    def stop(self) -> None:
        self._stop = True


FLOOR: subprocess.Popen[bytes] | None = None  # the do-nothing extender (--floor)


@dataclasses.dataclass(frozen=True)
class Profiling:
    """--profile: where each burst's profiles go, and for how long each runs."""

    out: Path
    seconds: int


def cpu_seconds(plane: ControlPlane) -> dict[str, float]:
    """CPU time (user + system) used so far by each running component's main process."""
    pids = {name: p.popen.pid for name, p in plane.procs.items() if p.alive and p.popen is not None}
    if FLOOR is not None:
        pids["floor"] = FLOOR.pid
    out = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


class Profiles:
    """CPU profiles of one burst, taken side by side: kube-scheduler's and kube-apiserver's
    pprof over HTTPS, the extender's (or floor's) stacks with py-spy."""

    def __init__(self, plane: ControlPlane, to: Profiling, tag: str) -> None:
        self.plane, self.out, self.tag, self.seconds = plane, to.out, tag, to.seconds
        self.threads: list[threading.Thread] = []
        self.py_spy: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        pki = self.plane.pki
        assert pki is not None
        admin = ssl.create_default_context(cafile=str(pki.ca_crt))
        admin.load_cert_chain(str(pki.admin_crt), str(pki.admin_key))
        anyone = ssl.create_default_context()
        anyone.check_hostname = False
        anyone.verify_mode = ssl.CERT_NONE  # the scheduler's self-signed serving cert
        path = f"/debug/pprof/profile?seconds={self.seconds}"
        for name, url, ctx in (
            ("kube-scheduler", f"https://127.0.0.1:{self.plane.scheduler_port}{path}", anyone),
            ("kube-apiserver", self.plane.api_url + path, admin),
        ):
            t = threading.Thread(target=self._pprof, args=(name, url, ctx), daemon=True)
            t.start()
            self.threads.append(t)
        ext = self.plane.procs.get("extender")
        pids = {"extender": ext.popen.pid} if ext is not None and ext.popen is not None else {}
        if FLOOR is not None:
            pids["floor"] = FLOOR.pid
        for name, pid in pids.items():
            # --gil: samples where Python code runs, the part of the CPU the extender can change;
            # --nonblocking: the process is not paused to be sampled, so it runs at its own speed.
            self.py_spy.append(
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--gil",
                        "--nonblocking",
                        "-f",
                        "raw",
                        "-r",
                        "500",
                        "-d",
                        str(self.seconds),
                        "-p",
                        str(pid),
                        "-o",
                        str(self.out / f"{self.tag}-{name}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def _pprof(self, name: str, url: str, ctx: ssl.SSLContext) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
        with opener.open(url, timeout=self.seconds + 30) as r:
            (self.out / f"{self.tag}-{name}.pprof").write_bytes(r.read())

    def finish(self) -> None:
        for t in self.threads:
            t.join()
        for p in self.py_spy:
            p.wait()
        for name in ("kube-scheduler", "kube-apiserver"):
            prof = self.out / f"{self.tag}-{name}.pprof"
            top = subprocess.run(
                ["go", "tool", "pprof", "-top", "-nodecount=30", str(BIN / name), str(prof)],
                capture_output=True,
                text=True,
                check=False,
            )
            (self.out / f"{self.tag}-{name}.top.txt").write_text(top.stdout + top.stderr)
        print(f"    profiles in {self.out}/{self.tag}-*", flush=True)


def tcp_opens() -> int:
    """Connections accepted on this machine so far (/proc/net/snmp, Tcp PassiveOpens)."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("PassiveOpens")])


def floor_block(url: str) -> dict[str, Any]:
    """extender.yaml's block for the floor: the same verbs and resources, but no bind or
    preempt (it has neither): kube-scheduler binds the pods itself."""
    from tests.e2e.controlplane import extender_block

    block = extender_block(url)
    block.pop("bindVerb", None)
    block.pop("preemptVerb", None)
    return block


@dataclasses.dataclass
class Result:
    nodes: int
    pods: str
    scheduler: str
    mode: str
    n: int
    seconds: float
    cpu_ms_per_pod: dict[str, float]

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


def wipe_pods(plane: ControlPlane, core: k8s.CoreV1Api) -> None:
    core.delete_collection_namespaced_pod(NS, grace_period_seconds=0)
    wait_until(lambda: not core.list_namespaced_pod(NS, limit=1).items, 300, "pods deleted", interval=0.5)
    if plane.procs.get("extender") is not None and plane.procs["extender"].alive:

        def empty() -> bool:
            with urlopen(plane.extender_url + "/v1/allocations") as r:
                return not json.loads(r.read())

        wait_until(empty, 120, "extender released every allocation", interval=0.5)


def extender_counts(plane: ControlPlane) -> dict[str, float]:
    """From the extender's /metrics: its reservation counters (where it has them) and, per
    verb, the calls and the seconds spent answering them (``calls filter``, ``seconds filter``)."""
    with urlopen(plane.extender_url + "/metrics") as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        value = line.rsplit(" ", 1)[-1]
        if line.startswith("flexai_reserved_binds_total{"):
            out[line.split('"')[1]] = float(value)
        elif line.startswith("flexai_reservations_expired_total "):
            out["expired"] = float(value)
        elif line.startswith(("flexai_extender_request_seconds_count{", "flexai_extender_request_seconds_sum{")):
            verb = line.split('verb="', 1)[1].split('"', 1)[0]
            out[("calls " if "_count{" in line else "seconds ") + verb] = float(value)
    return out


def urlopen(url: str) -> Any:
    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10)


def run(
    plane: ControlPlane,
    core: k8s.CoreV1Api,
    nodes: int,
    pods: int,
    vgpu: bool,
    extender: bool,
    mode: str,
    tag: str,
    floor: str = "",
    profiling: Profiling | None = None,
) -> Result:
    names = [f"{tag}-{i:05}" for i in range(pods)]
    clock = BindClock(core)
    real_config = plane._scheduler_config
    if floor:  # the next scheduler start points at the floor instead of our extender

        def config(with_extender: bool) -> dict[str, Any]:
            cfg = real_config(False)
            cfg["extenders"] = [floor_block(floor)]
            return cfg

        plane._scheduler_config = config  # type: ignore[method-assign]
    cpu0: dict[str, float] = {}
    counts0 = extender_counts(plane) if vgpu and extender and not floor else {}
    if mode == "burst":
        plane.procs["kube-scheduler"].stop()
        parallel(lambda i: core.create_namespaced_pod(NS, pod_body(names[i], vgpu)), pods)
        plane.restart_scheduler(with_extender=extender)
        cpu0 = cpu_seconds(plane)
        opens0 = tcp_opens()
        profiles = None
        if profiling is not None:  # from the first bind: before it, kube-scheduler syncs its caches
            wait_until(lambda: not clock.bound.keys().isdisjoint(names), 120, "a first pod bound", interval=0.01)
            profiles = Profiles(plane, profiling, tag)
            profiles.start()
        wait_until(lambda: len(clock.bound) >= pods, 900, f"{pods} pods bound", interval=0.2)
        if profiles is not None:
            profiles.finish()
        times = sorted(clock.bound[n] for n in names)
        result = Result(
            nodes,
            "vgpu" if vgpu else "plain",
            "floor" if floor else "extender" if extender else "alone",
            mode,
            pods - 1,
            times[-1] - times[0],
            {},
        )
    else:
        plane.restart_scheduler(with_extender=extender)
        cpu0 = cpu_seconds(plane)
        opens0 = tcp_opens()
        t0 = time.monotonic()
        parallel(lambda i: core.create_namespaced_pod(NS, pod_body(names[i], vgpu)), pods)
        created = time.monotonic() - t0
        wait_until(lambda: len(clock.bound) >= pods, 900, f"{pods} pods bound", interval=0.2)
        last = max(clock.bound[n] for n in names)
        result = Result(
            nodes, "vgpu" if vgpu else "plain", "extender" if extender else "alone", mode, pods, last - t0, {}
        )
        print(f"    (created {pods} pods in {created:.1f}s = {pods / created:.0f}/s)", flush=True)
    plane._scheduler_config = real_config  # type: ignore[method-assign]
    cpu1 = cpu_seconds(plane)
    clock.stop()
    # Until the last bind, plus what trails it (kwok marking pods Running): per pod scheduled.
    result.cpu_ms_per_pod = {k: (cpu1[k] - cpu0.get(k, 0.0)) * 1000 / pods for k in cpu1}
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in result.cpu_ms_per_pod.items())
    print(
        f"  {result.nodes:>5} nodes  {result.pods:5} pods  {result.scheduler:8}  {mode:6}  "
        f"{result.rate:7.1f} pods/s   cpu ms/pod: {cpu}",
        flush=True,
    )
    # Pods scheduled more than once (a bind refused, a filter error) cost every component again.
    events = core.list_namespaced_event(NS, field_selector="reason=FailedScheduling").items
    mine = [e for e in events if (e.involved_object.name or "").startswith(f"{tag}-")]
    print(f"    {sum(e.count or 1 for e in mine)} FailedScheduling events for these pods", flush=True)
    # kube-scheduler's extender client keeps 2 idle connections (Go's default): more binds
    # in flight than that open new ones, which every side pays for.
    print(f"    {tcp_opens() - opens0} TCP connections accepted during the run", flush=True)
    for message in sorted({str(e.message)[:300] for e in mine})[:3]:
        print(f"      {message}", flush=True)
    if counts0:  # this run's calls into the extender, and how binds met its reservations (reserving.py)
        got = {k: v - counts0.get(k, 0) for k, v in extender_counts(plane).items()}
        verbs = sorted(k.split(" ", 1)[1] for k in got if k.startswith("calls ") and got[k])
        print(
            "    extender, per verb: "
            + ", ".join(
                f"{v} {got['calls ' + v]:.0f} calls, {1000 * got['seconds ' + v] / pods:.2f} ms/pod" for v in verbs
            ),
            flush=True,
        )
        reserved = {k: v for k, v in got.items() if " " not in k}
        if reserved:
            print(
                "    binds by reservation: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(reserved.items())),
                flush=True,
            )
    wipe_pods(plane, core)
    return result


def bench(
    nodes: int,
    pods: int,
    modes: tuple[str, ...] = ("stream", "burst"),
    floor: bool = False,
    score_percent: int | None = None,
    answer: str = "best",
    profiling: Profiling | None = None,
) -> list[Result]:
    global FLOOR
    work = Path(tempfile.mkdtemp(prefix=f"flexai-bench-{nodes}-"))
    extra: dict[str, Any] = {"clientConnection": {"qps": 5000, "burst": 5000}}
    if score_percent is not None:
        extra["percentageOfNodesToScore"] = score_percent
    plane = ControlPlane(BIN, workdir=work, scheduler_config=extra, profiling=profiling is not None)
    plane.start()
    core = plane.core_api()
    out: list[Result] = []
    try:
        inventory = ann.encode_inventory(CARDS, datetime.now(UTC))
        t = time.monotonic()
        parallel(lambda i: core.create_node(node_body(f"n{i:05}", inventory)), nodes)

        def ready() -> bool:
            ok = 0
            for n in core.list_node().items:
                conditions = (n.status.conditions if n.status else None) or []
                ok += any(c.type == "Ready" and c.status == "True" for c in conditions)
            return ok == nodes

        wait_until(ready, 600, f"{nodes} nodes Ready", interval=1.0)
        print(f"{nodes} nodes ready in {time.monotonic() - t:.0f}s", flush=True)
        # The heartbeat written above must stay fresh for the whole run.
        settings = work / "flexai-sched.yaml"
        settings.write_text(f"filter_answer: {answer}\n")
        plane.start_extender(
            dataclasses.replace(
                flexai_sched_extender("--heartbeat-ttl", "86400", "--config", str(settings)),
                health_path="/readyz",
                startup_timeout=120,
            )
        )
        floor_url = ""
        if floor:
            from tests.e2e.controlplane import free_port

            port = free_port()
            FLOOR = subprocess.Popen([sys.executable, str(REPO / "bench" / "floor_extender.py"), "--port", str(port)])
            floor_url = f"http://127.0.0.1:{port}"
            wait_until(lambda: _floor_up(floor_url), 30, "floor extender up", interval=0.2)
        for mode in modes:
            # The first burst on a fresh cluster runs slow (its nodes' first status writes are
            # still going on): a plain-pod run first, not reported, so the baseline is not it.
            print("  (warm-up, not reported:)", flush=True)
            run(plane, core, nodes, min(pods, 300), False, False, mode, f"w{mode[0]}")
            prof = dataclasses.replace(profiling, out=profiling.out / str(nodes)) if profiling else None
            out.append(run(plane, core, nodes, pods, False, False, mode, f"a{mode[0]}", profiling=prof))
            out.append(run(plane, core, nodes, pods, False, True, mode, f"b{mode[0]}", profiling=prof))
            out.append(run(plane, core, nodes, pods, True, True, mode, f"c{mode[0]}", profiling=prof))
            out.append(run(plane, core, nodes, pods, True, False, mode, f"e{mode[0]}", profiling=prof))
            if floor:
                out.append(
                    run(
                        plane,
                        core,
                        nodes,
                        pods,
                        vgpu=True,
                        extender=True,
                        mode=mode,
                        tag=f"d{mode[0]}",
                        floor=floor_url,
                        profiling=prof,
                    )
                )
    finally:
        core.api_client.close()
        plane.stop()
        if FLOOR is not None:
            FLOOR.terminate()
            FLOOR.wait()
            FLOOR = None
    return out


def _floor_up(url: str) -> bool:
    try:
        with urlopen(url + "/healthz"):
            return True
    except OSError:
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--pods", type=int, default=500)
    p.add_argument("--modes", nargs="+", choices=("stream", "burst"), default=["stream", "burst"])
    p.add_argument("--floor", action="store_true", help="also vGPU pods through the do-nothing extender")
    p.add_argument("--score-percent", type=int, help="kube-scheduler's percentageOfNodesToScore (default: adaptive)")
    p.add_argument("--answer", choices=("best", "all"), default="best", help="the extender's filter_answer setting")
    p.add_argument("--profile", type=Path, help="write CPU profiles of each burst here")
    p.add_argument("--profile-seconds", type=int, default=3, help="how long each profile runs")
    args = p.parse_args()
    profiling = Profiling(args.profile, args.profile_seconds) if args.profile else None
    results: list[Result] = []
    for n in args.nodes:
        results += bench(n, args.pods, tuple(args.modes), args.floor, args.score_percent, args.answer, profiling)
    print(
        "\n| nodes | mode | plain, kube-scheduler alone | plain, with extender | vGPU, with extender "
        "| ratio plain | ratio vGPU |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in args.nodes:
        for mode in args.modes:
            r = {(x.pods, x.scheduler): x.rate for x in results if x.nodes == n and x.mode == mode}
            alone = r[("plain", "alone")]
            print(
                f"| {n} | {mode} | {alone:.1f} | {r[('plain', 'extender')]:.1f} | {r[('vgpu', 'extender')]:.1f} "
                f"| {r[('plain', 'extender')] / alone:.2f} | {r[('vgpu', 'extender')] / alone:.2f} |"
            )
            for key, label in (
                (("vgpu", "floor"), "through the do-nothing floor extender"),
                (("vgpu", "alone"), "kube-scheduler alone"),
            ):
                if key in r:
                    print(f"|   | {mode}, vGPU {label} | | | {r[key]:.1f} | | {r[key] / alone:.2f} |")
            if ("vgpu", "alone") in r:  # no extender reaches more than kube-scheduler alone
                ceiling = r[("vgpu", "extender")] / r[("vgpu", "alone")]
                print(f"|   | {mode}, vGPU with extender / vGPU kube-scheduler alone | | | | | {ceiling:.2f} |")
    print("\nratio = pods/s / pods/s of plain pods with kube-scheduler alone (goal: vGPU with extender >= 0.7)")
    print("\nCPU ms per pod (burst), by component:")
    for x in results:
        if x.mode == "burst":
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in x.cpu_ms_per_pod.items())
            wall = 1000 / x.rate
            print(
                f"  {x.nodes} nodes, {x.pods} pods, {x.scheduler}: {cpu} "
                f"(sum {sum(x.cpu_ms_per_pod.values()):.1f}; wall {wall:.1f} ms per pod)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
