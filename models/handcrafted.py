"""A weight-free tile encoder: colour, H&E optical density, texture and nuclei-density statistics.

The classic radiomics baseline, in pure torch on uint8 batches so it runs wherever the deep encoders run (CPU or
GPU) and needs no download. Every feature is a fixed, documented statistic (:data:`FEATURE_NAMES`); the output is
``float32 (B, 96)`` and finite for any input, including blank, white and black tiles.

Scale matters: the nuclei and texture features assume tiles at about 0.5 µm/px (20x), where a nucleus is
roughly 10-25 px across. Tiles are never resized to a fixed side (only averaged 2x2 and 4x4 internally), so a
256 px tile at 0.5 µm/px gives the same kind of numbers as a 224 px one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FEATURE_NAMES", "HandcraftedEncoder", "handcrafted_features", "RUIFROK_RGB_FROM_HED"]

#: Ruifrok & Johnston (2001) stain vectors (rows: hematoxylin, eosin, DAB) in optical-density space.
RUIFROK_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))

_RGB_Q = (0.1, 0.5, 0.9)
_H_Q = (0.1, 0.5, 0.9, 0.99)
_E_Q = (0.1, 0.5, 0.9)
_DARK_T = (0.30, 0.45, 0.60)  # grey level (0-1) below which a pixel counts as dark
_H_T = (0.25, 0.40, 0.60, 0.80)  # hematoxylin OD above which a pixel counts as nuclear
_NUC_T = 0.40  # hematoxylin OD of the nuclear mask used by the morphology proxies
_HIST_LO, _HIST_HI, _HIST_BINS = -0.5, 2.5, 96  # histogram range of stain OD (covers white to black)
_GRAD_HI, _GRAD_BINS = 1.0, 64  # gradient magnitude of [0, 1] grey (or H OD) per pixel, clipped
_GLASS = 220.0  # grey level (0-255) above which a pixel counts as glass, not tissue
_GLCM_LEVELS = 8
_GLCM_DIST = (1, 2)  # at quarter resolution: 4 and 8 px at full resolution
_EROSIONS = (3, 5, 9)  # erosion widths at half resolution: nuclei wider than ~6, 10, 18 px survive
_BLOCK = 8  # local statistics window at half resolution (16 px at full resolution)


def _names() -> tuple[str, ...]:
    n: list[str] = []
    rgb = "rgb"
    n += [f"{c}_mean" for c in rgb] + [f"{c}_std" for c in rgb]
    n += [f"{c}_q{int(q * 100)}" for c in rgb for q in _RGB_Q]
    n += [f"{c}_entropy" for c in rgb]
    n += [f"od_{c}_mean" for c in rgb] + [f"od_{c}_std" for c in rgb]
    n += ["h_mean", "h_std"] + [f"h_q{int(q * 100)}" for q in _H_Q]
    n += ["e_mean", "e_std"] + [f"e_q{int(q * 100)}" for q in _E_Q]
    n += ["dab_mean", "dab_std", "h_over_e", "h_e_corr", "e_dominant_frac"]
    n += ["sat_mean", "sat_std", "val_mean", "val_std"]
    n += ["tissue_frac"] + [f"dark_frac_{t:.2f}" for t in _DARK_T] + [f"h_frac_{t:.2f}" for t in _H_T]
    n += ["grad_mean", "grad_std", "grad_q50", "grad_q90", "h_grad_mean", "h_grad_std", "h_grad_q90"]
    n += [f"lbp_riu2_{i}" for i in range(10)]
    for d in _GLCM_DIST:
        n += [f"glcm{d}_{s}" for s in ("contrast", "homogeneity", "energy", "correlation", "entropy")]
    n += [f"nuc_erode{k}_frac" for k in _EROSIONS]
    n += ["nuc_perimeter_per_area", "nuc_edge_density", "nuc_block_frac_10", "nuc_block_frac_30"]
    n += ["h_localvar_mean", "h_localvar_std", "h_localmean_std"]
    n += ["grey_localvar_mean", "grey_localvar_std", "grey_localmean_std"]
    n += ["dog_fine_mean", "dog_fine_q90", "dog_coarse_mean", "dog_coarse_q90"]
    return tuple(n)


#: Name of each output column, in order.
FEATURE_NAMES: tuple[str, ...] = _names()
N_FEATURES = len(FEATURE_NAMES)


def _riu2_table() -> Tensor:
    # rotation-invariant uniform LBP (Ojala 2002): codes with <= 2 bit transitions map to their bit count
    # (0..8), all others to bin 9
    table = torch.empty(256, dtype=torch.long)
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        transitions = sum(bits[i] != bits[(i + 1) % 8] for i in range(8))
        table[code] = sum(bits) if transitions <= 2 else 9
    return table


_RIU2 = _riu2_table()


def _hed_from_rgb() -> Tensor:
    m = torch.tensor(RUIFROK_RGB_FROM_HED, dtype=torch.float64)
    m = m / m.norm(dim=1, keepdim=True)
    return torch.linalg.inv(m).float()


_HED = _hed_from_rgb()


def _row_offsets(rows: int, nbins: int, device: torch.device, shape: tuple[int, ...]) -> Tensor:
    """int32 offsets ``row * nbins`` shaped to broadcast against a (rows, ...) index tensor."""
    return (torch.arange(rows, device=device, dtype=torch.int32) * nbins).view(shape)


def _bincount(idx: Tensor, rows: int, nbins: int) -> Tensor:
    """Counts of an index tensor already offset by ``row * nbins`` → float32 (rows, nbins)."""
    return torch.bincount(idx.reshape(-1), minlength=rows * nbins).view(rows, nbins).float()


def _binned(v: Tensor, lo: float, hi: float, nbins: int) -> Tensor:
    """Bin numbers of a float tensor over ``[lo, hi)``, clipped to the end bins, as int32."""
    return ((v - lo) * (nbins / (hi - lo))).clamp_(0, nbins - 1).to(torch.int32)


def _hist_rows(v: Tensor, lo: float, hi: float, nbins: int) -> Tensor:
    """Histogram of each row of v float (R, ...) over ``[lo, hi)`` → float32 (R, nbins)."""
    rows = v.shape[0]
    idx = _binned(v, lo, hi, nbins) + _row_offsets(rows, nbins, v.device, (rows,) + (1,) * (v.ndim - 1))
    return _bincount(idx, rows, nbins)


def _hist_quantiles(hist: Tensor, qs: tuple[float, ...], lo: float, hi: float) -> Tensor:
    """Quantiles from histograms (R, nbins) over ``[lo, hi)``, interpolated within the bin → (R, len(qs))."""
    nbins = hist.shape[1]
    width = (hi - lo) / nbins
    cdf = hist.cumsum(1)
    total = cdf[:, -1:].clamp_min(1.0)
    target = torch.tensor(qs, device=hist.device, dtype=hist.dtype).unsqueeze(0) * total
    k = torch.searchsorted(cdf.contiguous(), target.contiguous()).clamp(max=nbins - 1)
    before = torch.where(k > 0, cdf.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(target))
    inside = hist.gather(1, k).clamp_min(1.0)
    frac = ((target - before) / inside).clamp(0.0, 1.0)
    return lo + (k.to(hist.dtype) + frac) * width


def _entropy(hist: Tensor) -> Tensor:
    """Shannon entropy in bits of each histogram row (R, nbins) → (R,)."""
    p = hist / hist.sum(1, keepdim=True).clamp_min(1.0)
    return -(p * torch.log2(p.clamp_min(1e-12))).sum(1)


def _count(m: Tensor) -> Tensor:
    """Number of True entries per row of a bool (B, ...) tensor → float32 (B,)."""
    # int32 accumulation: summing bools defaults to int64, twice as slow here
    return m.flatten(1).sum(1, dtype=torch.int32).float()


def _mean_std(v: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std over all but the first dim of v float (B, ...) → two (B,)."""
    v = v.reshape(v.shape[0], -1)
    mean = v.mean(1)
    std = (v.square().mean(1) - mean.square()).clamp_min(0.0).sqrt()
    return mean, std


