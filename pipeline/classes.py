"""Slide labels and classes: the one place a manifest's ``label`` cell is read, and the order of the classes.

Labels
------
A label is either a **class index** (``0``, ``1``, ``2`` …; ``1.0`` is read as ``1``) or a **class name**
(``LUAD``, ``Tumor`` …). Every command (train, predict, run, bench) reads labels through :func:`parse_label`, so
they all refuse the same things: a fractional number (``0.7``, ``1.9``), a negative one, ``nan``/``inf``, a name
QuPath or a column header cannot carry (``:``, ``,``, control characters), one manifest mixing names and
indices, two names differing only in letter case, and two rows for one slide that say different things.

Class order
-----------
:class:`ClassSet` holds the classes in model order (index ``k`` is the model's output ``k``). Integer labels are
their own indices: the classes are ``0 … K-1`` with ``K = max(label) + 1`` (at least 2). Names are ordered by
``--classes A,B,C`` when given, else sorted (``LUAD, LUSC``; ``Normal, Tumor``). For two classes the second is the
*positive* class: the ``probability`` column is the probability of ``classes[1]`` (``Tumor`` for
``Normal, Tumor``); sorting would make ``Normal`` positive in ``Metastasis, Normal``, so pass
``--classes Normal,Metastasis`` there. The order is stored in the checkpoint (``config.json``, ``classes``) and prediction uses it.

Prediction columns
------------------
Two classes: ``probability`` and ``calibrated_probability`` (of the positive class), ``uncertainty`` (the fold
members' spread of that probability), as for 0/1 labels. More classes: ``prediction`` (the most probable class,
calibrated), ``confidence`` (its calibrated probability), ``prob_<class>`` and ``calibrated_prob_<class>`` for
every class (:func:`probability_columns`), ``uncertainty`` (the members' spread of the predicted class).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ClassSet", "check_duplicate_rows", "check_manifest_labels", "class_set_for", "parse_classes_option", "parse_label",
           "probability_columns"]

Label = int | str

# QuPath splits class names on ':' (derived classes), '--classes' splits on ',', and a CSV header or measurement
# name must stay on one line.
_BAD_NAME = re.compile(r"[:,\x00-\x1f\x7f]")


def parse_label(raw: str | None, where: str) -> Label | None:
    """A manifest ``label`` cell as a class index (int) or a class name (str); None when empty.

    Parameters
    ----------
    raw : str or None
        The cell as the CSV reader gives it.
    where : str
        Where the cell is (``"manifest.csv, line 4"``), for the error message.

    Raises
    ------
    ConfigError
        A number that is not a whole non-negative one (``0.7``, ``1.9``, ``-1``, ``nan``), or a name with a
        character QuPath or a CSV header cannot carry.
    """
    if raw is None:
        return None
    text = str(raw).strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return _check_name(text, where)
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise ConfigError(f"{where}: label {text!r} is not a class: use whole class indices (0, 1, 2 …) or class "
                          "names (LUAD, LUSC …); fractional labels are never rounded")
    return int(value)


def _check_name(text: str, where: str) -> str:
    if _BAD_NAME.search(text):
        raise ConfigError(f"{where}: class name {text!r} holds ':', ',' or a control character, which QuPath class "
                          "names and '--classes' cannot carry; rename the class")
    return text


def parse_classes_option(text: str | Sequence[Label] | None) -> tuple[Label, ...] | None:
    """``--classes A,B,C`` (or a sequence) as a tuple of labels parsed like the manifest's; None stays None.

    Raises
    ------
    ConfigError
        Fewer than two classes, a class listed twice, names mixed with indices, or a bad name.
    """
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    classes = [parse_label(str(p), "--classes") for p in parts]
    if any(c is None for c in classes):
        raise ConfigError(f"--classes {text!r}: an empty class name; list the classes as A,B,C")
    out = tuple(classes)
    if len(out) < 2:
        raise ConfigError(f"--classes {text!r}: need at least two classes")
    if len({type(c) for c in out}) > 1:
        raise ConfigError(f"--classes {text!r} mixes class names and integer indices; use names only")
    _refuse_case_twins(out, "--classes")
    if len(set(out)) != len(out):
        raise ConfigError(f"--classes {text!r} lists a class twice")
    return out


def _refuse_case_twins(labels: Iterable[Label], where: str) -> None:
    seen: dict[str, str] = {}
    for c in labels:
        if isinstance(c, str):
            first = seen.setdefault(c.casefold(), c)
            if first != c:
                raise ConfigError(f"{where}: class names {first!r} and {c!r} differ only in letter case; write each "
                                  "class one way")


@dataclass(frozen=True)
class ClassSet:
    """The classes of a task in model order: ``classes[k]`` is the label of the model's output ``k``.

    Attributes
    ----------
    classes : tuple of int or tuple of str
        ``(0, 1, …, K-1)`` for integer labels, the class names otherwise.
    """

    classes: tuple[Label, ...]

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ConfigError(f"a task needs at least two classes, got {list(self.classes)}")
        if len({type(c) for c in self.classes}) > 1:
            raise ConfigError(f"classes {list(self.classes)} mix names and integer indices")
        if self.is_index and tuple(self.classes) != tuple(range(len(self.classes))):
            raise ConfigError(f"integer classes must be 0 … K-1 in order, got {list(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"classes {list(self.classes)} list a class twice")

    @property
    def n(self) -> int:
        """Number of classes ``K``."""
        return len(self.classes)

    @property
    def is_index(self) -> bool:
        """Whether the labels are integer class indices (else names)."""
        return isinstance(self.classes[0], int)

    @property
    def binary(self) -> bool:
        return self.n == 2

    @property
    def positive(self) -> Label:
        """The class whose probability a two-class task reports (``classes[1]``)."""
        return self.classes[1]

    @property
    def names(self) -> tuple[str, ...]:
        """The classes as text (``"0"``, ``"1"`` for indices), as columns and measurements name them."""
        return tuple(str(c) for c in self.classes)

    def index(self, label: Label, where: str = "") -> int:
        """Model output index of ``label``.

        Raises
        ------
        ConfigError
            A name for index classes or the reverse, or a class the task does not have.
        """
        prefix = f"{where}: " if where else ""
        if isinstance(label, int) != self.is_index:
            kind = "an integer index" if isinstance(label, int) else "a class name"
            raise ConfigError(f"{prefix}label {label!r} is {kind} but the model's classes are "
                              f"{', '.join(self.names)}; write labels as the model was trained")
        try:
            return self.classes.index(label)
        except ValueError:
            raise ConfigError(f"{prefix}label {label!r} is not one of the classes {', '.join(self.names)}"
                              + ("" if self.is_index else " (set them with --classes when training)")) from None

    def label(self, k: int) -> Label:
        """The label of output ``k``."""
        return self.classes[int(k)]

    def to_json(self) -> list[Label]:
        return list(self.classes)

    @classmethod
    def from_checkpoint(cls, classes: Sequence[Label] | None, n_classes: int) -> ClassSet:
        """The classes stored in a checkpoint; ``0 … K-1`` for one written before classes were stored."""
        if classes is None:
            return cls(tuple(range(int(n_classes))))
        out = cls(tuple(classes))
        if out.n != int(n_classes):
            raise ConfigError(f"the checkpoint names {out.n} classes for a head with {n_classes} outputs")
        return out


def check_manifest_labels(items: Sequence, path) -> None:
    """Refuse a manifest whose labels mix names and indices or spell one class in two letter cases.

    ``items`` are its :class:`~slidestream.pipeline.inputs.SlideInput` rows (``label``, ``origin``).
    """
    first: dict[type, object] = {}
    for it in items:
        if it.label is not None:
            first.setdefault(type(it.label), it)
    if len(first) > 1:
        name_row, index_row = first[str], first[int]
        raise ConfigError(f"{path}: labels mix class names and integer indices: {name_row.label!r} "
                          f"({_line(name_row)}) and {index_row.label!r} ({_line(index_row)}); use one kind")
    _refuse_case_twins((it.label for it in items if it.label is not None), str(path))


def check_duplicate_rows(items: Sequence, where: str,
                         fields: Sequence[str] = ("label", "split", "patient", "annotation", "mpp", "meta")) -> None:
    """Refuse manifest rows that list one slide file twice with different ``fields`` (label, split, patient …).

    Identical repeats are harmless (the batch keeps one). Only rows read from a manifest (with an ``origin``) are
    compared: a folder listing a slide that a manifest labels is not a conflict. The message names both rows.
    """
    seen: dict[str, object] = {}
    for it in items:
        if getattr(it, "origin", None) is None:
            continue
        key = str(it.path.resolve()) if it.path.exists() else str(it.path)
        prev = seen.setdefault(key, it)
        if prev is it:
            continue
        for attr in fields:
            a, b = getattr(prev, attr), getattr(it, attr)
            if a != b:
                raise ConfigError(f"{where}: slide {it.path} is listed twice with different {attr}: {a!r} "
                                  f"({_line(prev)}) and {b!r} ({_line(it)}); keep one row per slide")


def _line(it) -> str:
    return getattr(it, "origin", None) or str(it.path)


def class_set_for(labels: Iterable[tuple[Label, str]], classes: Sequence[Label] | str | None = None) -> ClassSet:
    """The classes of a training set: ``--classes`` when given (every label must be one), else sorted names, or
    ``0 … max`` for integer labels.

    Parameters
    ----------
    labels : iterable of (label, where)
        Each labelled slide's label and where it was read (for messages).
    classes : sequence or str, optional
        ``--classes``: the class order (names; or ``0,1,…`` for integer labels).

    Raises
    ------
    ConfigError
        Names mixed with indices, a label not in ``classes``, or fewer than two classes.
    """
    pairs = list(labels)
    given = parse_classes_option(classes) if classes is not None else None
    kinds = {type(lab) for lab, _ in pairs}
    if len(kinds) > 1:
        name = next((lab, w) for lab, w in pairs if isinstance(lab, str))
        index = next((lab, w) for lab, w in pairs if isinstance(lab, int))
        raise ConfigError(f"labels mix class names and integer indices: {name[0]!r} ({name[1]}) and {index[0]!r} "
                          f"({index[1]}); use one kind")
    _refuse_case_twins((lab for lab, _ in pairs), "the labels")
    is_index = kinds == {int} or (not kinds and given is not None and isinstance(given[0], int))
    if given is not None:
        if pairs and isinstance(given[0], int) != is_index:
            raise ConfigError(f"--classes {', '.join(map(str, given))}: the labels are "
                              f"{'integer indices' if is_index else 'class names'}; "
                              + ("--classes must then be 0,1,… in order (or be left out)" if is_index
                                 else "list the class names"))
        out = ClassSet(given)
        for lab, where in pairs:
            if lab not in given:
                raise ConfigError(f"{where}: label {lab!r} is not one of --classes {','.join(out.names)}")
        return out
    if is_index:
        top = max((lab for lab, _ in pairs), default=1)
        return ClassSet(tuple(range(max(2, int(top) + 1))))
    names = sorted({lab for lab, _ in pairs})
    if len(names) < 2:
        raise ConfigError(f"need labelled slides of at least two classes, got {names or 'none'}")
    return ClassSet(tuple(names))


def probability_columns(classes: ClassSet, raw: Sequence[float], calibrated: Sequence[float],
                        spread: Sequence[float]) -> dict[str, object]:
    """The prediction-row columns of one slide (module docstring), from its ``(K,)`` class probabilities.

    Parameters
    ----------
    classes : ClassSet
    raw, calibrated : sequence of float
        ``(K,)`` ensemble probabilities before and after the temperature.
    spread : sequence of float
        ``(K,)`` standard deviation of the fold members' (uncalibrated) probabilities.
    """
    if classes.binary:
        return {"probability": float(raw[1]), "calibrated_probability": float(calibrated[1]),
                "uncertainty": float(spread[1])}
    k = max(range(classes.n), key=lambda j: calibrated[j])
    row: dict[str, object] = {"prediction": classes.label(k), "confidence": float(calibrated[k])}
    row.update({f"prob_{name}": float(raw[j]) for j, name in enumerate(classes.names)})
    row.update({f"calibrated_prob_{name}": float(calibrated[j]) for j, name in enumerate(classes.names)})
    row["uncertainty"] = float(spread[k])
    return row
