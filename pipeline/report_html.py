"""``report.html``: a leaderboard as one self-contained page.

Everything the page shows is inside the file: the plots are inline SVG drawn here (ROC, lesion FROC and reliability
curves of every head, one set per encoder), the heatmap thumbnails are PNG ``data:`` URIs, and the only script is
inline (sorting the table). No font, style sheet, script or image is fetched, so the page opens offline and
leaks nothing. Links to the full-size heatmaps, the QuPath GeoJSON files and each run's own plots are relative to
the page, so the output folder can be moved or archived as a whole.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

from ..fileio import atomic_write
from .camelyon import LESION_TYPES, lesion_type
from .inputs import SlideInput

__all__ = ["write_report_html"]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
            "#bcbd22")
_THUMB = 240  # px, longest side of a heatmap thumbnail

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1400px;
padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.86em;margin:.5em 0}th,td{border:1px solid #ddd;padding:3px 6px;
text-align:right;white-space:nowrap}th{background:#f4f4f4;cursor:pointer}td.t,th.t{text-align:left}
tr:nth-child(even) td{background:#fafafa}.summary{font-size:1.05em;background:#eef5ff;padding:.6em .8em;
border-left:4px solid #1f77b4}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em;margin:.3em 0}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots svg{border:1px solid #eee;background:#fff}
.meta{color:#555;font-size:.9em}.pos{color:#a00;font-weight:600}img.thumb{display:block;max-width:240px}
.small{font-size:.8em;color:#666}
"""

_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows),asc=th.dataset.asc!=='1';
      rows.sort(function(a,b){
        var x=a.cells[i].dataset.v!==undefined?a.cells[i].dataset.v:a.cells[i].textContent,
            y=b.cells[i].dataset.v!==undefined?b.cells[i].dataset.v:b.cells[i].textContent,
            nx=parseFloat(x),ny=parseFloat(y);
        var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:String(x).localeCompare(String(y));
        return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});
      th.dataset.asc=asc?'1':'0';});});});
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _cell(v, digits: int = 3, extra: str = "") -> str:
    sort = "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f' data-v="{v}"'
    return f"<td{sort}>{_num(v, digits)}{extra}</td>"


def _ci_cell(row: dict, key: str) -> str:
    return _cell(row.get(key), extra=f' <span class="small">[{_num(row.get(key + "_ci_low"))}–'
                                     f'{_num(row.get(key + "_ci_high"))}]</span>')


# ---------------------------------------------------------------------------------------------------- SVG plots
class _Plot:
    """A small line chart in SVG: data coordinates mapped onto a fixed pixel frame, with axes and a legend."""

    W, H, L, R, T, B = 380, 330, 48, 12, 28, 42

    def __init__(self, title: str, xlabel: str, ylabel: str, xlim: tuple[float, float], ylim: tuple[float, float],
                 *, xlog: bool = False):
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.xlim, self.ylim, self.xlog = xlim, ylim, xlog
        self.parts: list[str] = []
        self.legend: list[tuple[str, str]] = []

    def _x(self, v: float) -> float:
        lo, hi = self.xlim
        if self.xlog:
            v, lo, hi = math.log10(max(v, lo)), math.log10(lo), math.log10(hi)
        v = min(max(v, lo), hi)
        return self.L + (v - lo) / (hi - lo) * (self.W - self.L - self.R)

    def _y(self, v: float) -> float:
        lo, hi = self.ylim
        v = min(max(v, lo), hi)
        return self.H - self.B - (v - lo) / (hi - lo) * (self.H - self.T - self.B)

    def line(self, xs, ys, color: str, label: str | None = None, *, dash: str | None = None, step: bool = False,
             markers: bool = False, width: float = 1.6) -> None:
        pts = [(self._x(x), self._y(y)) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
        if not pts:
            return
        if step:
            stepped = [pts[0]]
            for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
                stepped += [(x1, y0), (x1, y1)]
            pts = stepped
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{dash_attr} points="{d}"/>')
        if markers:
            self.parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{color}"/>' for x, y in pts]
        if label:
            self.legend.append((color, label))

    def svg(self) -> str:
        x0, x1, y0, y1 = self.L, self.W - self.R, self.T, self.H - self.B
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.W}" height="{self.H}" '
               f'viewBox="0 0 {self.W} {self.H}" role="img" aria-label="{_e(self.title)}">',
               f'<text x="{self.W / 2}" y="16" text-anchor="middle" font-size="13">{_e(self.title)}</text>',
               f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#999"/>']
        ticks_x = ([0.125, 0.25, 0.5, 1, 2, 4, 8, 16] if self.xlog else
                   [self.xlim[0] + i * (self.xlim[1] - self.xlim[0]) / 5 for i in range(6)])
        for v in ticks_x:
            x = self._x(v)
            out.append(f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y1 + 4}" stroke="#999"/>'
                       f'<text x="{x:.1f}" y="{y1 + 15}" text-anchor="middle" font-size="10">{v:g}</text>')
        for i in range(6):
            v = self.ylim[0] + i * (self.ylim[1] - self.ylim[0]) / 5
            y = self._y(v)
            out.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0}" y2="{y:.1f}" stroke="#999"/>'
                       f'<text x="{x0 - 6}" y="{y + 3:.1f}" text-anchor="end" font-size="10">{v:.1f}</text>')
        out.append(f'<text x="{(x0 + x1) / 2}" y="{self.H - 8}" text-anchor="middle" font-size="11">'
                   f'{_e(self.xlabel)}</text>')
        out.append(f'<text x="12" y="{(y0 + y1) / 2}" text-anchor="middle" font-size="11" '
                   f'transform="rotate(-90 12 {(y0 + y1) / 2})">{_e(self.ylabel)}</text>')
        out += self.parts
        for i, (color, label) in enumerate(self.legend):
            y = y1 - 8 - 12 * (len(self.legend) - 1 - i)
            out.append(f'<line x1="{x1 - 128}" y1="{y - 3}" x2="{x1 - 114}" y2="{y - 3}" stroke="{color}" '
                       f'stroke-width="2"/><text x="{x1 - 110}" y="{y}" font-size="10">{_e(label)}</text>')
        out.append("</svg>")
        return "".join(out)


