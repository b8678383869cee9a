"""vGPU quotas: limits per namespace (or per group of namespaces) in what vGPUs really cost.

A quota limits, over every pod of its namespaces that holds vGPUs (assumed or bound):

- ``huawei.com/vgpu-number``      the number of vGPUs;
- ``huawei.com/vgpu-cores``       card-% of compute, summed over vGPUs (2 x 30% counts 60);
- ``huawei.com/vgpu-memory-1Gi``  GiB of card memory, summed over vGPUs.

A pod counts as kube-scheduler counts CPU: per dimension, the larger of its app containers'
sum (sidecars, i.e. restartable init containers, are app containers) and each plain init
container alone (they run one at a time, before the app). A container counts ``vgpu-number``
x its per-vGPU amount. A pending pod is counted from its request; a bound pod from its
allocation (the memory it really holds). A container asking for "all of a card's memory"
(no memory given) has no size before it lands, so where a quota limits memory such a pod
is refused with a reason that says to state its memory (ResourceQuota does the same with
``requests.memory``).

Declared in ConfigMaps (see ``parse_quotas`` for the format); a quota names one namespace
or selects namespaces by their labels (``namespaceSelector.matchLabels``). A namespace
under several quotas must fit all of them.

``QuotaBook`` holds the declared quotas, the namespaces' labels and the usage per
namespace. Usage is changed only by ``ClusterState`` under its lock (``add``/``remove``
with every allocation put or dropped), so a bind's quota check and its assume are one
step. Quotas and labels change under the book's own lock, which is never held while
calling out. Reads take no lock: every structure is replaced, never mutated in place.

Pure: no I/O; ``parse_quotas`` reads YAML text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from flexai_core import resources as res
from flexai_core.model import Allocation, ContainerRequest, PodRequest

from .errors import SchedError

DATA_KEY: Final = "quotas.yaml"  # the ConfigMap key that holds the quotas
# The limits a quota may set, by the resource names pods ask with.
LIMIT_NAMES: Final = (res.VGPU_NUMBER, res.VGPU_CORES, res.VGPU_MEMORY)
_MIB_PER_GIB: Final = 1024


class QuotaError(SchedError, ValueError):
    """A quota declaration is invalid; the message names the field and the reason."""


@dataclass(frozen=True, slots=True)
class Usage:
    """What vGPUs hold: card-% summed over vGPUs, MiB summed over vGPUs, and their number."""

    cores: int = 0
    memory_mib: int = 0
    vgpus: int = 0

    def plus(self, o: Usage) -> Usage:
        return Usage(self.cores + o.cores, self.memory_mib + o.memory_mib, self.vgpus + o.vgpus)

    def minus(self, o: Usage) -> Usage:
        # Clamped: a bookkeeping slip must never show negative usage (and so free quota).
        return Usage(max(0, self.cores - o.cores), max(0, self.memory_mib - o.memory_mib), max(0, self.vgpus - o.vgpus))

    def peak(self, o: Usage) -> Usage:
        return Usage(max(self.cores, o.cores), max(self.memory_mib, o.memory_mib), max(self.vgpus, o.vgpus))

    @property
    def empty(self) -> bool:
        return not (self.cores or self.memory_mib or self.vgpus)


@dataclass(frozen=True, slots=True)
class Quota:
    """One declared quota. Exactly one of ``namespace`` and ``selector``; None limits are unlimited."""

    name: str
    namespace: str | None = None
    selector: tuple[tuple[str, str], ...] | None = None  # matchLabels, sorted
    vgpus: int | None = None
    cores: int | None = None
    memory_gib: int | None = None
    source: str = ""  # where it was declared (namespace/ConfigMap)

    def applies_to(self, namespace: str, labels: Mapping[str, str]) -> bool:
        if self.namespace is not None:
            return namespace == self.namespace
        return self.selector is not None and all(labels.get(k) == v for k, v in self.selector)

    def limits(self) -> dict[str, int]:
        """Resource name -> limit, for the limits set."""
        out = {}
        for name, value in zip(LIMIT_NAMES, (self.vgpus, self.cores, self.memory_gib), strict=True):
            if value is not None:
                out[name] = value
        return out


# ---- what a pod counts ----


def _container_usage(c: ContainerRequest) -> Usage:
    return Usage(c.vgpus * c.cores, c.vgpus * (c.memory_mib or 0), c.vgpus)


def request_usage(req: PodRequest) -> tuple[Usage, str]:
    """(what the pod counts, the name of a container whose memory is unknown or "")."""
    app = Usage()
    unsized = ""
    for c in req.containers:
        app = app.plus(_container_usage(c))
        if c.vgpus and c.memory_mib is None:
            unsized = unsized or c.name
    peak = app
    for c in req.init_containers:
        peak = peak.peak(_container_usage(c))
        if c.vgpus and c.memory_mib is None:
            unsized = unsized or c.name
    return peak, unsized


def allocation_usage(a: Allocation) -> Usage:
    """What a placed pod counts, from its slices (the memory it really holds)."""
    phases: dict[str, Usage] = {}
    for s in a.slices:
        phase = f"init:{s.container}" if s.init else "app"
        phases[phase] = phases.get(phase, Usage()).plus(Usage(s.cores, s.memory_mib, 1))
    out = Usage()
    for u in phases.values():
        out = out.peak(u)
    return out


# ---- declarations ----


def parse_quotas(text: str, source: str) -> tuple[Quota, ...]:
    """Quotas from a ConfigMap's ``quotas.yaml``; ``QuotaError`` names ``source`` and the field.

    Format (limits under ``hard``, keyed by the resource names pods ask with, as a
    ResourceQuota's ``spec.hard``)::

        quotas:
          - name: team-a
            namespace: team-a                  # one namespace, or:
            # namespaceSelector: {matchLabels: {team: a}}
            hard:
              huawei.com/vgpu-number: 8        # vGPUs
              huawei.com/vgpu-cores: 400       # card-%, summed over vGPUs
              huawei.com/vgpu-memory-1Gi: 160  # GiB, summed over vGPUs
    """
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise QuotaError(f"{source}: {DATA_KEY}: not valid YAML ({_one_line(e)})") from None
    if not isinstance(doc, dict) or set(doc) - {"quotas"}:
        raise QuotaError(f"{source}: {DATA_KEY}: must be a mapping with one key, 'quotas' (a list)")
    items = doc.get("quotas") or []
    if not isinstance(items, list):
        raise QuotaError(f"{source}: {DATA_KEY}: quotas: must be a list")
    out: list[Quota] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        q = _quota(item, f"{source}: quotas[{i}]", source)
        if q.name in seen:
            raise QuotaError(f"{source}: quotas[{i}].name: {q.name!r} is declared twice")
        seen.add(q.name)
        out.append(q)
    return tuple(out)


def _quota(item: object, where: str, source: str) -> Quota:
    if not isinstance(item, dict):
        raise QuotaError(f"{where}: must be a mapping")
    unknown = set(item) - {"name", "namespace", "namespaceSelector", "hard"}
    if unknown:
        raise QuotaError(
            f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))} "
            "(known: name, namespace, namespaceSelector, hard)"
        )
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise QuotaError(f"{where}.name: must be a non-empty string")
    ns, sel = item.get("namespace"), item.get("namespaceSelector")
    if (ns is None) == (sel is None):
        raise QuotaError(f"{where}: give exactly one of namespace and namespaceSelector")
    selector: tuple[tuple[str, str], ...] | None = None
    if ns is not None and (not isinstance(ns, str) or not ns):
        raise QuotaError(f"{where}.namespace: must be a non-empty string")
    if sel is not None:
        if (
            not isinstance(sel, dict)
            or set(sel) != {"matchLabels"}
            or not isinstance(sel["matchLabels"], dict)
            or not sel["matchLabels"]
        ):
            raise QuotaError(
                f"{where}.namespaceSelector: must be {{matchLabels: {{key: value, ...}}}} with at least one label"
            )
        labels = sel["matchLabels"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise QuotaError(f"{where}.namespaceSelector.matchLabels: keys and values must be strings")
        selector = tuple(sorted(labels.items()))
    hard = item.get("hard")
    if not isinstance(hard, dict) or not hard:
        raise QuotaError(f"{where}.hard: must map at least one of {', '.join(LIMIT_NAMES)} to a limit")
    values: dict[str, int] = {}
    for key, value in hard.items():
        key = res.VGPU_MEMORY if key == res.VGPU_MEMORY_ALT else key
        if key not in LIMIT_NAMES:
            raise QuotaError(f"{where}.hard: unknown resource {key!r} (known: {', '.join(LIMIT_NAMES)})")
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise QuotaError(f"{where}.hard.{key}: {value!r}: must be a whole non-negative number")
        values[key] = value
    return Quota(
        name.strip(),
        ns,
        selector,
        values.get(res.VGPU_NUMBER),
        values.get(res.VGPU_CORES),
        values.get(res.VGPU_MEMORY),
        source,
    )


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


# ---- the book ----


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """One quota as shown over REST and in /metrics: its limits, usage and namespaces."""

    quota: Quota
    used: Usage
    namespaces: tuple[str, ...]


class QuotaBook:
    def __init__(self) -> None:
        self._mu = threading.Lock()  # declarations and labels; never held while calling out
        self._sources: dict[str, tuple[Quota, ...]] = {}
        self._errors: dict[str, str] = {}
        self._labels: dict[str, dict[str, str]] = {}
        self._index = _Index((), {}, {}, {})  # replaced whole on every change, read without a lock
        self._used: dict[str, Usage] = {}  # namespace -> usage; written under ClusterState's lock
        # Read first on the hot path: False while no quota is declared.
        self.active = False

    # ---- declarations (the backend's watch) ----

    def set_source(self, source: str, quotas: Iterable[Quota]) -> None:
        """The quotas declared in ``source`` now; a name another source declares refuses them all."""
        quotas = tuple(quotas)
        with self._mu:
            taken = {q.name: src for src, qs in self._sources.items() if src != source for q in qs}
            clash = next((q.name for q in quotas if q.name in taken), None)
            if clash is not None:
                self._sources.pop(source, None)
                self._errors[source] = f"{source}: quota {clash!r} is already declared in {taken[clash]}"
            else:
                self._sources[source] = quotas
                self._errors.pop(source, None)
            self._reindex()

    def set_source_error(self, source: str, error: str) -> None:
        """The source is unreadable: its quotas are dropped (an admin sees why in /v1/quotas)."""
        with self._mu:
            self._sources.pop(source, None)
            self._errors[source] = error
            self._reindex()

    def declare(self, source: str, data: Mapping[str, Any] | None) -> str:
        """Apply a ConfigMap's ``data`` as the quotas of ``source``; the error ("" if none)."""
        try:
            quotas = parse_source(data, source)
        except QuotaError as e:
            self.set_source_error(source, str(e))
            return str(e)
        self.set_source(source, quotas)
        return self._errors.get(source, "")

    def drop_source(self, source: str) -> None:
        with self._mu:
            self._sources.pop(source, None)
            self._errors.pop(source, None)
            self._reindex()

    def sources(self) -> list[str]:
        return sorted({*self._sources, *self._errors})

    def errors(self) -> dict[str, str]:
        return dict(self._errors)

    def set_namespace(self, namespace: str, labels: Mapping[str, str]) -> None:
        with self._mu:
            if self._labels.get(namespace) == labels:
                return
            self._labels = {**self._labels, namespace: dict(labels)}
            self._reindex()

    def namespaces(self) -> list[str]:
        """The namespaces whose labels are known."""
        return list(self._labels)

    def drop_namespace(self, namespace: str) -> None:
        with self._mu:
            if namespace in self._labels:
                self._labels = {k: v for k, v in self._labels.items() if k != namespace}
                self._reindex()

    # ---- usage (ClusterState calls these under its lock) ----

    def add(self, namespace: str, usage: Usage) -> None:
        if not usage.empty:
            self._used[namespace] = self._used.get(namespace, Usage()).plus(usage)

    def remove(self, namespace: str, usage: Usage) -> None:
        if usage.empty:
            return
        left = self._used.get(namespace, Usage()).minus(usage)
        if left.empty:
            self._used.pop(namespace, None)
        else:
            self._used[namespace] = left

    # ---- reads ----

    def quotas_for(self, namespace: str) -> tuple[Quota, ...]:
        idx = self._index  # one snapshot: a lazily filled entry always matches its own quotas
        got = idx.by_ns.get(namespace)
        if got is None:
            labels = idx.labels.get(namespace, {})
            got = tuple(q for q in idx.quotas if q.applies_to(namespace, labels))
            idx.by_ns[namespace] = got
        return got

    def used(self, q: Quota) -> Usage:
        if q.namespace is not None:
            return self._used.get(q.namespace, Usage())
        total = Usage()
        for ns in self._index.members.get(q.name, ()):
            total = total.plus(self._used.get(ns, Usage()))
        return total

    def check(self, namespace: str, need: Usage, unsized: str = "", less: Usage = Usage()) -> tuple[str, bool]:
        """(why ``need`` more in ``namespace`` breaks a quota, or ""; whether evicting pods of the
        quota's namespaces could help). ``less``: usage freed first (preemption victims)."""
        for q in self.quotas_for(namespace):
            reason = unsized_reason(q, namespace, need, unsized)
            if reason:
                return reason, False
            reason = over_quota(q, namespace, self.used(q).minus(less), need)
            if reason:
                return reason, True
        return "", True

    def members(self, q: Quota) -> tuple[str, ...]:
        return (q.namespace,) if q.namespace is not None else self._index.members.get(q.name, ())

    def status(self) -> list[QuotaStatus]:
        return [QuotaStatus(q, self.used(q), self.members(q)) for q in self._index.quotas]

    # ---- internals (hold self._mu) ----

    def _reindex(self) -> None:
        quotas = tuple(sorted((q for qs in self._sources.values() for q in qs), key=lambda q: q.name))
        members = {
            q.name: tuple(sorted(ns for ns, labels in self._labels.items() if q.applies_to(ns, labels)))
            for q in quotas
            if q.selector is not None
        }
        self._index = _Index(quotas, self._labels, {}, members)
        self.active = bool(quotas)


@dataclass(frozen=True, slots=True)
class _Index:
    quotas: tuple[Quota, ...]
    labels: dict[str, dict[str, str]]  # namespace -> labels (never mutated: replaced)
    by_ns: dict[str, tuple[Quota, ...]]  # namespace -> its quotas, filled lazily by readers
    members: dict[str, tuple[str, ...]]  # selector quota -> the namespaces it selects now


def _scope(q: Quota, namespace: str) -> str:
    return f"namespace {namespace}" + ("" if q.namespace is not None else f" (in quota {q.name}'s group)")


def unsized_reason(q: Quota, namespace: str, need: Usage, unsized: str) -> str:
    """Why a pod with a container of unknown memory (``unsized``) cannot count against ``q``."""
    if q.memory_gib is None or not unsized or not need.vgpus:
        return ""
    return (
        f"{_scope(q, namespace)}: quota {q.name} limits {res.VGPU_MEMORY}, so container {unsized!r} "
        f"must give {res.VGPU_MEMORY} (a vGPU without it takes all of a card's memory)"
    )


def over_quota(q: Quota, namespace: str, used: Usage, need: Usage) -> str:
    """Why ``need`` on top of ``used`` breaks quota ``q`` ("" if it does not)."""
    checks = (
        (res.VGPU_NUMBER, q.vgpus, used.vgpus, need.vgpus, ""),
        (res.VGPU_CORES, q.cores, used.cores, need.cores, " (card-%)"),
        (
            res.VGPU_MEMORY,
            None if q.memory_gib is None else q.memory_gib * _MIB_PER_GIB,
            used.memory_mib,
            need.memory_mib,
            " (MiB)",
        ),
    )
    for name, limit, have, want, unit in checks:
        if limit is not None and want and have + want > limit:
            return (
                f"{_scope(q, namespace)}: over vGPU quota {q.name}: {name} in use {have} + this pod "
                f"{want} = {have + want} > limit {limit}{unit}"
            )
    return ""


def parse_source(data: Mapping[str, Any] | None, source: str) -> tuple[Quota, ...]:
    """The quotas of a ConfigMap's ``data`` (no ``quotas.yaml`` key: none)."""
    text = (data or {}).get(DATA_KEY)
    if text is None:
        return ()
    if not isinstance(text, str):
        raise QuotaError(f"{source}: {DATA_KEY}: must be a string")
    return parse_quotas(text, source)
