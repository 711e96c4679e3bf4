"""Per-case segmentation metrics with medpy's definitions and an explicit empty-mask policy.

dice, jaccard (medpy `dc`, `jc`), hd95 (symmetric 95th-percentile Hausdorff) and asd (medpy's *asymmetric*
average surface distance of the prediction to the reference, which SSL4MIS-derived papers report as "ASD").
No spacing -> voxel units, as every reference script (PROTOCOLS.md §5.4).

Empty-mask policies (the card's `evaluation.empty_prediction`), for a class missing from the prediction:
  worst     - Dice = Jaccard = 0 and the distances = the image diagonal (in the units in use): honest, default.
  zero_all  - all metrics 0 (SS-Net / BCP / CML `test_ACDC.py`); note that this rewards a missed structure
              with a perfect HD95/ASD.
  dice0_hd0 - Dice 0 and HD95 0 (SSL4MIS `val_2D.py`), Jaccard and ASD 0 too: the same numbers as zero_all.
  error     - raise EmptyMaskError, as medpy does in SSL4MIS `test_2D_fully.py`.
  transunet - TransUNet's Synapse rule (Beckschen/TransUNet@2ffa29f `utils.py::calculate_metric_percase`), which
              depends on the reference too: a prediction on a class absent from the reference scores Dice 1,
              HD95 0; an empty prediction scores Dice 0, HD95 0 whatever the reference (both empty: 0, 0).
              Jaccard follows Dice and ASD follows HD95 (TransUNet computes only Dice and HD95).
A prediction on a class absent from the reference gets Dice = Jaccard = 0 and distances = the diagonal under
`worst`, NaN under zero_all/dice0_hd0 (the reference scripts crash there); both empty is NaN under `worst`
(nothing to score; NaNs are left out of means and counted) and 0 under zero_all/dice0_hd0/transunet.

Implementation (no medpy at run time; medpy 0.5.2 `medpy.metric.binary` is the test-only reference and the
values are bit-identical to it, see `tests/test_metrics.py`):
  surface(m)      = m XOR binary_erosion(m, generate_binary_structure(ndim, 1), iterations=1, border_value=0)
  d(a -> b)       = distance_transform_edt(NOT surface(b), sampling=spacing) read at surface(a), C order
  hd95(p, r)      = numpy.percentile(concat(d(p -> r), d(r -> p)), 95)          (medpy `hd95`)
  asd(p, r)       = mean(d(p -> r))                                             (medpy `asd`)
  assd(p, r)      = mean(concat(d(p -> r), d(r -> p)))                          (medpy 0.5.2 `assd`: the mean of
                    the pooled distances, NOT the mean of asd(p, r) and asd(r, p); the two differ when the
                    surfaces have different sizes)
  dice, jaccard   = medpy `dc`, `jc`. Both masks empty: medpy 0.5.2 gives dc = NaN (a numpy 0/0; its
                    ZeroDivisionError branch, 1.0, is dead code) but jc = 1.0 (a Python 0/0, caught); the
                    public `dice`/`jaccard` return the same. `mask_metrics` applies the policies above first.
Speed (same values): both masks are cropped to their joint bounding box (+1 voxel, clipped to the array;
`_crop_box` argues why that changes nothing), the surfaces are taken once, the two directed distance sets
are computed once each, and hd95, asd and assd all come from them. The distance sets come from one of:
  k-d tree path - when the grid arithmetic is exact (no spacing, or binary-fraction spacings such as 0.625 or
                  2.5; `_exact_scales`): surface voxels on the other surface are at 0, voxels a few voxels away
                  are found by exact ring lookups, the rest by a k-d tree over the other surface's voxels.
                  With exact arithmetic every nearest voxel gives the same float as medpy's EDT.
  EDT path      - any other spacing (e.g. 0.7 mm): scipy's feature transform on the cropped box, i.e.
                  medpy's own computation on fewer voxels, with the distances evaluated only where read.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

METRICS = ("dice", "jaccard", "hd95", "asd")
HIGHER_IS_BETTER = {"dice": True, "jaccard": True, "hd95": False, "asd": False}
SURFACE_METRICS = ("hd95", "asd", "assd")


class EmptyMaskError(ValueError):
    """Raised under the `error` policy when a prediction or reference mask is empty."""


# --------------------------------------------------------------------------------------------- overlap

def _as_bool(a) -> np.ndarray:
    return np.atleast_1d(np.asarray(a).astype(bool, copy=False))


def dice(pred, ref) -> float:
    """medpy `dc`: 2|P & R| / (|P| + |R|). Two empty masks give NaN, as medpy 0.5.2 does in practice.

    (medpy means to return 1.0 there, but its 0/0 is a numpy division, which gives NaN and a RuntimeWarning
    instead of raising the ZeroDivisionError it catches; here NaN comes without the warning.)
    """
    p, r = _as_bool(pred), _as_bool(ref)
    denom = np.count_nonzero(p) + np.count_nonzero(r)
    return math.nan if denom == 0 else 2.0 * np.count_nonzero(p & r) / float(denom)


def jaccard(pred, ref) -> float:
    """medpy `jc`: |P & R| / |P | R|; two empty masks give 1.0 (as medpy: its 0/0 is a Python division)."""
    p, r = _as_bool(pred), _as_bool(ref)
    union = np.count_nonzero(p | r)
    return 1.0 if union == 0 else float(np.count_nonzero(p & r)) / float(union)


# --------------------------------------------------------------------------------------------- surfaces

def _spacing(spacing, ndim: int) -> np.ndarray | None:
    """medpy's normalisation of `voxelspacing`: None, a scalar for every axis, or one value per axis."""
    if spacing is None:
        return None
    if isinstance(spacing, numbers.Number) or np.ndim(spacing) == 0:
        values = [float(spacing)] * ndim
    else:
        values = [float(s) for s in spacing]
        if len(values) != ndim:
            raise ValueError(f"spacing has {len(values)} values for a {ndim}-D mask")
    return np.ascontiguousarray(values, dtype=np.float64)


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = _as_bool(pred), _as_bool(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} differ in shape")
    return pred, ref


