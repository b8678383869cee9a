"""Turn a pod (Kubernetes JSON as a dict) into a validated ``PodRequest``.

Rules (the seed's semantics):

- ``vgpu-number`` N > 0 with neither cores nor memory: N whole cards (cores 100, all memory).
- cores without memory: that share of compute and all of the card's memory.
- memory without cores: no compute limit (cores 0).
- cores 100: an exclusive card; cores 0: no compute limit, never on a card already at 100%.
- cores are 0-100 in multiples of ``granularity`` (5 by default).

Beside the vGPUs, the pod's host request (``host_request``): its effective CPU and memory
requests as kube-scheduler computes them (the larger of the app containers' sum and each
init container's peak, restartable init containers counted with the app, plus the pod's
overhead). Quantity strings are parsed here and only here (``parse_cpu_milli``,
``parse_memory_mib``; the format is Kubernetes' ``resource.Quantity``, read by a small
parser of our own so the core imports no Kubernetes library: the tests check it against
the official client's ``parse_quantity``); the Kubernetes backend uses the same functions
for bound pods and node allocatable.

Errors name the container, the resource and the rule; all of a pod's errors are reported
at once. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import annotations as ann
from . import resources as res
from .errors import CoreError
from .model import FULL_CORES, CardSelector, ContainerRequest, PodRequest

_WHOLE = re.compile(r"\+?[0-9]{1,18}")  # 18 digits: far above any real value, and exact as an int64
MAX_VGPUS_PER_CONTAINER = 64  # far above any node; stops absurd values early
MESSAGE_CHARS = 400  # a pod with a thousand bad containers: the first reasons that fit, and a count
MAX_QUANTITY_CHARS = 64  # a quantity string longer than this is refused before it is parsed
# Quantities past these are refused: Kubernetes' own limit is about 2^63 milli-units.
_MAX_QUANTITY = 2**63
_MAX_EXPONENT = 30


class RequestError(CoreError, ValueError):
    """The pod's vGPU request is invalid; ``reasons`` lists every problem found."""

    def __init__(self, reasons: list[str]) -> None:
        n, length = 1, len(reasons[0]) if reasons else 0
        while n < len(reasons) and length + 2 + len(reasons[n]) <= MESSAGE_CHARS:
            length += 2 + len(reasons[n])
            n += 1
        more = f"; and {len(reasons) - n} more" if n < len(reasons) else ""
        super().__init__("; ".join(reasons[:n]) + more)
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class RequestRules:
    granularity: int = 5
    # None: the policy annotations are not read (BOUND_RULES).
    policies: frozenset[str] | None = frozenset({"binpack", "spread", "fragmentation"})


# How a bound pod's request is read to check its allocation (``allocation_check``): the
# scheduler's granularity and policy names are its own settings, and the policy
# annotations stay writable by the pod's owner after the bind, so neither may make a
# placed pod's request unreadable (which would stop its slices from counting).
BOUND_RULES = RequestRules(granularity=1, policies=None)


