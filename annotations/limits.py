"""Caps on what reading an annotation file may cost: bytes after decompression, vertices, and self-crossings
to repair.

Annotation files come from many hands. Three kinds of file cost far more to read than their size suggests: a
small ``.geojson.gz`` that inflates to gigabytes; millions of vertices, each a Python list and two floats while
JSON is parsed; and a scribble (a ring whose edges cross each other thousands of times), whose repair by
``shapely.make_valid`` grows with the number of crossings, up to the square of the number of vertices.
:func:`read_bounded` reads in chunks and stops at the byte cap; :func:`loads_json` refuses a document with too
many numbers before parsing it; :func:`check_crossings` counts the crossings of an invalid geometry's edges, in
time and memory linear in its vertices (up to a cap of candidate pairs), before anything is repaired.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import shapely

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_CROSSINGS", "DEFAULT_MAX_VERTICES", "DamagedGzip", "LimitExceeded",
           "check_crossings", "loads_json", "read_bounded"]

#: Largest annotation file read, in bytes after decompression: JSON parsing holds up to ~30 bytes of Python
#: objects per byte of text, so this keeps a whole read well under 2 GiB.
DEFAULT_MAX_BYTES = 64 << 20

#: Most vertices (coordinate pairs) one file may hold.
DEFAULT_MAX_VERTICES = 2_000_000

#: Most self-crossings a geometry may have and still be repaired by ``shapely.make_valid``.
DEFAULT_MAX_CROSSINGS = 10_000

_CHUNK = 1 << 20
# Candidate edge pairs examined per vertex before a geometry counts as a scribble.
_PAIRS_PER_VERTEX = 8


class DamagedGzip(Exception):
    """The file starts like gzip data but cannot be decompressed."""


class LimitExceeded(Exception):
    """A cap was reached; ``reason`` says which and ``option`` names the keyword argument that raises it."""

    def __init__(self, reason: str, option: str):
        super().__init__(reason)
        self.reason = reason
        self.option = option


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, gunzipped when it is gzip data, read in chunks and never more than ``max_bytes``.

    Raises
    ------
    LimitExceeded
        When the (decompressed) content is larger than ``max_bytes``.
    DamagedGzip
        For damaged gzip data.
    OSError
        When the file cannot be read.
    """
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        stream = gzip.GzipFile(fileobj=fh, mode="rb") if gzipped else fh
        parts, size = [], 0
        while True:
            try:
                chunk = stream.read(min(_CHUNK, max_bytes + 1 - size))
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:
                raise DamagedGzip(str(e) or type(e).__name__) from None
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                what = "decompresses to" if gzipped else "is"
                raise LimitExceeded(f"{what} more than {max_bytes:,} bytes", "max_bytes")
    return b"".join(parts)


def loads_json(text: str, max_vertices: int):
    """``json.loads``, refused before parsing when the text holds more numbers than ``max_vertices`` can use.

    Every coordinate is a number and numbers in JSON arrays are separated by commas, so counting the commas (a
    fast scan) bounds the vertices before parsing builds a Python list and two floats for each of them; the
    allowance is four numbers per vertex, for measurements and other fields.

    Raises
    ------
    LimitExceeded
        Past ``4 * max_vertices + 100_000`` commas.
    ValueError
        For malformed JSON (``NaN`` and ``Infinity`` are accepted, as QuPath writes them).
    """
    budget = 4 * max_vertices + 100_000
    if text.count(",") > budget:
        raise LimitExceeded(f"holds more than {max_vertices:,} vertices (over {budget:,} numbers)", "max_vertices")
    return json.loads(text)