def _crop_box(pred: np.ndarray, ref: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Joint bounding box of the two masks (not both empty), grown by `margin` voxels, clipped to the array.

    Why no value changes when everything is computed on this box instead of the whole array:
    * Erosion. A voxel outside the box is background in both masks, and erosion only removes foreground, so
      it is no surface voxel either way. A voxel inside the box is eroded from its 2*ndim face neighbours;
      they lie inside the box (the margin), or outside the array, where the cropped and the uncropped erosion
      both see border_value=0 (the box is clipped exactly where the array ends). (Even with no margin a
      missing neighbour would lie outside the joint box, hence be background: the same 0.)
    * Distance transform. `distance_transform_edt(~surface(b))` read at surface(a) is the distance to the
      nearest zero, i.e. to the nearest surface voxel of b; all of those and all voxels where it is read lie
      in the box, so the minimum is over the same set. scipy's separable algorithm also takes the same steps:
      pass d along a line sees as sites only the voxels whose lower-dimensional slice holds a feature, and a
      slice outside the box holds none, so the cropped and the uncropped line have the same sites in the
      same order; every formula uses coordinate *differences*, which the crop offset leaves unchanged, so
      each feature (and each distance) is bit-identical. (The one step that starts differently, the scan of
      the lower envelope at the first voxel of a cropped line, ends on the same site: the envelope is
      unimodal at each voxel, with gaps of at least 2*spacing**2 between positions, far above rounding.)
    The box is also where the k-d tree path works (see `_exact_scales`), and where dice/jaccard are counted.
    """
    rest = pred | ref  # foreground of either, then collapsed axis by axis (long rows: fast any())
    boxes = []
    for n in pred.shape:
        rows = rest.reshape(n, -1)
        hit = np.flatnonzero(rows.any(1))
        boxes.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, n)))
        rest = rows.any(0)
    return tuple(boxes)


def _surface(mask: np.ndarray) -> np.ndarray:
    """medpy's 1-voxel border: mask XOR binary_erosion(mask, generate_binary_structure(ndim, 1), iterations=1).

    The erosion by the face-connected cross with border_value 0, written as shifted ANDs (5x faster than
    scipy's generic `binary_erosion`, identical output; `tests/test_metrics.py` checks it against scipy):
    a voxel stays iff it and its 2*ndim face neighbours are foreground, a neighbour outside the array
    counting as background.
    """
    interior = mask.copy()
    for axis in range(mask.ndim):
        lead = (slice(None),) * axis
        interior[lead + (slice(1, None),)] &= mask[lead + (slice(None, -1),)]
        interior[lead + (slice(None, -1),)] &= mask[lead + (slice(1, None),)]
        interior[lead + (0,)] = False
        interior[lead + (-1,)] = False
    return mask ^ interior


def _exact_scales(sampling: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Integers k with spacing = k * 2**e (one e for all axes) when all of scipy's EDT arithmetic on `shape`
    is exact, else None.

    Then every coordinate difference times the spacing, its square, the sums of squares and the products in
    the EDT's envelope test are integers times a power of two below 2**53: no rounding anywhere, so medpy's
    EDT returns the exact nearest distance, a k-d tree on the k-scaled integer grid finds an exactly nearest
    voxel, and any exactly nearest voxel gives the same float from scipy's distance formula. That holds for
    spacing=None (k = 1) and for short binary fractions such as 0.625, 1.5625, 2.5; a spacing like 0.7 (or
    most float32 values) is not exact, and then the cropped EDT path is used.
    """
    if sampling is None:
        k = [1] * len(shape)
    else:
        if not all(math.isfinite(s) and (s == 0 or 2.0 ** -60 <= abs(s) <= 2.0 ** 60) for s in sampling):
            return None
        ratios = [abs(float(s)).as_integer_ratio() for s in sampling]  # (p, 2**e)
        den = max(q for _, q in ratios)
        k = [p * (den // q) for p, q in ratios]
        g = math.gcd(*k)
        k = [ki // (g & -g) for ki in k] if g else k  # a common power of two only moves the exponent
    ext = [max(n, _RING_VOXELS + 1) * ki for n, ki in zip(shape, k)]  # ring offsets count as differences too
    if 4 * max(ext) * sum(e * e for e in ext) >= 2 ** 53:
        return None
    return np.asarray(k, dtype=np.float64)


def _distance_formula(offset: np.ndarray, sampling: np.ndarray | None) -> np.ndarray:
    """scipy's `distance_transform_edt` distance of integer offsets (ndim, n) to the feature, bit for bit.

    scipy: int32 offsets -> float64, times sampling[axis], squared, `np.add.reduce(axis=0)` (axis 0 first,
    then + axis 1, + axis 2, ...), sqrt.
    """
    d = offset.astype(np.float64)
    if sampling is not None:
        d *= sampling[:, None]
    np.multiply(d, d, out=d)
    return np.sqrt(np.add.reduce(d, axis=0))


def _directed_edt(src_surface: np.ndarray, dst_surface: np.ndarray, sampling: np.ndarray | None) -> np.ndarray:
    """`distance_transform_edt(~dst_surface, sampling)[src_surface]` (medpy's step), bit for bit.

    Only the feature transform is computed on the whole array; distances are evaluated where they are read.
    """
    ft = distance_transform_edt(~dst_surface, sampling=sampling, return_distances=False, return_indices=True)
    where = np.nonzero(src_surface)
    offset = np.stack([ft[axis][where] - coord.astype(np.int32) for axis, coord in enumerate(where)])
    return _distance_formula(offset, sampling)


_RING_VOXELS = 6     # ring lookups reach this many voxels along the finest axis ...
_RING_MIN_YIELD = 800  # ... and stop when fewer than 1 in this many lookups of a ring hit (a k-d tree query
                       # costs about as much as 600-800 lookups)


@functools.lru_cache(maxsize=32)
def _rings(scales: tuple[int, ...], max_offsets: int = 4096) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
    """Integer offsets (ndim, m) grouped by exact squared length sum((o * k)**2), shortest ring first, up to
    `_RING_VOXELS` along the finest axis (whole rings, at most `max_offsets` offsets in all); and the largest
    |offset| per axis (the padding they need)."""
    k = np.asarray(scales, dtype=np.int64)
    reach = (_RING_VOXELS * int(k[k > 0].min())) ** 2 if (k > 0).any() else 0  # along the finest axis
    radius = [int(math.isqrt(reach // (ki * ki))) if ki else 0 for ki in k.tolist()]
    grid = np.stack([g.ravel() for g in np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij")])
    length = ((grid * k[:, None]) ** 2).sum(0)
    keep = (length > 0) & (length <= reach)
    grid, length = grid[:, keep], length[keep]
    order = np.argsort(length, kind="stable")
    grid, length = grid[:, order], length[order]
    rings, total = [], 0
    for value in np.unique(length):
        ring = grid[:, length == value]
        if total + ring.shape[1] > max_offsets:
            break
        rings.append(ring)
        total += ring.shape[1]
    pad = tuple(int(np.abs(np.concatenate(rings, 1)[axis]).max()) if rings else 0 for axis in range(len(k)))
    return tuple(rings), pad


def _directed_kdtree(src_flat: np.ndarray, dst_surface: np.ndarray, dst_flat: np.ndarray,
                     rings: Sequence[np.ndarray], sampling: np.ndarray | None, scales: np.ndarray) -> np.ndarray:
    """Distances of the surface voxels at flat indices `src_flat` (C order) to the nearest voxel of `dst_surface`
    (flat indices `dst_flat`), on a grid where the arithmetic is exact (`_exact_scales`).

    1. A voxel on both surfaces is at 0 (there the EDT's feature is the voxel itself).
    2. Rings: the remaining voxels look up `dst_surface` at the offsets of the shortest exact lengths first;
       a hit in a ring is an exactly nearest voxel (the array is padded so no lookup leaves it). Far cheaper
       than a k-d tree query for the many voxels a few voxels away; stops when a ring hits too rarely.
    3. The rest ask a k-d tree of `dst` built on the exactly scaled grid.
    Every distance is scipy's formula of the offset to a nearest voxel; with exact arithmetic all nearest
    voxels give the same float.
    """
    shape = dst_surface.shape
    dst = dst_surface.ravel()
    strides = np.array([int(np.prod(shape[axis + 1:])) for axis in range(len(shape))], dtype=np.int64)
    out = np.zeros(src_flat.size, dtype=np.float64)
    rest = np.flatnonzero(~dst[src_flat])
    where = src_flat[rest]
    for ring in rings:
        if not rest.size:
            break
        flat = strides @ ring
        hit = dst[where + flat[0]]
        for step in flat[1:]:
            hit |= dst[where + step]
        hits = int(np.count_nonzero(hit))
        if hits:
            out[rest[hit]] = _distance_formula(ring[:, :1].astype(np.int32), sampling)[0]
            rest, where = rest[~hit], where[~hit]
        if hits * _RING_MIN_YIELD < flat.size * (rest.size + hits):  # lookups of this ring
            break
    if rest.size:
        from scipy.spatial import cKDTree

        dst_pts = np.stack(np.unravel_index(dst_flat, shape))
        query = np.stack(np.unravel_index(where, shape))
        tree = cKDTree(dst_pts.T * scales, leafsize=48, balanced_tree=False, compact_nodes=False)
        _, nearest = tree.query(query.T * scales)
        out[rest] = _distance_formula((dst_pts[:, nearest] - query).astype(np.int32), sampling)
    return out


def _surface_distances(pred: np.ndarray, ref: np.ndarray, spacing=None, *, crop: bool = True,
                       method: str = "auto", full_shape: tuple[int, ...] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(d(pred -> ref), d(ref -> pred)) as medpy's two `__surface_distances` calls, bit for bit.

    method: "auto" (k-d tree when `_exact_scales` allows it, else "edt"), "kdtree" (even when not exact:
    then without the rings, and equal to medpy only up to rounding ties, ~1e-15 relative) or "edt" (scipy's
    feature transform, medpy's own computation). `crop=False` works on the whole array (for the tests that
    show the crop changes nothing); `full_shape` is the shape of the uncropped masks when the caller has
    cropped them already.
    """
    pred, ref = _pair(pred, ref)
    if not pred.any() or not ref.any():
        raise EmptyMaskError(f"{'prediction' if not pred.any() else 'reference'} mask is empty")
    sampling = _spacing(spacing, pred.ndim)
    scales = _exact_scales(sampling, full_shape or pred.shape)
    if method == "auto":
        method = "edt" if scales is None else "kdtree"
    box = _crop_box(pred, ref) if crop else tuple(slice(0, n) for n in pred.shape)
    if method == "edt":
        ps, rs = _surface(pred[box]), _surface(ref[box])
        return _directed_edt(ps, rs, sampling), _directed_edt(rs, ps, sampling)
    if method != "kdtree":
        raise ValueError(f"unknown method {method!r}")
    if scales is None:
        rings, pad = (), (0,) * pred.ndim
        scales = np.ones(pred.ndim) if sampling is None else sampling
    else:
        rings, pad = _rings(tuple(int(k) for k in scales))
    # zero padding for the ring lookups: the same as the erosion's border_value=0 and as the empty outside
    padded_shape = tuple(b.stop - b.start + 2 * r for b, r in zip(box, pad))
    inner = tuple(slice(r, n - r) for r, n in zip(pad, padded_shape))
    ps, rs = np.zeros(padded_shape, bool), np.zeros(padded_shape, bool)
    ps[inner], rs[inner] = pred[box], ref[box]
    ps, rs = _surface(ps), _surface(rs)
    p_flat, r_flat = np.flatnonzero(ps), np.flatnonzero(rs)
    return (_directed_kdtree(p_flat, rs, r_flat, rings, sampling, scales),
            _directed_kdtree(r_flat, ps, p_flat, rings, sampling, scales))


def _from_distances(d_pr: np.ndarray, d_rp: np.ndarray, which: Sequence[str]) -> dict[str, float]:
    """medpy's reductions, in medpy's order (the concatenation order matters for the float sums)."""
    fns = {
        "hd95": lambda: np.percentile(np.hstack((d_pr, d_rp)), 95),
        "asd": lambda: d_pr.mean(),
        "assd": lambda: np.concatenate([d_pr, d_rp]).mean(),
    }
    return {m: float(fns[m]()) for m in which}


def surface_metrics(pred, ref, spacing: Sequence[float] | float | None = None) -> dict[str, float]:
    """{"hd95", "asd", "assd"} of one binary mask pair, from one pair of directed distance sets.

    Raises `EmptyMaskError` when either mask has no foreground (medpy raises RuntimeError).
    """
    return _from_distances(*_surface_distances(pred, ref, spacing), SURFACE_METRICS)


def hd95(pred, ref, spacing: Sequence[float] | float | None = None) -> float:
    """medpy `hd95(result=pred, reference=ref, voxelspacing=spacing)`."""
    return _from_distances(*_surface_distances(pred, ref, spacing), ("hd95",))["hd95"]


def asd(pred, ref, spacing: Sequence[float] | float | None = None) -> float:
    """medpy `asd`: mean distance of the prediction's surface to the reference's (asymmetric)."""
    return _from_distances(*_surface_distances(pred, ref, spacing), ("asd",))["asd"]


def assd(pred, ref, spacing: Sequence[float] | float | None = None) -> float:
    """medpy 0.5.2 `assd`: mean of the pooled pred->ref and ref->pred surface distances."""
    return _from_distances(*_surface_distances(pred, ref, spacing), ("assd",))["assd"]


# --------------------------------------------------------------------------------------------- per case

EMPTY_POLICIES = ("worst", "zero_all", "dice0_hd0", "error", "transunet")


def diagonal(shape: Sequence[int], spacing: Sequence[float] | float | None = None) -> float:
    """Length of the image diagonal in voxels, or in mm with `spacing`: the worst possible distance."""
    sampling = _spacing(spacing, len(shape))
    extent = np.asarray(shape, float) * (1.0 if sampling is None else sampling)
    return float(np.sqrt((extent ** 2).sum()))


def empty_case_metrics(p_any: bool, r_any: bool, policy: str, worst: float,
                       which: Sequence[str] = METRICS) -> dict[str, float]:
    """The metrics of a pair in which the prediction or the reference is empty (module docstring); `worst` is
    the distance the `worst` policy gives (the image diagonal, `diagonal`). Also re-scores saved per-case rows
    under another policy (benchmark.evaluate.rescore_cases)."""
    if policy not in EMPTY_POLICIES:
        raise ValueError(f"unknown empty-prediction policy {policy!r}; valid: {', '.join(EMPTY_POLICIES)}")
    if policy == "error":
        raise EmptyMaskError(f"{'prediction' if not p_any else 'reference'} mask is empty")
    if policy == "worst":
        if not p_any and not r_any:
            return {m: math.nan for m in which}
        return {m: (0.0 if m in ("dice", "jaccard") else worst) for m in which}
    if policy == "transunet" and p_any:  # a prediction on a class the reference lacks: (1, 0)
        return {m: (1.0 if m in ("dice", "jaccard") else 0.0) for m in which}
    if not p_any:  # zero_all, dice0_hd0, transunet
        return {m: 0.0 for m in which}
    return {m: (0.0 if m in ("dice", "jaccard") else math.nan) for m in which}


def mask_metrics(pred: np.ndarray, ref: np.ndarray, policy: str = "worst", spacing: Sequence[float] | None = None,
                 which: Sequence[str] = METRICS) -> dict[str, float]:
    """Metrics of one binary mask pair (any dimensionality); empty masks follow `policy`."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    p_any, r_any = bool(pred.any()), bool(ref.any())
    if not (p_any and r_any):
        return empty_case_metrics(p_any, r_any, policy, diagonal(pred.shape, spacing), which)
    unknown = [m for m in which if m not in ("dice", "jaccard") + SURFACE_METRICS]
    if unknown:
        raise KeyError(f"unknown metric(s) {unknown}")
    pred, ref = _pair(pred, ref)
    full_shape = pred.shape
    box = _crop_box(pred, ref)  # nothing outside it is foreground: the counts below are unchanged
    pred, ref = pred[box], ref[box]
    values: dict[str, float] = {}
    surface = [m for m in which if m in SURFACE_METRICS]
    if surface:
        values.update(_from_distances(*_surface_distances(pred, ref, spacing, full_shape=full_shape), surface))
    if "dice" in which:
        values["dice"] = float(dice(pred, ref))
    if "jaccard" in which:
        values["jaccard"] = float(jaccard(pred, ref))
    return {m: values[m] for m in which}


def case_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray, classes: Sequence[int],
                 spacing: Sequence[float] | None = None, policy: str = "worst",
                 which: Sequence[str] = METRICS) -> dict[int, dict[str, float]]:
    """Every metric of every class of one case (label maps):
    `{c: mask_metrics(pred_labels == c, ref_labels == c, policy, spacing, which) for c in classes}`."""
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(f"pred {pred_labels.shape} and ref {ref_labels.shape} differ in shape")
    return {int(c): mask_metrics(pred_labels == c, ref_labels == c, policy, spacing, which) for c in classes}


def dice_only(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice with an empty prediction scored 0 (the validation rule of SSL4MIS `val_2D.py`)."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    denom = p.sum() + r.sum()
    if not p.any() or denom == 0:
        return 0.0
    return float(2.0 * np.logical_and(p, r).sum() / denom)