def _plots(encoder: str, results: list[dict], heads: list[str]) -> str:
    """ROC, FROC and reliability plots of one encoder's heads (their first seed)."""
    roc = _Plot(f"ROC, {encoder}", "1 - specificity", "sensitivity", (0, 1), (0, 1))
    froc = _Plot(f"lesion FROC, {encoder}", "average false positives per slide", "lesion sensitivity",
                 (0.125, 16), (0, 1), xlog=True)
    rel = _Plot(f"reliability, {encoder}", "predicted probability", "observed tumour fraction", (0, 1), (0, 1))
    roc.line([0, 1], [0, 1], "#bbb", dash="4 3", width=1)
    rel.line([0, 1], [0, 1], "#bbb", dash="4 3", width=1)
    any_froc = False
    for i, head in enumerate(heads):
        res = next((r for r in results if r["head"] == head), None)
        if res is None:
            continue
        color = _PALETTE[i % len(_PALETTE)]
        curves = res.get("curves") or {}
        auc = res["metrics"].get("auc")
        if curves.get("roc"):
            roc.line(curves["roc"]["fpr"], curves["roc"]["tpr"], color, f"{head} {_num(auc)}")
        if curves.get("froc"):
            any_froc = True
            fr = curves["froc"]
            pts = sorted(zip(fr["fps"], fr["sensitivity"]))
            froc.line([p[0] for p in pts], [p[1] for p in pts], color,
                      f"{head} {_num((res.get('froc') or {}).get('froc'))}", step=True)
        if curves.get("reliability"):
            c = curves["reliability"]
            rel.line(c["confidence"], c["observed"], color, f"{head} {_num(res['metrics'].get('ece_class1'))}",
                     markers=True)
    svgs = [roc.svg()] + ([froc.svg()] if any_froc else []) + [rel.svg()]
    return '<div class="plots">' + "".join(svgs) + "</div>"


