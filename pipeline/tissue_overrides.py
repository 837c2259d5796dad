"""Per-slide tissue settings (``slidestream tile --tissue-overrides FILE``), for the slides where the defaults fail.

Like CLAM's process list: a CSV with a ``slide_id`` column and one column per setting to change, named as the
``slidestream tile`` option (``tissue-threshold`` or ``tissue_threshold``, a leading ``--`` allowed). An empty
cell keeps the run's value (the command line's, or the default). Example::

    slide_id,tissue-threshold,tissue-closing,pen-filter,keep-rule
    TCGA-A1-0001,0.1,,,
    TCGA-A1-0002,,64,false,clam-four-pt

A slide id may be given with its file extension (``TCGA-A1-0001.svs``, as in CLAM's ``process_list_autogen.csv``).
A table with an unknown column, a repeated slide, or a value that is not valid is refused whole, before any
slide is tiled, with the line and the slide named.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError
from ..tiling.grid import TilingParams
from ..tiling.tissue import TissueConfig
from .inputs import SLIDE_SUFFIXES

__all__ = ["OVERRIDE_COLUMNS", "SlideSettings", "read_tissue_overrides"]

_TRUE = {"true", "yes", "1", "on", "y", "t"}
_FALSE = {"false", "no", "0", "off", "n", "f"}

#: Columns an override table may have: column -> (which configuration, its field, value type).
OVERRIDE_COLUMNS: dict[str, tuple[str, str, type]] = {
    "tissue-method": ("tissue", "method", str),
    "tissue-threshold": ("tissue", "min_saturation", float),
    "tissue-blur": ("tissue", "blur_sigma_um", float),
    "tissue-closing": ("tissue", "close_um", float),
    "tissue-min-area": ("tissue", "min_tissue_area_um2", float),
    "tissue-min-hole-area": ("tissue", "min_hole_area_um2", float),
    "tissue-holes": ("tissue", "keep_holes", bool),
    "pen-filter": ("tissue", "pen_filter", bool),
    "min-tissue": ("tiling", "min_tissue", float),
    "keep-rule": ("tiling", "keep_rule", str),
}
_KEY_COLUMN = "slide-id"


@dataclass(frozen=True)
class SlideSettings:
    """The tiling and tissue settings of one slide, with the overrides that made them (column -> cell text)."""

    params: TilingParams
    tissue: TissueConfig
    overrides: dict[str, str] = field(default_factory=dict)


def _column(name: str) -> str:
    return name.strip().lstrip("-").lower().replace("_", "-")


def _parse(value: str, kind: type):
    if kind is bool:
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{value!r} is not true/false (yes/no, 1/0, on/off)")
    if kind is float:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    return value


def read_tissue_overrides(path: str | os.PathLike, params: TilingParams,
                          tissue: TissueConfig) -> dict[str, SlideSettings]:
    """Read an override table (see the module docstring).

    Parameters
    ----------
    path : path
        CSV file.
    params, tissue : TilingParams, TissueConfig
        The run's settings, which each row changes.

    Returns
    -------
    dict
        Slide id -> :class:`SlideSettings`; a row keyed ``x.svs`` is entered as both ``x.svs`` and ``x``.

    Raises
    ------
    ConfigError
        The file cannot be read, has no ``slide_id`` column or an unknown one, repeats a slide, or a value is not
        valid; the message names the line, the slide and the column.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read the tissue override table ({exc})") from exc
    if not rows:
        raise ConfigError(f"{path}: the tissue override table is empty; it needs a header with a slide_id column")
    header = [_column(h) for h in rows[0]]
    if _KEY_COLUMN not in header:
        raise ConfigError(f"{path}: the tissue override table needs a 'slide_id' column (have: {rows[0]})")
    unknown = [raw for raw, col in zip(rows[0], header) if col != _KEY_COLUMN and col not in OVERRIDE_COLUMNS]
    if unknown:
        raise ConfigError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; the columns a tissue override "
                          f"table may have are slide_id, {', '.join(OVERRIDE_COLUMNS)}")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise ConfigError(f"{path}: column(s) given twice: {', '.join(repeated)}")
    out: dict[str, SlideSettings] = {}
    line_of: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise ConfigError(f"{path}, line {line}: {len(row)} cells but the header has {len(header)} columns")
        cells = {col: cell.strip() for col, cell in zip(header, row)}
        slide_id = cells.get(_KEY_COLUMN, "")
        if not slide_id:
            raise ConfigError(f"{path}, line {line}: empty slide_id")
        where = f"{path}, line {line} (slide {slide_id})"
        changes: dict[str, dict] = {"tissue": {}, "tiling": {}}
        given: dict[str, str] = {}
        for col, text in cells.items():
            if col == _KEY_COLUMN or not text:
                continue
            target, name, kind = OVERRIDE_COLUMNS[col]
            try:
                changes[target][name] = _parse(text, kind)
            except ValueError as exc:
                raise ConfigError(f"{where}, column {col}: {exc}") from None
            given[col] = text
        try:
            settings = SlideSettings(replace(params, **changes["tiling"]), replace(tissue, **changes["tissue"]), given)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        keys = {slide_id}
        stem, suffix = os.path.splitext(slide_id)
        if suffix.lower() in SLIDE_SUFFIXES and stem:
            keys.add(stem)
        for key in keys:
            if key in line_of:
                raise ConfigError(f"{where}: slide {key} already has a row (line {line_of[key]}); give one row per "
                                  "slide")
            line_of[key] = line
            out[key] = settings
    return out
