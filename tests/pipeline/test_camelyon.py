"""CAMELYON16 folders with the real release's quirks: zipped annotations, evaluation masks, reference.csv with more
columns, excluded slides, tumour slides without ground truth — as inputs, as FROC truth, and through `bench`."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from slidestream.cli.main import main
from slidestream.errors import ConfigError
from slidestream.evaluation.froc_files import evaluate_froc_dirs, read_truth
from slidestream.pipeline.bench import benchmark_inputs
from slidestream.pipeline.camelyon import (camelyon_inputs, exclude_inputs, lesion_type, prepare_froc_truth,
                                           read_reference, read_truth_bytes)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def test_inputs_read_zipped_annotations_masks_and_reference_columns(camelyon_folder):
    items = {it.slide_id: it for it in camelyon_inputs(camelyon_folder)}
    assert len(items) == 15 and benchmark_inputs(camelyon_folder)[0].slide_id == "normal_001"
    assert {s: it.label for s, it in items.items() if it.split == "test"} == {
        "test_001": 1, "test_002": 0, "test_003": 1, "test_004": 0, "test_005": 1, "test_006": 0, "test_114": 1}
    # annotations are members of the zips, read in place
    tumour = items["tumor_003"].annotation
    assert tumour.parent.name == "lesion_annotations" and tumour.parent.parent.name == "lesion_annotations.zip"
    assert items["test_001"].annotation.name == "Test_001.xml"  # the macOS fork beside it is not taken
    assert read_truth_bytes(items["test_001"].annotation).startswith(b"<?xml")
    # the official evaluation mask wins; test_005 has nothing
    assert items["test_003"].annotation.name == "Test_003_Mask.tif"
    assert items["test_005"].annotation is None and items["normal_001"].annotation is None
    # reference.csv: type column and our size column, extra columns and missing cells tolerated
    assert items["test_001"].meta == {"lesion_type": "macro", "largest_lesion_um": "2134"}
    assert items["test_003"].meta == {"lesion_type": "micro", "largest_lesion_um": "650"}
    assert items["test_005"].meta["lesion_type"] == "itc" and items["test_002"].meta == {"lesion_type": ""}
    assert items["test_114"].meta == {"lesion_type": "micro"}


def test_reference_csv_header_case_and_errors(tmp_path):
    ref = tmp_path / "reference.csv"
    ref.write_text("\ufeffimage,type,lesion\nTest_001,TUMOR,Micro\ntest_002,normal,Macro,12\n\n")
    rows = read_reference(ref)
    assert rows["test_001"].label == 1 and rows["test_001"].lesion_type == "micro"
    assert rows["test_002"].label == 0 and rows["test_002"].lesion_type == "" and rows["test_002"].largest_lesion_um is None
    ref.write_text("test_001,Tumor\ntest_002,Maybe\n")
    with pytest.raises(ConfigError, match=r"reference.csv, line 2"):
        read_reference(ref)
    ref.write_text("test_001,Tumor\nTEST_001,Normal\n")
    with pytest.raises(ConfigError, match="listed twice"):
        read_reference(ref)
    assert [lesion_type(v) for v in ("Macro", " micro-metastasis", "ITC", "isolated tumour cells", "big", None)] == [
        "macro", "micro", "itc", "itc", "", ""]


def test_zip_members_are_read_within_a_byte_cap(tmp_path):
    z = tmp_path / "lesion_annotations.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("big.xml", b" " * (4 << 20))  # compresses to a few kB
        f.writestr("small.xml", b"<ASAP_Annotations/>")
    assert read_truth_bytes(z / "small.xml") == b"<ASAP_Annotations/>"
    with pytest.raises(ConfigError, match="more than 1,000,000 bytes"):
        read_truth_bytes(z / "big.xml", max_bytes=1_000_000)
    with pytest.raises(ConfigError, match="cannot read 'gone.xml'"):
        read_truth_bytes(z / "gone.xml")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "training").mkdir()
    (tmp_path / "broken" / "training" / "lesion_annotations.zip").write_bytes(b"PK\3\4 not a zip")
    with pytest.raises(ConfigError, match="not a readable zip"):
        camelyon_inputs(tmp_path / "broken")


def test_exclusion_by_name_any_case(camelyon_folder):
    kept, excluded, unknown = exclude_inputs(camelyon_inputs(camelyon_folder), ["TEST_114", "test_006", "nope"])
    assert excluded == ["test_006", "test_114"] and unknown == ["nope"]
    assert len(kept) == 13 and not {"test_006", "test_114"} & {it.slide_id for it in kept}


def test_froc_truth_names_missing_slides_and_keeps_the_data_folder_untouched(camelyon_folder, tmp_path):
    before = _tree(camelyon_folder)
    test = [it for it in camelyon_inputs(camelyon_folder) if it.split == "test"]
    gt = tmp_path / "ground_truth"
    truth = prepare_froc_truth(test, gt)
    assert truth.missing == ["test_005"] and truth.defined
    assert any("test_005" in w and "left out of the lesion FROC" in w for w in truth.warnings)
    assert truth.sources == {"test_001": "annotation", "test_003": "mask", "test_114": "annotation"}
    assert sorted(truth.evaluable) == ["test_001", "test_002", "test_003", "test_004", "test_006", "test_114"]
    assert sorted(p.name for p in gt.iterdir() if not p.name.startswith(".")) == ["test_001.xml", "test_003.tif", "test_114.xml"]
    assert (gt / "test_003.tif").resolve() == (camelyon_folder / "testing/evaluation/Test_003_Mask.tif").resolve()
    assert not read_truth(gt / "test_001.xml").is_empty
    # excluded later: its ground truth leaves the folder, so the FROC cannot see it
    kept, _, _ = exclude_inputs(test, ["test_114"])
    again = prepare_froc_truth(kept, gt)
    assert sorted(p.name for p in gt.iterdir() if not p.name.startswith(".")) == ["test_001.xml", "test_003.tif"] and "test_114" not in again.truth
    assert _tree(camelyon_folder) == before  # nothing extracted into (or written to) the data folder


def test_froc_truth_without_any_annotation_says_so(camelyon_folder, tmp_path):
    test = [it for it in camelyon_inputs(camelyon_folder) if it.split == "test"]
    for it in test:
        it.annotation = None
    test[1].label = None
    truth = prepare_froc_truth(test, tmp_path / "gt")
    assert not truth.defined and truth.unlabelled == [test[1].slide_id]
    assert any(w.startswith("none of the") and "FROC is not computed" in w and "test_001" in w
               for w in truth.warnings)
    assert any("no label" in w for w in truth.warnings)
    # a manifest without annotations at all is not expected to have any: no warning about it
    quiet = prepare_froc_truth(test, tmp_path / "gt2", expect_truth=False)
    assert not [w for w in quiet.warnings if "FROC" in w]


def test_bench_on_the_quirky_folder(camelyon_folder, tmp_path):
    before = _tree(camelyon_folder)
    out = tmp_path / "run"
    args = ["bench", str(camelyon_folder), "--out", str(out), "--encoder", "handcrafted", "--weights", "none",
            "--folds", "2", "--epochs", "8", "--exclude", "test_114", "--exclude", "test_006,nope"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "test_005" in r.output and "no such slide" in r.output
    record = json.loads((out / "bench.json").read_text())
    assert record["excluded"] == {"slides": ["test_006", "test_114"], "not_found": ["nope"]}
    assert record["config"]["exclude"] == ["test_114", "test_006", "nope"]
    assert sorted(record["splits"]["test"]) == ["test_001", "test_002", "test_003", "test_004", "test_005"]
    assert record["froc_truth"]["missing_truth"] == ["test_005"]
    assert record["froc_truth"]["truth_sources"] == {"test_001": "annotation", "test_003": "mask"}
    assert any("test_005" in w for w in record["warnings"]) and "test_005" in (out / "report.md").read_text()
    # the FROC is the official one over the evaluable slides, with the mask for test_003
    assert sorted(p.stem for p in (out / "detections").glob("*.csv")) == ["test_001", "test_002", "test_003",
                                                                          "test_004"]
    official = evaluate_froc_dirs(out / "detections", out / "ground_truth")
    assert record["froc"]["froc"] == pytest.approx(official["froc"]) and official["n_tumor_slides"] == 2
    assert os.path.islink(out / "ground_truth" / "test_003.tif")
    assert _tree(camelyon_folder) == before
    # leaving out one more test slide re-evaluates without retraining
    ckpt = out / "model" / "model.safetensors"
    mtime = ckpt.stat().st_mtime_ns
    r = CliRunner().invoke(main, args + ["--exclude", "test_004"])
    assert r.exit_code == 0, r.output
    assert ckpt.stat().st_mtime_ns == mtime
    assert sorted(p.stem for p in (out / "detections").glob("*.csv")) == ["test_001", "test_002", "test_003"]
    assert json.loads((out / "bench.json").read_text())["excluded"]["slides"] == ["test_004", "test_006", "test_114"]
