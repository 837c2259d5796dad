"""``slidestream tile``: the tissue options reach the store, and --help explains each of them."""

from __future__ import annotations

from click.testing import CliRunner
from slidestream.cli.main import main
from slidestream.store import SlideStore
from slidestream.tiling.settings import TissueConfig

TISSUE_OPTIONS = ["--keep-rule", "--tissue-method", "--tissue-threshold", "--tissue-blur", "--tissue-closing",
                  "--tissue-min-area", "--tissue-min-hole-area", "--tissue-holes", "--pen-filter",
                  "--tissue-overrides", "--qc-images", "--dump-patches", "--dump-format"]


def test_help_explains_every_tissue_option_with_its_unit():
    out = CliRunner().invoke(main, ["tile", "--help"], terminal_width=200).output
    text = " ".join(out.split())
    for opt in TISSUE_OPTIONS:
        assert opt in text, opt
    for words in ("sigma in µm", "Morphological closing radius in µm", "smaller than this many µm² are dropped",
                  "smaller than this many µm² are filled", "clam-four-pt", "any-tissue", "[default: 0.05",
                  "OUT/qc/<slide_id>.jpg", "DIR/<slide_id>/<slide_id>_x<X>_y<Y>.png"):
        assert words in text, words
    # the defaults shown are the library's
    assert f"[default: {TissueConfig().min_tissue_area_um2}" in text


def test_tissue_options_are_recorded_in_the_store(cmu_slide, tmp_path):
    args = ["tile", str(cmu_slide), "--out", str(tmp_path / "out"), "--workers", "1", "--no-save-patches",
            "--keep-rule", "clam-four-pt", "--tissue-method", "fixed", "--tissue-threshold", "0.08",
            "--tissue-blur", "8", "--tissue-closing", "16", "--tissue-min-area", "5000", "--tissue-min-hole-area",
            "2000", "--no-tissue-holes", "--no-pen-filter", "--no-qc-images"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    tiling = SlideStore.open(tmp_path / "out" / "CMU-1-Small-Region.zarr").tiling
    assert tiling["keep_rule"] == "clam-four-pt"
    assert tiling["tissue"] == TissueConfig(method="fixed", min_saturation=0.08, blur_sigma_um=8.0, close_um=16.0,
                                            min_tissue_area_um2=5000.0, min_hole_area_um2=2000.0, keep_holes=False,
                                            pen_filter=False).to_dict()
    assert not (tmp_path / "out" / "qc").exists()


def test_a_bad_override_table_stops_the_command_naming_the_row(cmu_slide, tmp_path):
    table = tmp_path / "o.csv"
    table.write_text("slide_id,tissue-closing\nCMU-1-Small-Region,wide\n")
    res = CliRunner().invoke(main, ["tile", str(cmu_slide), "--out", str(tmp_path / "out"),
                                    "--tissue-overrides", str(table)])
    assert res.exit_code == 1
    assert "line 2 (slide CMU-1-Small-Region), column tissue-closing: 'wide' is not a number" in res.output
    assert not (tmp_path / "out" / "CMU-1-Small-Region.zarr").exists()
