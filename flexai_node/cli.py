"""``flexai-node``: run the node agent (device plugin, node annotation, metrics).

Every flag has an environment variable (the DaemonSet sets those); flags win.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .agent import AgentSettings, NodeAgent
from .deviceplugin.kubelet_pods import DEFAULT_SOCKET as POD_RESOURCES_SOCKET
from .deviceplugin.server import DEFAULT_DIR
from .hook.calibration import parse_mode
from .hook.config import DEFAULT_LIBRARY
from .hook.shim import HookShim, ShimError
from .inventory import FileInventory, InventoryError, InventorySource
from .kube import KubeError, KubeNodeApi

__all__ = ["main", "parse_args"]

log = logging.getLogger("flexai_node")


def parse_args(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> argparse.Namespace:
    e = os.environ if env is None else env
    p = argparse.ArgumentParser(prog="flexai-node", description=__doc__)
    p.add_argument(
        "--node-name",
        default=e.get("FLEXAI_NODE_NAME") or e.get("NODE_NAME"),
        help="this node's name (env FLEXAI_NODE_NAME or NODE_NAME; the DaemonSet passes spec.nodeName)",
    )
    p.add_argument(
        "--kubeconfig",
        default=e.get("KUBECONFIG"),
        help="kubeconfig file (env KUBECONFIG); in-cluster configuration when unset",
    )
    p.add_argument(
        "--inventory",
        default=e.get("FLEXAI_INVENTORY", "nvml"),
        help="nvml, or file:PATH for a JSON/YAML card list (env FLEXAI_INVENTORY)",
    )
    p.add_argument(
        "--device-plugin-dir",
        type=Path,
        default=Path(e.get("FLEXAI_DEVICE_PLUGIN_DIR", str(DEFAULT_DIR))),
        help=f"kubelet device-plugin directory (env FLEXAI_DEVICE_PLUGIN_DIR; default {DEFAULT_DIR})",
    )
    p.add_argument(
        "--hook-library",
        type=Path,
        default=Path(e.get("FLEXAI_HOOK_LIBRARY", DEFAULT_LIBRARY)),
        help="the CUDA hook library on the host (env FLEXAI_HOOK_LIBRARY)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(e.get("FLEXAI_STATE_DIR", "/var/lib/flexai")),
        help="admission record and per-container directories (env FLEXAI_STATE_DIR)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(e.get("FLEXAI_METRICS_PORT", "9400")),
        help="Prometheus endpoint port, 0 for none (env FLEXAI_METRICS_PORT)",
    )
    p.add_argument(
        "--metrics-address",
        default=e.get("FLEXAI_METRICS_ADDRESS", "0.0.0.0"),
        help="address the metrics endpoint listens on (env FLEXAI_METRICS_ADDRESS)",
    )
    p.add_argument(
        "--max-vgpus-per-card",
        type=int,
        default=int(e.get("FLEXAI_MAX_VGPUS", "5")),
        help="vGPUs advertised per card, 1-5 in the seed (env FLEXAI_MAX_VGPUS)",
    )
    p.add_argument(
        "--pod-resources-socket",
        default=e.get("FLEXAI_POD_RESOURCES_SOCKET", str(POD_RESOURCES_SOCKET)),
        help="the kubelet's PodResources socket, used to tell apart pods bound together; "
        "empty to go without (env FLEXAI_POD_RESOURCES_SOCKET)",
    )
    p.add_argument(
        "--report-every",
        type=float,
        default=float(e.get("FLEXAI_REPORT_EVERY", "30")),
        help="seconds between heartbeats of the node annotation",
    )
    p.add_argument(
        "--ref-clock-mhz",
        default=e.get("FLEXAI_REF_CLOCK_MHZ", "auto"),
        help="core limits in throughput rather than time: auto (default: each idle card's figures "
        "measured once, cached in the state directory), off (or 0: shares of time) or the "
        "full-load SM clock in MHz for every card (env FLEXAI_REF_CLOCK_MHZ)",
    )
    p.add_argument("--log-level", default=e.get("FLEXAI_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    if not args.node_name:
        p.error("the node name is required: --node-name or FLEXAI_NODE_NAME")
    if args.max_vgpus_per_card < 1:
        p.error("--max-vgpus-per-card must be at least 1")
    try:
        args.ref_clock_mhz = parse_mode(args.ref_clock_mhz)
    except ValueError as e:
        p.error(f"--ref-clock-mhz: {e}")
    if args.inventory != "nvml" and not args.inventory.startswith("file:"):
        p.error(f"--inventory must be nvml or file:PATH, not {args.inventory!r}")
    return args


def inventory_from(spec: str, max_vgpus: int) -> InventorySource:
    if spec.startswith("file:"):
        return FileInventory(Path(spec[len("file:") :]), max_vgpus)
    from .nvml import NvmlInventory  # only nodes with a driver import pynvml

    return NvmlInventory(max_vgpus)


def _shim() -> HookShim | None:
    """Per-vGPU usage needs the hook's shim library; without it the agent runs, minus those metrics."""
    try:
        return HookShim()
    except ShimError as e:
        log.warning("no per-vGPU usage metrics: %s", e)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        inventory = inventory_from(args.inventory, args.max_vgpus_per_card)
        api = KubeNodeApi.connect(args.kubeconfig)
    except (InventoryError, KubeError) as e:
        log.error("%s", e)
        return 1
    settings = AgentSettings(
        node=args.node_name,
        state_dir=args.state_dir,
        hook_library=args.hook_library,
        ref_clock_mhz=args.ref_clock_mhz,
        plugin_dir=args.device_plugin_dir,
        metrics_port=args.metrics_port or None,
        metrics_address=args.metrics_address,
        pod_resources_socket=Path(args.pod_resources_socket) if args.pod_resources_socket else None,
        report_every_s=args.report_every,
    )
    agent = NodeAgent(settings, api, inventory, shim=_shim())
    agent.start()

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
