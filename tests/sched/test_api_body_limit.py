"""The body limit over a real socket, against the real server (``flexai-sched serve`` under
uvicorn, in a child process): a chunked body declares no length, so the limit must count
the bytes as they arrive and refuse past it without reading (or keeping) the rest.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from flexai_sched.app import MAX_BODY

from .fixtures import limits, pod

MIB = 1 << 20


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, int]]:
    """(port, pid) of a running ``flexai-sched serve`` on its built-in demo cluster."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexai_sched.cli", "serve", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def post_chunked(port: int, path: str, chunks: Iterable[bytes]) -> tuple[int, bytes, int]:
    """POST with Transfer-Encoding: chunked; (status, body, bytes the client got to send).

    The answer is read on its own thread while the body goes out, as a client must: a server
    that refuses early answers before the body ends, then stops reading.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    got = bytearray()

    def read() -> None:
        try:
            while data := sock.recv(65536):
                got.extend(data)
        except OSError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    sent = 0
    try:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        for chunk in chunks:
            sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        sock.sendall(b"0\r\n\r\n")
    except OSError:  # the server closed the connection after refusing
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    reader.join(30)
    sock.close()
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    if b"transfer-encoding: chunked" in head.lower():  # de-chunk the answer
        out, rest = bytearray(), body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out += rest[:n]
            rest = rest[n + 2 :]
        body = bytes(out)
    return status, body, sent


def test_a_chunked_body_within_the_limit_is_served(server: tuple[int, int]) -> None:
    port, _ = server
    raw = json.dumps({"Pod": pod("p", limits(1, cores=20)), "Nodes": None, "NodeNames": ["gpu-h200-a"]}).encode()
    status, body, _ = post_chunked(port, "/filter", (raw[i : i + 7] for i in range(0, len(raw), 7)))
    assert status == 200, body
    assert json.loads(body)["NodeNames"] == ["gpu-h200-a"]


def test_a_chunked_body_past_the_limit_is_refused_with_413_and_never_held_in_memory(server: tuple[int, int]) -> None:
    port, pid = server
    before = peak_rss_mib(pid)
    total = 512 * MIB  # what the finding sent (its server then held 1.1 GB)
    block = b" " * MIB
    status, body, sent = post_chunked(port, "/filter", (block for _ in range(total // MIB)))
    assert status == 413, body[:200]
    assert f"exceeds {MAX_BODY}" in json.loads(body)["detail"]
    # It stopped reading soon after the limit: the client could not push the rest.
    assert sent < MAX_BODY + 64 * MIB, sent
    # At most the limit was ever buffered (with its copies), never the 512 MiB sent.
    grew = peak_rss_mib(pid) - before
    assert grew < 3 * MAX_BODY / MIB, f"peak RSS grew {grew:.0f} MiB"
    # And the server still answers.
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def test_a_declared_length_past_the_limit_is_refused_before_the_body(server: tuple[int, int]) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST /bind HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode()
        )
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:100]


def test_a_few_mib_of_bad_items_do_not_cost_the_server_gigabytes(server: tuple[int, int]) -> None:
    """4 million bad node names (8 MiB): one error, not four million (1.6 GB of them)."""
    port, pid = server
    before = peak_rss_mib(pid)
    raw = b'{"Pod": {}, "NodeNames": [' + b",".join([b"1"] * 4_000_000) + b"]}"
    r = httpx.post(
        f"http://127.0.0.1:{port}/filter", content=raw, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "NodeNames", 0]
    grew = peak_rss_mib(pid) - before
    assert grew < 400, f"peak RSS grew {grew:.0f} MiB"
