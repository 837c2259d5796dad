"""Atomic writes: the old file or the whole new one, the umask's permissions, recognisable temporary files."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from slidestream.errors import ConfigError
from slidestream.fileio import (atomic_open, atomic_path, atomic_write, is_temp_name, remove_stale_temps, strict_json,
                                write_json)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_writer_gives_the_umask_permissions(tmp_path, umask_022):
    a = atomic_write(tmp_path / "a.bin", b"x")
    b = write_json(tmp_path / "b.json", {"k": 1})
    with atomic_open(tmp_path / "c.txt", "w") as f:
        f.write("text")
    with atomic_path(tmp_path / "d.png") as tmp:
        tmp.write_bytes(b"png")
    for p in (a, b, tmp_path / "c.txt", tmp_path / "d.png"):
        assert _mode(p) == 0o644, p
    old = os.umask(0o077)
    try:
        assert _mode(atomic_write(tmp_path / "private.bin", b"x")) == 0o600
    finally:
        os.umask(old)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "f.bin", b"old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("interrupted")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_bytes(b"new")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_text_and_bytes_and_missing_folders(tmp_path):
    assert atomic_write(tmp_path / "sub" / "t.txt", "é").read_bytes() == "é".encode()
    with pytest.raises(ConfigError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "x", b"", mkdir=False)
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "x", "a"):
            pass


def test_strict_json_has_no_nan_and_plain_numbers(tmp_path):
    np = pytest.importorskip("numpy")
    payload = {"nan": float("nan"), "inf": float("inf"), "n": np.int64(3), "x": np.float32(0.5), 1: (1, 2)}
    assert strict_json(payload) == {"nan": None, "inf": None, "n": 3, "x": 0.5, "1": [1, 2]}
    text = write_json(tmp_path / "p.json", payload).read_text()
    assert json.loads(text, parse_constant=pytest.fail) == {"nan": None, "inf": None, "n": 3, "x": 0.5, "1": [1, 2]}


def test_stale_temporaries_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    with atomic_path(tmp_path / "live.png") as live_tmp:
        assert is_temp_name(live_tmp.name)
        dead = tmp_path / ".heatmap.png.999999999-0123abcd.tmp"  # no such pid
        dead.write_bytes(b"left by a killed run")
        users = [tmp_path / ".hidden.tmp", tmp_path / "notes.tmp", tmp_path / ".x.png.12-zz.tmp"]
        for p in users:
            p.write_bytes(b"the user's")
        old = time.time() - 3600
        for p in (dead, live_tmp, *users):
            os.utime(p, (old, old))
        assert remove_stale_temps(tmp_path) == 1
        assert not dead.exists() and live_tmp.exists() and all(p.exists() for p in users)
    assert (tmp_path / "live.png").exists()
    assert remove_stale_temps(tmp_path / "no-such-folder") == 0