# ---------------------------------------------------------------------------------------------------- thumbnails
def _thumbnail(path: Path) -> str | None:
    """A PNG data URI of ``path`` scaled to :data:`_THUMB` px on its longest side, or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((_THUMB, _THUMB))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------------- the page
def _leaderboard_table(rows: list[dict]) -> str:
    head = ["#", "encoder", "head", "seeds", "AUC [95 % CI]", "FROC", "balanced acc.", "ECE class 1", "ECE top label",
            "AUC macro", "AUC micro", "AUC ITC", "Δ AUC vs baseline", "Δ AUC micro vs baseline", "train s"]
    out = ['<table id="leaderboard" class="sortable"><thead><tr>'
           + "".join(f'<th class="t">{_e(h)}</th>' if h in ("encoder", "head") else f"<th>{_e(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for r in rows:
        sd = r.get("seeds", 1) > 1
        auc_extra = f' ± {_num(r.get("auc_sd"))}' if sd else ""
        out.append(
            f'<tr data-encoder="{_e(r["encoder"])}" data-head="{_e(r["head"])}">'
            f'<td>{r["rank"]}</td><td class="t">{_e(r["encoder"])}</td><td class="t">{_e(r["head"])}</td>'
            f'<td>{r.get("seeds", 1)}</td>'
            + _cell(r.get("auc"), extra=f'{auc_extra} <span class="small">[{_num(r.get("auc_ci_low"))}–'
                                        f'{_num(r.get("auc_ci_high"))}]</span>')
            + _cell(r.get("froc"), extra=f' ± {_num(r.get("froc_sd"))}' if sd else "")
            + _cell(r.get("balanced_accuracy")) + _cell(r.get("ece_class1")) + _cell(r.get("ece_top_label"))
            + "".join(_ci_cell(r, f"auc_{t}") for t in LESION_TYPES)
            + _cell(r.get("delta_auc_vs_baseline"), extra=f' <span class="small">[{_num(r.get("delta_auc_ci_low"))}–'
                                                           f'{_num(r.get("delta_auc_ci_high"))}]</span>')
            + _cell(r.get("delta_auc_micro_vs_baseline"),
                    extra=f' <span class="small">[{_num(r.get("delta_auc_micro_ci_low"))}–'
                          f'{_num(r.get("delta_auc_micro_ci_high"))}]</span>')
            + _cell(r.get("train_seconds"), 1) + "</tr>")
    out.append("</tbody></table>")
    n = {t: rows[0].get(f"n_{t}", 0) for t in LESION_TYPES} if rows else {}
    out.append(f'<p class="small">AUC per largest-lesion class: the test slides whose largest lesion is of that class '
               f'({n.get("macro", 0)} macro-metastasis, {n.get("micro", 0)} micro-metastasis, {n.get("itc", 0)} '
               "ITC-only) against every normal test slide. Δ: AUC minus the baseline head's on the same slides, "
               "with a paired bootstrap 95 % CI (the gap is real when the interval excludes 0). Click a column "
               "to sort.</p>")
    return "".join(out)


def _predictions_table(out_dir: Path, record: dict, pairs: list[dict], heatmaps: dict[str, dict[str, str]],
                       test: list[SlideInput]) -> str:
    order = [(r["encoder"], r["head"]) for r in record["leaderboard"]]
    probs: dict[tuple[str, str], dict[str, list[float]]] = {}
    for res in pairs:
        by = probs.setdefault((res["encoder"], res["head"]), {})
        for p in res["predictions"]:
            by.setdefault(p["slide_id"], []).append(p["calibrated_probability"])
    out = ['<table id="predictions" class="sortable"><thead><tr><th class="t">slide</th><th>label</th>'
           '<th class="t">largest lesion</th>'
           + "".join(f"<th>{_e(h)}<br><span class='small'>{_e(e)}</span></th>" for e, h in order)
           + '<th class="t">heatmap (best row)</th></tr></thead><tbody>']
    for it in sorted(test, key=lambda s: s.slide_id):
        sid = it.slide_id
        kind = lesion_type(it.meta.get("lesion_type"))
        size = it.meta.get("largest_lesion_um")
        label = "" if it.label is None else str(it.label)
        cells = [f'<td class="t">{_e(sid)}</td><td class="{"pos" if it.label == 1 else ""}">{_e(label)}</td>'
                 f'<td class="t">{_e(kind)}{(" " + _e(size) + " µm") if size else ""}</td>']
        for key in order:
            vals = probs.get(key, {}).get(sid)
            cells.append(_cell(sum(vals) / len(vals) if vals else None))
        maps = heatmaps.get(sid, {})
        thumb = _thumbnail(out_dir / maps["heatmap"]) if "heatmap" in maps else None
        links = []
        if "geojson" in maps:
            links.append(f'<a href="{_e(Path(maps["geojson"]).as_posix())}">GeoJSON</a>')
        if "heatmap" in maps:
            links.append(f'<a href="{_e(Path(maps["heatmap"]).as_posix())}">full size</a>')
        img = ""
        if thumb:
            img = f'<img class="thumb" alt="heatmap of {_e(sid)}" src="{thumb}">'
            if "geojson" in maps:
                img = f'<a href="{_e(Path(maps["geojson"]).as_posix())}">{img}</a>'
        cells.append(f'<td class="t">{img}<span class="small">{" · ".join(links) or "—"}</span></td>')
        out.append(f'<tr data-slide="{_e(sid)}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _runs_list(pairs: list[dict]) -> str:
    items = []
    for res in pairs:
        base = res["dir"]
        links = " · ".join(f'<a href="{_e(base)}/{name}">{name}</a>'
                           for name in ("result.json", "roc.png", "froc.png", "reliability.png"))
        kw = ", ".join(f"{k}={v}" for k, v in (res.get("head_kwargs") or {}).items())
        items.append(f"<li>{_e(res['encoder'])} + {_e(res['head'])}{f' ({_e(kw)})' if kw else ''}, "
                     f"seed {res['seed']}: AUC "
                     f"{_num(res['metrics'].get('auc'))}, trained in {_num(res.get('train_seconds'), 1)} s — {links}"
                     "</li>")
    return "<ul class='small'>" + "".join(items) + "</ul>"


def write_report_html(path: str | os.PathLike, record: dict, pairs: list[dict],
                      heatmaps: dict[str, dict[str, str]], test: list[SlideInput]) -> Path:
    """Write the leaderboard page (atomically).

    Parameters
    ----------
    path : str or os.PathLike
        ``report.html`` inside the leaderboard's output folder (links are relative to it).
    record : dict
        The leaderboard record (``bench.json`` content: config, leaderboard rows, warnings …).
    pairs : list of dict
        Every (encoder, head, seed) result (with ``curves`` and ``predictions``).
    heatmaps : dict of str to dict
        Per test slide, ``{"geojson": …, "heatmap": …}`` paths relative to the output folder.
    test : list of SlideInput
        The test slides (labels and largest-lesion classes).

    Returns
    -------
    Path
    """
    path = Path(path)
    out_dir = path.parent
    cfg = record["config"]
    b = cfg["bench"]
    heads = [h.strip().lower().replace("-", "_") for h in cfg["heads"]]
    seed0 = cfg["seeds"][0]
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             "<title>slidestream leaderboard</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>slidestream leaderboard</h1>", f"<p class='summary'>{_e(record['summary'])}</p>"]
    parts += [f"<p class='warn'>warning: {_e(w)}</p>" for w in record.get("warnings", [])]
    n_train, n_test = len(record["splits"]["train"]), len(record["splits"]["test"])
    parts.append(
        f"<p class='meta'>{n_train} training slides, {n_test} test slides; encoders {_e(', '.join(cfg['encoders']))} "
        f"(weights: {_e(b['weights'])}); heads {_e(', '.join(cfg['heads']))}; seeds {_e(cfg['seeds'])}; "
        f"{b['folds']}-fold CV, {b['epochs']} epochs, lr {b['lr']}, balance {_e(b['balance'])}, precision "
        f"{_e(b.get('precision', 'auto'))}; tiles "
        f"{b['tiling']['tile_size']} px at {b['tiling']['mpp']} µm/px; FROC at {b['froc_mpp']:g} µm/px; "
        f"{cfg['n_bootstrap']} bootstrap resamples; {record['seconds']:.0f} s"
        + (f"; left out: {_e(', '.join(record['excluded']['slides']))}" if record["excluded"]["slides"] else "")
        + "</p>")
    parts += ["<h2>Leaderboard</h2>", _leaderboard_table(record["leaderboard"])]
    parts.append(f"<h2>Curves</h2><p class='small'>First seed ({seed0}) of each head; legends give the AUC, FROC "
                 "and class-1 ECE.</p>")
    for encoder in cfg["encoders"]:
        results = [r for r in pairs if r["encoder"] == encoder and r["seed"] == seed0]
        parts.append(_plots(encoder, results, heads))
    parts += ["<h2>Test slides</h2>",
              "<p class='small'>Calibrated P(tumour) per head (mean over seeds); heatmaps and GeoJSON of the best row "
              "(open the GeoJSON in QuPath over the slide).</p>",
              _predictions_table(out_dir, record, pairs, heatmaps, test),
              "<h2>Runs</h2>", _runs_list(pairs),
              f"<p class='small'>slidestream {_e(record['software'].get('slidestream'))}; "
              + _e(", ".join(f"{k} {v}" for k, v in record["software"].items() if v and k != "slidestream"))
              + "</p>", f"<script>{_JS}</script></body></html>"]
    return atomic_write(path, "\n".join(parts) + "\n")
