"""`slidestream evaluate froc` on official-format detection CSVs, against a FROC worked out by hand."""

from __future__ import annotations

import json

from click.testing import CliRunner

from slidestream.cli.main import main


def _square(x, y, side):
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


def test_evaluate_froc_json_and_text_against_a_hand_computed_froc(tmp_path):
    ann_dir, det_dir = tmp_path / "ann", tmp_path / "det"
    ann_dir.mkdir()
    det_dir.mkdir()
    # two lesions of 5000 px (1.2 mm at 0.243 µm/px: far above the 275 µm ITC size), far apart
    lesions = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": f"l{i}", "geometry": {"type": "Polygon", "coordinates": [_square(x, 10000, 5000)]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}}
        for i, x in enumerate((10000, 40000))]}
    (ann_dir / "tumor_001.geojson").write_text(json.dumps(lesions))
    # tumour slide: a hit on lesion 0 at 0.9, a false positive at 0.6; normal slide: a false positive at 0.7
    (det_dir / "tumor_001.csv").write_text("0.9,12500,12500\n0.6,80000,80000\n")
    (det_dir / "normal_001.csv").write_text("0.7,1000,1000\n")
    # By hand (official rules): 2 slides, 2 lesions; TP entries [0.9 (lesion 0), 0 (lesion 1 missed)], FP [0.6, 0.7].
    # Thresholds: distinct entries without the lowest: 0.6, 0.7, 0.9 -> (avg FP, sensitivity) = (1, .5), (.5, .5),
    # (0, .5), then (0, 0). Interpolated at 0.25 ... 8 FPs per slide: 0.5 everywhere; FROC 0.5.
    r = CliRunner().invoke(main, ["evaluate", "froc", "--detections", str(det_dir), "--annotations", str(ann_dir),
                                  "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["sensitivity"] == {"0.25": 0.5, "0.5": 0.5, "1": 0.5, "2": 0.5, "4": 0.5, "8": 0.5}
    assert out["froc"] == 0.5 and out["defined"] is True
    text = CliRunner().invoke(main, ["evaluate", "froc", "--detections", str(det_dir), "--annotations", str(ann_dir)])
    assert text.exit_code == 0
    assert "2 slides (1 tumour, 1 normal), 2 lesions (+0 ITC), 3 detections" in text.output
    assert "FROC score: 0.5000" in text.output


def test_evaluate_froc_on_the_real_camelyon16_annotation_finds_its_lesion(shared_data, tmp_path):
    import shutil

    from slidestream.annotations import read_annotations

    ann_dir, det_dir = tmp_path / "ann", tmp_path / "det"
    ann_dir.mkdir()
    det_dir.mkdir()
    src = shared_data / "annotations" / "camelyon16-asap" / "tumor_009.xml"
    shutil.copy(src, ann_dir / "tumor_009.xml")
    # one detection at 0.9 inside each annotated polygon: every lesion is found; a normal slide's weak false
    # positive (0.1) only makes 0.9 a threshold (the official rules drop the lowest entry): at it, no false
    # positive and every lesion found, so the sensitivity is 1 at every rate
    points = [a.geometry.representative_point() for a in read_annotations(src)]
    (det_dir / "tumor_009.csv").write_text("".join(f"0.9,{p.x:.0f},{p.y:.0f}\n" for p in points))
    (det_dir / "normal_001.csv").write_text("0.1,1000,1000\n")
    r = CliRunner().invoke(main, ["evaluate", "froc", "--detections", str(det_dir), "--annotations", str(ann_dir),
                                  "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["froc"] == 1.0 and set(out["sensitivity"].values()) == {1.0}