def _half(x: Tensor) -> Tensor:
    """2x2 mean of uint8 (B, H, W, 3) → float32 planes (B, 3, H//2, W//2) in [0, 255] (odd edges dropped).

    The two rows of each pair are summed in int16 (no overflow: 4 x 255 < 2^15), then the two columns, and
    the sums are written straight into a planar float tensor: about one pass over the input, and about
    twice as fast on CPU as ``avg_pool2d`` on a permuted float copy.
    """
    b, h, w, _ = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2]
    rows = x.reshape(b, h2, 2 * 2 * w2 * 3)
    half = 2 * w2 * 3
    s = rows[:, :, :half].to(torch.int16)
    s += rows[:, :, half:]
    s = s.view(b, h2, w2, 2, 3)
    s = s[:, :, :, 0] + s[:, :, :, 1]  # (B, h2, w2, 3) int16 sums of 2x2 blocks
    out = torch.empty((b, 3, h2, w2), dtype=torch.float32, device=x.device)
    out.permute(0, 2, 3, 1).copy_(s)
    return out.mul_(0.25)


def _gradient(a: Tensor) -> Tensor:
    """Central-difference gradient magnitude of (B, H, W) float → (B, H-2, W-2).

    On the 2x2-averaged image this is a smoothed derivative, like Sobel, at a third of the cost.
    """
    gx = a[:, 1:-1, 2:] - a[:, 1:-1, :-2]
    gy = a[:, 2:, 1:-1] - a[:, :-2, 1:-1]
    return torch.hypot(gx, gy).mul_(0.5)


