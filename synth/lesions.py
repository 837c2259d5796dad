"""Geometry of a synthetic sentinel lymph node section: anatomy, tumour look-alikes, metastases and artefacts.

Everything is a shapely geometry in level-0 pixels, drawn from a numpy Generator; sizes are given in µm and
converted with the slide's pixel size, so a 0.5 mm micro-metastasis is 0.5 mm at 0.243 and at 0.226 µm/px.

Anatomy: one node (capsule, subcapsular sinus, cortex with lymphoid follicles, some with a germinal centre,
medulla with sinuses) and, on some slides, a lobule of perinodal fat (adipocytes are holes of the tissue).
Germinal centres and sinus histiocytes are what simple statistics confuse with metastases.

Metastases follow the TNM size classes used by CAMELYON16 and CAMELYON17, on the largest dimension (maximum
Feret diameter) of the lesion: isolated tumour cells (ITC) up to 0.2 mm, micro-metastases up to 2 mm,
macro-metastases beyond. Macro-metastases are elongated along the node so that they fit a slide of a few mm;
some hold islands of non-tumour tissue (the ``_2`` exclusion polygons of the CAMELYON16 annotations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

from ..errors import ConfigError
from .scene import _blob, _largest, _pen_strokes, _point_in, _snap

__all__ = [
    "ITC_MAX_UM",
    "LESION_CLASSES",
    "MICRO_MAX_UM",
    "Artefacts",
    "Lesion",
    "NodeAnatomy",
    "largest_dimension_um",
    "lesion_class",
    "make_anatomy",
    "make_artefacts",
    "place_lesions",
]

#: Lesion size classes, smallest first.
LESION_CLASSES = ("itc", "micro", "macro")
ITC_MAX_UM = 200.0  # isolated tumour cells: largest dimension up to 0.2 mm
MICRO_MAX_UM = 2000.0  # micro-metastasis: more than 0.2 mm, up to 2 mm; macro-metastasis beyond


def largest_dimension_um(geometry, mpp: float) -> float:
    """Maximum Feret diameter of a geometry (the largest distance between two of its points), µm.

    Parameters
    ----------
    geometry : shapely geometry
        In level-0 pixels.
    mpp : float
        Level-0 pixel size, µm per pixel.

    Returns
    -------
    float
        0 for an empty geometry.
    """
    if geometry is None or geometry.is_empty:
        return 0.0
    xy = shapely.get_coordinates(geometry.convex_hull)
    d = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    return float(d.max()) * mpp


def lesion_class(largest_um: float) -> str:
    """``"itc"``, ``"micro"`` or ``"macro"`` for a lesion of this largest dimension (µm)."""
    if largest_um <= ITC_MAX_UM:
        return "itc"
    return "micro" if largest_um <= MICRO_MAX_UM else "macro"


@dataclass
class Lesion:
    """One metastasis.

    Attributes
    ----------
    geometry : shapely Polygon or MultiPolygon
        Where tumour cells are painted, level-0 pixels; holes are islands of non-tumour tissue.
    outline : shapely Polygon or MultiPolygon
        What the annotation holds: ``geometry`` itself, or for isolated tumour cells the hull drawn
        around the cluster.
    kind : str
        ``"itc"``, ``"micro"`` or ``"macro"``, from ``largest_um``.
    largest_um : float
        Largest dimension of ``outline``, µm.
    """

    geometry: Polygon | MultiPolygon
    outline: Polygon | MultiPolygon
    kind: str
    largest_um: float


@dataclass
class NodeAnatomy:
    """Compartments of one lymph node section, level-0 pixels.

    Attributes
    ----------
    tissue : shapely geometry
        All tissue (node and fat septa); adipocytes and vacuoles are holes.
    node : shapely Polygon
        The node inside its capsule.
    capsule : shapely geometry
        Fibrous capsule and fat septa (stroma).
    sinus : shapely geometry
        Subcapsular and medullary sinuses (histiocytes; may be empty).
    follicles : list of shapely Polygon
        Lymphoid follicles (mantle zone included).
    germinal_centres : list of shapely Polygon
        Germinal centres, each inside a follicle.
    frame : tuple of float
        ``(cx, cy, semi_major, semi_minor, angle)`` of the node's ellipse (pixels, radians).
    """

    tissue: Polygon | MultiPolygon
    node: Polygon
    capsule: Polygon | MultiPolygon
    sinus: Polygon | MultiPolygon
    follicles: list[Polygon] = field(default_factory=list)
    germinal_centres: list[Polygon] = field(default_factory=list)
    frame: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass
class Artefacts:
    """Preparation and scanning artefacts, level-0 pixels.

    Attributes
    ----------
    folds : list of shapely Polygon
        Tissue folds (two layers of the section: about twice the optical density).
    blurs : list of shapely Polygon
        Out-of-focus regions; ``blur_sigma_um`` holds the Gaussian sigma of each, µm.
    bubbles : list of shapely Polygon
        Air bubbles under the coverslip (dark rim, paler inside).
    pens, pen_colors : list
        Marker strokes and their inks.
    """

    folds: list[Polygon] = field(default_factory=list)
    blurs: list[Polygon] = field(default_factory=list)
    blur_sigma_um: list[float] = field(default_factory=list)
    bubbles: list[Polygon] = field(default_factory=list)
    pens: list[Polygon] = field(default_factory=list)
    pen_colors: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Kinds present, e.g. ``["fold", "pen"]``."""
        kinds = [("fold", self.folds), ("blur", self.blurs), ("bubble", self.bubbles), ("pen", self.pens)]
        return [k for k, v in kinds if v]


