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
