"""Fixtures of the deploy checks: helm (built with the control-plane binaries) and the
end-to-end harness's real control plane, for the apiserver, kube-scheduler and RBAC
checks. Processes the tests start themselves (kube-scheduler on the chart's
configuration, the extender, the node agent) go through ``Procs``, so a failed test's
report carries their logs beside the control plane's."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

# The e2e harness's fixtures (one harness, shared).
from tests.e2e.conftest import _binaries, _session_core_api, control_plane, core_api  # noqa: F401
from tests.e2e.controlplane import Process, live_planes

from .chart import Helm

_HERE = Path(__file__).parent
_LIVE: list[Procs] = []


class Procs:
    """Processes started by a test or a module; ``stop()`` ends them all (idempotent)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Process] = []
        _LIVE.append(self)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Process:
        p = Process(name, argv, self.log_dir / f"{name}.log", self.log_dir, env)
        self.started.append(p)
        p.start()
        return p

    def stop(self) -> None:
        for p in reversed(self.started):
            p.stop()
        if self in _LIVE:
            _LIVE.remove(self)

    def tails(self) -> str:
        return "\n".join(f"----- {p.name} {p.log_path} -----\n{p.tail()}" for p in self.started)


def pytest_collection_finish(session: pytest.Session) -> None:
    # helm comes from build.sh with the control plane: build before any test starts (a
    # first build takes far longer than a test's timeout), the unmarked tests included.
    if any(Path(str(item.path)).is_relative_to(_HERE) for item in session.items):
        _binaries()


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    found, err = _binaries()
    if found is None:
        pytest.fail(err or "no control-plane binaries", pytrace=False)  # never skip
    return found


@pytest.fixture(scope="session")
def helm(bin_dir: Path) -> Helm:
    return Helm(bin_dir / "helm")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for plane in live_planes():
            report.sections.append((f"control plane logs ({report.when})", plane.log_tails()))
        for procs in _LIVE:
            report.sections.append((f"deploy test processes ({report.when})", procs.tails()))
    return report