# --------------------------------------------------------------------------- anatomy


def _union(parts) -> Polygon | MultiPolygon:
    parts = [p for p in parts if p is not None and not p.is_empty]
    return shapely.union_all(parts) if parts else Polygon()


def _packed_circles(rng: np.random.Generator, region, r_range: tuple[float, float], gap: float,
                    tries: int) -> list[tuple[float, float, float]]:
    """Non-overlapping circles ``(x, y, r)`` with centres in ``region`` and at least ``gap`` between them."""
    x0, y0, x1, y1 = region.bounds
    xs = rng.uniform(x0, x1, tries)
    ys = rng.uniform(y0, y1, tries)
    rs = rng.uniform(*r_range, tries)
    inside = shapely.contains_xy(region, xs, ys)
    kept: list[tuple[float, float, float]] = []
    arr = np.zeros((0, 3))
    for x, y, r, ok in zip(xs, ys, rs, inside, strict=True):
        if not ok:
            continue
        if arr.shape[0] and np.any(np.hypot(arr[:, 0] - x, arr[:, 1] - y) < arr[:, 2] + r + gap):
            continue
        kept.append((float(x), float(y), float(r)))
        arr = np.asarray(kept)
    return kept


def make_anatomy(
    rng: np.random.Generator,
    width: int,
    height: int,
    mpp: float,
    *,
    follicles_per_mm2: float = 3.0,
    germinal_fraction: float = 0.5,
    sinus_amount: float = 1.0,
    fat: bool = False,
) -> NodeAnatomy:
    """Draw one lymph node section filling most of a ``width`` x ``height`` slide.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random choice.
    width, height : int
        Slide size, level-0 pixels.
    mpp : float
        Level-0 pixel size, µm per pixel.
    follicles_per_mm2 : float
        Mean number of lymphoid follicles per mm² of cortex (Poisson).
    germinal_fraction : float
        Probability that a follicle has a germinal centre (a secondary follicle).
    sinus_amount : float
        Scales the number of medullary sinuses (0: none, only the subcapsular sinus).
    fat : bool
        Add a lobule of perinodal fat in a corner of the slide, against the node.

    Returns
    -------
    NodeAnatomy
    """
    um = 1.0 / mpp
    w, h = width, height
    frame = box(0.02 * w, 0.02 * h, 0.98 * w, 0.98 * h)
    minor = 0.43 * h * rng.uniform(0.88, 1.0)
    major = min(0.47 * w * rng.uniform(0.92, 1.0), 2.2 * minor)
    angle = rng.uniform(-0.1, 0.1)
    cx = w / 2 + rng.uniform(-0.015, 0.015) * w
    cy = h / 2 + rng.uniform(-0.02, 0.02) * h
    node = _largest(_blob(rng, cx, cy, minor, aspect=major / minor, angle=angle, roughness=0.06)
                    .intersection(frame))
    if node is None:
        raise ConfigError(f"a {w}x{h} px slide is too small for a lymph node section")
    node = _snap(node)
    cap_w = rng.uniform(12, 25) * um
    inner = _largest(node.buffer(-cap_w))
    if inner is None:
        raise ConfigError(f"a {w}x{h} px slide at {mpp} µm/px is too small for a lymph node section")
    capsule = node.difference(inner)
    sub_w = rng.uniform(8, 18) * um
    cortex_in = _largest(inner.buffer(-sub_w))
    sinus_parts = [inner.difference(cortex_in)] if cortex_in is not None else []
    medulla = _largest(inner.buffer(-rng.uniform(0.38, 0.5) * minor)) if cortex_in is not None else None
    if medulla is not None and sinus_amount > 0:
        shapely.prepare(medulla)
        for _ in range(rng.poisson(5 * sinus_amount)):
            c = _point_in(rng, medulla)
            if c is None:
                continue
            length = rng.uniform(150, 450) * um
            width_s = rng.uniform(18, 55) * um
            ang = rng.uniform(0, np.pi)
            strand = _blob(rng, *c, width_s / 2, aspect=length / width_s, angle=ang, roughness=0.15, n_vertices=64)
            sinus_parts.append(strand.intersection(medulla))
    sinus = _union(sinus_parts)

    # follicles sit in the outer cortex, under the capsule
    follicles: list[Polygon] = []
    gcs: list[Polygon] = []
    if cortex_in is not None:
        cortex = cortex_in.difference(medulla) if medulla is not None else cortex_in
        area_mm2 = cortex.area * (mpp / 1000) ** 2
        n = rng.poisson(follicles_per_mm2 * area_mm2)
        for x, y, r in _packed_circles(rng, cortex, (90 * um, 210 * um), 15 * um, 30 * max(n, 1))[:n]:
            f = _largest(_blob(rng, x, y, r, aspect=rng.uniform(1.0, 1.3), angle=rng.uniform(0, np.pi),
                               roughness=0.08, n_vertices=96).intersection(cortex_in))
            if f is None or f.area < 0.5 * math.pi * r * r:
                continue
            follicles.append(_snap(f))
            if rng.random() < germinal_fraction:
                gr = r * rng.uniform(0.55, 0.75)
                g = _blob(rng, x + rng.uniform(-0.12, 0.12) * r, y + rng.uniform(-0.12, 0.12) * r, gr,
                          aspect=rng.uniform(1.0, 1.25), angle=rng.uniform(0, np.pi), roughness=0.1, n_vertices=80)
                g = _largest(g.intersection(f.buffer(-8 * um)))
                if g is not None:
                    gcs.append(_snap(g))

    tissue = node
    if fat:
        # in a corner that the oval node leaves free, touching the capsule
        lob_r = 0.24 * h * rng.uniform(0.85, 1.0)
        sx, sy = rng.choice([-1.0, 1.0], 2)
        fx, fy = w / 2 + sx * (0.5 * w - lob_r * 0.9), h / 2 + sy * (0.5 * h - lob_r * 0.9)
        lobule = _largest(_blob(rng, fx, fy, lob_r, aspect=rng.uniform(1.0, 1.4), roughness=0.1)
                          .intersection(frame))
        if lobule is not None:
            septa = lobule.difference(node.buffer(2 * um))
            cells = _packed_circles(rng, septa, (22 * um, 45 * um), 3.5 * um, 4000)
            holes = [_blob(rng, x, y, r, roughness=0.05, n_vertices=24) for x, y, r in cells]
            if holes:
                septa = septa.difference(shapely.union_all(holes))
            tissue = _union([node, septa])
            capsule = _union([capsule, septa])
    return NodeAnatomy(tissue=shapely.set_precision(tissue, 0.01), node=node, capsule=capsule, sinus=sinus,
                       follicles=follicles, germinal_centres=gcs, frame=(cx, cy, major, minor, angle))