def _lbp_riu2(g: Tensor) -> Tensor:
    """Normalised 10-bin rotation-invariant uniform LBP histogram of (B, H, W) float → (B, 10)."""
    b = g.shape[0]
    c = g[:, 1:-1, 1:-1]
    h, w = c.shape[1], c.shape[2]
    code = torch.zeros(c.shape, dtype=torch.uint8, device=g.device)
    # neighbours in circular order, so that uniformity (bit transitions) means what it says
    offsets = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))
    for bit, (dy, dx) in enumerate(offsets):
        code.add_((g[:, dy:dy + h, dx:dx + w] >= c).to(torch.uint8), alpha=1 << bit)
    idx = _RIU2.to(g.device)[code.int()] + _row_offsets(b, 10, g.device, (b, 1, 1))
    hist = _bincount(idx, b, 10)
    return hist / hist.sum(1, keepdim=True).clamp_min(1.0)


def _glcm_stats(q: Tensor, d: int) -> Tensor:
    """Grey-level co-occurrence statistics at distance ``d``, horizontal and vertical pooled, symmetric.

    Parameters
    ----------
    q : torch.Tensor
        int32 (B, H, W) grey levels in ``[0, L)``.
    d : int
        Pixel distance.

    Returns
    -------
    torch.Tensor
        float32 (B, 5): contrast, homogeneity, energy, correlation (as in ``skimage.feature.graycoprops``)
        and entropy (bits).
    """
    levels = _GLCM_LEVELS
    b = q.shape[0]
    first = q * levels + _row_offsets(b, levels * levels, q.device, (b, 1, 1))
    p = (_bincount(first[:, :, :-d] + q[:, :, d:], b, levels * levels)
         + _bincount(first[:, :-d, :] + q[:, d:, :], b, levels * levels)).view(b, levels, levels)
    p = p + p.transpose(1, 2)
    p = p / p.sum((1, 2), keepdim=True).clamp_min(1.0)
    i = torch.arange(levels, device=q.device, dtype=p.dtype)
    ii, jj = i.view(1, -1, 1), i.view(1, 1, -1)
    contrast = (p * (ii - jj).square()).sum((1, 2))
    homogeneity = (p / (1.0 + (ii - jj).square())).sum((1, 2))
    energy = p.square().sum((1, 2)).sqrt()
    mu = (p * ii).sum((1, 2)).view(-1, 1, 1)
    var = (p * (ii - mu).square()).sum((1, 2))
    cov = (p * (ii - mu) * (jj - mu)).sum((1, 2))
    # a flat tile has no co-occurrence structure: call its correlation 0 rather than 0/0
    corr = torch.where(var > 1e-9, cov / var.clamp_min(1e-9), torch.zeros_like(var))
    ent = -(p * torch.log2(p.clamp_min(1e-12))).sum((1, 2))
    return torch.stack([contrast, homogeneity, energy, corr, ent], dim=1)


