"""`slidestream evaluate froc` on official-format detection CSVs and the real CAMELYON16 annotation."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from slidestream.cli.main import main
from slidestream.mil.froc import evaluate_froc_dirs
from slidestream.wsi.annotations import read_annotations


def test_evaluate_froc_json_and_text(shared_data, tmp_path):
    ann_dir, det_dir = tmp_path / "ann", tmp_path / "det"
    ann_dir.mkdir()
    det_dir.mkdir()
    src = shared_data / "annotations" / "camelyon16-asap" / "tumor_009.xml"
    shutil.copy(src, ann_dir / "tumor_009.xml")
    lesions = sorted(read_annotations(src), key=lambda a: -a.geometry.area)
    inside = lesions[0].geometry.representative_point()
    x0, y0, x1, y1 = lesions[0].geometry.bounds
    far = (x1 + 20000, y1 + 20000)  # well away from every lesion: a false positive
    (det_dir / "tumor_009.csv").write_text(f"0.9,{inside.x:.0f},{inside.y:.0f}\n0.6,{far[0]:.0f},{far[1]:.0f}\n")
    (det_dir / "normal_001.csv").write_text("0.7,1000,1000\n")
    r = CliRunner().invoke(main, ["evaluate", "froc", "--detections", str(det_dir), "--annotations", str(ann_dir),
                                  "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(out["sensitivity"]) == {"0.25", "0.5", "1", "2", "4", "8"}
    direct = evaluate_froc_dirs(det_dir, ann_dir)
    assert out["froc"] == direct["froc"]
    assert 0 < out["froc"] <= 1
    text = CliRunner().invoke(main, ["evaluate", "froc", "--detections", str(det_dir), "--annotations", str(ann_dir)])
    assert text.exit_code == 0 and "FROC" in text.output.upper()