def parse_pod(pod: Mapping[str, Any], rules: RequestRules = RequestRules()) -> PodRequest:
    """Parse and validate. Raises ``RequestError`` with every reason found."""
    if not isinstance(pod, Mapping):
        raise RequestError(["pod: must be a JSON object"])
    meta = _or_empty(pod.get("metadata"))
    spec = _or_empty(pod.get("spec"))
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        raise RequestError(["pod: metadata and spec must be objects"])
    errors: list[str] = []
    namespace, name, uid = (_meta_text(meta, key, errors) for key in ("namespace", "name", "uid"))
    models: set[str] = set()
    containers = _containers(spec.get("containers"), "container", False, rules, errors, models)
    init_raw = spec.get("initContainers")
    if init_raw is not None and not isinstance(init_raw, list):
        errors.append("init containers: must be a list")
        init_raw = None
    # Restartable init containers (sidecars) run beside the app, so they count as app containers.
    sidecars = [c for c in init_raw or [] if isinstance(c, Mapping) and c.get("restartPolicy") == "Always"]
    plain_init = [c for c in init_raw or [] if not (isinstance(c, Mapping) and c.get("restartPolicy") == "Always")]
    containers += _containers(sidecars, "init container", False, rules, errors, models)
    init = _containers(plain_init, "init container", True, rules, errors, models)

    annotations = _or_empty(meta.get("annotations"))
    if not isinstance(annotations, Mapping):
        errors.append("pod: metadata.annotations must be an object")
        annotations = {}
    selector = CardSelector(
        models=frozenset(models) | ann.split_list(_annotation(annotations, ann.GPU_MODELS, errors)),
        exclude_models=ann.split_list(_annotation(annotations, ann.GPU_MODELS_EXCLUDE, errors)),
        uuids=ann.split_list(_annotation(annotations, ann.GPU_UUIDS, errors)),
        exclude_uuids=ann.split_list(_annotation(annotations, ann.GPU_UUIDS_EXCLUDE, errors)),
    )
    node_policy = _policy(annotations, ann.NODE_POLICY, rules, errors)
    card_policy = _policy(annotations, ann.CARD_POLICY, rules, errors)
    cpu_milli, memory_mib = _host_request(spec, errors)
    priority = spec.get("priority")
    if priority is None:
        priority = 0
    elif isinstance(priority, bool) or not isinstance(priority, int):
        errors.append(f"pod: spec.priority={priority!r}: must be an integer")
    if errors:
        raise RequestError(errors)
    return PodRequest(
        namespace=namespace or "default",
        name=name,
        uid=uid,
        containers=tuple(containers),
        init_containers=tuple(init),
        selector=selector,
        node_policy=node_policy,
        card_policy=card_policy,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        priority=int(priority),
    )


# ---- host requests (CPU, memory) ----

_MIB = Decimal(1024 * 1024)


def parse_cpu_milli(value: object, where: str) -> int:
    """A CPU quantity ("500m", "2", 1.5) in millicores, rounded up as Kubernetes does."""
    return math.ceil(_quantity(value, where) * 1000)


def parse_memory_mib(value: object, where: str, round_up: bool = True) -> int:
    """A memory quantity ("512Mi", "1G", "1073741824") in MiB: requests round up, capacities down."""
    mib = _quantity(value, where) / _MIB
    return math.ceil(mib) if round_up else math.floor(mib)


def host_request(pod: Mapping[str, Any]) -> tuple[int, int]:
    """The pod's effective (CPU millicores, memory MiB) requests; raises ``RequestError``."""
    spec = _or_empty(pod.get("spec")) if isinstance(pod, Mapping) else None
    if not isinstance(spec, Mapping):
        raise RequestError(["pod: spec must be an object"])
    errors: list[str] = []
    got = _host_request(spec, errors)
    if errors:
        raise RequestError(errors)
    return got


# resource.Quantity: a decimal number, then a binary (Ki..Ei) or decimal (n..E) suffix, or
# an exponent ("1e3"; "1E" alone is exa).
_QUANTITY = re.compile(
    r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"  # the number
    r"(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?[0-9]+))?"  # a suffix or an exponent
)
_SCALE = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def _quantity(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}={_show(value)}: must be a quantity (e.g. 500m, 2, 512Mi)")
    if isinstance(value, int) and value.bit_length() > 64:
        raise ValueError(f"{where}={_show(value)}: out of range (at most 2^63)")
    text = str(value).strip()
    if len(text) > MAX_QUANTITY_CHARS:
        raise ValueError(f"{where}={_show(value)}: longer than {MAX_QUANTITY_CHARS} characters")
    m = _QUANTITY.fullmatch(text)
    if m is None:
        raise ValueError(f"{where}={_show(value)}: not a quantity (e.g. 500m, 2, 512Mi)")
    number, suffix, exponent = m.groups()
    # Bounded before any arithmetic: 10**1000000 would take the process's time and memory.
    if exponent is not None and abs(int(exponent)) > _MAX_EXPONENT:
        raise ValueError(f"{where}={_show(value)}: out of range (exponent beyond +-{_MAX_EXPONENT})")
    q = Decimal(number) * (_SCALE[suffix] if exponent is None else Decimal(10) ** int(exponent))
    if q < 0:
        raise ValueError(f"{where}={_show(value)}: must be a non-negative quantity")
    if q > _MAX_QUANTITY:
        raise ValueError(f"{where}={_show(value)}: out of range (at most 2^63)")
    return q


