"""KubeBackend.commit's one write against a stand-in apiserver: the request it sends (path,
body, the kubeconfig's credentials, a kept-alive connection) and what each answer becomes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from flexai_core import annotations as ann
from flexai_core.model import Allocation, Slice
from flexai_sched import kube
from flexai_sched.backend import CommitError, CommitUnknown
from flexai_sched.errors import BindFailure
from flexai_sched.kube import KubeBackend

ALLOC = Allocation.build("team", "p", "uid-1", "n1", (Slice("main", 0, "GPU-0", 30, 4096),))
BOUND_AS_ASKED = {
    "metadata": {"uid": "uid-1", "annotations": {ann.POD_ALLOCATION: ann.encode_allocation(ALLOC)}},
    "spec": {"nodeName": "n1"},
}


class Apiserver:
    """Answers each POST with ``answer`` (status, body) and each GET with ``pod`` (404 if None)."""

    def __init__(self) -> None:
        self.answer: tuple[int, dict[str, Any]] = (201, {"kind": "Status", "status": "Success"})
        self.pod: dict[str, Any] | None = None
        self.posts: list[tuple[str, dict[str, str], dict[str, Any], int]] = []  # path, headers, body, port
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.posts.append((self.path, headers, body, self.client_address[1]))
                self._send(*outer.answer)

            def do_GET(self) -> None:
                if outer.pod is None:
                    self._send(404, {"kind": "Status", "message": 'pods "p" not found', "code": 404})
                else:
                    self._send(200, outer.pod)

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def apiserver() -> Iterator[Apiserver]:
    s = Apiserver()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture
def backend(apiserver: Apiserver, tmp_path: Path) -> Iterator[KubeBackend]:
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": apiserver.url}}],
                "users": [{"name": "u", "user": {"token": "s3cret"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    b = KubeBackend(kubeconfig=str(config), commit_timeout_s=5)
    b._api = k8s.CoreV1Api(b._client())  # what start() sets up, without the watches
    yield b
    b._api.api_client.rest_client.pool_manager.clear()  # its kept-alive connections


def test_the_binding_is_one_post_with_the_uid_the_annotation_and_the_kubeconfigs_token(
    apiserver: Apiserver, backend: KubeBackend
) -> None:
    backend.commit(ALLOC)
    backend.commit(Allocation.build("team", "q", "uid-2", "n2", ALLOC.slices))
    (path, headers, body, port), (_, _, _, port2) = apiserver.posts
    assert path == "/api/v1/namespaces/team/pods/p/binding"
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["content-type"] == "application/json"
    assert body == {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {
            "name": "p",
            "namespace": "team",
            "uid": "uid-1",
            "annotations": {ann.POD_ALLOCATION: ann.encode_allocation(ALLOC)},
        },
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"},
    }
    assert port2 == port  # the second bind came on the same kept-alive connection


@pytest.mark.parametrize(
    ("status", "message", "reason"),
    [
        (404, 'pods "p" not found', BindFailure.POD_GONE),
        (409, "Operation cannot be fulfilled: Precondition failed: UID in precondition: uid-1", BindFailure.POD_GONE),
        (409, 'pod p is already assigned to node "n2"', BindFailure.DUPLICATE),
        (403, "forbidden", BindFailure.BACKEND),
    ],
)
def test_a_refusal_is_a_commit_error_with_its_reason_and_message(
    apiserver: Apiserver, backend: KubeBackend, status: int, message: str, reason: BindFailure
) -> None:
    apiserver.answer = (status, {"kind": "Status", "message": message, "code": status})
    with pytest.raises(CommitError) as got:
        backend.commit(ALLOC)
    assert not isinstance(got.value, CommitUnknown)
    assert got.value.reason is reason
    assert f"HTTP {status}: {message}" in str(got.value)


def test_a_5xx_reads_the_pod_back_unknown_unless_it_shows_bound_as_asked(
    apiserver: Apiserver, backend: KubeBackend
) -> None:
    apiserver.answer = (503, {"kind": "Status", "message": "etcd is sad", "code": 503})
    with pytest.raises(CommitUnknown, match="HTTP 503: etcd is sad"):
        backend.commit(ALLOC)
    apiserver.pod = BOUND_AS_ASKED  # it landed after all
    backend.commit(ALLOC)


def test_no_apiserver_at_all_is_unknown(backend: KubeBackend, apiserver: Apiserver) -> None:
    apiserver.server.shutdown()
    apiserver.server.server_close()
    backend._core().api_client.rest_client.pool_manager.clear()
    with pytest.raises(CommitUnknown):
        backend.commit(ALLOC)


def test_a_token_the_client_refreshes_is_sent_within_a_second(
    apiserver: Apiserver, backend: KubeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.commit(ALLOC)
    cfg = backend._core().api_client.configuration
    cfg.refresh_api_key_hook = lambda c: c.api_key.update(BearerToken="Bearer rotated")  # an exec plugin's new token
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 0.5)
    backend.commit(ALLOC)
    monkeypatch.setattr(time, "monotonic", lambda: now + kube.AUTH_REFRESH_S + 0.01)
    backend.commit(ALLOC)
    assert [h["authorization"] for _, h, _, _ in apiserver.posts] == [
        "Bearer s3cret",
        "Bearer s3cret",
        "Bearer rotated",
    ]
