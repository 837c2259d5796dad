"""Output ledgers: what slidestream wrote is replaced, everything else is refused, inputs are never written."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from slidestream.errors import OutputExistsError
from slidestream.fileio import LEDGER_NAME, OutputGuard, adopt_legacy, atomic_write, protect_inputs
from slidestream.fileio import ledger as ledger_module


def _write(guard: OutputGuard, path, text: str):
    with guard.writing(path) as target:
        atomic_write(target, text)


def test_own_outputs_are_replaced_others_refused(tmp_path):
    guard = OutputGuard()
    out = tmp_path / "a.csv"
    _write(guard, out, "one\n")
    _write(OutputGuard(), out, "two\n")  # another run: the ledger, not this object, knows the file
    assert out.read_text() == "two\n"
    out.write_text("edited by hand\n")  # same folder, same name, other content
    with pytest.raises(OutputExistsError, match=r"a\.csv: exists and was not written by slidestream.*--overwrite"):
        OutputGuard().check(out)
    assert out.read_text() == "edited by hand\n"
    _write(OutputGuard(overwrite=True), out, "three\n")
    assert out.read_text() == "three\n" and OutputGuard().is_own(out)


def test_same_size_other_bytes_is_not_ours(tmp_path):
    out = tmp_path / "p.png"
    _write(OutputGuard(), out, "abcd")
    out.write_text("abce")  # the size alone cannot tell
    assert not OutputGuard().is_own(out)


def test_links_folders_and_inputs(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep\n")
    link = tmp_path / "out.txt"
    link.symlink_to(target)
    with pytest.raises(OutputExistsError):
        OutputGuard().check(link)
    (tmp_path / "dir.geojson").mkdir()
    with pytest.raises(OutputExistsError, match="folder is in the way"):
        OutputGuard(overwrite=True).check(tmp_path / "dir.geojson")
    manifest = tmp_path / "predictions.csv"
    manifest.write_text("slide,label\n")
    protect_inputs([manifest])
    with pytest.raises(OutputExistsError, match="input of the command"):
        OutputGuard(overwrite=True).check(tmp_path / "." / "predictions.csv")  # any spelling of the path
    assert target.read_text() == "keep\n" and manifest.read_text() == "slide,label\n"


def test_refusals_name_every_file_up_to_five(tmp_path):
    paths = [tmp_path / f"f{i}.txt" for i in range(8)]
    for p in paths:
        p.write_text("user\n")
    with pytest.raises(OutputExistsError) as info:
        OutputGuard().check_all(paths)
    msg = str(info.value)
    assert all(str(p) in msg for p in paths[:5]) and "and 3 more" in msg and str(paths[7]) not in msg


def test_an_earlier_checkpoint_can_be_refused_even_when_ours(tmp_path):
    out = tmp_path / "model.safetensors"
    _write(OutputGuard(), out, "weights")
    OutputGuard().check(out)
    with pytest.raises(OutputExistsError, match="earlier run"):
        OutputGuard().check(out, replace_own=False)


def test_a_line_cut_short_costs_only_its_own_entry(tmp_path):
    guard = OutputGuard()
    _write(guard, tmp_path / "a.txt", "a")
    with open(tmp_path / LEDGER_NAME, "ab") as f:
        f.write(b'{"name":"b.txt","si')  # a crash in the middle of an append
    _write(guard, tmp_path / "c.txt", "c")
    lines = (tmp_path / LEDGER_NAME).read_bytes().splitlines()
    assert json.loads(lines[-1])["name"] == "c.txt"
    fresh = OutputGuard()
    assert fresh.is_own(tmp_path / "a.txt") and fresh.is_own(tmp_path / "c.txt")


def test_compaction_keeps_the_live_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "_COMPACT_SLACK", 5)
    guard = OutputGuard()
    for i in range(3):
        _write(guard, tmp_path / f"f{i}.txt", str(i))
    (tmp_path / "f2.txt").unlink()
    for _ in range(20):
        guard.record(tmp_path / "f0.txt")
    lines = (tmp_path / LEDGER_NAME).read_text().splitlines()
    assert len(lines) < 20  # rewritten
    fresh = OutputGuard()
    assert fresh.is_own(tmp_path / "f0.txt") and fresh.is_own(tmp_path / "f1.txt")


def _record_many(folder: str, start: int) -> None:
    guard = OutputGuard()
    for i in range(start, start + 100):
        path = os.path.join(folder, f"f{i}.txt")
        with open(path, "w") as f:
            f.write(str(i))
        guard.record(path)


def test_processes_appending_to_one_ledger_lose_nothing(tmp_path, monkeypatch):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), k * 100)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    guard = OutputGuard()
    assert all(guard.is_own(tmp_path / f"f{i}.txt") for i in range(400))
    assert all(json.loads(line) for line in (tmp_path / LEDGER_NAME).read_text().splitlines())


def test_a_folder_from_before_the_ledgers_is_adopted_by_its_record(tmp_path):
    (tmp_path / "x.geojson").write_text("{}")
    assert adopt_legacy(tmp_path, lambda d: (d / "run-run.json").is_file()) is None
    (tmp_path / "run-run.json").write_text("{}")
    adopt = adopt_legacy(tmp_path, lambda d: (d / "run-run.json").is_file())
    guard = OutputGuard(adopt=adopt)
    assert guard.is_own(tmp_path / "x.geojson") and not guard.is_own(tmp_path.parent / "other.txt")
    guard.record(tmp_path / "x.geojson")  # the ledger starts: no adoption any more
    assert adopt_legacy(tmp_path, lambda d: True) is None