# --------------------------------------------------------------------------- metastases


def _scaled_to(shape: Polygon, target: float, mpp: float) -> Polygon:
    size = largest_dimension_um(shape, mpp)
    f = target / size if size > 0 else 1.0
    return affinity.scale(shape, f, f, origin="centroid")


def _macro(rng, anatomy: NodeAnatomy, mpp: float, room: Polygon) -> Lesion | None:
    um = 1.0 / mpp
    cx, cy, major, minor, angle = anatomy.frame
    room_len = largest_dimension_um(room, mpp)
    target = min(rng.uniform(2050, 2400), 0.97 * room_len)
    for attempt in range(12):
        thick = rng.uniform(0.3, 0.6) * minor
        length = target * um / 2
        ox, oy = rng.uniform(-0.1, 0.1) * major, rng.uniform(-0.25, 0.25) * minor
        shape = _blob(rng, cx + ox, cy + oy, thick, aspect=length / thick, angle=angle + rng.uniform(-0.08, 0.08),
                      roughness=0.22, n_vertices=192)
        geom = _largest(shape.intersection(room))
        if geom is None:
            continue
        size = largest_dimension_um(geom, mpp)
        if size <= MICRO_MAX_UM:
            target = min(target * 1.04, room_len)
            continue
        if rng.random() < 0.5:  # islands of lymphoid tissue or fat left inside the metastasis
            islands = []
            for _ in range(rng.integers(1, 3)):
                r = rng.uniform(40, 110) * um
                c = _point_in(rng, geom.buffer(-r - 25 * um))
                if c is not None:
                    islands.append(_blob(rng, *c, r, aspect=rng.uniform(1, 1.5), angle=rng.uniform(0, np.pi),
                                         roughness=0.1, n_vertices=48))
            if islands:
                geom = geom.difference(_union(islands))
        geom = _largest(shapely.set_precision(geom, 0.01))
        if geom is None:
            continue
        return Lesion(geometry=geom, outline=geom, kind="macro", largest_um=largest_dimension_um(geom, mpp))
    return None


