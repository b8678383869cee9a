"""hostfs and its users: the agent follows no link a tenant plants and reads only what it expects."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from flexai_node.hook import config as hook_config
from flexai_node.hook.files import HookConfigFiles
from flexai_node.hostfs import UnsafePath, chmod_dir, ensure_dir, read_file
from flexai_node.workdirs import Workdirs

from .fakes import CARDS, slice_on

A = CARDS[0]


def test_read_file_reads_a_regular_file_of_ours(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("hello")
    assert read_file(tmp_path / "f") == b"hello"
    assert read_file(tmp_path / "f", limit=2) == b"he"


@pytest.mark.parametrize("where", ["leaf", "parent"])
def test_read_file_follows_no_link(tmp_path: Path, where: str) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "f").write_text("secret")
    if where == "leaf":
        (tmp_path / "link").symlink_to(real / "f")
        target = tmp_path / "link"
    else:
        (tmp_path / "dir").symlink_to(real)
        target = tmp_path / "dir" / "f"
    with pytest.raises(UnsafePath):
        read_file(target)


def test_read_file_refuses_other_types_owners_and_hard_links(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafePath, match="not a regular file"):
        read_file(tmp_path / "fifo")  # looked at through O_PATH: never opened, never blocks
    (tmp_path / "f").write_text("x")
    with pytest.raises(UnsafePath, match="owned by uid"):
        read_file(tmp_path / "f", owner=os.geteuid() + 1)
    os.link(tmp_path / "f", tmp_path / "alias")
    with pytest.raises(UnsafePath, match="2 links"):
        read_file(tmp_path / "f")


def test_chmod_dir_never_reaches_a_link_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UnsafePath):
        chmod_dir(tmp_path / "link", 0o777)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    chmod_dir(target, 0o755)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_workdirs_refuse_a_linked_component(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "containers"
    root.mkdir()
    (root / "uid-1").symlink_to(elsewhere)
    with pytest.raises(UnsafePath):
        Workdirs(root).create("uid-1", "main")
    assert list(elsewhere.iterdir()) == []
    ensure_dir(root / "uid-2" / "main")  # a plain one is made


def test_prune_does_not_follow_a_planted_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("node file")
    workdirs = Workdirs(tmp_path / "containers")
    region = workdirs.create("uid-1", "main") / "region"
    region.mkdir()
    (region / "region").symlink_to(outside)  # what a tenant can plant in its region directory
    (region / "dir").symlink_to(outside / "keep")
    assert workdirs.prune(set()) == ["uid-1"]
    assert (outside / "keep").read_text() == "node file"


def test_hook_files_skip_a_linked_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = HookConfigFiles(tmp_path, Path("/hook.so"))
    a = tmp_path / "uid" / "a"
    a.mkdir(parents=True)
    files.prepare(a, (slice_on(A, "a", 30, 1024),))  # [0, 30)
    b = tmp_path / "uid" / "b"
    b.mkdir()
    (b / "vgpu.conf").symlink_to(a / "vgpu.conf")  # b's "config" is a's: must not count twice
    c = tmp_path / "uid" / "c"
    c.mkdir()
    with caplog.at_level(logging.WARNING):
        files.prepare(c, (slice_on(A, "c", 30, 1024),))
    assert "ignoring unreadable hook config" in caplog.text
    assert hook_config.parse((c / "vgpu.conf").read_text()).vgpus[0].core_offset == 30
    # the region directory is ours, reached without links, and open to every container user
    assert stat.S_IMODE(os.lstat(c / "region").st_mode) == 0o777