def _host_request(spec: Mapping[str, Any], errors: list[str]) -> tuple[int, int]:
    """kube-scheduler's computePodResourceRequest for CPU and memory (errors appended)."""

    def requests_of(c: object, where: str) -> tuple[int, int]:
        if not isinstance(c, Mapping):
            return 0, 0  # reported by the vGPU parsing
        resources = _or_empty(c.get("resources"))
        if not isinstance(resources, Mapping):
            return 0, 0
        requests = _or_empty(resources.get("requests"))
        limits = _or_empty(resources.get("limits"))
        if not isinstance(requests, Mapping) or not isinstance(limits, Mapping):
            return 0, 0
        out = [0, 0]
        for i, (key, parse) in enumerate((("cpu", parse_cpu_milli), ("memory", parse_memory_mib))):
            # The apiserver defaults a missing request to the limit.
            field_, value = ("requests", requests[key]) if key in requests else ("limits", limits.get(key))
            if value is None:
                continue
            try:
                out[i] = parse(value, f"{where}: resources.{field_}.{key}")
            except ValueError as e:
                errors.append(str(e))
        return out[0], out[1]

    def named(c: object, kind: str, i: int) -> str:
        return f'{kind} "{_container_name(c, i)}"'

    containers = spec.get("containers")
    inits = spec.get("initContainers")
    cpu = mem = 0
    for i, c in enumerate(containers if isinstance(containers, list) else []):
        dc, dm = requests_of(c, named(c, "container", i))
        cpu, mem = cpu + dc, mem + dm
    init_cpu = init_mem = side_cpu = side_mem = 0
    for i, c in enumerate(inits if isinstance(inits, list) else []):
        dc, dm = requests_of(c, named(c, "init container", i))
        if isinstance(c, Mapping) and c.get("restartPolicy") == "Always":
            # A sidecar runs beside the app and beside every init container after it.
            cpu, mem = cpu + dc, mem + dm
            side_cpu, side_mem = side_cpu + dc, side_mem + dm
            dc, dm = side_cpu, side_mem
        else:
            dc, dm = dc + side_cpu, dm + side_mem
        init_cpu, init_mem = max(init_cpu, dc), max(init_mem, dm)
    cpu, mem = max(cpu, init_cpu), max(mem, init_mem)
    overhead = _or_empty(spec.get("overhead"))
    if isinstance(overhead, Mapping):
        for key, parse in (("cpu", parse_cpu_milli), ("memory", parse_memory_mib)):
            if overhead.get(key) is None:
                continue
            try:
                n = parse(overhead[key], f"pod: spec.overhead.{key}")
            except ValueError as e:
                errors.append(str(e))
                continue
            if key == "cpu":
                cpu += n
            else:
                mem += n
    else:
        errors.append("pod: spec.overhead must be an object")
    return cpu, mem


def _policy(annotations: Mapping[str, Any], key: str, rules: RequestRules, errors: list[str]) -> str | None:
    value = _annotation(annotations, key, errors)
    if value is None or rules.policies is None:
        return None
    if value not in rules.policies:
        errors.append(f"annotation {key}={_show(value)}: must be one of {', '.join(sorted(rules.policies))}")
        return None
    return value


def _annotation(annotations: Mapping[str, Any], key: str, errors: list[str]) -> str | None:
    """The annotation's value; None if absent or not a string (reported)."""
    value = annotations.get(key)
    if value is None or isinstance(value, str):
        return value
    errors.append(f"annotation {key}: must be a string, got {_kind(value)}")
    return None


def _meta_text(meta: Mapping[str, Any], key: str, errors: list[str]) -> str:
    value = meta.get(key)
    if value is None or isinstance(value, str):
        return value or ""
    errors.append(f"pod: metadata.{key} must be a string, got {_kind(value)}")
    return ""


def _container_name(c: object, i: int) -> str:
    """The container's name, or its position where it has none (or not a string)."""
    name = c.get("name") if isinstance(c, Mapping) else None
    return name if isinstance(name, str) and name else f"#{i}"


