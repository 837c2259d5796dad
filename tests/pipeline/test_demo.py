"""The demo on the CAMELYON16-like preset: a leaderboard of attention against mean pooling, read in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from slidestream.cli.main import main
from slidestream.errors import ConfigError
from slidestream.pipeline.demo import DemoConfig, run_demo


def test_demo_refuses_an_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="demo preset"):
        run_demo(tmp_path, DemoConfig(preset="camelyon17"))


@pytest.mark.slow
def test_demo_on_the_camelyon16_preset(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--slides", "16"])
    assert r.exit_code == 0, r.output
    record = json.loads((out / "bench.json").read_text())
    heads = {row["head"] for row in record["leaderboard"]}
    assert heads == {"abmil", "mean_pool"}
    assert record["summary"] in r.output and record["summary"].startswith("best: handcrafted + ")
    assert (out / "slides" / "testing" / "reference.csv").is_file() and (out / "report.html").is_file()
    listed = [line.strip() for line in r.output.split("outputs:")[1].splitlines() if line.startswith("  ")]
    assert listed and all(Path(p).exists() for p in listed)
    # a rerun finds everything done
    again = CliRunner().invoke(main, ["demo", "--out", str(out), "--slides", "16"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "bench.json").read_text())["computed"] == []
