"""report.html: one self-contained page (nothing fetched), checked in a real headless browser."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from slidestream.pipeline.inputs import SlideInput
from slidestream.pipeline.report_html import write_report_html

HEADS = ("abmil", "mean_pool", "max_pool")
ENCODERS = ("handcrafted", "resnet50-trunc")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "srcset", "data", "action", "poster"):
                self.refs.append((tag, k, v or ""))


def _inputs(tmp_path: Path):
    test, heatmaps = [], {}
    (tmp_path / "heatmaps").mkdir()
    for i in range(4):
        sid = f"test_00{i + 1}"
        label = i % 2
        test.append(SlideInput(tmp_path / f"{sid}.tif", sid, label, "test",
                               meta={"lesion_type": ["", "micro"][label], "largest_lesion_um": "650" if label else ""}))
        png = tmp_path / "heatmaps" / f"{sid}.heatmap.png"
        if i < 3:
            Image.fromarray(np.full((300, 500, 3), (40 * i, 90, 200), np.uint8)).save(png)
        else:
            png.write_bytes(b"not a png")  # an unreadable heatmap gets a link, never a broken image
        (tmp_path / "heatmaps" / f"{sid}.geojson").write_text('{"type": "FeatureCollection", "features": []}')
        heatmaps[sid] = {"heatmap": f"heatmaps/{sid}.heatmap.png", "geojson": f"heatmaps/{sid}.geojson"}
    rng = np.random.default_rng(0)
    pairs, rows = [], []
    for e in ENCODERS:
        for h in HEADS:
            probs = rng.random(4)
            pairs.append({
                "encoder": e, "head": h, "seed": 0, "dir": f"runs/{e}/{h}/seed-0", "train_seconds": 1.5,
                "metrics": {"auc": 0.75, "ece_class1": 0.1},
                "froc": {"froc": 0.4, "defined": True},
                "curves": {"roc": {"fpr": [0, 0.5, 1], "tpr": [0, 1, 1]},
                           "reliability": {"confidence": [0.2, 0.8], "observed": [0.0, 1.0], "count": [2, 2]},
                           "froc": {"fps": [8, 2, 0.25, 0], "sensitivity": [1, 0.5, 0.5, 0]}},
                "predictions": [{"slide_id": t.slide_id, "label": t.label, "calibrated_probability": float(p)}
                                for t, p in zip(test, probs)]})
            rows.append({"encoder": e, "head": h, "seeds": 1, "auc": float(rng.random()), "auc_ci_low": 0.1,
                         "auc_ci_high": 0.99, "froc": 0.4, "balanced_accuracy": 0.6, "ece_class1": 0.1,
                         "ece_top_label": 0.12, "auc_micro": 0.7, "auc_micro_ci_low": 0.5, "auc_micro_ci_high": 0.9,
                         "auc_macro": math.nan, "auc_itc": math.nan, "n_macro": 0, "n_micro": 2, "n_itc": 0,
                         "delta_auc_vs_baseline": 0.1, "delta_auc_micro_vs_baseline": 0.2, "train_seconds": 1.5})
    rows.sort(key=lambda r: -r["auc"])
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    record = {
        "summary": "best: <script>alert(1)</script> & more", "warnings": ["test_005 has no <annotation>"],
        "config": {"encoders": list(ENCODERS), "heads": list(HEADS), "seeds": [0], "n_bootstrap": 100,
                   "bench": {"weights": "none", "folds": 2, "epochs": 3, "lr": 2e-4, "balance": "loss",
                             "froc_mpp": 0.243, "tiling": {"tile_size": 224, "mpp": 0.5}}},
        "splits": {"train": ["a", "b"], "test": [t.slide_id for t in test]},
        "excluded": {"slides": ["test_114"], "not_found": []}, "leaderboard": rows, "seconds": 12.0,
        "software": {"slidestream": "0.1", "numpy": "2"}}
    return record, pairs, heatmaps, test


def test_page_is_self_contained_and_escaped(tmp_path):
    record, pairs, heatmaps, test = _inputs(tmp_path)
    page = write_report_html(tmp_path / "report.html", record, pairs, heatmaps, test)
    text = page.read_text()
    parser = _Links()
    parser.feed(text)
    assert "link" not in parser.tags and "iframe" not in parser.tags
    for tag, attr, value in parser.refs:
        # images inline; links only to files of the output folder
        if tag == "img":
            assert value.startswith("data:image/png;base64,"), value[:40]
        else:
            assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//", value), (tag, attr, value)
            assert (tmp_path / value).resolve().is_relative_to(tmp_path.resolve())
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in text
    assert "test_005 has no &lt;annotation&gt;" in text
    assert len([t for t in parser.tags if t == "img"]) == 3 and text.count("<svg") == 6
    assert 'href="heatmaps/test_004.geojson"' in text  # the unreadable heatmap keeps its links
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_page_in_a_headless_browser(tmp_path, headless_browser):
    record, pairs, heatmaps, test = _inputs(tmp_path)
    page = write_report_html(tmp_path / "report.html", record, pairs, heatmaps, test)
    check = (
        "var imgs=document.images,bad=0;for(var i=0;i<imgs.length;i++){if(!(imgs[i].complete&&imgs[i].naturalWidth>0))"
        "bad++;}"
        "var rows=document.querySelectorAll('#leaderboard tbody tr');"
        "var heads=[].map.call(rows,function(r){return r.dataset.encoder+'/'+r.dataset.head;}).sort().join(',');"
        "var th=document.querySelectorAll('#leaderboard th')[0];th.click();"
        "var first=document.querySelector('#leaderboard tbody tr').cells[0].textContent;th.click();"
        "var after=document.querySelector('#leaderboard tbody tr').cells[0].textContent;"
        "var svg=document.querySelectorAll('svg polyline').length;"
        "var p=document.createElement('pre');p.id='check';"
        "p.textContent=['images',imgs.length,'broken',bad,'rows',rows.length,heads,'sorted',first,after,"
        "'lines',svg>0].join(' ');document.body.appendChild(p);")
    dom, console = headless_browser(page, check_js=check)
    assert console == []
    expected = ",".join(sorted(f"{e}/{h}" for e in ENCODERS for h in HEADS))
    assert f'<pre id="check">images 3 broken 0 rows 6 {expected} sorted 1 6 lines true</pre>' in dom


def test_browser_fixture_sees_console_errors_and_broken_images(tmp_path, headless_browser):
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><img src='data:image/png;base64,AAAA'>"
                   "<script>nope();</script></body></html>")
    dom, console = headless_browser(bad, check_js=(
        "var p=document.createElement('pre');p.id='check';p.textContent='w '+document.images[0].naturalWidth;"
        "document.body.appendChild(p);"))
    assert any("nope is not defined" in line for line in console)
    assert '<pre id="check">w 0</pre>' in dom


def test_page_without_heatmaps_or_froc(tmp_path):
    record, pairs, _, test = _inputs(tmp_path)
    for p in pairs:
        p["curves"]["froc"] = None
        p["froc"] = None
    text = write_report_html(tmp_path / "report.html", record, pairs, {}, test).read_text()
    assert text.count("<svg") == 4 and "<img" not in text and "lesion FROC" not in text