def _runs(m: Tensor, dim: int, widths: tuple[int, ...]) -> list[Tensor]:
    """AND of ``k`` consecutive entries along ``dim`` for each k in increasing odd ``widths`` (valid region)."""
    out, cur, cur_k = [], m, 1
    for k in widths:
        while cur_k < k:
            # grow the run by doubling while possible, else by the remainder; each step is one AND
            step = min(cur_k, k - cur_k)
            n = cur.shape[dim] - step
            cur = cur.narrow(dim, 0, n) & cur.narrow(dim, step, n)
            cur_k += step
        out.append(cur)
    return out


def _erosion_survival(mask: Tensor, area: Tensor) -> list[Tensor]:
    """Share of the mask surviving a k×k erosion for each k in ``_EROSIONS``; mask bool (B, H, W)."""
    out = []
    for k, horiz in zip(_EROSIONS, _runs(mask, 2, _EROSIONS)):
        square = _runs(horiz, 1, (k,))[0]
        out.append(square.flatten(1).sum(1).float() / area.clamp_min(1.0))
    return out


def _local_stats(v: Tensor, k: int) -> Tensor:
    """Mean and std of the k×k block variances, and std of the block means; v (B, H, W) → (B, 3)."""
    v = v.unsqueeze(1)
    m = F.avg_pool2d(v, k)
    var = (F.avg_pool2d(v.square(), k) - m.square()).clamp_min(0.0)
    vm, vs = _mean_std(var)
    _, ms = _mean_std(m)
    return torch.stack([vm, vs, ms], dim=1)


def _box_means(v: Tensor, sizes: tuple[int, ...]) -> list[Tensor]:
    """Centred k×k box means of v (B, H, W) from one integral image, all cropped to the largest box's valid
    region so that they align pixel for pixel → list of (B, H-K+1, W-K+1)."""
    s = F.pad(v.double().cumsum(1).cumsum(2), (1, 0, 1, 0))  # float64: differences of large sums stay exact
    big = max(sizes)
    h, w = v.shape[1] - big + 1, v.shape[2] - big + 1
    out = []
    for k in sizes:
        o = (big - k) // 2
        a = s[:, o:o + h, o:o + w]
        box = s[:, o + k:o + k + h, o + k:o + k + w] - s[:, o:o + h, o + k:o + k + w] \
            - s[:, o + k:o + k + h, o:o + w] + a
        out.append((box / (k * k)).float())
    return out


def _as_uint8(x: Tensor) -> Tensor:
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"handcrafted features need tiles as (B, H, W, 3), got shape {tuple(x.shape)}")
    if x.shape[1] < 40 or x.shape[2] < 40:
        raise ValueError(f"tiles of {x.shape[1]}x{x.shape[2]} px are too small for the texture features "
                         "(need >= 40 px a side)")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if x.is_floating_point():
        return x.round().clamp(0, 255).to(torch.uint8).contiguous()
    raise TypeError(f"tiles must be uint8 (or float in [0, 255]), got {x.dtype}")


