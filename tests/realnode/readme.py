"""deploy/README.md's command blocks as named steps, and a runner that runs them as written.

Each ```bash block of the README follows a marker naming its step, either
``<!-- step: NAME (run) -->`` (tests/realnode/test_helm_install.py runs it, in RUN order) or
``<!-- step: NAME (not run: WHY) -->``. The README's variables ($NODE, the paths and ports of
the node under test) come from the runner's environment, so the text is run unchanged.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.controlplane import REPO_ROOT

README = REPO_ROOT / "deploy" / "README.md"
# What the helm test runs, in this order (the README's order too).
# The variables those steps use, which the test sets for its node (ports free on the machine,
# paths under the test's work dir).
VARIABLES = (
    "NODE",
    "APISERVER_PORT",
    "SCHEDULER_PORT",
    "EXTENDER_PORT",
    "VIEWS_PORT",
    "METRICS_PORT",
    "INVENTORY",
    "POD_RESOURCES_DIR",
    "STATE_DIR",
    "HOOK_DIR",
)
RUN = ("images-local", "label", "values-one-machine", "install", "check", "workload", "policy", "uninstall")

_MARKED = re.compile(
    r"<!-- step: (?P<name>[a-z0-9-]+) \((?P<how>run|not run: [^\n]*?)\) -->\n```bash\n(?P<script>.*?)```", re.S
)
_BASH = re.compile(r"^```bash$", re.M)


class ReadmeError(AssertionError):
    """The README and its steps disagree, or a step failed."""


@dataclass(frozen=True)
class Step:
    name: str
    run: bool
    reason: str  # why it is not run; empty when it is
    script: str


def steps(text: str | None = None) -> list[Step]:
    """Every marked block, in the README's order; each bash block must be marked, once."""
    text = README.read_text() if text is None else text
    found = [
        Step(
            m["name"],
            m["how"] == "run",
            m["how"].removeprefix("not run:").strip() if m["how"] != "run" else "",
            m["script"],
        )
        for m in _MARKED.finditer(text)
    ]
    blocks = len(_BASH.findall(text))
    if blocks != len(found):
        raise ReadmeError(f"{README.name}: {blocks} bash blocks, {len(found)} with a step marker before them")
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        raise ReadmeError(f"{README.name}: a step name is used twice: {names}")
    return found


def run_steps(text: str | None = None) -> dict[str, Step]:
    """The steps the helm test runs, by name; their order and names are RUN's."""
    ran = [s for s in steps(text) if s.run]
    if tuple(s.name for s in ran) != RUN:
        raise ReadmeError(f"{README.name}: steps marked run are {[s.name for s in ran]}, the test runs {list(RUN)}")
    return {s.name: s for s in ran}


@dataclass
class Runner:
    """Runs steps with bash -euo pipefail in ``cwd`` with ``env`` on top of a proxy-free
    environment; keeps each step's output and time."""

    cwd: Path
    env: Mapping[str, str]
    done: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    output: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._steps = run_steps()

    def script(self, name: str) -> str:
        return self._steps[name].script

    def run(self, name: str, script: str | None = None, timeout: float = 900) -> str:
        """The step as written (or ``script``, a variant the caller derived from it); its output."""
        text = self.script(name) if script is None else script
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        missing = set(VARIABLES) - set(self.env)
        if missing:
            raise ReadmeError(f"the README's variables {sorted(missing)} are not set")
        env.update(self.env)
        t0 = time.monotonic()
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", text],
            cwd=self.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.seconds[name if script is None else f"{name} (variant)"] = time.monotonic() - t0
        out = r.stdout + r.stderr
        if r.returncode != 0:
            raise ReadmeError(f"README step {name!r} failed ({r.returncode}):\n{text}\n---\n{out[-6000:]}")
        if script is None:
            self.done.append(name)
        self.output[name] = r.stdout
        return r.stdout
