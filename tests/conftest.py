"""Shared fixtures: where the shared test data lives, and how its absence is handled."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import pytest

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("SLIDESTREAM_SHARED_DATA")
    return Path(env) if env else _PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips (or fails under SLIDESTREAM_REQUIRE_SHARED_DATA=1) when absent."""
    path = _shared_data_dir()
    if not (path / "README.md").is_file():
        msg = f"shared test data not found at {path} (set SLIDESTREAM_SHARED_DATA)"
        if os.environ.get("SLIDESTREAM_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def slides_dir(shared_data: Path) -> Path:
    return shared_data / "slides"


@pytest.fixture(scope="session")
def cmu_slide(slides_dir: Path) -> Path:
    return slides_dir / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    the test machines are small and shared, small models run fastest on one thread, and OpenMP threads would spin
    against other jobs. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# ---------------------------------------------------------------------------------------------------------------
# QuPath projects: the project format as QuPath 0.4 - 0.7 reads it, and the generated import script's mapping
# (used by tests/annotations/test_qupath_project.py and tests/pipeline/test_qupath_project.py)

_QUPATH_PROVIDERS = {"qupath.lib.images.servers.openslide.OpenslideServerBuilder",
                     "qupath.lib.images.servers.bioformats.BioFormatsServerBuilder"}
# RFC 3986 characters a java.net.URI accepts unescaped in a path; anything else must be %XX
_URI_PATH = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")


def _check_qpproj(data: dict, project_file: Path) -> list[str]:
    """Every rule of QuPath's project reader that our file could break; an empty list means it loads."""
    errors = []
    for key in ("createTimestamp", "modifyTimestamp"):  # getAsLong() on a missing key: NPE, project not loaded
        if not isinstance(data.get(key), int) or data[key] <= 0:
            errors.append(f"{key} must be epoch milliseconds (long)")
    if "version" not in data and "lastID" not in data:
        errors.append("needs version or lastID")
    if data.get("version") in ("v0.2.0-m1", "v0.2.0-m2"):
        errors.append("refused version")
    if data.get("uri") != project_file.resolve().as_uri():
        errors.append("uri must be the project file's own URI")
    images = data.get("images")
    if not isinstance(images, list):
        return errors + ["images must be a list"]
    ids = []
    for i, e in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(e.get("entryID"), int) or e["entryID"] < 1:
            errors.append(f"{where}: entryID must be a long >= 1")
        ids.append(e.get("entryID"))
        try:
            uuid.UUID(e.get("randomizedName", ""))
        except (ValueError, TypeError, AttributeError):
            errors.append(f"{where}: randomizedName must be a UUID")
        if not isinstance(e.get("imageName"), str) or not e["imageName"]:
            errors.append(f"{where}: imageName must be a non-empty string")
        meta = e.get("metadata")  # 0.4/0.5 copy it without a null check
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            errors.append(f"{where}: metadata must be a map of strings")
        if "description" in e and not isinstance(e["description"], str):
            errors.append(f"{where}: description must be a string")
        if "tags" in e and not (isinstance(e["tags"], list) and all(isinstance(t, str) for t in e["tags"])):
            errors.append(f"{where}: tags must be a list of strings")
        b = e.get("serverBuilder")
        if not isinstance(b, dict) or b.get("builderType") != "uri":
            errors.append(f"{where}: serverBuilder.builderType must be 'uri'")
            continue
        if "providerClassName" in b and b["providerClassName"] not in _QUPATH_PROVIDERS:
            errors.append(f"{where}: unknown reader {b['providerClassName']}")
        if not isinstance(b.get("args"), list) or not all(isinstance(a, str) for a in b["args"]):
            errors.append(f"{where}: args must be an array of strings")  # null args: NPE in both readers
        elif b.get("providerClassName") is None and "--no-crop" in b["args"]:
            errors.append(f"{where}: --no-crop is an OpenSlide-only argument")
        if "metadata" in b:
            errors.append(f"{where}: serverBuilder.metadata would override the slide's own")
        uri = b.get("uri", "")
        parsed = urlparse(uri)
        if parsed.scheme != "file" or not parsed.path.startswith("/") or not _URI_PATH.match(parsed.path):
            errors.append(f"{where}: {uri!r} is not an absolute, percent-encoded file URI")
            continue
        if not Path(url2pathname(unquote(parsed.path))).is_file():
            errors.append(f"{where}: {uri} points at no file")
    if len(set(ids)) != len(ids):
        errors.append("entryIDs must be unique")
    if ids and not (isinstance(data.get("lastID"), int) and data["lastID"] >= max(i for i in ids if isinstance(i, int))):
        errors.append("lastID must be at least the largest entryID")
    return errors


def _groovy_unquote(literal: str) -> str:
    assert literal[0] == literal[-1] == "'"
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\":
            if body[i + 1] == "u":
                out.append(chr(int(body[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(body[i + 1])
            i += 2
            continue
        assert body[i] != "'", "unescaped quote ends the literal early"
        out.append(body[i])
        i += 1
    return "".join(out)


_LITERAL = r"'(?:[^'\\]|\\.)*'"
_LINE = re.compile(rf"^    ({_LITERAL}): \[name: ({_LITERAL}), files: \[((?:{_LITERAL}(?:, )?)*)\]\],$")


def _parse_imports(script: str) -> dict[str, tuple[str, list[str]]]:
    """The ``IMPORTS`` map of a generated script: entry ID → (image name, files)."""
    out = {}
    for line in script.splitlines():
        m = _LINE.match(line)
        if m:
            files = [_groovy_unquote(f) for f in re.findall(_LITERAL, m.group(3))]
            out[_groovy_unquote(m.group(1))] = (_groovy_unquote(m.group(2)), files)
    return out


@pytest.fixture(scope="session")
def check_qpproj():
    """``check(project_dict, project_file) -> list of problems``: what would stop QuPath loading the project or
    opening an image (read from QuPath's ``DefaultProject`` and ``DefaultImageServerBuilder``, 0.4.4 – 0.6.0)."""
    return _check_qpproj


@pytest.fixture(scope="session")
def parse_groovy_imports():
    """``parse(script) -> {entry_id: (image_name, files)}``: the ``IMPORTS`` map of a generated import script."""
    return _parse_imports




def _tiff_bytes(ifds: list[dict], *, bigtiff: bool, data: bytes) -> bytes:
    """A TIFF whose directories hold exactly ``ifds`` (tag -> (struct code, values)), ``data`` at byte 16."""
    import struct

    types = {"B": 1, "H": 3, "I": 4, "Q": 16, "R": 5}  # R: RATIONAL, given as [numerator, denominator, ...]
    o, inline = "<", 8 if bigtiff else 4
    buf = bytearray(16) + data
    buf += b"\0" * (-len(buf) % 8)
    starts = []
    for ifd in ifds:
        starts.append(len(buf))
        entries = sorted(ifd.items())
        size = (8 + len(entries) * 20 + 8) if bigtiff else (2 + len(entries) * 12 + 4)
        extra, body = bytearray(), bytearray(struct.pack(o + ("Q" if bigtiff else "H"), len(entries)))
        for tag, (code, values) in entries:
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            raw = struct.pack(o + code.replace("R", "I") * len(values), *values)
            count = len(values) // 2 if code == "R" else len(values)
            if len(raw) <= inline:
                value = raw.ljust(inline, b"\0")
            else:
                value = struct.pack(o + ("Q" if bigtiff else "I"), len(buf) + size + len(extra))
                extra += raw + b"\0" * (len(raw) % 2)
            head = struct.pack(o + ("HHQ" if bigtiff else "HHI"), tag, types[code], count)
            body += head + value
        body += b"\0" * (8 if bigtiff else 4)
        buf += body + extra
        buf += b"\0" * (-len(buf) % 8)
    for k, start in enumerate(starts):
        nxt = starts[k + 1] if k + 1 < len(starts) else 0
        (n,) = struct.unpack_from(o + ("Q" if bigtiff else "H"), buf, start)
        struct.pack_into(o + ("Q" if bigtiff else "I"), buf, start + (8 + n * 20 if bigtiff else 2 + n * 12), nxt)
    if bigtiff:
        struct.pack_into(o + "2sHHHQ", buf, 0, b"II", 43, 8, 0, starts[0])
    else:
        struct.pack_into(o + "2sHI", buf, 0, b"II", 42, starts[0])
    return bytes(buf)


def _image_ifd(width: int, height: int, *, tile: tuple[int, int] | None = None, rows_per_strip: int | None = None,
               compression: int = 1, data_len: int = 8, big: bool = False, extra: dict | None = None) -> dict:
    """Directory of an RGB image whose every tile or strip points at the ``data_len`` bytes at byte 16."""
    offsets = "Q" if big else "I"
    ifd = {256: ("I", width), 257: ("I", height), 258: ("H", [8, 8, 8]), 259: ("H", compression),
           262: ("H", 2), 277: ("H", 3), 284: ("H", 1)}
    if tile is not None:
        n = -(-width // tile[0]) * -(-height // tile[1])
        ifd.update({322: ("I", tile[0]), 323: ("I", tile[1]), 324: (offsets, [16] * n), 325: (offsets, [data_len] * n)})
    else:
        rows = rows_per_strip or height
        n = -(-height // rows)
        ifd.update({278: ("I", rows), 273: (offsets, [16] * n), 279: (offsets, [data_len] * n)})
    ifd.update(extra or {})
    return ifd


@pytest.fixture(scope="session")
def hostile_tiff():
    """``hostile_tiff(path, images, bigtiff=False, data=...)``: write a tiny TIFF whose directories claim what
    ``images`` says, each a dict of ``width``, ``height`` and optionally ``tile`` (w, h), ``rows_per_strip``,
    ``compression``, ``extra`` (more tags); every tile or strip points at ``data`` (default 8 white bytes; pass a
    zlib stream with ``compression=8`` for a Deflate bomb). Returns ``path``."""

    def write(path: Path, images: list[dict], *, bigtiff: bool = False, data: bytes = b"\xff" * 8) -> Path:
        ifds = [_image_ifd(**{"data_len": len(data), "big": bigtiff, **image}) for image in images]
        Path(path).write_bytes(_tiff_bytes(ifds, bigtiff=bigtiff, data=data))
        return Path(path)

    return write


# ---------------------------------------------------------------------------------------------------------------
# CAMELYON16 layouts and the headless browser (tests/pipeline/test_camelyon.py, test_leaderboard.py,
# test_report_html.py)

def _write_mask_pyramid(path: Path, tumour) -> Path:
    """An official-style evaluation mask: 255 on tumour, a tiled pyramid halving down to level 5."""
    import numpy as np
    import tifffile

    level = np.where(tumour, 255, 0).astype(np.uint8)
    with tifffile.TiffWriter(path) as tw:
        for i in range(6):
            tw.write(level, tile=(16, 16), compression="deflate", subfiletype=0 if i == 0 else 1,
                     photometric="minisblack")
            level = level[::2, ::2]
    return path


def _build_camelyon(root: Path) -> Path:
    """A small CAMELYON16 folder with the real release's quirks: lesion annotations only inside
    ``lesion_annotations.zip`` (with a macOS fork), an official evaluation mask for one test slide, a
    ``reference.csv`` with mixed letter case and extra columns, a tumour test slide without any ground truth
    (test_005) and a slide with a label problem (test_114)."""
    import dataclasses
    import zipfile

    from slidestream.evaluation.froc import rasterize_tumor
    from slidestream.synth import SynthConfig, write_synthetic_slide

    cfg = SynthConfig(width=3072, height=3072, mpp=0.5, tumor_diameter_um=(400.0, 900.0))
    for d in ("training/normal", "training/tumor", "testing/images", "testing/evaluation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    train_xml, test_xml = {}, {}
    plan = [("training/normal", f"normal_00{i}", False) for i in range(1, 5)]
    plan += [("training/tumor", f"tumor_00{i}", True) for i in range(1, 5)]
    tests = {"test_001": True, "test_002": False, "test_003": True, "test_004": False, "test_005": True,
             "test_006": False, "test_114": True}
    plan += [("testing/images", name, tumour) for name, tumour in tests.items()]
    for k, (folder, name, tumour) in enumerate(plan):
        s = write_synthetic_slide(root / folder / f"{name}.svs", dataclasses.replace(cfg, seed=100 + k, tumor=tumour),
                                  annotation_dir=root / "scratch")
        if s.xml_path is not None:
            (train_xml if folder.startswith("training") else test_xml)[name] = s.xml_path.read_bytes()
        if name == "test_003":
            _write_mask_pyramid(root / "testing/evaluation" / "Test_003_Mask.tif",
                                rasterize_tumor(s.tumors, (s.width, s.height), level=0))
    for p in (root / "scratch").iterdir():
        p.unlink()
    (root / "scratch").rmdir()
    with zipfile.ZipFile(root / "training" / "lesion_annotations.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in train_xml.items():
            z.writestr(f"lesion_annotations/{name}.xml", data)
    with zipfile.ZipFile(root / "testing" / "lesion_annotations.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Test_001.xml", test_xml["test_001"])
        z.writestr("__MACOSX/._Test_001.xml", b"\0\5\26\7 not xml")
        z.writestr("test_114.xml", test_xml["test_114"])
    (root / "testing" / "reference.csv").write_text(
        "Test_001,Tumor,Macro,2134,extra\ntest_002,Normal,,,\ntest_003,Tumor,Micro,650\ntest_004,Normal\n"
        "test_005,Tumor,ITC,150\ntest_006,Normal,,\ntest_114,Tumor,Micro,\n")
    return root


@pytest.fixture(scope="session")
def camelyon_folder(tmp_path_factory) -> Path:
    """A small CAMELYON16-layout folder with the real data's quirks (see ``_build_camelyon``); read-only."""
    return _build_camelyon(tmp_path_factory.mktemp("camelyon16"))


def _browser() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def headless_browser(tmp_path_factory):
    """``load(html_path, check_js=None) -> (dom, console)``: open a page in headless Chromium, offline, and return
    its DOM after load (``check_js``, when given, runs on the load event and may write into the DOM) and every
    console message it logged. Skips when no Chromium is installed, fails under SLIDESTREAM_REQUIRE_BROWSER=1."""
    import subprocess

    exe = _browser()
    if exe is None:
        msg = "no chromium on PATH (apt-get install chromium)"
        if os.environ.get("SLIDESTREAM_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)

    def load(page: Path, check_js: str | None = None) -> tuple[str, list[str]]:
        page = Path(page)
        target = page
        if check_js is not None:
            # a copy next to the page (same relative links) with the check appended
            target = page.with_name(f".check-{page.name}")
            text = page.read_text(encoding="utf-8")
            hook = f"<script>window.addEventListener('load', function () {{ {check_js} }});</script>"
            target.write_text(text.replace("</body>", hook + "</body>"), encoding="utf-8")
        profile = tmp_path_factory.mktemp("chromium-profile")
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
               "--dump-dom", target.resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        finally:
            if target != page:
                target.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise AssertionError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
        console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
        return proc.stdout, console

    return load