def _edges(geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and end points of every ring edge of a polygonal geometry, and each edge's ring number."""
    rings = shapely.get_rings(shapely.get_parts(geometry))
    starts, ends, ring_ids = [], [], []
    for k, ring in enumerate(rings):
        xy = shapely.get_coordinates(ring)
        if len(xy) < 2:
            continue
        starts.append(xy[:-1])
        ends.append(xy[1:])
        ring_ids.append(np.full(len(xy) - 1, k, np.int64))
    if not starts:
        empty = np.zeros((0, 2))
        return empty, empty, np.zeros(0, np.int64)
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(ring_ids)


def _orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def check_crossings(geometry, max_crossings: int) -> int:
    """Count the pairs of non-adjacent ring edges that meet, refusing a scribble without repairing it.

    Edges are bucketed into a grid whose cells are about as large as a typical edge; two edges that meet share a
    cell, so only edges of one cell are compared (exactly, with orientation tests). Time and memory grow with
    the vertices and the candidate pairs, and the candidates are capped before they are listed.

    Parameters
    ----------
    geometry : shapely Polygon or MultiPolygon
    max_crossings : int
        The most crossings accepted.

    Returns
    -------
    int
        The number of meeting edge pairs (crossings, touches and overlaps), at most ``max_crossings``.

    Raises
    ------
    LimitExceeded
        When there are more crossings, or more candidate pairs than ``8`` per vertex (+ 10^6) to examine.
    """
    p, q, ring = _edges(geometry)
    n = len(p)
    if n < 4:
        return 0
    lo, hi = np.minimum(p, q), np.maximum(p, q)
    extent = float(max(np.ptp(lo[:, 0]), np.ptp(lo[:, 1]), np.ptp(hi[:, 0]), np.ptp(hi[:, 1]), 1e-9))
    # cells about one typical edge long (never so small that a cell key could overflow)
    cell = max(float(np.median((hi - lo).max(axis=1))), extent / 2**20, 1e-12)
    origin = lo.min(axis=0)
    too_many = LimitExceeded(f"a polygon of {n:,} edges crosses itself more than {max_crossings:,} times (a "
                             "scribble, not a region): repairing it would take unbounded time and memory",
                             "max_crossings")
    while True:  # grow the cells until the edges' boxes cover a bounded number of them
        c0 = np.floor((lo - origin) / cell).astype(np.int64)
        c1 = np.floor((hi - origin) / cell).astype(np.int64)
        covered = (c1 - c0 + 1).prod(axis=1)
        if int(covered.sum()) <= 4 * n + 1_000_000:
            break
        cell *= 2.0
    # every (edge, cell) assignment, the cell as one int64 key, sorted by cell
    edge = np.repeat(np.arange(n), covered)
    offset = np.arange(len(edge)) - np.repeat(np.cumsum(covered) - covered, covered)
    width = (c1[:, 0] - c0[:, 0] + 1)[edge]
    key = (c0[edge, 0] + offset % width) * (int(c1[:, 1].max()) + 2) + c0[edge, 1] + offset // width
    del offset, width
    order = np.argsort(key, kind="stable")
    key, edge = key[order], edge[order]
    first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    counts = np.diff(np.concatenate([first, [len(key)]]))
    del key, order
    if int((counts * (counts - 1) // 2).sum()) > _PAIRS_PER_VERTEX * n + 1_000_000:
        raise too_many
    # the candidate pairs, cell by cell (cells grouped by size, one vectorised step per size)
    codes = []
    for size in np.unique(counts[counts > 1]):
        members = edge[first[counts == size][:, None] + np.arange(size)[None, :]]
        a, b = np.triu_indices(size, 1)
        i, j = members[:, a].ravel(), members[:, b].ravel()
        codes.append(np.minimum(i, j) * n + np.maximum(i, j))
    if not codes:
        return 0
    codes = np.sort(np.concatenate(codes))
    codes = codes[np.concatenate([[True], codes[1:] != codes[:-1]])]  # a pair may share several cells
    ring_len = np.bincount(ring)
    ring_first = np.concatenate([[0], np.cumsum(ring_len)[:-1]])
    crossings = 0
    for chunk in range(0, len(codes), _CHUNK):
        i, j = np.divmod(codes[chunk:chunk + _CHUNK], n)
        # neighbours along one ring share a vertex by construction
        same = ring[i] == ring[j]
        start, last = ring_first[ring[i]], ring_first[ring[i]] + ring_len[ring[i]] - 1
        keep = ~(same & ((j - i == 1) | ((i == start) & (j == last))))
        i, j = i[keep], j[keep]
        keep = (lo[i] <= hi[j]).all(axis=1) & (lo[j] <= hi[i]).all(axis=1)
        i, j = i[keep], j[keep]
        meet = ((_orient(p[i], q[i], p[j]) * _orient(p[i], q[i], q[j]) <= 0)
                & (_orient(p[j], q[j], p[i]) * _orient(p[j], q[j], q[i]) <= 0))
        crossings += int(meet.sum())
        if crossings > max_crossings:
            raise too_many
    return crossings
