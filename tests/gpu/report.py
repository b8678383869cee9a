"""The end of every GPU check's Markdown report (tests/gpu/*.py run on the device machine)."""

from __future__ import annotations

from pathlib import Path


def finish_report(lines: list[str], ok: bool, out: Path | None) -> int:
    """Add the verdict, print the report, write it to `out` if given; the exit status."""
    text = "\n".join([*lines, f"**Result: {'PASS' if ok else 'FAIL'}**", ""])
    print(text)
    if out:
        out.write_text(text)
    return 0 if ok else 1