def _micro(rng, anatomy: NodeAnatomy, mpp: float, room, small_bias: float) -> Lesion | None:
    um = 1.0 / mpp
    for attempt in range(30):
        # log-uniform in 0.22-1.9 mm, pushed towards the small end by small_bias
        u = rng.random() ** (1.0 + 3.0 * small_bias)
        target = math.exp(math.log(220) + u * (math.log(1900) - math.log(220)))
        aspect = rng.uniform(1.3, 3.5)  # often spread along a sinus rather than round
        r = target * um / (2 * aspect)
        if rng.random() < 0.5:  # arrived by afferent lymphatics: in or near the subcapsular sinus
            ring = anatomy.node.buffer(-r * 0.8).difference(anatomy.node.buffer(-r * 1.6))
            centre = _point_in(rng, ring.intersection(room))
            # along the capsule
            ang = None
            if centre is not None:
                p = anatomy.node.exterior.interpolate(anatomy.node.exterior.project(Point(centre)))
                ang = math.atan2(p.y - centre[1], p.x - centre[0]) + math.pi / 2
        else:
            centre = _point_in(rng, room.buffer(-0.5 * r))
            ang = rng.uniform(0, np.pi)
        if centre is None:
            continue
        shape = _blob(rng, *centre, r, aspect=aspect, angle=ang, roughness=0.25, n_vertices=128)
        shape = _scaled_to(shape, target, mpp)
        geom = _largest(shapely.set_precision(shape.intersection(room), 0.01))
        if geom is None:
            continue
        size = largest_dimension_um(geom, mpp)
        if lesion_class(size) != "micro" or size < ITC_MAX_UM * 1.1:
            continue
        return Lesion(geometry=geom, outline=geom, kind="micro", largest_um=size)
    return None


def _itc(rng, anatomy: NodeAnatomy, mpp: float, room) -> Lesion | None:
    um = 1.0 / mpp
    for attempt in range(30):
        spread = rng.uniform(15, 70) * um
        centre = _point_in(rng, room.buffer(-spread - 20 * um))
        if centre is None:
            continue
        cells = []
        for _ in range(rng.integers(1, 6)):
            a = rng.uniform(0, 2 * np.pi)
            d = spread * math.sqrt(rng.random())
            cells.append(_blob(rng, centre[0] + d * math.cos(a), centre[1] + d * math.sin(a),
                               rng.uniform(14, 24) * um, aspect=rng.uniform(1, 1.4), angle=rng.uniform(0, np.pi),
                               roughness=0.12, n_vertices=32))
        geom = shapely.set_precision(_union(cells).intersection(room), 0.01)
        if geom.is_empty:
            continue
        outline = _snap(geom.convex_hull.buffer(4 * um, quad_segs=4))
        size = largest_dimension_um(outline, mpp)
        if size > ITC_MAX_UM:
            continue
        return Lesion(geometry=geom, outline=outline, kind="itc", largest_um=size)
    return None