def handcrafted_features(x: Tensor) -> Tensor:
    """Colour, H&E, texture and nuclei-density statistics of RGB tiles.

    Parameters
    ----------
    x : torch.Tensor
        uint8 ``(B, H, W, 3)`` RGB tiles (float in [0, 255] is rounded to uint8), on any device; H, W >= 40,
        ideally at about 0.5 µm/px.

    Returns
    -------
    torch.Tensor
        float32 ``(B, 96)`` on the same device, columns named by :data:`FEATURE_NAMES`. Colour, stain, gradient
        and nuclear-mask statistics are taken on the 2x2-averaged tile (about 1 µm/px at 20x), texture (LBP,
        GLCM) and blob responses on the 4x4-averaged one (about 2 µm/px): RGB means, stds, 10/50/90 %
        quantiles and entropies; optical density (OD = -log10((I+1)/256)) per channel; hematoxylin, eosin and
        residual (DAB) OD from a fixed Ruifrok colour deconvolution, with quantiles; saturation/value; tissue,
        dark and nuclear pixel fractions; gradient-magnitude statistics of grey and hematoxylin; a
        rotation-invariant uniform LBP histogram and GLCM statistics; nuclear-mask morphology (erosion
        survival, perimeter/area, block densities); local-variance statistics; and difference-of-box blob
        responses on hematoxylin. Always finite.
    """
    x = _as_uint8(x)
    b = x.shape[0]
    dev = x.device
    feats: list[Tensor] = []

    rgb = _half(x)  # (B, 3, h, w) float in [0, 255]
    red, green, blue = rgb.unbind(1)
    npx = float(rgb.shape[2] * rgb.shape[3])

    # --- colour: moments, and quantiles/entropy/OD moments from one histogram pass --------------------------
    flat = rgb.flatten(2)
    mean = flat.mean(2)
    std = (flat.square().mean(2) - mean.square()).clamp_min(0.0).sqrt()
    hist = _bincount(rgb.to(torch.int32) + _row_offsets(b * 3, 256, dev, (b, 3, 1, 1)), b * 3, 256)
    levels = torch.arange(256, device=dev, dtype=torch.float32)
    od_lut = -torch.log10(((levels + 0.5).clamp_max(255.0) + 1.0) / 256.0)  # OD at each bin's centre
    od_mean = (hist @ od_lut) / npx
    od_std = ((hist @ od_lut.square()) / npx - od_mean.square()).clamp_min(0.0).sqrt()
    feats += [mean / 255.0, std / 255.0,
              (_hist_quantiles(hist, _RGB_Q, 0.0, 256.0).clamp_max(255.0) / 255.0).view(b, 9),
              _entropy(hist).view(b, 3) / 8.0, od_mean.view(b, 3), od_std.view(b, 3)]

    # --- colour deconvolution: OD = log10(256) - log10(I + 1), stains = OD @ inv(Ruifrok) -----------------
    log_i = (rgb + 1.0).log10_().unbind(1)
    m = _HED.tolist()  # m[channel][stain]
    c0 = math.log10(256.0)
    stains = []
    for k in range(3):
        # written out per plane: a 3x3 matmul over (N, 3) pixels is several times slower on CPU
        v = log_i[0].mul(-m[0][k]).add_(log_i[1], alpha=-m[1][k]).add_(log_i[2], alpha=-m[2][k])
        stains.append(v.add_(c0 * (m[0][k] + m[1][k] + m[2][k])))
    hch, ech, dch = stains
    st_mean = torch.stack([v.mean((1, 2)) for v in stains], 1)
    st_std = (torch.stack([v.square().mean((1, 2)) for v in stains], 1) - st_mean.square()).clamp_min(0.0).sqrt()
    h_mean, e_mean, d_mean = st_mean.unbind(1)
    h_std, e_std, d_std = st_std.unbind(1)
    # quantiles from every other pixel of every other row: as good an estimate, a quarter of the work
    h_q = _hist_quantiles(_hist_rows(hch[:, ::2, ::2], _HIST_LO, _HIST_HI, _HIST_BINS), _H_Q, _HIST_LO, _HIST_HI)
    e_q = _hist_quantiles(_hist_rows(ech[:, ::2, ::2], _HIST_LO, _HIST_HI, _HIST_BINS), _E_Q, _HIST_LO, _HIST_HI)
    he_cov = (hch * ech).mean((1, 2)) - h_mean * e_mean
    denom = h_std * e_std
    he_corr = torch.where(denom > 1e-6, he_cov / denom.clamp_min(1e-6), torch.zeros_like(he_cov))
    grey = red.mul(0.299).add_(green, alpha=0.587).add_(blue, alpha=0.114)  # (B, h, w) in [0, 255]
    tissue = grey < _GLASS
    n_tissue = _count(tissue)
    e_dom = _count((ech > hch) & tissue) / n_tissue.clamp_min(1.0)
    feats += [torch.stack([h_mean, h_std], 1), h_q, torch.stack([e_mean, e_std], 1), e_q,
              torch.stack([d_mean, d_std, h_mean / (h_mean.abs() + e_mean.abs() + 1e-3), he_corr, e_dom], 1)]

    # --- saturation and value (HSV without hue: the hue of H&E is carried by the stain features) ----------
    vmax = torch.maximum(red, green)
    torch.maximum(vmax, blue, out=vmax)
    vmin = torch.minimum(red, green)
    torch.minimum(vmin, blue, out=vmin)
    sat = vmax.sub(vmin).div_(vmax.clamp_min(1.0))
    s_mean, s_std = _mean_std(sat)
    v_mean, v_std = _mean_std(vmax)
    feats.append(torch.stack([s_mean, s_std, v_mean / 255.0, v_std / 255.0], 1))

    # --- pixel fractions ------------------------------------------------------------------------------------
    masks = [hch > t for t in _H_T]
    fr = [n_tissue] + [_count(grey < t * 255.0) for t in _DARK_T] + [_count(mk) for mk in masks]
    feats.append(torch.stack(fr, 1) / npx)

    # --- gradients ------------------------------------------------------------------------------------------
    grey01 = grey.mul_(1.0 / 255.0)
    grad, hgrad = _gradient(grey01), _gradient(hch)
    gm, gs = _mean_std(grad)
    hgm, hgs = _mean_std(hgrad)
    gq = _hist_quantiles(_hist_rows(grad[:, ::2, ::2], 0.0, _GRAD_HI, _GRAD_BINS), (0.5, 0.9), 0.0, _GRAD_HI)
    hgq = _hist_quantiles(_hist_rows(hgrad[:, ::2, ::2], 0.0, _GRAD_HI, _GRAD_BINS), (0.9,), 0.0, _GRAD_HI)
    feats.append(torch.cat([torch.stack([gm, gs], 1), gq, torch.stack([hgm, hgs], 1), hgq], 1))

    # --- texture at quarter resolution ------------------------------------------------------------------------
    g4 = F.avg_pool2d(grey01.unsqueeze(1), 2).squeeze(1)
    h4 = F.avg_pool2d(hch.unsqueeze(1), 2).squeeze(1)
    feats.append(_lbp_riu2(g4))
    q = (g4 * _GLCM_LEVELS).to(torch.int32).clamp_(0, _GLCM_LEVELS - 1)
    feats += [_glcm_stats(q, d) for d in _GLCM_DIST]

    # --- nuclei: morphology of the hematoxylin mask ----------------------------------------------------------
    mask = masks[_H_T.index(_NUC_T)]
    area = _count(mask)
    morph = _erosion_survival(mask, area)
    edges = _count(mask[:, :, 1:] ^ mask[:, :, :-1]) + _count(mask[:, 1:, :] ^ mask[:, :-1, :])
    morph += [edges / area.clamp_min(1.0), edges / npx]
    blocks = F.avg_pool2d(mask.unsqueeze(1).float(), _BLOCK).flatten(1)
    morph += [_count(blocks > 0.10) / blocks.shape[1], _count(blocks > 0.30) / blocks.shape[1]]
    feats.append(torch.stack(morph, 1))

    feats.append(_local_stats(hch, _BLOCK))
    feats.append(_local_stats(grey01, _BLOCK))

    # difference of box means ~ Laplacian of Gaussian: positive on hematoxylin blobs about 2-6 px (fine) and
    # 6-14 px (coarse) across here, i.e. 4-12 and 12-28 px (2-6 and 6-14 µm at 20x) at full resolution
    b1, b3, b7 = _box_means(h4, (1, 3, 7))
    for r in ((b1 - b3).clamp_min_(0.0), (b3 - b7).clamp_min_(0.0)):
        rq = _hist_quantiles(_hist_rows(r, 0.0, 1.0, 64), (0.9,), 0.0, 1.0)
        feats += [r.mean((1, 2)).unsqueeze(1), rq]

    out = torch.cat(feats, dim=1).float()
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


class HandcraftedEncoder(nn.Module):
    """:func:`handcrafted_features` as a module (no parameters), the backbone of the ``handcrafted`` preset."""

    embed_dim = N_FEATURES

    def forward(self, x: Tensor) -> Tensor:
        """uint8 ``(B, H, W, 3)`` → float32 ``(B, 96)``."""
        return handcrafted_features(x)

