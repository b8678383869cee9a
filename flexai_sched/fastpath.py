"""The hot extender verbs, filter, prioritize and bind, answered below FastAPI.

kube-scheduler calls filter and prioritize for every vGPU pod with up to every node's
name, so what a call costs beyond the extender's decisions is framing and JSON.
``Hot`` turns a body into the reply's bytes in the form kube-scheduler sends as
deployed (``nodeCacheCapable``: names, no NodeList): msgspec decodes the body into a
typed struct, keeping the pod as its raw bytes (``Extender.parse_raw`` reads them with
``pod_reader``: pods that ask alike share one parse), and the replies are written with
msgspec (prioritize's from structs, not a dict per name).

Two ways in: ``HttpProtocol`` (uvicorn's httptools protocol, what ``flexai-sched serve``
runs) answers in its parser callback, without an ASGI request, task or response;
``HotVerbs`` is the same as an ASGI middleware (any ASGI server, the tests' client).

``HttpProtocol`` writes filter's reply before it reserves the pod's room on the node
answered (``Hot.answer``, ``after_reply``): kube-scheduler has its answer ~75 us sooner, and
the reservation is made on the loop right after, before the refresh. Every way in
(``answer``, a bind, a request handed to the app) makes a reservation still due first, so
no call is ever decided without it.

bind (``HttpProtocol`` only) waits on the apiserver, so it runs in ``Hot.binder``'s threads
and its reply is written when it is done; the connection's next request, if one comes
meanwhile, waits its turn in uvicorn's pipeline as behind any answer in progress.

Anything else goes to the FastAPI app, which documents the verbs in /docs and makes the
same decisions: a body the fast path does not take (not the wire format, a full NodeList,
a pod that is not an object, text that is not UTF-8 or holds a lone surrogate: msgspec
refuses both, as pydantic does, when it decodes the names and the pod), a body over the
limit (the app's 413), a request with ``Expect`` or a query, a request pipelined behind
one the app is still answering. The edge's error answers (a 422 naming the field, the
413, never a 5xx) thus come from one place.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from flexai_core.model import PodRequest
from flexai_core.requests import RequestError

from .extender import Extender, invalid_outcome
from .extender_types import LABEL, SUBDOMAIN, UID
from .metrics import Metrics
from .verbs import bind_error

log = logging.getLogger("flexai_sched")


class _Args(msgspec.Struct):
    """ExtenderArgs as kube-scheduler sends it with nodeCacheCapable (unknown fields ignored)."""

    Pod: msgspec.Raw
    NodeNames: list[str]
    Nodes: None = None


class _HostPriority(msgspec.Struct):
    """HostPriority: encodes as ``{"Host": ..., "Score": ...}``, the same bytes as the dict."""

    Host: str
    Score: int


class _BindArgs(msgspec.Struct):
    """ExtenderBindingArgs (unknown fields ignored); names checked as the app checks them."""

    PodName: str
    PodNamespace: str
    Node: str
    PodUID: str = ""


_decode = msgspec.json.Decoder(_Args).decode
_decode_bind = msgspec.json.Decoder(_BindArgs).decode
_encode = msgspec.json.Encoder().encode
_JSON = [(b"content-type", b"application/json")]
_HOT = {b"/filter": "/filter", b"/prioritize": "/prioritize", b"/bind": "/bind"}
# The app's patterns (extender_types), matched whole: ``$`` alone would let a final newline pass.
_NAMES = (
    ("PodName", re.compile(SUBDOMAIN.rstrip("$")), 253),
    ("PodNamespace", re.compile(LABEL.rstrip("$")), 63),
    ("Node", re.compile(SUBDOMAIN.rstrip("$")), 253),
    ("PodUID", re.compile(UID.rstrip("$")), 128),
)
# Binds at once: kube-scheduler binds each pod in its own goroutine, and each waits on the apiserver.
BIND_THREADS = 32


class Hot:
    """filter and prioritize: a body in, the reply's bytes out, or None: the app answers."""

    def __init__(self, extender: Extender, metrics: Metrics, limit: int) -> None:
        self.extender = extender
        self.metrics = metrics
        self.limit = limit
        self.binder = ThreadPoolExecutor(BIND_THREADS, thread_name_prefix="bind")  # threads start with the first bind
        self._filter_seconds = metrics.latency.labels("filter")
        self._prioritize_seconds = metrics.latency.labels("prioritize")
        self._deferred = metrics.deferred
        self._refreshing = False  # a ``refresh_soon`` step is queued on the loop
        self._unreserved: tuple[PodRequest, list[str]] | None = None  # ``answer``'s reservation due

    def __call__(self, path: str, body: bytes) -> bytes | None:
        """filter's or prioritize's reply, filter's reservation made (bind: see ``bind_args``)."""
        reply = self.answer(path, body)
        self.reserve_due()
        return reply

    def answer(self, path: str, body: bytes) -> bytes | None:
        """``__call__``, but filter's reservation is left due: ``reserve_due`` (``after_reply``)."""
        self.reserve_due()  # an earlier reply's: this call must be decided with it
        try:
            args = _decode(body)
        except (msgspec.DecodeError, UnicodeError):  # UnicodeError: bytes that are not UTF-8
            return None
        pod = bytes(args.Pod)
        if pod[:1] != b"{":  # the app's 422: Pod must be an object
            return None
        try:
            with self.extender.filler.call():  # the tables' filler waits meanwhile
                return self.filter(pod, args.NodeNames) if path == "/filter" else self.prioritize(pod, args.NodeNames)
        except (msgspec.DecodeError, msgspec.EncodeError, UnicodeError):  # JSON the app refuses, or cannot encode
            log.debug("%s: answered by the app", path, exc_info=True)
            return None

    def reserve_due(self) -> None:
        """The reservation of the last filter ``answer`` replied, if not made yet."""
        due, self._unreserved = self._unreserved, None
        if due is not None:
            req, fits = due
            try:
                self.extender.reserving.after_filter(req, fits, self.extender.state.nodes_by_name())
            except Exception:  # the pod's bind places it anew, as without a reservation
                log.exception("reserve")

    def after_reply(self, loop: asyncio.AbstractEventLoop) -> None:
        """After the protocol wrote a reply: the reservation due, then the refresh, on the loop."""
        if self._unreserved is not None:
            loop.call_soon(self.reserve_due)
        self.refresh_soon(loop)

    def refresh_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """After a reply: ``Extender.refresh_step`` on the loop, one step per turn of it until
        every lately asked table is current; a request that comes meanwhile is served between
        two steps. The work is the next calls' own, done while kube-scheduler works on its side."""
        if not self._refreshing and self.extender.tables:
            self._refreshing = True
            loop.call_soon(self._refresh, loop)

    def _refresh(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            done = self.extender.refresh_step()
        except Exception:  # the next call decides what is left, as without the refresh
            log.exception("refresh")
            done = True
        if done:
            self._refreshing = False
        else:
            loop.call_soon(self._refresh, loop)

    @staticmethod
    def bind_args(body: bytes) -> _BindArgs | None:
        """The bind's arguments, or None: the app answers (its 422 names the field)."""
        try:
            args = _decode_bind(body)
        except (msgspec.DecodeError, UnicodeError):
            return None
        for field, pattern, most in _NAMES:
            value = getattr(args, field)
            if len(value) > most or pattern.fullmatch(value) is None:
                return None
        return args

    def bind(self, args: _BindArgs) -> bytes:
        """The bind's reply (blocks on the backend: run it in ``binder``)."""
        return _encode(
            {"Error": bind_error(self.extender, self.metrics, args.PodNamespace, args.PodName, args.PodUID, args.Node)}
        )

    def filter(self, pod: bytes, names: list[str]) -> bytes:
        t = time.perf_counter()
        ext = self.extender
        try:
            ext.expire_holds()
            try:
                req = ext.parse_raw(pod)
            except RequestError as e:
                out = invalid_outcome(e, names)
            else:
                out = ext.filter_verb(req, names, bounded=True, reserve=False)
                if out.unreserved:
                    self._unreserved = (req, out.fits)
                if out.deferred:
                    self._deferred.inc(len(out.deferred))
            reply = {
                "Nodes": None,
                "NodeNames": out.fits,
                "FailedNodes": out.failed,
                "FailedAndUnresolvableNodes": out.unresolvable,
                "Error": "",
            }
        except (msgspec.DecodeError, UnicodeError):  # the pod's JSON: the app's 422
            raise
        except Exception as e:  # an answer kube-scheduler shows in the pod's events, not a 500
            log.exception("filter")
            reply = {
                "Nodes": None,
                "NodeNames": None,
                "FailedNodes": {},
                "FailedAndUnresolvableNodes": {},
                "Error": f"internal error: {e}",
            }
        raw = _encode(reply)
        self._filter_seconds.observe(time.perf_counter() - t)
        return raw

    def prioritize(self, pod: bytes, names: list[str]) -> bytes:
        t = time.perf_counter()
        ext = self.extender
        try:
            try:
                req = ext.parse_raw(pod)
            except RequestError:
                scores = [0] * len(names)
            else:
                scores = ext.prioritize_verb(req, names)
        except (msgspec.DecodeError, UnicodeError):  # the pod's JSON: the app's 422
            raise
        except Exception:  # prioritize errors are ignored by kube-scheduler: score nothing
            log.exception("prioritize")
            scores = [0] * len(names)
        raw = self._priorities_json(names, scores)
        self._prioritize_seconds.observe(time.perf_counter() - t)
        return raw

    @staticmethod
    def _priorities_json(names: list[str], scores: list[int]) -> bytes:
        """``[{"Host": name, "Score": score}, ...]`` as msgspec writes it, from structs built
        by a C-level ``map`` (no dict per name)."""
        return _encode(list(map(_HostPriority, names, scores)))


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering ``POST /filter``, ``/prioritize`` and ``/bind`` itself.

    The request is taken at its headers (``on_headers_complete``) when nothing else is in
    flight on the connection; its body is gathered here, and the reply written straight to
    the transport. Whenever ``hot`` gives no reply, or the body passes the limit, the
    request is handed to uvicorn as if just parsed: its headers-complete and body callbacks
    run then, and the app answers.
    """

    hot: Hot  # set by ``protocol``

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._hot_path: str | None = None
        self._chunks: list[bytes] = []
        self._size = 0

    def on_headers_complete(self) -> None:
        path = _HOT.get(self.url)
        if (
            path is not None
            and self.parser.get_method() == b"POST"
            and not self.expect_100_continue
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
            and self.limit_concurrency is None
            and not self.parser.should_upgrade()
            and self._declared() <= self.hot.limit
        ):
            self._hot_path = path
            return
        super().on_headers_complete()

    def _declared(self) -> int:
        for name, value in self.headers:
            if name == b"content-length":
                return int(value) if value.isdigit() else self.hot.limit + 1
        return 0

    def on_body(self, body: bytes) -> None:
        if self._hot_path is None:
            super().on_body(body)
            return
        self._chunks.append(body)
        self._size += len(body)
        if self._size > self.hot.limit:  # the app's body limit answers (413)
            self._to_app()

    def on_message_complete(self) -> None:
        path = self._hot_path
        if path is None:
            super().on_message_complete()
            return
        body = b"".join(self._chunks)
        if path == "/bind":
            args = self.hot.bind_args(body)
            if args is None:
                self._to_app()
                super().on_message_complete()
                return
            self._start_bind(args)
            return
        reply = self.hot.answer(path, body)
        if reply is None:
            self._to_app()
            super().on_message_complete()
            return
        self._hot_path = None
        self._chunks = []
        self._reply(reply, self._keep_alive())
        self.on_response_complete()
        self.hot.after_reply(self.loop)

    def _keep_alive(self) -> bool:
        return bool(self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive())

    def _start_bind(self, args: _BindArgs) -> None:
        """Run the bind in a thread; its reply is written on the event loop when it is done.
        Meanwhile ``cycle`` is a bind in progress: uvicorn queues a request behind it."""
        self._hot_path = None
        self._chunks = []
        self.hot.reserve_due()  # the pod's own, if its bind came before the loop made it
        self.hot.extender.reserving.bind_arrived(f"{args.PodNamespace}/{args.PodName}")
        pending = _Bind(self._keep_alive())
        self.cycle = pending  # type: ignore[assignment]  # what uvicorn reads of a cycle, nothing more
        loop = self.loop

        def done(f: Future[bytes]) -> None:
            loop.call_soon_threadsafe(self._bound, pending, f)

        self.hot.binder.submit(self.hot.bind, args).add_done_callback(done)

    def _bound(self, pending: _Bind, f: Future[bytes]) -> None:
        if pending.disconnected or self.transport.is_closing():
            return  # the client left: nobody to answer
        try:
            reply = f.result()
        except Exception as e:  # bind_error answers every error; this is the pool refusing work
            log.exception("bind")
            reply = _encode({"Error": f"internal error: {e}"})
        self._reply(reply, pending.keep_alive)
        pending.response_complete = True
        self.on_response_complete()

    def _reply(self, reply: bytes, keep_alive: bool) -> None:
        head = [b"HTTP/1.1 200 OK\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(reply))
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", reply]
        self.transport.write(b"".join(head))
        if not keep_alive:
            self.transport.close()

    def _to_app(self) -> None:
        """Hand the request to uvicorn: the app answers it (and, past the limit, refuses it)."""
        self.hot.reserve_due()
        chunks = self._chunks
        self._hot_path = None
        self._chunks = []
        super().on_headers_complete()
        for chunk in chunks:
            super().on_body(chunk)


class _Bind:
    """A bind in progress on a connection, as uvicorn reads its ``cycle``: whether its answer
    is out (a request behind it waits until then), whether the client left, whether the
    connection stays open after it (False once the server shuts down)."""

    def __init__(self, keep_alive: bool) -> None:
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.message_event = asyncio.Event()


def protocol(hot: Hot) -> type[HttpProtocol]:
    """The protocol class to give uvicorn (``http=``), answering with ``hot``."""
    return type("FlexaiHttpProtocol", (HttpProtocol,), {"hot": hot})


class HotVerbs:
    """``Hot`` as an ASGI middleware: serves ``POST /filter`` and ``/prioritize``; passes the rest on."""

    def __init__(self, app: ASGIApp, hot: Hot) -> None:
        self.app = app
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" and scope.get("method") == "POST" else None
        if (path != "/filter" and path != "/prioritize") or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        body = await _read(receive, self.hot.limit)
        if body is None:  # over the limit, or the client left
            await _send(send, 413, _encode({"detail": f"body exceeds {self.hot.limit} bytes"}))
            return
        reply = self.hot(path, body)
        if reply is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await _send(send, 200, reply)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the FastAPI app: the body already read, then the client's own messages."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once more than ``limit`` bytes arrived (chunked bodies included)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return None  # the client left (or BodyLimit refused the body and answered)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, raw: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", str(len(raw)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": raw})
