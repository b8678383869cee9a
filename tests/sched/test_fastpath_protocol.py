"""filter and prioritize answered in uvicorn's protocol (fastpath.HttpProtocol), as
``flexai-sched serve`` runs them: over a real socket, the same answers, input checks, body
limit and error answers as the app's handlers, and HTTP framing kept right (keep-alive,
HTTP/1.0, pipelining, a request the fast path hands to the app)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.fastpath import Hot, protocol
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod

NAMES = ["a", "b", "c", "d"]
LIMIT = 4000


class Served:
    def __init__(self) -> None:
        state = ClusterState()
        self.backend = MemoryBackend([node(n, 4) for n in NAMES], heartbeat_every=None)
        self.backend.start(state)
        self.ext = Extender(state, self.backend, Settings(filter_answer="all"))
        self.app = create_app(self.ext, start_backend=False, max_body=LIMIT)
        self.calls = 0
        self.opened: list[http.client.HTTPConnection | socket.socket] = []
        hot: Hot = self.app.state.hot

        class Counted(Hot):  # counts the bodies the fast path saw
            def answer(s, path: str, body: bytes) -> bytes | None:  # noqa: N805
                self.calls += 1
                return super().answer(path, body)

        counted = Counted.__new__(Counted)
        counted.__dict__.update(hot.__dict__)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, http=protocol(counted), log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.02)

    def conn(self) -> http.client.HTTPConnection:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.opened.append(c)
        return c

    def socket(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.opened.append(s)
        return s

    def stop(self) -> None:
        for c in self.opened:
            c.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    try:
        yield s
    finally:
        s.stop()


def post(c: http.client.HTTPConnection, path: str, body: bytes, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    c.request("POST", path, body, {"content-type": "application/json", **headers})
    r = c.getresponse()
    return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}


def body(p: dict[str, Any], names: list[str]) -> bytes:
    return json.dumps({"Pod": p, "NodeNames": names}).encode()


def answers(s: socket.socket, count: int) -> list[bytes]:
    """The 200 answers read from ``s`` until ``count`` came (or 10 s passed), each without its status line."""
    got = b""
    deadline = time.time() + 10
    while got.count(b"HTTP/1.1 200") < count and time.time() < deadline:
        got += s.recv(65536)
    return got.split(b"HTTP/1.1 200 OK\r\n")[1:]


def test_answers_are_the_apps_and_come_from_the_protocol(served: Served) -> None:
    p = pod("q", limits(2, cores=30, memory_gib=8))
    served.backend.create_pod(pod("x", limits(4, cores=80)))
    served.ext.parse(pod("x", limits(4, cores=80)))
    served.ext.bind("default", "x", "uid-x", "a")
    c = served.conn()
    with TestClient(served.app) as asgi:
        for path, names in (("/filter", [*NAMES, "ghost"]), ("/prioritize", NAMES)):
            status, raw, headers = post(c, path, body(p, names))
            want = asgi.post(path, content=body(p, names), headers={"content-type": "application/json"})
            assert status == 200 and headers["content-type"] == "application/json"
            assert int(headers["content-length"]) == len(raw)
            assert json.loads(raw) == want.json()
    assert served.calls == 2  # both on one kept-alive connection, both in the protocol
    assert json.loads(post(c, "/filter", body(p, NAMES))[1])["NodeNames"] == ["b", "c", "d"]


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (b'{"Pod": {}, "NodeNames": "a"}', ["body", "NodeNames"]),
        (b'{"Pod": {}, "NodeNames": ["a", 5]}', ["body", "NodeNames", 1]),
        (b'{"Pod": null, "NodeNames": []}', ["body", "Pod"]),
        (b'{"Pod": [], "NodeNames": []}', ["body", "Pod"]),
        (b'{"NodeNames": []}', ["body", "Pod"]),
        (b'{"Pod": {}, "NodeNames": ["\\ud800"]}', ["body"]),
        (b'{"Pod": {"metadata": {"name": "\\udfff"}}, "NodeNames": []}', ["body"]),
        (b'{"Pod": {}, "NodeNames": ["\xc3\x28"]}', ["body"]),
        (b'{"Pod": {"spec": "\xff"}, "NodeNames": []}', ["body"]),
        (b"{nope", ["body"]),
    ],
)
def test_a_body_the_fast_path_refuses_gets_the_apps_422_on_the_same_connection(
    served: Served, raw: bytes, loc: list[object]
) -> None:
    c = served.conn()
    for verb in ("/filter", "/prioritize"):
        status, reply, _ = post(c, verb, raw)
        assert status == 422, reply
        assert json.loads(reply)["detail"][0]["loc"][: len(loc)] == loc
    p = pod("q", limits(1, cores=10))
    assert post(c, "/filter", body(p, NAMES))[0] == 200  # the connection still serves


def test_a_pod_the_extender_refuses_is_answered_as_the_app_does(served: Served) -> None:
    bad = pod("bad", limits(1, cores=7))  # not a multiple of the granularity
    c = served.conn()
    with TestClient(served.app) as asgi:
        for path in ("/filter", "/prioritize"):
            status, raw, _ = post(c, path, body(bad, NAMES))
            assert status == 200
            assert (
                json.loads(raw)
                == asgi.post(path, content=body(bad, NAMES), headers={"content-type": "application/json"}).json()
            )
    assert (
        "invalid vGPU request" in json.loads(post(c, "/filter", body(bad, NAMES))[1])["FailedAndUnresolvableNodes"]["a"]
    )


def test_bodies_over_the_limit_get_the_apps_413(served: Served) -> None:
    big = body(pod("q", limits(1, cores=10)), [f"node-{i}" for i in range(LIMIT // 8)])
    assert len(big) > LIMIT
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(big[i : i + 500]), big[i : i + 500]) for i in range(0, len(big), 500))
    for path, head, payload in (
        ("/filter", b"content-length: %d" % len(big), big),  # declared over the limit
        ("/prioritize", b"transfer-encoding: chunked", chunked + b"0\r\n\r\n"),  # found over it while read
    ):
        s = served.socket()
        try:
            s.sendall(
                b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n%s\r\n\r\n" % (path.encode(), head)
                + payload
            )
        except OSError:  # the server may answer and close before all of it is sent
            pass
        got = b""
        while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        head_, _, reply = got.partition(b"\r\n\r\n")
        assert head_.startswith(b"HTTP/1.1 413"), got[:200]
        assert str(LIMIT) in json.loads(reply)["detail"]


def test_http_10_gets_its_answer_then_the_connection_closes(served: Served) -> None:
    s = served.socket()
    raw = body(pod("q", limits(1, cores=10)), NAMES)
    s.sendall(b"POST /filter HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(raw) + raw)
    got = b""
    while chunk := s.recv(65536):  # the server closes: recv returns b"" at the end
        got += chunk
    head, _, reply = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
    assert json.loads(reply)["NodeNames"] == NAMES


def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    """A fast-path request behind one the app answers waits its turn (it goes to the app too)."""
    p = pod("q", limits(1, cores=10))
    raw = body(p, ["a", "b"])
    request = b"POST /filter HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    s = served.socket()
    s.sendall(b"GET /v1/nodes HTTP/1.1\r\nhost: x\r\n\r\n" + request % len(raw) + raw + request % len(raw) + raw)
    parts = answers(s, 3)
    assert len(parts) == 3
    assert b'"name":"a"' in parts[0]  # the node list first, then both filter replies
    assert all(b'"NodeNames":["a","b"]' in part for part in parts[1:])


def bind_body(name: str, node_name: str, uid: str | None = None) -> bytes:
    return json.dumps(
        {"PodName": name, "PodNamespace": "default", "PodUID": uid or f"uid-{name}", "Node": node_name}
    ).encode()


def test_bind_is_answered_from_the_protocol_as_the_app_answers_it(served: Served) -> None:
    for name in ("p", "q"):
        served.backend.create_pod(pod(name, limits(4, cores=80)))
    real, threads = served.backend.commit, []

    def seen(alloc: Any) -> None:
        threads.append(threading.current_thread().name)
        real(alloc)

    served.backend.commit = seen  # type: ignore[method-assign]
    c = served.conn()
    status, raw, headers = post(c, "/bind", bind_body("p", "a"))
    assert status == 200 and json.loads(raw) == {"Error": ""} and int(headers["content-length"]) == len(raw)
    assert threads == ["bind_0"]  # the fast path's own thread, not the app's thread pool
    assert served.ext.state.allocation("default/p").node == "a"  # type: ignore[union-attr]
    # A refusal: the same words as the app's (a second 4-card pod does not fit on a's 4 cards).
    status, raw, _ = post(c, "/bind", bind_body("q", "a"))
    with TestClient(served.app) as asgi:
        want = asgi.post("/bind", content=bind_body("q", "a"), headers={"content-type": "application/json"})
    assert status == 200 and json.loads(raw) == want.json() and "0 of 4 have it" in want.json()["Error"]
    assert post(c, "/bind", bind_body("q", "b"))[1] == b'{"Error":""}'  # the same connection still serves


def test_after_a_reply_the_loop_decides_what_changed_for_the_other_shapes(served: Served) -> None:
    """``Hot.refresh_soon``: once a filter is answered, the event loop decides the nodes changed
    since another table's last call, before that shape's next call comes."""
    c = served.conn()
    small, big, bigger = pod("s", limits(1, cores=20)), pod("b", limits(2, cores=50)), pod("c", limits(2, cores=50))
    for p in (small, big, bigger):
        served.backend.create_pod(p)
    post(c, "/filter", body(small, ["a", "b"]))
    post(c, "/filter", body(big, ["a", "b"]))
    assert post(c, "/bind", bind_body("b", "a"))[1] == b'{"Error":""}'  # a changed
    (table,) = [t for t in served.ext.caches.tables.values() if t.asked and t.asked[0].name == "s"]
    behind = table.seq
    assert behind < served.ext.state.change_seq()
    post(c, "/filter", body(bigger, ["a", "b"]))  # another shape's call: its reply starts the refresh
    deadline = time.time() + 5
    while table.seq < served.ext.state.change_seq() and time.time() < deadline:
        time.sleep(0.01)
    assert table.seq == served.ext.state.change_seq() > behind
    assert "a" in table.verdicts  # decided again, for the small pod's shape


def test_the_reservation_is_made_on_the_loop_after_the_reply(served: Served) -> None:
    """filter's reply is written first; the loop reserves the pod's room right after, with no
    other request needed, and a call from another connection is decided with it."""
    whole = [pod(f"w{i}", limits(4, cores=100)) for i in range(2)]
    for p in whole:
        served.backend.create_pod(p)
    reply = json.loads(post(served.conn(), "/filter", body(whole[0], ["a"]))[1])
    assert reply["NodeNames"] == ["a"]
    deadline = time.time() + 5
    while not served.ext.state.reservations("default/w0") and time.time() < deadline:
        time.sleep(0.01)
    assert served.ext.state.reservations("default/w0")[0].node == "a"
    assert json.loads(post(served.conn(), "/filter", body(whole[1], ["a"]))[1])["NodeNames"] == []


@pytest.mark.parametrize(
    "raw",
    [
        bind_body("p\n", "a"),  # a final newline: not a Kubernetes name
        bind_body("P", "a"),
        bind_body("p", "a", uid="u/1"),
        json.dumps({"PodName": "p", "PodNamespace": "default"}).encode(),
        b"{nope",
    ],
)
def test_a_bind_body_the_fast_path_refuses_gets_the_apps_422(served: Served, raw: bytes) -> None:
    c = served.conn()
    status, reply, _ = post(c, "/bind", raw)
    assert status == 422, reply
    assert json.loads(reply)["detail"][0]["loc"][0] == "body"
    assert served.ext.state.allocation("default/p") is None


def test_a_request_behind_a_bind_in_progress_is_answered_after_it(served: Served) -> None:
    served.backend.create_pod(pod("p", limits(1, cores=10)))
    real = served.backend.commit

    def slow(alloc: Any) -> None:
        time.sleep(0.3)  # the apiserver takes its time
        real(alloc)

    served.backend.commit = slow  # type: ignore[method-assign]
    raw = body(pod("q", limits(1, cores=10)), ["a", "b"])
    b = bind_body("p", "a")
    s = served.socket()
    s.sendall(
        b"POST /bind HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(b)
        + b
        + b"POST /filter HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(raw)
        + raw
    )
    parts = answers(s, 2)
    assert len(parts) == 2
    assert parts[0].endswith(b'{"Error":""}')  # the bind's answer first, then the filter's
    assert b'"NodeNames":["a","b"]' in parts[1]


def test_a_client_that_leaves_mid_bind_leaves_the_server_serving(served: Served) -> None:
    served.backend.create_pod(pod("p", limits(1, cores=10)))
    real = served.backend.commit

    def slow(alloc: Any) -> None:
        time.sleep(0.3)
        real(alloc)

    served.backend.commit = slow  # type: ignore[method-assign]
    s = served.socket()
    b = bind_body("p", "a")
    s.sendall(b"POST /bind HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(b) + b)
    s.close()
    time.sleep(0.5)
    assert served.ext.state.allocation("default/p") is not None  # the bind itself went through
    c = served.conn()
    assert post(c, "/filter", body(pod("q", limits(1, cores=10)), ["a"]))[0] == 200
