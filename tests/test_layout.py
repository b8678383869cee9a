"""The import graph between the packages: which wing may use which.

- ``flexai_core`` (plain values and encodings shared by the scheduler and the node agent)
  imports the standard library only, and nothing of ``flexai_sched`` or ``flexai_node``;
- ``flexai_node`` imports nothing of ``flexai_sched``, so the node image carries no web stack;
- the scheduler never imports its simulator (``flexai_sched.sim`` consumes the core), except
  ``cli``, which adds the simulator's subcommand.

Read from the source (every import statement, those inside functions too), and checked by
importing every node module with the scheduler's packages made unimportable.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def imports(module: str, path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (``from X import y`` counts as X and X.y)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def offenders(package: str, allowed: Callable[[str, str], bool]) -> list[str]:
    return [f"{m} imports {i}" for m, p in modules(package) for i in sorted(imports(m, p)) if not allowed(m, i)]


def test_the_graph_reader_sees_relative_and_nested_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "flexai_x" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "mod.py").write_text("from ..model import Card\nimport json\n\ndef f():\n    from flexai_sched import app\n")
    got = imports("flexai_x.sub.mod", pkg / "mod.py")
    assert {"flexai_x.model", "flexai_x.model.Card", "json", "flexai_sched", "flexai_sched.app"} <= got


def test_core_imports_the_standard_library_only() -> None:
    def allowed(_: str, name: str) -> bool:
        top = name.partition(".")[0]
        return top == "flexai_core" or top in sys.stdlib_module_names or top == "__future__"

    assert offenders("flexai_core", allowed) == []


def test_node_imports_nothing_of_the_scheduler() -> None:
    assert offenders("flexai_node", lambda _, name: name.partition(".")[0] != "flexai_sched") == []


def test_the_scheduler_never_imports_its_simulator() -> None:
    def allowed(module: str, name: str) -> bool:
        if module.startswith("flexai_sched.sim") or module == "flexai_sched.cli":
            return True
        return not (name == "flexai_sched.sim" or name.startswith("flexai_sched.sim."))

    assert offenders("flexai_sched", allowed) == []


def test_policies_share_value_types_not_one_policy_module() -> None:
    # state, the extender and the simulator take Host/TaskClass/Workload from flexai_sched.workload.
    singles = ("fragmentation", "binpack", "baselines", "leftover", "scarcity")

    def allowed(module: str, name: str) -> bool:
        if module.startswith("flexai_sched.policies"):
            return True
        return not any(name.startswith(f"flexai_sched.policies.{s}") for s in singles)

    assert offenders("flexai_sched", allowed) == []


BLOCKER = """
import importlib, importlib.abc, pkgutil, sys
# pydantic is not blocked: the kubernetes client (a base dependency) imports it.
BLOCKED = {"flexai_sched", "fastapi", "starlette", "uvicorn", "msgspec", "httptools", "uvloop"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
import flexai_core, flexai_node
for pkg in (flexai_core, flexai_node):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if m.name.endswith(".generate"):  # protoc at test time only
            continue
        importlib.import_module(m.name)
print("ok")
"""


def test_node_and_core_import_without_the_web_stack() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKER], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("package", "root"),
    [
        ("flexai_core", "flexai_core.errors.CoreError"),
        ("flexai_sched", "flexai_sched.errors.SchedError"),
        ("flexai_node", "flexai_node.errors.NodeError"),
    ],
)
def test_every_error_of_a_package_has_its_root(package: str, root: str) -> None:
    module_name, _, cls_name = root.rpartition(".")
    base = getattr(importlib.import_module(module_name), cls_name)
    errors = []
    for name, _ in modules(package):
        if name.endswith("_pb2_grpc") or name.endswith("_pb2"):
            continue
        module = importlib.import_module(name)
        errors += [
            v
            for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, BaseException) and v.__module__ == name
        ]
    assert errors, package
    assert [e.__qualname__ for e in errors if not issubclass(e, base)] == []
