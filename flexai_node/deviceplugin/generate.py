"""Regenerate the kubelet API stubs from ``api.proto`` (device plugin, v1beta1) and
``podresources.proto`` (PodResources, v1), the one command::

    python -m flexai_node.deviceplugin.generate

Writes ``<name>_pb2.py``, ``<name>_pb2.pyi`` and ``<name>_pb2_grpc.py`` beside each .proto with
grpcio-tools (pinned in pyproject's ``test`` extra, so the output is reproducible; a test
regenerates into a temporary directory and compares byte for byte).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ..errors import NodeError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
PROTOS = ("api", "podresources")
OUTPUTS = tuple(f"{p}{suffix}" for p in PROTOS for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
HEADER = (
    "# Generated from the .proto beside it by `python -m flexai_node.deviceplugin.generate`. DO NOT EDIT.\n"
    "# mypy: ignore-errors\n"  # protoc's output is not --strict clean; callers are checked
)


class GenerateError(NodeError, RuntimeError):
    """protoc failed; the message carries its exit code."""


def generate(out_root: Path = REPO_ROOT) -> list[Path]:
    """Run protoc with the repository root as include path, so the stubs import each other
    as ``flexai_node.deviceplugin.api_pb2`` (a bare ``import api_pb2`` breaks in a package)."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # test-time dependency only: the agent never imports this module

    include = str(Path(protoc.__file__).resolve().parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(PACKAGE_DIR.relative_to(REPO_ROOT) / f"{p}.proto") for p in PROTOS),
    ]
    code = protoc.main(args)
    if code != 0:
        raise GenerateError(f"protoc exited with {code}")
    written = []
    for name in OUTPUTS:
        path = out_root / PACKAGE_DIR.relative_to(REPO_ROOT) / name
        path.write_text(HEADER + path.read_text())
        written.append(path)
    return written


def check() -> list[str]:
    """Names of committed stubs that differ from a fresh generation (empty: up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [p.name for p in fresh if p.read_bytes() != (PACKAGE_DIR / p.name).read_bytes()]


def main() -> int:
    for path in generate():
        print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
