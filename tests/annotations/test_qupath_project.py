"""QuPath project files: the JSON QuPath 0.4 – 0.7 loads, and the Groovy import script's mapping.

The ``check_qpproj`` fixture (tests/conftest.py) is the format as QuPath's ``DefaultProject.loadProject`` /
``DefaultImageServerBuilder`` read it (0.4.4, 0.5.1, 0.6.0): what makes a project fail to load, or an image fail
to open, is an error there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import pytest

from slidestream.annotations.qupath_project import (OPENSLIDE_PROVIDER, ProjectImage, build_project, file_uri,
                                                    groovy_string, import_script, read_project, write_project)
from slidestream.errors import ConfigError

@pytest.fixture
def awkward_slides(tmp_path, cmu_slide):
    """The real CMU slide under names QuPath users have: spaces, non-ASCII letters, URI-special characters."""
    folder = tmp_path / "slides with spaces" / "Gewebe ü"
    folder.mkdir(parents=True)
    paths = [folder / "CMU 1 #a.svs", folder / "słajd 100%;ä.svs"]
    for p in paths:
        shutil.copyfile(cmu_slide, p)
    return paths


def test_project_follows_qupaths_format_and_points_at_the_slides(tmp_path, awkward_slides, check_qpproj):
    images = [ProjectImage(path=p, name=p.name, provider=OPENSLIDE_PROVIDER, metadata={"slidestream.slide_id": "x"})
              for p in awkward_slides]
    path, ids = write_project(tmp_path / "proj", images)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert check_qpproj(data, path) == []
    assert ids == ["1", "2"] and data["lastID"] == 2
    for entry, slide in zip(data["images"], awkward_slides):
        uri = entry["serverBuilder"]["uri"]
        assert " " not in uri and all(ord(c) < 128 for c in uri)
        assert Path(url2pathname(unquote(urlparse(uri).path))) == slide.resolve()
        assert entry["imageName"] == slide.name and entry["metadata"] == {"slidestream.slide_id": "x"}
    # what QuPath writes: UTF-8 JSON; the non-ASCII image names survive as text
    assert "słajd 100%;ä.svs" in path.read_text(encoding="utf-8")


def test_checker_catches_what_breaks_qupath(tmp_path, awkward_slides, check_qpproj):
    project = tmp_path / "project.qpproj"
    data, _ = build_project([ProjectImage(path=awkward_slides[0], name="a")], project)
    assert check_qpproj(data, project) == []
    bad = json.loads(json.dumps(data))
    del bad["createTimestamp"]
    bad["images"][0]["serverBuilder"]["uri"] = "file://" + str(awkward_slides[0])  # unencoded space
    del bad["images"][0]["metadata"]
    bad["images"][0]["serverBuilder"]["args"] = None
    problems = " | ".join(check_qpproj(bad, project))
    for what in ("createTimestamp", "percent-encoded", "metadata must be", "args must be"):
        assert what in problems


def test_existing_project_keeps_its_entries_and_gets_new_ones(tmp_path, awkward_slides):
    folder = tmp_path / "proj"
    first, second = awkward_slides
    path, ids = write_project(folder, [ProjectImage(path=first, name=first.name)])
    data = read_project(folder)
    # what QuPath adds once it has opened the image: metadata of its own, a builder with server metadata
    data["images"][0]["metadata"]["Scanner"] = "AT2"
    data["images"][0]["serverBuilder"]["metadata"] = {"width": 2220}
    data["lastID"] = 7
    path.write_text(json.dumps(data), encoding="utf-8")
    before = path.read_bytes()
    path, ids = write_project(folder, [ProjectImage(path=second, name=second.name),
                                       ProjectImage(path=first, name=first.name, metadata={"slidestream.slide_id": "a"})])
    assert ids == ["8", "1"]
    new = read_project(path)
    kept = new["images"][0]
    assert kept["entryID"] == 1 and kept["serverBuilder"]["metadata"] == {"width": 2220}
    assert kept["metadata"] == {"Scanner": "AT2", "slidestream.slide_id": "a"}
    assert new["lastID"] == 8 and new["createTimestamp"] == data["createTimestamp"]
    assert (folder / "project.qpproj.backup").read_bytes() == before
    with pytest.raises(ConfigError, match="given twice"):
        build_project([ProjectImage(path=first, name="a"), ProjectImage(path=first, name="b")], path)
    with pytest.raises(ConfigError, match="not found"):
        build_project([ProjectImage(path=tmp_path / "gone.svs", name="gone")], path)


def test_unreadable_existing_project_is_refused(tmp_path):
    (tmp_path / "project.qpproj").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read it as a QuPath project"):
        read_project(tmp_path)


def test_groovy_strings_round_trip(parse_groovy_imports):
    texts = ["plain", "it's", "C:\\slides\\a.svs", "tab\there", "new\nline", "$notAVariable ${x}", "ü ł 漢"]
    for text in texts:
        lit = groovy_string(text)
        assert "\n" not in lit and lit.startswith("'") and lit.endswith("'")
    script = import_script([(str(i), t, [t]) for i, t in enumerate(texts)])
    assert parse_groovy_imports(script) == {str(i): (t, [t]) for i, t in enumerate(texts)}


def test_script_lists_every_images_files(parse_groovy_imports):
    imports = [("1", "CMU 1 #a.svs", ["slidestream/a/a.tissue.geojson", "/abs/dir/it's a.geojson"]),
               ("12", "słajd.svs", ["x.points.geojson.gz"])]
    script = import_script(imports)
    assert parse_groovy_imports(script) == {eid: (name, list(files)) for eid, name, files in imports}
    assert "def IMPORTS = [\n" in script and "PathIO.readObjects" in script and "addObjects" in script
    # QuPath 0.4 needs getViewers, 0.5+ getAllViewers; 0.6+ closes ImageData, 0.4/0.5 the server
    assert "getAllViewers" in script and "getViewers()" in script and "respondsTo(imageData, 'close')" in script
    assert "Date.format" not in script  # groovy-dateutil is not bundled with QuPath
    empty = import_script([])
    assert "def IMPORTS = [:]" in empty and parse_groovy_imports(empty) == {}


def test_file_uri_is_absolute_and_encoded(tmp_path):
    p = tmp_path / "a b" / "ä#.svs"
    uri = file_uri(p)
    assert uri.startswith("file:///") and "%20" in uri and "%C3%A4" in uri and "%23" in uri
