"""Batch inputs: the patient column, the tool's own outputs skipped by folder scans, slide ids that depend on the file alone, collisions told apart in any order, stores found again
under the ids of earlier versions."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from slidestream.errors import ConfigError
from slidestream.pipeline.inputs import MANIFEST_COLUMNS, adopt_existing_stores, collect_inputs
from slidestream.store import SlideStore, identity_dict, identity_of
from slidestream.wsi import file_fingerprint, slide_id_from_path


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



def _files(tmp_path, names):
    out = []
    for name in names:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(name.encode())  # different content per file
        out.append(p)
    return out


def _ids(items):
    return {it.path.resolve(): it.slide_id for it in items}


def test_ids_do_not_depend_on_batch_order(tmp_path):
    files = _files(tmp_path, ["a/slide.svs", "b/slide.svs", "c/Slide.tif", "slide ä.svs", "slide ö.svs", "x.svs"])
    seen = None
    for order in itertools.permutations(files):
        ids = _ids(collect_inputs(list(order)))
        assert len(set(ids.values())) == len(files)  # never merged
        assert seen is None or ids == seen
        seen = ids
    # same name in two folders, and a name differing only in case (one file on macOS/Windows): all hashed
    assert {seen[f.resolve()].rsplit("-", 1)[0] for f in files[:3]} == {"slide", "Slide"}
    assert all(len(seen[f.resolve()].rsplit("-", 1)[1]) == 6 for f in files[:3])
    # names that no other file shares keep the id the file alone gets
    for f in files[3:]:
        assert seen[f.resolve()] == slide_id_from_path(f)
        assert collect_inputs([f])[0].slide_id == seen[f.resolve()]


def test_a_file_alone_gets_its_own_id(tmp_path):
    a, b = _files(tmp_path, ["slide ä.svs", "slide ö.svs"])
    alone_a, alone_b = collect_inputs([a])[0].slide_id, collect_inputs([b])[0].slide_id
    together = _ids(collect_inputs([tmp_path]))
    assert alone_a != alone_b and together == {a.resolve(): alone_a, b.resolve(): alone_b}


def test_manifest_ids_are_kept_and_must_be_unique(tmp_path):
    _files(tmp_path, ["a/slide.svs", "b/slide.svs"])
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,slide_id\na/slide.svs,slide\nb/slide.svs,\n")
    by_path = _ids(collect_inputs([manifest]))
    assert by_path[(tmp_path / "a/slide.svs").resolve()] == "slide"  # given: kept
    assert by_path[(tmp_path / "b/slide.svs").resolve()].startswith("slide-")
    manifest.write_text("slide,slide_id\na/slide.svs,same\nb/slide.svs,same\n")
    with pytest.raises(ConfigError, match="given to several files"):
        collect_inputs([manifest])
    manifest.write_text("slide,slide_id\na/slide.svs,Schnitt_ä\n")  # Unicode letters are safe
    assert collect_inputs([manifest])[0].slide_id == "Schnitt_ä"


def _old_store(out_dir, slide_id, slide_path):
    ident = identity_of(slide_path, file_fingerprint(slide_path))
    return SlideStore.create(out_dir / f"{slide_id}.zarr", coords=np.zeros((0, 2)), tissue=np.zeros(0),
                             slide=identity_dict(ident), tiling={}, tile_size=None)


def test_stores_under_old_ids_are_adopted_when_they_record_the_file(tmp_path):
    a, b, c = _files(tmp_path / "slides", ["slide ä.svs", "slide ö.svs", "plain.svs"])
    out = tmp_path / "out"
    # the earlier version named the first "slide__" and the second, colliding, "slide__-<hash of its path>"
    second = "slide__-" + hashlib.blake2b(str(b.resolve()).encode(), digest_size=3).hexdigest()
    _old_store(out, "slide__", a)
    _old_store(out, second, b)
    items = collect_inputs([c, b, a])
    adopt_existing_stores(items, out)
    assert [it.slide_id for it in items] == ["plain", second, "slide__"]
    # only a store that records the file is adopted: a's old store does not take b
    items = collect_inputs([b])
    (out / f"{second}.zarr").rename(tmp_path / "elsewhere.zarr")
    adopt_existing_stores(items, out)
    assert items[0].slide_id == slide_id_from_path(b)


def test_a_store_of_other_content_is_not_adopted(tmp_path):
    (a,) = _files(tmp_path / "slides", ["slide ä.svs"])
    out = tmp_path / "out"
    _old_store(out, "slide__", a)
    a.write_bytes(b"changed content")  # the slide file changed since
    items = collect_inputs([a])
    adopt_existing_stores(items, out)
    assert items[0].slide_id == slide_id_from_path(a)


def test_a_new_store_wins_over_an_old_one(tmp_path):
    (a,) = _files(tmp_path / "slides", ["slide ä.svs"])
    out = tmp_path / "out"
    _old_store(out, "slide__", a)
    _old_store(out, slide_id_from_path(a), a)
    items = collect_inputs([a])
    adopt_existing_stores(items, out)
    assert items[0].slide_id == slide_id_from_path(a)
