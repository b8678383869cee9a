"""The Kubernetes backend: ``ClusterState`` fed by watches of Nodes and Pods; binds as Bindings.

Everything the scheduler knows is read back from the cluster (no state file), so a
restarted extender rebuilds the same state:

- a Node's ``annotations.NODE_INVENTORY`` -> ``state.upsert_node``; the node deleted, or the
  annotation missing or malformed -> ``state.remove_node`` (the reason is logged once);
- a Pod bound to a node (``spec.nodeName``) carrying ``annotations.POD_ALLOCATION`` and not
  Succeeded/Failed -> ``state.observe``; deleted, finished, or bound without the
  annotation -> ``state.release``. Pods not yet bound change nothing (the pod watch
  selects bound pods only): an ASSUMED allocation belongs to a bind in flight, which
  confirms or forgets it.
- The annotation is on an object a tenant may write (the chart's admission policy is the
  first guard), so it counts only if it is what the pod asks for on the node's cards
  (``allocation_check``; the cards when the node is known: pods are listed first) and,
  once counted as BOUND, only as first seen. Otherwise ``state.reject`` records why
  (the metrics' ``flexai_rejected_allocations{reason}``), the warning is logged once, and
  the allocation is released (a changed one keeps the slices it was bound with).

Watches (one thread per kind)::

    list (pods first, then nodes) --> watch from the list's resourceVersion --+
      ^   reconcile: objects gone       |  stream ends (server timeout): watch   |
      |   from the list are removed     |  again from the last resourceVersion <-+
      +---- 410 Gone: relist <----------+  other error: back off, watch again

Host resources (what ``fragmentation``'s score reads beside the cards), for every node
and every bound pod, GPU or not:

- a Node's ``status.allocatable`` cpu/memory -> ``state.set_host_capacity`` (with or
  without an inventory); deleted or gone from a relist -> ``state.drop_host_capacity``;
- a bound Pod's effective CPU/memory requests (``requests.host_request``, the same
  parsing as the extender's) -> ``state.set_pod_host``; deleted, Succeeded/Failed, or
  gone from a relist -> ``state.drop_pod_host``.

vGPU quotas (``quota``), when a ``quota_namespace`` is given: the ConfigMaps of that namespace
labelled ``annotations.QUOTA_LABEL`` -> ``state.quotas.declare`` (an unreadable one is dropped
with its error shown in /v1/quotas); deleted or gone from a relist -> ``drop_source``. And every
Namespace's labels (quotas may select namespaces by label) -> ``state.quotas.set_namespace``.
Changes apply as they are watched, without a restart.

For preemption: each bound vGPU pod's ``spec.priority`` and labels -> ``state.set_pod_meta``,
and every PodDisruptionBudget (selector, ``status.disruptionsAllowed``, ``status.disruptedPods``)
-> ``state.set_budget``; deleted or gone from a relist -> ``drop_budget``.

Pods are listed before nodes are first applied, so a node never appears with less
usage than it has (an unknown node fits nothing: a partial state can refuse pods,
never over-commit a card).

Commit is ONE write: ``POST pods/{name}/binding`` whose metadata carries the pod's UID
(a precondition: a recreated pod of the same name is refused) and the allocation
annotation, which the apiserver sets together with ``spec.nodeName``. It refuses a pod
already bound or being deleted. So there is never a half-written allocation: either
the pod is bound with its annotation, or nothing changed. Without an answer (timeout,
reset, 5xx) the pod is read back: bound as asked is success; otherwise ``CommitUnknown``,
and the extender keeps the slice reserved (the request may still land). (The client's
``create_namespaced_binding`` posts to the legacy ``/bindings`` endpoint, which drops
the UID; and the Status the apiserver answers with cannot be read as a V1Binding: we
post to the pod's subresource and read the raw response, through the client's own
connection pool and credentials but not its per-call machinery: ``_post``.)

Errors of the kubernetes client and of the transport are translated to ``ApiError``
in one place, ``_translated``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import quote

import msgspec
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from flexai_core import annotations as ann
from flexai_core.allocation_check import check_allocation
from flexai_core.model import Allocation
from flexai_core.requests import BOUND_RULES, RequestError, host_request, parse_cpu_milli, parse_memory_mib, parse_pod

from .backend import CommitError, CommitUnknown
from .errors import BindFailure, SchedError
from .preemption import Budget, Requirement
from .state import AllocState, ClusterState, Rejected

log = logging.getLogger("flexai_sched.kube")

GONE: Final = 410
NOT_FOUND: Final = 404
CONFLICT: Final = 409
FINISHED_PHASES: Final = frozenset({"Succeeded", "Failed"})
BOUND_PODS: Final = "spec.nodeName!="  # field selector: unbound pods never count
# Reasons an allocation is not counted beside allocation_check's (the metrics' label).
MALFORMED: Final = "malformed"
REQUEST: Final = "request"
CHANGED: Final = "changed"
# A Binding's credentials are asked of the client at most this often: tokens it refreshes
# (in-cluster: re-read every minute; exec and OIDC: at their expiry) are picked up this late.
AUTH_REFRESH_S: Final = 1.0

Obj = dict[str, Any]
_encode_json = msgspec.json.Encoder().encode
_decode_fast = msgspec.json.Decoder().decode


def _decode_json(raw: str | bytes) -> Any:
    """Every watch event and list page is decoded here (a pod's events: added, bound, its status
    updates): msgspec gives the same dicts and lists as ``json.loads``, several times faster;
    what it refuses and ``json`` takes (an escaped lone surrogate) goes to ``json``."""
    try:
        return _decode_fast(raw)
    except msgspec.DecodeError:
        return json.loads(raw)


class ApiError(SchedError):
    """A call to the apiserver failed. ``status`` is the HTTP code, None for transport errors."""

    def __init__(self, what: str, status: int | None, message: str) -> None:
        super().__init__(f"{what}: {message}" if status is None else f"{what}: HTTP {status}: {message}")
        self.status = status
        self.message = message


def _bind_refusal(e: ApiError) -> BindFailure:
    """Why the apiserver refused a Binding: the pod is gone (404, or its UID precondition
    failed: another pod has the name now), is bound already (409), or another refusal."""
    if e.status == NOT_FOUND:
        return BindFailure.POD_GONE
    if e.status == CONFLICT:
        return BindFailure.POD_GONE if "precondition" in e.message.lower() else BindFailure.DUPLICATE
    return BindFailure.BACKEND


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """The one place where the client's and the transport's errors become ``ApiError``."""
    try:
        yield
    except ApiException as e:
        raise ApiError(what, e.status, _status_message(e.body) or str(e.reason)) from None
    except (urllib3.exceptions.HTTPError, OSError) as e:  # refused, reset, TLS, timeouts
        raise ApiError(what, None, f"{type(e).__name__}: {e}") from None
    except ValueError as e:  # a body that is not JSON
        raise ApiError(what, None, f"unreadable response: {e}") from None


def _status_message(body: object) -> str:
    """The message of a Kubernetes Status body, if it is one."""
    if not isinstance(body, str | bytes):
        return ""
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200] if isinstance(body, str) else ""
    return str(doc.get("message", "")) if isinstance(doc, dict) else ""


class KubeBackend:
    """Keeps ``ClusterState`` current from the apiserver and commits binds to it."""

    def __init__(
        self,
        kubeconfig: str | None = None,
        in_cluster: bool = False,
        *,
        sync_timeout_s: float = 60.0,
        watch_timeout_s: int = 240,
        commit_timeout_s: float = 30.0,
        backoff_s: tuple[float, float] = (0.2, 10.0),
        quota_namespace: str | None = None,
    ) -> None:
        if not kubeconfig and not in_cluster:
            raise ValueError("KubeBackend: give a kubeconfig or in_cluster=True")
        if kubeconfig and not in_cluster and not os.path.isfile(kubeconfig):
            raise ValueError(f"kubeconfig {kubeconfig}: no such file")  # the CLI's clean error, not a crash later
        self._kubeconfig = kubeconfig
        self._in_cluster = in_cluster
        self._sync_timeout = sync_timeout_s
        self._watch_timeout = watch_timeout_s
        # Long on purpose: a Binding that times out here may still land, so it is
        # read back (see commit); a rare ambiguity is better than a frequent one.
        self._commit_timeout = commit_timeout_s
        self._backoff = backoff_s
        self._quota_namespace = quota_namespace
        self._state: ClusterState | None = None
        self._api: k8s.CoreV1Api | None = None
        self._stop = threading.Event()
        self._watchers: list[_Watcher] = []
        # Last reason each node was left out, so a heartbeat every 30 s does not repeat it.
        self._node_problems: dict[str, str] = {}
        # Pods whose allocation was checked while their node was unknown: their next event
        # checks it again, with the cards (every other counted pod was checked in full).
        self._cards_unchecked: set[str] = set()
        self._auth: tuple[float, dict[str, str]] | None = None  # (monotonic deadline, headers): _auth_headers

    # ---- Backend protocol ----

    def start(self, state: ClusterState) -> None:
        """Start the watches and wait (up to ``sync_timeout_s``) for the first full lists."""
        self._state = state
        # A client each: a watch holds its connection for minutes, binds must not queue behind it.
        self._api = k8s.CoreV1Api(self._client())
        pods = _Watcher(
            "pods",
            self._client(),
            self._list_pods,
            self._begin_pod_list,
            self._pod_event,
            self._stop,
            self._watch_timeout,
            self._backoff,
        )
        nodes = _Watcher(
            "nodes",
            self._client(),
            self._list_nodes,
            self._begin_node_list,
            self._node_event,
            self._stop,
            self._watch_timeout,
            self._backoff,
            after=pods.synced,
        )
        self._watchers = [pods, nodes]
        if self._quota_namespace:
            quota_ns = self._quota_namespace
            self._watchers += [
                _Watcher(
                    "namespaces",
                    self._client(),
                    self._list_namespaces,
                    self._begin_namespace_list,
                    self._namespace_event,
                    self._stop,
                    self._watch_timeout,
                    self._backoff,
                ),
                _Watcher(
                    "quota configmaps",
                    self._client(),
                    lambda api, **kw: api.list_namespaced_config_map(quota_ns, label_selector=ann.QUOTA_LABEL, **kw),
                    self._begin_quota_list,
                    self._quota_event,
                    self._stop,
                    self._watch_timeout,
                    self._backoff,
                ),
            ]
        self._watchers.append(
            _Watcher(
                "poddisruptionbudgets",
                self._client(),
                self._list_budgets,
                self._begin_budget_list,
                self._budget_event,
                self._stop,
                self._watch_timeout,
                self._backoff,
            )
        )
        for w in self._watchers:
            w.start()
        # Serve once nodes are known and quotas declared: before, a pod could overshoot its quota.
        for w in self._watchers[1:]:
            if not w.synced.wait(self._sync_timeout):
                log.warning(
                    "%s not synced after %.0fs; serving anyway (unknown nodes fit nothing)", w.kind, self._sync_timeout
                )

    def stop(self) -> None:
        self._stop.set()
        for w in self._watchers:
            w.close()

    def ready(self) -> bool:
        return bool(self._watchers) and all(w.synced.is_set() for w in self._watchers)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._read_pod(namespace, name)
        except ApiError as e:
            if e.status == NOT_FOUND:
                return None
            raise

    def commit(self, alloc: Allocation) -> None:
        encoded = ann.encode_allocation(alloc)
        body = _encode_json(
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {
                    "name": alloc.name,
                    "namespace": alloc.namespace,
                    **({"uid": alloc.uid} if alloc.uid else {}),
                    "annotations": {ann.POD_ALLOCATION: encoded},
                },
                "target": {"apiVersion": "v1", "kind": "Node", "name": alloc.node},
            }
        )
        what = f"bind {alloc.key} to {alloc.node}"
        try:
            with _translated(what):
                path = f"/api/v1/namespaces/{quote(alloc.namespace, safe='')}/pods/{quote(alloc.name, safe='')}/binding"
                status, reason, data = self._post(path, body)
                if status >= 300:  # the body is a Status either way
                    raise ApiError(what, status, _status_message(data) or reason)
        except ApiError as e:
            if e.status is not None and e.status < 500:
                raise CommitError(str(e), _bind_refusal(e)) from None  # refused: nothing was written
            # Timeout, reset or 5xx: the Binding may have landed. The pod says which, or that
            # it has not yet: a request still in the apiserver can land after this read.
            if self._bound_as(alloc, encoded):
                log.info("bind %s: %s, but the pod shows it bound as asked", alloc.key, e)
                return
            raise CommitUnknown(f"{e}; the pod does not show it bound (yet)") from None

    def evict(self, alloc: Allocation) -> None:
        """POST pods/{name}/eviction with the victim's UID as a precondition: the apiserver
        refuses (429) an eviction its PodDisruptionBudgets do not allow."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": alloc.name, "namespace": alloc.namespace},
            "deleteOptions": {"preconditions": {"uid": alloc.uid}} if alloc.uid else {},
        }
        try:
            with _translated(f"evict {alloc.key}"):
                resp: Any = self._core().create_namespaced_pod_eviction(
                    alloc.name,
                    alloc.namespace,
                    body,  # type: ignore[arg-type]  # a dict is sent as is
                    _preload_content=False,
                    _request_timeout=self._commit_timeout,
                )
                resp.read()
                resp.release_conn()
        except ApiError as e:
            if e.status in (NOT_FOUND, CONFLICT):
                return  # gone already, or another pod of that name now: nothing of ours to evict
            raise CommitError(str(e)) from None

    def running_pods(self, namespace: str) -> set[tuple[str, str]]:
        with _translated(f"list pods of {namespace}"):
            doc = _json(
                self._core().list_namespaced_pod(
                    namespace, field_selector=BOUND_PODS, _preload_content=False, _request_timeout=(5, 10)
                )
            )
        return {
            (str(p["metadata"]["name"]), str(p["metadata"].get("uid") or ""))
            for p in doc.get("items") or []
            if (p.get("status") or {}).get("phase") not in FINISHED_PHASES
        }

    # ---- calls ----

    def _client(self) -> k8s.ApiClient:
        cfg = k8s.Configuration()
        if self._in_cluster:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=self._kubeconfig, client_configuration=cfg, persist_config=False
            )
        cfg.connection_pool_maxsize = 64  # kube-scheduler binds many pods at once
        return k8s.ApiClient(cfg)

    def _post(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        """POST a JSON body with the bind client's connection pool (its kept-alive connections
        and TLS settings) and credentials (a token refreshed as the client refreshes it); the
        client's own call validates and re-serialises every argument, ~0.5 ms of CPU a bind.
        (status, reason, body); transport errors raise as urllib3's."""
        api = self._core().api_client
        headers = {**api.default_headers, "Content-Type": "application/json", "Accept": "application/json"}
        if api.cookie:
            headers["Cookie"] = api.cookie
        headers.update(self._auth_headers(api))
        resp = api.rest_client.pool_manager.request(
            "POST",
            api.configuration.host + path,
            body=body,
            headers=headers,
            timeout=urllib3.Timeout(total=self._commit_timeout),
            preload_content=False,
        )
        try:
            return resp.status, str(resp.reason or ""), resp.read()  # read whole: the connection goes back
        finally:
            resp.release_conn()

    def _auth_headers(self, api: k8s.ApiClient) -> dict[str, str]:
        """The credentials' headers, as the client computes them, at most every AUTH_REFRESH_S:
        its refresh hook (a token re-read, an expiry checked) also re-sets the configuration's
        host, which scans the environment for proxies, ~0.1 ms a call."""
        now = time.monotonic()
        got = self._auth
        if got is None or now >= got[0]:
            headers: dict[str, str] = {}
            api.update_params_for_auth(headers, [], ["BearerToken"], "", "POST", None)
            self._auth = got = (now + AUTH_REFRESH_S, headers)
        return got[1]

    def _core(self) -> k8s.CoreV1Api:
        if self._api is None:
            raise RuntimeError("KubeBackend: start() it first")
        return self._api

    def _read_pod(self, namespace: str, name: str) -> Obj:
        with _translated(f"read pod {namespace}/{name}"):
            resp = self._core().read_namespaced_pod(name, namespace, _preload_content=False)
            return _json(resp)

    def _bound_as(self, alloc: Allocation, encoded: str) -> bool:
        try:
            pod = self._read_pod(alloc.namespace, alloc.name)
        except ApiError:
            return False
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        return (
            meta.get("uid") == alloc.uid
            and spec.get("nodeName") == alloc.node
            and (meta.get("annotations") or {}).get(ann.POD_ALLOCATION) == encoded
        )

    @staticmethod
    def _list_pods(api: k8s.CoreV1Api, **kw: Any) -> Any:
        return api.list_pod_for_all_namespaces(field_selector=BOUND_PODS, **kw)

    @staticmethod
    def _list_nodes(api: k8s.CoreV1Api, **kw: Any) -> Any:
        return api.list_node(**kw)

    # ---- nodes ----

    def _begin_node_list(self) -> Callable[[list[Obj]], None]:
        return self._replace_nodes

    def _replace_nodes(self, items: list[Obj]) -> None:
        listed = set()
        for node in items:
            listed.add(_name(node))
            self._node_event("ADDED", node)
        for gone in {n.name for n in self._st().nodes()} - listed:
            self._forget_node(gone, "not in the node list (deleted)")
        for gone in set(self._st().host_capacity_nodes()) - listed:
            self._st().drop_host_capacity(gone)

    def _node_event(self, kind: str, node: Obj) -> None:
        name = _name(node)
        if kind == "DELETED":
            self._forget_node(name, "deleted")
            self._st().drop_host_capacity(name)
            return
        self._host_capacity(name, node)
        text = (node["metadata"].get("annotations") or {}).get(ann.NODE_INVENTORY)
        if text is None:
            self._leave_out(name, f"has no {ann.NODE_INVENTORY} annotation")
            return
        try:
            inventory = ann.decode_inventory(name, text)
        except ann.EncodingError as e:
            self._leave_out(name, str(e))
            return
        if self._node_problems.pop(name, None) is not None:
            log.info("node %s: inventory readable again", name)
        self._st().upsert_node(inventory)

    def _host_capacity(self, name: str, node: Obj) -> None:
        """The node's allocatable CPU and memory; unknown (cards-only scores) if unreadable."""
        alloc = (node.get("status") or {}).get("allocatable") or {}
        try:
            cpu = parse_cpu_milli(alloc.get("cpu"), "status.allocatable.cpu")
            mem = parse_memory_mib(alloc.get("memory"), "status.allocatable.memory", round_up=False)
        except ValueError as e:
            if alloc:  # a node still registering has none yet: not worth a warning
                log.warning("node %s: host capacity unknown: %s", name, e)
            self._st().drop_host_capacity(name)
            return
        self._st().set_host_capacity(name, cpu, mem)

    def _forget_node(self, name: str, reason: str) -> None:
        self._node_problems.pop(name, None)
        if self._st().node(name) is not None:
            log.info("node %s: %s", name, reason)
        self._st().remove_node(name)

    def _leave_out(self, name: str, reason: str) -> None:
        self._st().remove_node(name)
        if self._node_problems.get(name) != reason:  # once per reason, not every heartbeat
            self._node_problems[name] = reason
            log.warning("node %s: left out of scheduling: %s", name, reason)

    # ---- quotas ----

    @staticmethod
    def _list_namespaces(api: k8s.CoreV1Api, **kw: Any) -> Any:
        return api.list_namespace(**kw)

    def _begin_namespace_list(self) -> Callable[[list[Obj]], None]:
        return self._replace_namespaces

    def _replace_namespaces(self, items: list[Obj]) -> None:
        book = self._st().quotas
        listed = set()
        for ns in items:
            listed.add(_name(ns))
            self._namespace_event("ADDED", ns)
        for gone in set(book.namespaces()) - listed:
            book.drop_namespace(gone)

    def _namespace_event(self, kind: str, ns: Obj) -> None:
        if kind == "DELETED":
            self._st().quotas.drop_namespace(_name(ns))
        else:
            labels = ns["metadata"].get("labels") or {}
            self._st().quotas.set_namespace(_name(ns), {str(k): str(v) for k, v in labels.items()})

    def _begin_quota_list(self) -> Callable[[list[Obj]], None]:
        return self._replace_quotas

    def _replace_quotas(self, items: list[Obj]) -> None:
        listed = set()
        for cm in items:
            listed.add(_source(cm))
            self._quota_event("ADDED", cm)
        for gone in set(self._st().quotas.sources()) - listed:
            self._st().quotas.drop_source(gone)

    def _quota_event(self, kind: str, cm: Obj) -> None:
        source = _source(cm)
        book = self._st().quotas
        if kind == "DELETED":
            book.drop_source(source)
            log.info("quotas of %s dropped (deleted)", source)
            return
        error = book.declare(source, cm.get("data"))
        if error:
            log.warning("quotas of %s not applied: %s", source, error)
        else:
            log.info(
                "quotas of %s applied: %s",
                source,
                ", ".join(q.quota.name for q in book.status() if q.quota.source == source) or "none",
            )

    # ---- PodDisruptionBudgets (preemption respects them) ----

    @staticmethod
    def _list_budgets(api: k8s.CoreV1Api, **kw: Any) -> Any:
        return k8s.PolicyV1Api(api.api_client).list_pod_disruption_budget_for_all_namespaces(**kw)

    def _begin_budget_list(self) -> Callable[[list[Obj]], None]:
        return self._replace_budgets

    def _replace_budgets(self, items: list[Obj]) -> None:
        listed = set()
        for pdb in items:
            listed.add((pdb["metadata"].get("namespace") or "", _name(pdb)))
            self._budget_event("ADDED", pdb)
        for b in self._st().budgets():
            if (b.namespace, b.name) not in listed:
                self._st().drop_budget(b.namespace, b.name)

    def _budget_event(self, kind: str, pdb: Obj) -> None:
        namespace, name = pdb["metadata"].get("namespace") or "", _name(pdb)
        if kind == "DELETED":
            self._st().drop_budget(namespace, name)
            return
        self._st().set_budget(budget_of(pdb))

    # ---- pods ----

    def _begin_pod_list(self) -> Callable[[list[Obj]], None]:
        """Called before listing: only allocations BOUND by then can be judged by the list.

        One confirmed since may be newer than the list (its event follows in the watch);
        releasing it would free a slice that is in use.
        """
        before = {(a.key, a.uid) for a, st in self._st().allocations() if st is AllocState.BOUND}
        hosts_before = set(self._st().pod_hosts())  # a bind counting a pod after this is newer too
        return lambda items: self._replace_pods(items, before, hosts_before)

    def _replace_pods(
        self, items: list[Obj], bound_before: set[tuple[str, str]], hosts_before: set[tuple[str, str]]
    ) -> None:
        """Apply a full list; release what was BOUND (or counted on a host) before the list and is absent from it."""
        listed = set()
        for pod in items:
            meta = pod["metadata"]
            listed.add((f"{meta.get('namespace') or 'default'}/{meta.get('name')}", str(meta.get("uid") or "")))
            self._pod_event("ADDED", pod)
        for key, uid in bound_before - listed:
            self._st().release(key, uid)
        for key, uid in hosts_before - listed:
            self._st().drop_pod_host(key, uid)
        for r in self._st().rejected():
            if (r.key, r.uid) not in listed:
                self._st().clear_rejection(r.key, r.uid)
        self._cards_unchecked &= {key for key, _ in listed}

    def _pod_event(self, kind: str, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        namespace, name, uid = meta.get("namespace") or "default", meta.get("name") or "", meta.get("uid") or ""
        key = f"{namespace}/{name}"
        state = self._st()
        if not spec.get("nodeName"):
            return  # not bound: a bind may be in flight; nothing of this pod counts yet
        phase = (pod.get("status") or {}).get("phase")
        if kind == "DELETED" or phase in FINISHED_PHASES:
            state.release(key, uid)
            state.drop_pod_host(key, uid)
            state.clear_rejection(key, uid)
            self._cards_unchecked.discard(key)
            return
        try:
            cpu, mem = host_request(pod)
        except RequestError as e:  # the apiserver validated it: should not happen
            log.warning("pod %s: host requests not counted: %s", key, e)
            state.drop_pod_host(key, uid)
        else:
            state.set_pod_host(key, spec["nodeName"], cpu, mem, uid)
        text = (meta.get("annotations") or {}).get(ann.POD_ALLOCATION)
        if text is None:
            state.release(key, uid)  # bound by someone else, or its annotation was removed
            state.clear_rejection(key)
            self._cards_unchecked.discard(key)
            return
        try:
            alloc = ann.decode_allocation(namespace, name, uid, text)
        except ann.EncodingError as e:
            self._reject(Rejected(key, uid, spec["nodeName"], MALFORMED, str(e)), release=True)
            return
        # Before any early return: a pod this extender bound itself is already counted when its
        # first event comes, and preemption needs its priority and labels (PDB selectors) all
        # the same; a rejected allocation's release drops them again.
        priority = spec.get("priority")
        labels = meta.get("labels") or {}
        state.set_pod_meta(
            key, uid, priority if isinstance(priority, int) else 0, {str(k): str(v) for k, v in labels.items()}
        )
        if (
            state.allocation(key) == alloc
            and state.state_of(key) is AllocState.BOUND
            and key not in self._cards_unchecked
        ):
            # Counted as checked; a pod's vGPU requests cannot change: a status update.
            if state.clear_rejection(key):
                log.info("pod %s: allocation counted again", key)
            return
        rejected = self._judge(pod, alloc, spec["nodeName"])
        if rejected is not None:
            self._reject(rejected, release=rejected.reason != CHANGED)
            return
        if state.clear_rejection(key):
            log.info("pod %s: allocation counted again", key)
        state.observe(alloc)

    def _judge(self, pod: Obj, alloc: Allocation, node: str) -> Rejected | None:
        """Why this allocation must not be counted, or None. The annotation is on an object
        a tenant can write: it counts only if it is what the pod asks for on the node's
        cards (when the node is known yet), and only as first seen once the pod is bound."""
        st = self._st()
        current = st.allocation(alloc.key)
        if (
            current is not None
            and current.uid == alloc.uid
            and st.state_of(alloc.key) is AllocState.BOUND
            and (current.node, current.slices) != (alloc.node, alloc.slices)
        ):
            return Rejected(
                alloc.key,
                alloc.uid,
                node,
                CHANGED,
                "the allocation changed after the pod was bound; the one it was bound with stays counted",
            )
        try:
            request = parse_pod(pod, BOUND_RULES)
        except RequestError as e:  # the apiserver validated the pod: a rule of ours it breaks
            return Rejected(alloc.key, alloc.uid, node, REQUEST, f"the pod's vGPU request is invalid: {e}")
        known = st.node(node)
        if known is None:
            self._cards_unchecked.add(alloc.key)
        else:
            self._cards_unchecked.discard(alloc.key)
        problems = check_allocation(request, alloc, known.cards if known is not None else None, node)
        if problems:
            return Rejected(alloc.key, alloc.uid, node, problems[0].reason, "; ".join(map(str, problems)))
        return None

    def _reject(self, r: Rejected, release: bool) -> None:
        if release:
            self._st().release(r.key, r.uid)
        if self._st().reject(r):  # once per pod and reason, not on every status update
            log.warning("pod %s on %s: allocation not counted (%s): %s", r.key, r.node, r.reason, r.message)

    def _st(self) -> ClusterState:
        assert self._state is not None, "backend not started"
        return self._state


class _Watcher:
    """List then watch one kind in a daemon thread; ``synced`` is set after the first list."""

    def __init__(
        self,
        kind: str,
        api_client: k8s.ApiClient,
        list_fn: Callable[..., Any],
        begin_list: Callable[[], Callable[[list[Obj]], None]],
        on_event: Callable[[str, Obj], None],
        stop: threading.Event,
        watch_timeout_s: int,
        backoff_s: tuple[float, float],
        after: threading.Event | None = None,
    ) -> None:
        self.kind = kind
        self.synced = threading.Event()
        self._api = k8s.CoreV1Api(api_client)
        self._list_fn = list_fn
        self._begin_list = begin_list
        self._on_event = on_event
        self._stop = stop
        self._timeout = watch_timeout_s
        self._backoff = backoff_s
        self._after = after
        self._resp: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Unblock a read in progress; the thread sees ``stop`` and ends."""
        resp = self._resp
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while self._after is not None and not self._after.wait(0.5):
            if self._stop.is_set():
                return
        rv: str | None = None
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                    self.synced.set()
                rv = self._watch(rv)
                delay = self._backoff[0]
            except ApiError as e:
                if self._stop.is_set():
                    return
                if e.status == GONE:
                    log.info("watch %s: %s; relisting", self.kind, e)
                    rv = None
                    continue
                log.warning("watch %s: %s; retrying in %.1fs", self.kind, e, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])
            except Exception:  # a bug in handling one event must not end the watch for good
                log.exception("watch %s: unexpected error; relisting", self.kind)
                rv = None
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])

    def _list(self) -> str:
        apply = self._begin_list()
        items: list[Obj] = []
        cont: str | None = None
        rv: str | None = None  # of the first page: the pages form one snapshot
        with _translated(f"list {self.kind}"):
            while True:
                kw: dict[str, Any] = {"limit": 500, "_preload_content": False, "_request_timeout": (10, 60)}
                if cont:
                    kw["_continue"] = cont
                page = _json(self._list_fn(self._api, **kw))
                items.extend(page.get("items") or [])
                meta = page.get("metadata") or {}
                rv = rv or meta.get("resourceVersion")
                cont = meta.get("continue")
                if not cont:
                    break
        apply(items)
        log.info("listed %d %s at resourceVersion %s", len(items), self.kind, rv)
        return str(rv)

    def _watch(self, rv: str) -> str:
        """Apply events from ``rv`` until the server ends the stream; the last resourceVersion."""
        with _translated(f"watch {self.kind}"):
            resp = self._list_fn(
                self._api,
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self._timeout,
                _preload_content=False,
                # The server ends the stream after timeout_seconds; a read silent for
                # longer means a dead connection.
                _request_timeout=(10, self._timeout + 30),
            )
            self._resp = resp
            try:
                for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                    if self._stop.is_set():
                        break
                    if not line:
                        continue
                    event = _decode_json(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise ApiError(f"watch {self.kind}", obj.get("code"), str(obj.get("message")))
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._on_event(event["type"], obj)
            finally:
                self._resp = None
                resp.close()  # a stream left unfinished must not go back to the pool
                resp.release_conn()
        return rv


def _json(resp: Any) -> Obj:
    try:
        doc = _decode_json(resp.data)
    finally:
        resp.release_conn()
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def budget_of(pdb: Obj) -> Budget:
    """A PodDisruptionBudget as preemption reads it (a selector term of an unknown operator is left out)."""
    meta, spec, status = pdb["metadata"], pdb.get("spec") or {}, pdb.get("status") or {}
    sel = spec.get("selector") or {}
    match = sel.get("matchLabels") or {}
    exprs = []
    for e in sel.get("matchExpressions") or []:
        if isinstance(e, dict) and e.get("operator") in ("In", "NotIn", "Exists", "DoesNotExist"):
            exprs.append(
                Requirement(str(e.get("key")), str(e["operator"]), frozenset(str(v) for v in e.get("values") or []))
            )
    allowed = status.get("disruptionsAllowed")
    return Budget(
        meta.get("namespace") or "",
        str(meta["name"]),
        tuple(sorted((str(k), str(v)) for k, v in match.items())),
        tuple(exprs),
        allowed if isinstance(allowed, int) else 0,
        frozenset(status.get("disruptedPods") or {}),
    )


def _source(obj: Obj) -> str:
    return f"{obj['metadata'].get('namespace') or ''}/{obj['metadata']['name']}"
