"""Planted name collisions: slide ids that used to depend on the batch, and stores made under the old ids.

Before, ``slide ä.svs`` and ``slide ö.svs`` were both ``slide__`` (the second of a batch got a hash suffix): tiling
one of them alone after both was refused as "content changed"; which file got the suffix depended on the order.
"""

from __future__ import annotations

import json
import os
import shutil

from slidestream.wsi import slide_id_from_path


def _record(out):
    return {s["slide_id"]: s for s in json.loads((out / "run-tile.json").read_text())["slides"]}


def _umlaut_slides(tmp_path, good_slides):
    folder = tmp_path / "slides"
    folder.mkdir()
    a, b = folder / "slide ä.svs", folder / "slide ö.svs"
    shutil.copyfile(good_slides[0], a)
    shutil.copyfile(good_slides[1], b)  # other content: a merged store would be refused as "content changed"
    return a, b


def test_slides_differing_in_one_letter_are_tiled_apart_in_any_batch(good_slides, slidestream_cli, tmp_path):
    a, b = _umlaut_slides(tmp_path, good_slides)
    out = tmp_path / "stores"
    assert slidestream_cli("tile", b, a, "--out", out, "--no-save-patches").rc == 0
    both = _record(out)
    assert set(both) == {slide_id_from_path(a), slide_id_from_path(b)}
    assert all(s["status"] == "ok" for s in both.values())
    for alone in (a, b):  # each alone, after both: finds its own store, up to date
        run = slidestream_cli("tile", alone, "--out", out, "--no-save-patches")
        assert run.rc == 0, run.out
        (slide,) = _record(out).values()
        assert slide["slide_id"] == slide_id_from_path(alone) and slide["status"] == "skipped"
    assert len(list(out.glob("*.zarr"))) == 2


def test_same_names_in_two_folders_get_the_same_ids_in_either_order(good_slides, slidestream_cli, tmp_path):
    first, second = tmp_path / "site1" / "case.svs", tmp_path / "site2" / "case.svs"
    for path, src in ((first, good_slides[0]), (second, good_slides[1])):
        path.parent.mkdir()
        shutil.copyfile(src, path)
    ids = []
    for order, out in (((first, second), tmp_path / "o1"), ((second, first), tmp_path / "o2")):
        assert slidestream_cli("tile", *order, "--out", out, "--no-save-patches").rc == 0
        ids.append({s["path"]: s["slide_id"] for s in _record(out).values()})
    assert ids[0] == ids[1] and len(set(ids[0].values())) == 2
    assert all(i.startswith("case-") for i in ids[0].values())


def test_a_store_made_under_the_old_id_is_used_not_remade(good_slides, slidestream_cli, tmp_path):
    a, _ = _umlaut_slides(tmp_path, good_slides)
    out = tmp_path / "stores"
    # what an earlier version made: the store of "slide ä.svs" named by the ASCII-only id "slide__"
    manifest = tmp_path / "old.csv"
    manifest.write_text(f"slide,slide_id\n{a},slide__\n", encoding="utf-8")
    assert slidestream_cli("tile", manifest, "--out", out, "--no-save-patches").rc == 0
    store = out / "slide__.zarr"
    before = os.stat(store / "coords" / "zarr.json").st_mtime_ns  # written when the store is made
    run = slidestream_cli("tile", a, "--out", out, "--no-save-patches")
    assert run.rc == 0, run.out
    (slide,) = _record(out).values()
    assert slide["slide_id"] == "slide__" and slide["status"] == "skipped"  # found, and up to date
    assert sorted(p.name for p in out.glob("*.zarr")) == ["slide__.zarr"]
    assert os.stat(store / "coords" / "zarr.json").st_mtime_ns == before  # not rebuilt
