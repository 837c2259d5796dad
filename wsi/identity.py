"""What identifies a slide: its id in file names (``<slide_id>.zarr``) and a cheap fingerprint of its content."""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

__all__ = ["MAX_ID_BYTES", "file_fingerprint", "legacy_slide_id", "slide_id_from_path"]

# Bytes hashed at each end of the file by file_fingerprint: headers and directories of TIFF-like formats sit at
# the start or the end, so an edit, re-export or truncation almost always changes one of them.
_FINGERPRINT_CHUNK = 1 << 20

# Old ids (before Unicode letters were kept): still computed to find stores made under them.
_LEGACY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LEGACY_MAX_LENGTH = 200

#: Most UTF-8 bytes of an id, its hash suffix included: ``<id>.tissue.geojson`` and the hidden temporary names
#: of atomic writes (``.<name>.<pid>-<8 hex>.tmp``) then stay within the 255 bytes every file system allows.
MAX_ID_BYTES = 180

# Windows refuses these as file names whatever the extension ("CON.zarr" included), in any case.
_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"{p}{d}" for p in ("COM", "LPT") for d in "0123456789¹²³")})
_KEPT_PUNCTUATION = frozenset("._-")


def _safe_char(ch: str) -> bool:
    # Letters and digits of any script, and the combining marks some scripts need, are safe in file names on
    # Linux, macOS and Windows; every symbol, space, control or format character (e.g. U+202E) is not.
    return ch in _KEPT_PUNCTUATION or unicodedata.category(ch)[0] in "LNM"


def _name_hash(name: str) -> str:
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def slide_id_from_path(path: str | os.PathLike) -> str:
    """Identifier of a slide for file names (``<slide_id>.zarr``): a function of the file's name alone.

    The name without its extension, NFC-normalised, with every character that is not a letter, digit (any
    script), ``.``, ``_`` or ``-`` replaced by ``_``; a leading ``.`` becomes ``_`` (never hidden, never
    ``.``/``..``), and so does a trailing one; Windows device names (``CON``, ``COM1`` …) get a leading ``_``.
    Whenever the result differs from the (NFC) name, ``-`` and 8 hex digits of a hash of the whole file name are
    appended, so two different names never share an id whichever batch they are in (``slide ä`` and ``slide ö``
    give ``slide_ä-…`` and ``slide_ö-…``). Ids longer than :data:`MAX_ID_BYTES` UTF-8 bytes are cut and hashed
    the same way. Directory parts are dropped, so ``"../x.svs"`` gives ``"x"`` and cannot escape an output folder.

    Parameters
    ----------
    path : str or os.PathLike
        Slide path; only the last component is used.

    Returns
    -------
    str
        Non-empty, at most :data:`MAX_ID_BYTES` bytes of UTF-8, safe as a file name on Linux, macOS and Windows.
        Files with the same name in different folders (or differing only in extension) get the same id:
        :func:`slidestream.pipeline.inputs.collect_inputs` tells them apart.

    Examples
    --------
    >>> slide_id_from_path("/data/TCGA-01.svs")
    'TCGA-01'
    >>> slide_id_from_path("/data/Schnitt ä.svs")
    'Schnitt_ä-0a5aba9a'
    """
    name = unicodedata.normalize("NFC", Path(os.fspath(path)).name)
    stem = Path(name).stem if name not in ("", ".", "..") else name
    slide_id = "".join(ch if _safe_char(ch) else "_" for ch in stem)
    if slide_id.startswith("."):
        slide_id = "_" + slide_id[1:]
    if slide_id.endswith("."):  # Windows drops trailing dots
        slide_id = slide_id[:-1] + "_"
    if slide_id.split(".")[0].upper() in _RESERVED:
        slide_id = "_" + slide_id
    if not slide_id:
        slide_id = "slide"
    if slide_id != stem or len(slide_id.encode("utf-8")) > MAX_ID_BYTES:
        room = MAX_ID_BYTES - 9
        while len(slide_id.encode("utf-8")) > room:
            slide_id = slide_id[: max(1, len(slide_id) - (len(slide_id.encode("utf-8")) - room + 3) // 4)]
        slide_id = f"{slide_id}-{_name_hash(name)}"
    return slide_id


def legacy_slide_id(path: str | os.PathLike) -> str:
    """The id slidestream gave a slide before ids kept Unicode letters (ASCII only, everything else ``_``):
    used to find stores made under it."""
    name = Path(os.fspath(path)).name
    stem = Path(name).stem if name not in ("", ".", "..") else name
    slide_id = _LEGACY_UNSAFE.sub("_", stem)
    if slide_id.startswith("."):
        slide_id = "_" + slide_id[1:]
    if not slide_id:
        slide_id = "slide"
    if len(slide_id) > _LEGACY_MAX_LENGTH:
        digest = hashlib.blake2b(stem.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
        slide_id = f"{slide_id[:_LEGACY_MAX_LENGTH]}-{digest}"
    return slide_id


def file_fingerprint(path: str | os.PathLike) -> str:
    """Cheap content fingerprint of a file: BLAKE2b of its size and its first and last MiB.

    Reads at most 2 MiB, so it is fast on slides of any size. It detects re-exports, truncation and edits of
    headers/directories; a change confined to the middle of a large file goes unnoticed. For multi-file formats
    (MIRAX ``.mrxs`` + data folder, DICOM series) only the given file is hashed.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        32 lowercase hex digits.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        digest = hashlib.blake2b(digest_size=16)
        digest.update(size.to_bytes(8, "little"))
        digest.update(fh.read(_FINGERPRINT_CHUNK))
        if size > _FINGERPRINT_CHUNK:
            fh.seek(max(_FINGERPRINT_CHUNK, size - _FINGERPRINT_CHUNK))
            digest.update(fh.read(_FINGERPRINT_CHUNK))
    return digest.hexdigest()