def place_lesions(rng: np.random.Generator, anatomy: NodeAnatomy, mpp: float, kinds: list[str], *,
                  small_bias: float = 0.5) -> list[Lesion]:
    """Place metastases of the given classes inside the node, apart from each other.

    Parameters
    ----------
    rng : numpy.random.Generator
    anatomy : NodeAnatomy
        The node; lesions stay inside its capsule.
    mpp : float
        Level-0 pixel size, µm per pixel.
    kinds : list of str
        One class per lesion, ``"macro"``, ``"micro"`` or ``"itc"``; the largest are placed first.
    small_bias : float
        0-1: how strongly micro-metastasis sizes lean to the small end of 0.2-2 mm.

    Returns
    -------
    list of Lesion
        In placement order; every lesion's ``kind`` is the class its measured size falls in.

    Raises
    ------
    ConfigError
        When a requested lesion does not fit (the slide is too small for a macro-metastasis).
    """
    um = 1.0 / mpp
    bad = [k for k in kinds if k not in LESION_CLASSES]
    if bad:
        raise ConfigError(f"unknown lesion class {bad[0]!r} (use one of {', '.join(LESION_CLASSES)})")
    order = sorted(kinds, key=lambda k: -LESION_CLASSES.index(k))
    room = _largest(anatomy.node.buffer(-30 * um))
    lesions: list[Lesion] = []
    for kind in order:
        if room is None:
            raise ConfigError("no room left in the node for another metastasis; make the slide larger")
        if kind == "macro":
            lesion = _macro(rng, anatomy, mpp, room)
        elif kind == "micro":
            lesion = _micro(rng, anatomy, mpp, room, small_bias)
        else:
            lesion = _itc(rng, anatomy, mpp, room)
        if lesion is None:
            w_mm = (anatomy.frame[2] * 2) * mpp / 1000
            raise ConfigError(f"a {kind} metastasis does not fit a node of {w_mm:.2f} mm; make the slide larger")
        lesions.append(lesion)
        room = room.difference(lesion.outline.buffer(60 * um))
        room = room if not room.is_empty else None
    return lesions


# --------------------------------------------------------------------------- artefacts


def make_artefacts(rng: np.random.Generator, tissue, width: int, height: int, mpp: float, *, fold: bool = False,
                   blur: bool = False, bubble: bool = False, pen: bool = False) -> Artefacts:
    """Draw the requested artefacts over a section.

    Parameters
    ----------
    rng : numpy.random.Generator
    tissue : shapely geometry
        The section, level-0 pixels.
    width, height : int
        Slide size, level-0 pixels.
    mpp : float
        Level-0 pixel size, µm per pixel.
    fold, blur, bubble, pen : bool
        Which artefacts to draw (one or two of each kind asked for).

    Returns
    -------
    Artefacts
    """
    um = 1.0 / mpp
    out = Artefacts()
    parts = [p for p in getattr(tissue, "geoms", [tissue]) if p.area > 0]
    main = max(parts, key=lambda p: p.area)
    if fold:
        for _ in range(rng.integers(1, 3)):
            c = _point_in(rng, main)
            if c is None:
                continue
            length = rng.uniform(400, 1300) * um
            ang = rng.uniform(0, np.pi)
            dx, dy = math.cos(ang) * length / 2, math.sin(ang) * length / 2
            bend = rng.normal(0, 0.15) * length
            line = LineString([(c[0] - dx, c[1] - dy), (c[0] - bend * math.sin(ang), c[1] + bend * math.cos(ang)),
                               (c[0] + dx, c[1] + dy)])
            band = _largest(line.buffer(rng.uniform(12, 40) * um, quad_segs=6).intersection(main))
            if band is not None:
                out.folds.append(_snap(band))
    if blur:
        for _ in range(rng.integers(1, 3)):
            r = rng.uniform(100, 260) * um
            c = _point_in(rng, main)
            if c is None:
                continue
            zone = _blob(rng, *c, r, aspect=rng.uniform(1, 1.6), angle=rng.uniform(0, np.pi), roughness=0.1)
            zone = _largest(zone.intersection(box(0, 0, width, height)))
            if zone is not None:
                out.blurs.append(_snap(zone))
                out.blur_sigma_um.append(float(rng.uniform(1.2, 3.0)))
    if bubble:
        for _ in range(rng.integers(1, 3)):
            r = rng.uniform(80, 300) * um
            c = _point_in(rng, main.buffer(r * 0.5))
            if c is None:
                continue
            disc = _blob(rng, *c, r, aspect=rng.uniform(1, 1.15), angle=rng.uniform(0, np.pi), roughness=0.02,
                         n_vertices=96)
            disc = _largest(disc.intersection(box(0, 0, width, height)))
            if disc is not None:
                out.bubbles.append(_snap(disc))
    if pen:
        out.pens, out.pen_colors = _pen_strokes(rng, parts, width, height, int(rng.integers(1, 3)))
    return out
