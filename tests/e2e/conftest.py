"""Fixtures for the end-to-end tests against the real control plane.

control_plane  (session)  kine + kube-apiserver + kwok + kube-scheduler (no extender yet);
                          tests that need our extender call control_plane.start_extender(spec)
                          and control_plane.restart_scheduler(with_extender=True).
core_api       (function) CoreV1Api for the admin kubeconfig; after the test every pod in
                          "default" and every node is deleted, so tests do not see each other.
A failed test's report carries the tail of every component's log.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from .controlplane import REPO_ROOT, ControlPlane, ControlPlaneError, live_planes, wipe

BUILD_SCRIPT = REPO_ROOT / "tools" / "controlplane" / "build.sh"

# The outcome of build.sh, run once per session: (bin dir, None) or (None, error text).
_build: tuple[Path | None, str | None] | None = None


def _binaries() -> tuple[Path | None, str | None]:
    """Build (or find in the cache) the binaries; the bin dir is build.sh's last line."""
    global _build
    if _build is None:
        override = os.environ.get("FLEXAI_CONTROLPLANE_BIN")
        if override:
            _build = (Path(override), None)
            return _build
        r = subprocess.run(["bash", str(BUILD_SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        out = (r.stdout + r.stderr).strip()
        lines = r.stdout.strip().splitlines()
        if r.returncode != 0 or not lines or not Path(lines[-1]).is_dir():
            _build = (None, f"{BUILD_SCRIPT} failed (exit {r.returncode}):\n{out[-8000:]}")
        else:
            _build = (Path(lines[-1]), None)
    return _build


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build here, before any test starts: a first build takes 10-25 minutes, far past
    # pytest-timeout's per-test limit that would cover a build done inside the fixture.
    if any(item.get_closest_marker("e2e") for item in session.items):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and _build is None:
            reporter.write_line(
                f"e2e: {BUILD_SCRIPT.relative_to(REPO_ROOT)} (cached: instant; first build: 10-25 minutes)"
            )
        _binaries()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    bin_dir, err = _binaries()
    if bin_dir is None:
        pytest.fail(err or "no control-plane binaries", pytrace=False)  # never skip
    plane = ControlPlane(bin_dir, workdir=tmp_path_factory.mktemp("controlplane"))
    error = None
    try:
        plane.start()
    except ControlPlaneError as e:
        error = str(e)  # failed outside the except block: no chained traceback noise
    if error is not None:
        pytest.fail(error, pytrace=False)
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def _session_core_api(control_plane: ControlPlane) -> Iterator[k8s.CoreV1Api]:
    api = control_plane.core_api()
    yield api
    api.api_client.close()


@pytest.fixture
def core_api(_session_core_api: k8s.CoreV1Api) -> Iterator[k8s.CoreV1Api]:
    yield _session_core_api
    wipe(_session_core_api)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for plane in live_planes():
            report.sections.append((f"control plane logs ({report.when})", plane.log_tails()))
    return report