def _containers(
    raw: object, kind: str, init: bool, rules: RequestRules, errors: list[str], models: set[str]
) -> list[ContainerRequest]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.append(f"{kind}s: must be a list")
        return []
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, Mapping):
            errors.append(f"{kind} #{i}: must be an object")
            continue
        if not isinstance(c.get("name"), (str, type(None))):
            errors.append(f"{kind} #{i}: name must be a string, got {_kind(c.get('name'))}")
            continue
        name = _container_name(c, i)
        req = _container(f'{kind} "{name}"', name, _or_empty(c.get("resources")), init, rules, errors, models)
        if req is not None:
            out.append(req)
    return out


def _container(
    where: str,
    name: str,
    resources: Any,
    init: bool,
    rules: RequestRules,
    errors: list[str],
    models: set[str],
) -> ContainerRequest | None:
    if not isinstance(resources, Mapping):
        errors.append(f"{where}: resources must be an object")
        return None
    limits = _or_empty(resources.get("limits"))
    requests = _or_empty(resources.get("requests"))
    if not isinstance(limits, Mapping) or not isinstance(requests, Mapping):
        errors.append(f"{where}: resources.limits and resources.requests must be objects")
        return None
    values: dict[str, int] = {}
    before = len(errors)
    for key in sorted(set(limits) | set(requests)):
        if key.startswith(res.VGPU_TYPE_PREFIX):
            model = key[len(res.VGPU_TYPE_PREFIX) :]
            if not model:
                errors.append(f"{where}: {key}: model name is empty")
            else:
                models.add(model)
            continue
        if key not in res.MANAGED:
            continue
        lim = _whole(where, key, limits.get(key), errors)
        req = _whole(where, key, requests.get(key), errors)
        if lim is not None and req is not None and lim != req:
            errors.append(f"{where}: {key}: requests ({req}) must equal limits ({lim})")
        value = lim if lim is not None else req
        if value is not None:
            values[key] = value
    if len(errors) > before:
        return None
    if res.VGPU_MEMORY in values and res.VGPU_MEMORY_ALT in values:
        errors.append(f"{where}: give memory once, as {res.VGPU_MEMORY} or {res.VGPU_MEMORY_ALT}, not both")
        return None

    number = values.get(res.VGPU_NUMBER)
    cores = values.get(res.VGPU_CORES)
    memory = values.get(res.VGPU_MEMORY, values.get(res.VGPU_MEMORY_ALT))
    if not number:
        if cores or memory:
            errors.append(f"{where}: {res.VGPU_CORES}/{res.VGPU_MEMORY} need {res.VGPU_NUMBER} >= 1")
        return None
    if number > MAX_VGPUS_PER_CONTAINER:
        errors.append(f"{where}: {res.VGPU_NUMBER}={number}: more than {MAX_VGPUS_PER_CONTAINER} vGPUs")
        return None
    if cores is None and memory is None:
        cores = FULL_CORES  # a whole card
    elif cores is None:
        cores = 0  # memory only: no compute limit
    if cores > FULL_CORES:
        errors.append(f"{where}: {res.VGPU_CORES}={cores}: must be at most {FULL_CORES}")
        return None
    if cores % rules.granularity:
        errors.append(f"{where}: {res.VGPU_CORES}={cores}: must be a multiple of {rules.granularity}")
        return None
    if memory is not None and memory == 0:
        errors.append(f"{where}: {res.VGPU_MEMORY}=0: must be at least 1 GiB")
        return None
    return ContainerRequest(name, number, cores, None if memory is None else memory * 1024, init)


def _whole(where: str, key: str, value: object, errors: list[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
        return value
    if isinstance(value, str) and len(value) <= 19 and _WHOLE.fullmatch(value):
        return int(value)
    errors.append(f"{where}: {key}={_show(value)}: must be a whole non-negative number of at most 18 digits")
    return None


_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 40


def _show(value: object) -> str:
    """A short rendering of a value the pod carried, for error messages: never all of a long
    string, and never a number too long for Python to print."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        return _SHOW.repr(value)
    except ValueError:  # an integer past the int -> str limit, inside a container
        return f"<{_kind(value)}>"


def _kind(value: object) -> str:
    """The JSON kind of a value, for error messages."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _or_empty(value: Any) -> Any:
    """JSON null means "absent"; any other value is kept so its type can be checked."""
    return {} if value is None else value
