"""Per-slide tissue override tables (``slidestream tile --tissue-overrides``): what they set, and what they refuse."""

from __future__ import annotations

import pytest
from slidestream.errors import ConfigError
from slidestream.pipeline.tissue_overrides import (
    OVERRIDE_COLUMNS,
    read_tissue_overrides,
)
from slidestream.tiling.grid import TilingParams
from slidestream.tiling.tissue import TissueConfig

BASE = TilingParams(mpp=0.5, tile_size=224, min_tissue=0.4)
TISSUE = TissueConfig(close_um=20.0)


def _table(tmp_path, text: str):
    path = tmp_path / "overrides.csv"
    path.write_text(text)
    return path


def test_rows_change_only_the_cells_they_fill(tmp_path):
    path = _table(tmp_path, "slide_id,tissue-threshold,Tissue_Closing,--pen-filter,keep_rule,min-tissue,tissue-holes,"
                            "tissue-method,tissue-blur,tissue-min-area,tissue-min-hole-area\n"
                            "a,0.1,,no,,,,,,,\n"
                            "b.svs,,64,,clam-four-pt,0.7,false,fixed,8,5000,2500\n"
                            ",,,,,,,,,,\n")
    rows = read_tissue_overrides(path, BASE, TISSUE)
    assert set(rows) == {"a", "b.svs", "b"} and rows["b"] is rows["b.svs"]
    a, b = rows["a"], rows["b"]
    assert a.tissue == TissueConfig(close_um=20.0, min_saturation=0.1, pen_filter=False) and a.params == BASE
    assert a.overrides == {"tissue-threshold": "0.1", "pen-filter": "no"}
    assert b.tissue == TissueConfig(close_um=64.0, keep_holes=False, method="fixed", blur_sigma_um=8.0,
                                    min_tissue_area_um2=5000.0, min_hole_area_um2=2500.0)
    assert b.params == TilingParams(mpp=0.5, tile_size=224, min_tissue=0.7, keep_rule="clam-four-pt")
    # every column the table accepts maps to a real setting
    for target, name, _ in OVERRIDE_COLUMNS.values():
        assert hasattr(TissueConfig() if target == "tissue" else BASE, name)


@pytest.mark.parametrize("text, message", [
    ("slide,tissue-threshold\na,0.1\n", "needs a 'slide_id' column"),
    ("slide_id,sthresh,close\na,8,4\n",
     r"unknown column\(s\) 'sthresh', 'close'; the columns .* are slide_id, tissue-method"),
    ("slide_id,tissue-threshold\na,0.1\nb,high\n",
     r"line 3 \(slide b\), column tissue-threshold: 'high' is not a number"),
    ("slide_id,tissue-threshold\na,1.5\n", r"line 2 \(slide a\): tissue min_saturation must be in \[0, 1\]"),
    ("slide_id,pen-filter\na,maybe\n", r"line 2 \(slide a\), column pen-filter: 'maybe' is not true/false"),
    ("slide_id,keep-rule\na,four_pt\n", r"line 2 \(slide a\): keep rule must be one of"),
    ("slide_id,tissue-method\na,triangle\n", r"line 2 \(slide a\): tissue method must be one of otsu, fixed"),
    ("slide_id,min-tissue\nx.svs,0.2\nx,0.3\n", r"line 3 \(slide x\): slide x already has a row \(line 2\)"),
    ("slide_id,min-tissue\n,0.2\n", "line 2: empty slide_id"),
    ("slide_id,min-tissue\na,0.2,9\n", "line 2: 3 cells but the header has 2 columns"),
    ("slide_id,min_tissue,min-tissue\na,0.2,0.3\n", "column.* given twice: min-tissue"),
    ("", "empty"),
])
def test_bad_tables_are_refused_naming_the_row(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        read_tissue_overrides(_table(tmp_path, text), BASE, TISSUE)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the tissue override table"):
        read_tissue_overrides(tmp_path / "nope.csv", BASE, TISSUE)
