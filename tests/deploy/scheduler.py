"""kube-scheduler started on the chart's KubeSchedulerConfiguration, as the Deployment
runs it, with one change: clientConnection.kubeconfig points at the test apiserver
(in a pod it is the in-cluster service account)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.controlplane import LOOPBACK, Process, free_port, http_ok

from .conftest import Procs


def with_kubeconfig(cfg: dict[str, Any], kubeconfig: Path) -> dict[str, Any]:
    out = dict(cfg)
    out["clientConnection"] = {**cfg.get("clientConnection", {}), "kubeconfig": str(kubeconfig)}
    return out


def start_kube_scheduler(
    procs: Procs, bin_dir: Path, cfg: dict[str, Any], name: str = "kube-scheduler", delegate_to: Path | None = None
) -> tuple[Process, int]:
    """Start it; returns the process and its secure port (/healthz, /readyz over HTTPS).
    ``delegate_to``: the kubeconfig for authenticating and authorising requests to its
    own endpoints (in a pod: the in-cluster account, as for its client)."""
    path = procs.log_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = free_port()
    argv = [
        str(bin_dir / "kube-scheduler"),
        f"--config={path}",
        f"--secure-port={port}",
        f"--bind-address={LOOPBACK}",
        # anonymous health checks on loopback, as the chart's probes need
        "--authorization-always-allow-paths=/healthz,/readyz,/livez",
        f"--cert-dir={procs.log_dir / (name + '-certs')}",
        "--v=2",
    ]
    if delegate_to is not None:
        argv += [f"--authentication-kubeconfig={delegate_to}", f"--authorization-kubeconfig={delegate_to}"]
    return procs.start(name, argv), port


def healthy(port: int, path: str = "/healthz") -> bool:
    # Self-signed serving certificate on loopback: nothing to verify it against.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return http_ok(f"https://{LOOPBACK}:{port}{path}", ctx)
