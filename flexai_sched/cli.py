"""``flexai-sched``: run the extender (``serve``), ask it why a pod is pending (``explain``),
or replay a trace (``sim``)."""

from __future__ import annotations

import argparse
import logging
import sys

from . import config, demo, policies
from .backend import Backend, MemoryBackend
from .extender import Extender
from .state import ClusterState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flexai-sched", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the kube-scheduler extender and REST views")
    serve.add_argument("--config", help="YAML settings file (flags override it)")
    serve.add_argument("--kubeconfig", help="use this cluster; without it (and --in-cluster) a demo cluster")
    serve.add_argument("--in-cluster", action="store_true", default=None, help="use the pod's service account")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--node-policy", choices=policies.names())
    serve.add_argument("--card-policy", choices=policies.names())
    serve.add_argument("--granularity", type=int, help="vgpu-cores must be a multiple of this (default 5)")
    serve.add_argument("--max-vgpus-per-card", type=int)
    serve.add_argument("--heartbeat-ttl", type=float, dest="heartbeat_ttl_s", help="seconds (default 60)")
    serve.add_argument("--tls-cert")
    serve.add_argument("--tls-key")
    serve.add_argument("--demo-inventory", help="YAML/JSON demo nodes (see flexai_sched/demo.py)")
    serve.add_argument(
        "--quota-namespace", help="watch vGPU quotas in ConfigMaps labelled vgpu.flexai.io/quota in this namespace"
    )
    serve.add_argument("--demo-quotas", help="demo cluster: vGPU quotas from this file (re-read when it changes)")
    serve.add_argument("--log-level", default="info")
    why = sub.add_parser(
        "explain",
        help="why a pod is pending: per node the filter's reason, the closest card, "
        "a plan of moves (asks a running flexai-sched)",
    )
    why.add_argument("pod", nargs="?", help="NAMESPACE/NAME of a pod in the cluster")
    why.add_argument("-f", "--file", help="a pod manifest (YAML or JSON; - for stdin) instead of a pod's name")
    why.add_argument("--url", default="http://127.0.0.1:8888", help="the flexai-sched to ask (default %(default)s)")
    why.add_argument("--json", action="store_true", help="print the API's JSON")
    _add_sim(sub)
    args = parser.parse_args(argv)
    if args.command == "sim":
        return int(args.run(args))
    if args.command == "explain":
        return explain(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = config.load(
            args.config,
            kubeconfig=args.kubeconfig,
            in_cluster=args.in_cluster,
            host=args.host,
            port=args.port,
            node_policy=args.node_policy,
            card_policy=args.card_policy,
            granularity=args.granularity,
            max_vgpus_per_card=args.max_vgpus_per_card,
            heartbeat_ttl_s=args.heartbeat_ttl_s,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            demo_inventory=args.demo_inventory,
            quota_namespace=args.quota_namespace,
            demo_quotas=args.demo_quotas,
        )
        backend = make_backend(settings)
    except (ValueError, OSError) as e:
        print(f"flexai-sched: {e}", file=sys.stderr)
        return 2

    import uvicorn

    from .app import create_app
    from .fastpath import protocol

    state = ClusterState(max_vgpus_per_card=settings.max_vgpus_per_card)
    extender = Extender(state, backend, settings)
    if isinstance(backend, MemoryBackend):
        for pod in backend.waiting:
            extender.parse(pod)  # the demo's waiting pods, as filter would have seen them
    app = create_app(extender)
    uvicorn.run(
        app,
        http=protocol(app.state.hot),  # filter, prioritize and bind answered in the protocol (fastpath.py)
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        log_level=args.log_level.lower(),
        access_log=False,
    )
    return 0


def explain(args: argparse.Namespace) -> int:
    """Print the explanation of ``args.pod`` or ``args.file``; 0 if explained, 1 if not."""
    import json

    import httpx

    if bool(args.pod) == bool(args.file):
        print("flexai-sched explain: give NAMESPACE/NAME or -f FILE (one of them)", file=sys.stderr)
        return 2
    base = args.url.rstrip("/")
    try:
        if args.file:
            body = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
            r = httpx.post(f"{base}/v1/explain", content=body, headers={"content-type": "application/yaml"}, timeout=60)
        else:
            ns, _, name = args.pod.rpartition("/")
            r = httpx.get(f"{base}/v1/explain/{ns or 'default'}/{name}", timeout=60)
    except (OSError, httpx.HTTPError) as e:
        print(f"flexai-sched explain: {base}: {e}", file=sys.stderr)
        return 1
    try:
        got = r.json()
    except ValueError:
        got = {"detail": r.text}
    if r.status_code != 200:
        print(f"flexai-sched explain: {got.get('detail', r.text)}", file=sys.stderr)
        return 1
    print(json.dumps(got, indent=2) if args.json else explain_text(got))
    return 0


def explain_text(d: dict[str, object]) -> str:
    """The explanation as a person reads it in a terminal."""
    from typing import Any, cast

    e = cast(dict[str, Any], d)
    pod = e["pod"]
    if e.get("bound_node"):
        return f"{pod}: bound to {e['bound_node']}"
    lines = [
        f"{pod}: fits on {len(e['fits'])} node(s): {', '.join(e['fits'][:10])}"
        if e["fits"]
        else f"{pod}: fits on no node now"
    ]
    if e["reasons"]:
        lines.append("reasons (the filter's, as kube-scheduler was told):")
        lines += [f"  {n} node(s): {reason}" for reason, n in e["reasons"].items()]
    gap = e.get("closest")
    if gap:
        lines.append(
            f"closest card: {gap['node']} card {gap['card']} ({gap['model']}), container "
            f'"{gap["container"]}": missing {"; ".join(gap["missing"])}'
        )
    plan = e.get("plan")
    if plan:
        lines.append(f"plan ({len(plan['moves'])} move(s)):")
        for m in plan["moves"]:
            lines.append(
                f"  move {m['pod']} from {m['from_node']} card(s) {_cards(m['from_cards'])} "
                f"to {m['to_node']} card(s) {_cards(m['to_cards'])}"
            )
        lines.append(f"  then {pod} fits on {plan['node']} card(s) {_cards(plan['cards'])}")
    elif not e["fits"] and gap:
        lines.append(
            "no plan of up to 3 moves frees a fitting slice"
            + ("" if e["plan_complete"] else f" among the {e['plan_searched']} nodes searched")
        )
    return "\n".join(lines)


def _cards(cards: list[int]) -> str:
    return ", ".join(str(c) for c in cards)


def make_backend(settings: config.Settings) -> Backend:
    if settings.kubeconfig or settings.in_cluster:
        from .kube import KubeBackend  # the kubernetes client is only imported when used

        return KubeBackend(
            kubeconfig=settings.kubeconfig, in_cluster=settings.in_cluster, quota_namespace=settings.quota_namespace
        )
    doc = demo.read_file(settings.demo_inventory) if settings.demo_inventory else demo.BUILTIN
    nodes = demo.inventory(doc, settings.max_vgpus_per_card)
    backend = MemoryBackend(nodes, running=demo.pods(doc, nodes), quota_file=settings.demo_quotas)
    backend.waiting = demo.waiting(doc)
    for pod in backend.waiting:
        backend.create_pod(pod)
    return backend


def _add_sim(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The trace replay registers its own arguments (flexai_sched.sim), if present."""
    try:
        from .sim.cli import add_parser
    except ImportError:
        return
    add_parser(sub)


if __name__ == "__main__":
    raise SystemExit(main())
