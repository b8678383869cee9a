"""CPU of one Binding write in the extender's process: the kubernetes client's
``create_namespaced_pod_binding`` (how ``KubeBackend.commit`` wrote it before) against
``KubeBackend._post`` (a pre-encoded body on the same client's pool and credentials).

The apiserver is a stand-in in another process (answers every POST 201 with a Status, as
kube-apiserver does), so the CPU measured (``time.process_time``) is the client's alone.

    .venv/bin/python bench/bind_write.py [--writes 3000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client as k8s  # noqa: E402

from flexai_core import annotations as ann  # noqa: E402
from flexai_core.model import Allocation, Slice  # noqa: E402
from flexai_sched.kube import KubeBackend, _encode_json  # noqa: E402

SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
REPLY = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}).encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(REPLY)))
        self.end_headers()
        self.wfile.write(REPLY)
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def body(alloc: Allocation) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {
            "name": alloc.name,
            "namespace": alloc.namespace,
            "uid": alloc.uid,
            "annotations": {ann.POD_ALLOCATION: ann.encode_allocation(alloc)},
        },
        "target": {"apiVersion": "v1", "kind": "Node", "name": alloc.node},
    }


def client_call(b: KubeBackend, alloc: Allocation) -> None:
    """The previous commit's write: the client's call on a dict body, the raw reply read."""
    resp: Any = b._core().create_namespaced_pod_binding(
        alloc.name,
        alloc.namespace,
        body(alloc),  # type: ignore[arg-type]
        _preload_content=False,
        _request_timeout=30.0,
    )
    resp.read()
    resp.release_conn()


def post(b: KubeBackend, alloc: Allocation) -> None:
    """This tree's write: the body encoded here, ``_post``."""
    status, _, _ = b._post(f"/api/v1/namespaces/{alloc.namespace}/pods/{alloc.name}/binding", _encode_json(body(alloc)))
    assert status == 201


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--writes", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "kubeconfig"
            config.write_text(
                json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                        "users": [{"name": "u", "user": {"token": "t"}}],
                        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                        "current-context": "x",
                    }
                )
            )
            b = KubeBackend(kubeconfig=str(config))
            b._api = k8s.CoreV1Api(b._client())
            allocs = [
                Allocation.build("default", f"pod-{i:05}", f"uid-{i}", "n00001", (Slice("main", 1, "GPU-1", 20, 2048),))
                for i in range(args.writes)
            ]
            results: dict[str, list[float]] = {"client call": [], "_post": []}
            for fn in (client_call, post):  # warm both: connections, imports
                for a in allocs[:50]:
                    fn(b, a)
            for _ in range(args.rounds):  # interleaved rounds: the machine's load hits both alike
                for name, fn in (("client call", client_call), ("_post", post)):
                    t = time.process_time()
                    for a in allocs:
                        fn(b, a)
                    results[name].append((time.process_time() - t) * 1e6 / len(allocs))
    finally:
        server.terminate()
        server.wait()
    base = statistics.median(results["client call"])
    for name, got in results.items():
        med = statistics.median(got)
        print(
            f"{name:12} CPU per write: median {med:6.1f} us (rounds: {', '.join(f'{x:.0f}' for x in got)})"
            f"   ratio to the client call {med / base:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
