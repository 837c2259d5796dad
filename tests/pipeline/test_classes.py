"""Labels and classes: one parser for every command, the class order, and manifests refused at the door."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from slidestream.cli.main import main
from slidestream.errors import ConfigError
from slidestream.pipeline.classes import (ClassSet, class_set_for, parse_classes_option, parse_label,
                                          probability_columns)
from slidestream.pipeline.inputs import collect_inputs


def manifest(tmp_path, text: str, name: str = "m.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("raw, expected", [("0", 0), ("2", 2), ("1.0", 1), (" 1 ", 1), ("", None), (None, None),
                                           ("LUAD", "LUAD"), (" Tumor ", "Tumor"), ("non-small cell", "non-small cell")])
def test_labels_are_class_indices_or_names(raw, expected):
    assert parse_label(raw, "here") == expected
    assert type(parse_label(raw, "here")) is type(expected)


@pytest.mark.parametrize("raw", ["0.7", "1.9", "-1", "nan", "inf", "1e-3"])
def test_fractional_negative_and_non_finite_labels_are_refused_never_rounded(raw):
    with pytest.raises(ConfigError, match=r"m\.csv, line 3: label .* never rounded"):
        parse_label(raw, "m.csv, line 3")


@pytest.mark.parametrize("raw", ["Tumor:LUAD", "a,b", "line\nbreak"])
def test_names_qupath_or_the_option_cannot_carry_are_refused(raw):
    with pytest.raises(ConfigError, match="rename the class"):
        parse_label(raw, "m.csv, line 2")


@pytest.mark.parametrize("label", ["0.7", "1.9"])
def test_manifest_with_a_fractional_label_names_file_and_row(tmp_path, label):
    path = manifest(tmp_path, f"slide,label\na.svs,0\nb.svs,{label}\nc.svs,1\n")
    with pytest.raises(ConfigError) as info:
        collect_inputs([path])
    assert f"{path}, line 3" in str(info.value) and repr(label) in str(info.value)


def test_the_same_refusal_reaches_every_command_with_exit_status_1(tmp_path):
    path = manifest(tmp_path, "slide,label\na.svs,0\nb.svs,0.7\n")
    (tmp_path / "stores").mkdir()
    commands = [
        ["train", str(path), "--stores", str(tmp_path / "stores"), "--encoder", "e", "--out", str(tmp_path / "c")],
        ["predict", str(path), "--stores", str(tmp_path / "stores"), "--model", str(tmp_path), "--out",
         str(tmp_path / "p")],
        ["run", str(path), "--model", str(tmp_path), "--out", str(tmp_path / "r")],
        ["bench", str(path), "--out", str(tmp_path / "b")],
        ["tile", str(path), "--out", str(tmp_path / "t")],
    ]
    for args in commands:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1, (args[0], r.output)
        assert "line 3" in r.output and "never rounded" in r.output, (args[0], r.output)


@pytest.mark.parametrize("text", ["slide,label\n", "slide,label,split\n\n\n"])
def test_header_only_manifest_exits_1_with_a_message(tmp_path, text):
    path = manifest(tmp_path, text)
    with pytest.raises(ConfigError, match="no slide rows"):
        collect_inputs([path])
    for args in (["tile", str(path), "--out", str(tmp_path / "t")],
                 ["train", str(path), "--stores", str(tmp_path), "--encoder", "e", "--out", str(tmp_path / "c")]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and "no slide rows" in r.output, r.output


def test_conflicting_duplicate_rows_are_refused_naming_both(tmp_path):
    path = manifest(tmp_path, "slide,label,split\na.svs,0,train\nb.svs,1,train\na.svs,1,train\n")
    with pytest.raises(ConfigError) as info:
        collect_inputs([path])
    msg = str(info.value)
    assert "a.svs" in msg and f"{path}, line 2" in msg and f"{path}, line 4" in msg and "different label" in msg
    split = manifest(tmp_path, "slide,label,split\na.svs,0,train\na.svs,0,test\n", "s.csv")
    with pytest.raises(ConfigError, match="different split"):
        collect_inputs([split])


def test_identical_duplicate_rows_are_one_slide(tmp_path):
    path = manifest(tmp_path, "slide,label\na.svs,1\nb.svs,0\na.svs,1\n")
    assert [(it.slide_id, it.label) for it in collect_inputs([path])] == [("a", 1), ("b", 0)]


def test_two_manifests_disagreeing_on_a_slide_are_refused(tmp_path):
    one = manifest(tmp_path, "slide,label\na.svs,Tumor\n", "one.csv")
    two = manifest(tmp_path, "slide,label\na.svs,Normal\n", "two.csv")
    with pytest.raises(ConfigError) as info:
        collect_inputs([one, two])
    assert f"{one}, line 2" in str(info.value) and f"{two}, line 2" in str(info.value)
    # a folder listing a slide a manifest labels is no conflict
    (tmp_path / "a.svs").touch()
    items = collect_inputs([one, tmp_path])
    assert [(it.slide_id, it.label) for it in items] == [("a", "Tumor")]


def test_names_mixed_with_indices_are_refused(tmp_path):
    path = manifest(tmp_path, "slide,label\na.svs,LUAD\nb.svs,1\n")
    with pytest.raises(ConfigError, match="mix class names and integer indices") as info:
        collect_inputs([path])
    assert f"{path}, line 2" in str(info.value) and f"{path}, line 3" in str(info.value)
    with pytest.raises(ConfigError, match="differ only in letter case"):
        collect_inputs([manifest(tmp_path, "slide,label\na.svs,Tumor\nb.svs,tumor\n", "c.csv")])


def test_class_order_sorted_names_explicit_order_and_indices():
    labelled = [("LUSC", "r2"), ("LUAD", "r3"), ("MESO", "r4"), ("LUAD", "r5")]
    assert class_set_for(labelled).classes == ("LUAD", "LUSC", "MESO")
    assert class_set_for(labelled, "MESO, LUSC,LUAD").classes == ("MESO", "LUSC", "LUAD")
    assert class_set_for([(0, "a"), (2, "b")]).classes == (0, 1, 2)  # indices stay indices, gaps included
    assert class_set_for([(1, "a"), (0, "b")], "0,1").classes == (0, 1)
    binary = class_set_for([("Tumor", "a"), ("Normal", "b")])
    assert binary.classes == ("Normal", "Tumor") and binary.positive == "Tumor"
    assert class_set_for([("Tumor", "a"), ("Normal", "b")], "Tumor,Normal").positive == "Normal"


def test_unknown_class_against_classes_option_names_the_row():
    with pytest.raises(ConfigError, match=r"m\.csv, line 4: label 'MESO' is not one of --classes LUAD,LUSC"):
        class_set_for([("LUAD", "m.csv, line 2"), ("MESO", "m.csv, line 4")], "LUAD,LUSC")


@pytest.mark.parametrize("option, message", [("LUAD", "at least two"), ("A,B,A", "twice"), ("A,1", "mixes"),
                                             ("A,,B", "empty"), ("a,A", "letter case")])
def test_bad_classes_options_are_refused(option, message):
    with pytest.raises(ConfigError, match=message):
        parse_classes_option(option)


def test_classes_option_must_match_the_kind_of_labels():
    with pytest.raises(ConfigError, match="labels are integer indices"):
        class_set_for([(0, "a"), (1, "b")], "Normal,Tumor")
    with pytest.raises(ConfigError, match="0 … K-1"):
        class_set_for([(0, "a"), (1, "b")], "1,0")


def test_class_set_maps_labels_and_refuses_what_the_model_does_not_know():
    cs = ClassSet(("LUAD", "LUSC", "MESO"))
    assert [cs.index(c) for c in ("LUAD", "LUSC", "MESO")] == [0, 1, 2] and cs.label(2) == "MESO"
    with pytest.raises(ConfigError, match="m.csv, line 9: label 'SCLC' is not one of the classes LUAD, LUSC, MESO"):
        cs.index("SCLC", "m.csv, line 9")
    with pytest.raises(ConfigError, match="integer index"):
        cs.index(1, "m.csv, line 2")
    assert ClassSet.from_checkpoint(None, 3).classes == (0, 1, 2)


def test_probability_columns_binary_keep_their_names_and_multiclass_names_every_class():
    two = probability_columns(ClassSet(("Normal", "Tumor")), [0.3, 0.7], [0.2, 0.8], [0.05, 0.05])
    assert two == {"probability": 0.7, "calibrated_probability": 0.8, "uncertainty": 0.05}
    three = probability_columns(ClassSet(("A", "B", "C")), [0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.0, 0.1, 0.2])
    assert three["prediction"] == "B" and three["confidence"] == 0.6 and three["uncertainty"] == 0.1
    assert [k for k in three if k.startswith(("prob_", "calibrated_prob_"))] == [
        "prob_A", "prob_B", "prob_C", "calibrated_prob_A", "calibrated_prob_B", "calibrated_prob_C"]
