"""Manifests: the patient column."""

from __future__ import annotations

from slidestream.pipeline.inputs import MANIFEST_COLUMNS, collect_inputs


def test_manifest_patient_column_is_read_and_not_metadata(tmp_path):
    (tmp_path / "m.csv").write_text("slide,label,patient,site\na.svs,1,P7,x\nb.svs,0, ,y\nc.svs,0,P7,x\n")
    items = collect_inputs([tmp_path / "m.csv"])
    assert [it.patient for it in items] == ["P7", None, "P7"]
    assert all("patient" not in it.meta for it in items) and items[0].meta == {"site": "x"}
    assert "patient" in MANIFEST_COLUMNS
    assert collect_inputs([tmp_path / "a.svs"])[0].patient is None


def test_a_folder_scan_skips_the_tools_own_outputs(tmp_path):
    from slidestream.pipeline.inputs import collect_inputs

    (tmp_path / "a.svs").write_bytes(b"x")
    (tmp_path / "notes.png").write_bytes(b"x")  # a user's image: a slide candidate as before
    (tmp_path / "a.heatmap.png").write_bytes(b"x")
    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / "a.jpg").write_bytes(b"x")
    (tmp_path / "run-tile.json").write_text("{}")
    (tmp_path / "tiles" / "a").mkdir(parents=True)
    (tmp_path / "tiles" / "a" / "a_x256_y512.png").write_bytes(b"x")
    assert sorted(it.path.name for it in collect_inputs([tmp_path])) == ["a.svs", "notes.png"]
