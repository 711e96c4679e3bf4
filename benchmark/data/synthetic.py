"""A seeded, procedurally generated cardiac short-axis cine-MRI-like dataset in the SSL4MIS ACDC layout.

Every patient has an end-diastole (frame01) and an end-systole (frame02) volume of a few short-axis slices,
base to apex. Labels follow ACDC: 0 background, 1 RV cavity, 2 myocardium, 3 LV cavity (papillary muscles
included). Unlabeled distractors (body outline with subcutaneous fat, lungs, liver, spine, aorta, outflow
tract, epicardial fat, bright blobs), a smooth bias field, texture, blur and Rician noise make the task need
shape and context rather than a threshold. Output files are read by the same reader as the real ACDC:

    <root>/data/slices/patientXXX_frameYY_slice_Z.h5   training slices, Z = 1..S (keys image, label)
    <root>/data/patientXXX_frameYY.h5                  val and test volumes, shape (S, H, W)
    <root>/train_slices.list, train.list, val.list, test.list
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
from scipy.ndimage import gaussian_filter

MARKER = ".synthetic-spec.json"
#: Bump when the image model changes: cached copies and trial identities then change with it.
GENERATOR_VERSION = 1
_TMP_TAG = ".tmp-"
_STALE_TMP_S = 3600.0


# ----------------------------------------------------------------------------------------------- spec


class GeneratorSpec:
    """What the generators' spec dataclasses share: a JSON-able dict (the cache marker) and a checked build."""

    generator: ClassVar[str] = "synthetic"   # the generator's name, for error messages

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorSpec":
        """Build from a mapping; unknown keys are an error naming the key and the valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(k for k in d if k not in valid)
        if unknown:
            raise ValueError(f"unknown {cls.generator} generator key(s) {', '.join(map(repr, unknown))}; "
                             f"valid keys: {', '.join(valid)}")
        return cls(**d)


@dataclass(frozen=True)
class SyntheticSpec(GeneratorSpec):
    """What to generate; equal specs give identical data."""

    seed: int = 0
    size: int = 128  # H = W of every slice
    train_patients: int = 20
    val_patients: int = 4
    test_patients: int = 6
    min_slices: int = 6  # slices per volume drawn per patient in [min_slices, max_slices]
    max_slices: int = 10

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"SyntheticSpec.{f.name} must be an int, got {value!r}")
        if self.size < 16:
            raise ValueError(f"SyntheticSpec.size must be >= 16, got {self.size}")
        if self.train_patients < 1 or self.val_patients < 0 or self.test_patients < 0:
            raise ValueError("SyntheticSpec needs train_patients >= 1 and val_patients, test_patients >= 0")
        if not 1 <= self.min_slices <= self.max_slices:
            raise ValueError(f"SyntheticSpec needs 1 <= min_slices <= max_slices, "
                             f"got {self.min_slices}, {self.max_slices}")
        if self.total_patients > 999:
            raise ValueError(f"SyntheticSpec: at most 999 patients (3-digit ids), got {self.total_patients}")

    @property
    def total_patients(self) -> int:
        return self.train_patients + self.val_patients + self.test_patients



# ------------------------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Patient:
    """Per-patient anatomy and acquisition parameters (lengths in pixels, angles in radians)."""

    slices: int
    rotation: float
    heart: tuple[float, float]
    drift: tuple[float, float]
    distort_axis: float
    distort: float
    r_lv: float
    thick: float
    thick_phase: float
    harmonics: tuple[tuple[float, float], ...]
    es_lv: float
    es_thick: float
    es_rv: float
    rv_angle: float
    rv_thick: float
    rv_along: float
    rv_across: float
    rv_decay: float
    papillary: tuple[float, float]
    fat_angle: float
    outflow: bool
    body: tuple[float, float, float, float]
    lungs: tuple[tuple[float, float, float, float], ...]
    liver: tuple[float, float, float, float]
    spine: tuple[float, float, float]
    aorta: tuple[float, float, float]
    blobs: tuple[tuple[float, float, float, float], ...]
    intens: dict[str, float]
    bias: tuple[float, ...]
    noise: float
    blur: float
    gamma: float


def _sample_patient(rng: np.random.Generator, spec: SyntheticSpec) -> _Patient:
    """Draw one patient's anatomy, contrast and acquisition quality."""
    s = float(spec.size)
    u = rng.uniform
    r_lv = u(0.095, 0.135) * s
    thick = u(0.034, 0.05) * s
    r_epi = r_lv + thick
    heart = (u(-0.02, 0.12) * s, u(-0.08, 0.05) * s)
    blobs = []
    for _ in range(int(rng.integers(1, 5))):
        while True:  # keep blobs off the heart
            bx, by = u(-0.35, 0.35) * s, u(-0.1, 0.38) * s
            if math.hypot(bx - heart[0], by - heart[1]) > 1.9 * r_epi:
                break
        blobs.append((bx, by, u(0.012, 0.03) * s, u(0.25, 0.55)))
    lv_blood = u(0.7, 0.95)
    intens = {
        "air": u(0.0, 0.04), "fat": u(0.6, 0.85), "tissue": u(0.28, 0.42), "lung": u(0.03, 0.1),
        "liver": u(0.33, 0.5), "bone": u(0.4, 0.6), "lv": lv_blood, "rv": lv_blood * u(0.8, 1.02),
        "aorta": lv_blood * u(0.85, 1.05), "myo": u(0.14, 0.3), "texture": u(0.05, 0.12),
    }
    return _Patient(
        slices=int(rng.integers(spec.min_slices, spec.max_slices + 1)),
        rotation=u(-0.35, 0.35),
        heart=heart,
        drift=(u(-0.04, 0.04) * s, u(-0.04, 0.04) * s),
        distort_axis=u(0, math.pi),
        distort=u(0.85, 1.15),
        r_lv=r_lv,
        thick=thick,
        thick_phase=u(0, 2 * math.pi),
        harmonics=tuple((u(0, 0.06) / k, u(0, 2 * math.pi)) for k in (2, 3, 4)),
        es_lv=u(0.58, 0.78),
        es_thick=u(1.25, 1.55),
        es_rv=u(0.72, 0.9),
        rv_angle=math.pi + 0.3 + rng.normal(0.0, 0.35),
        rv_thick=u(0.45, 0.85) * r_epi,
        rv_along=u(0.8, 1.05),
        rv_across=u(1.15, 1.5),
        rv_decay=u(0.5, 1.0),
        papillary=(u(-0.7, -0.2), u(0.2, 0.7)),
        fat_angle=u(0, 2 * math.pi),
        outflow=bool(rng.random() < 0.6),
        body=(u(-0.03, 0.03) * s, u(0.0, 0.08) * s, u(0.4, 0.54) * s, u(0.32, 0.42) * s),
        lungs=((u(-0.3, -0.22) * s, u(-0.1, -0.03) * s, u(0.09, 0.14) * s, u(0.15, 0.22) * s),
               (u(0.26, 0.32) * s, u(-0.12, -0.05) * s, u(0.07, 0.12) * s, u(0.13, 0.2) * s)),
        liver=(u(-0.28, -0.16) * s, u(0.16, 0.26) * s, u(0.2, 0.3) * s, u(0.13, 0.2) * s),
        spine=(u(-0.04, 0.04) * s, u(0.3, 0.36) * s, u(0.045, 0.065) * s),
        aorta=(u(0.06, 0.13) * s, u(0.23, 0.29) * s, u(0.025, 0.04) * s),
        blobs=tuple(blobs),
        intens=intens,
        bias=tuple(u(-0.35, 0.35, size=5)),
        noise=u(0.025, 0.08),
        blur=u(0.5, 1.1) * s / 128.0,
        gamma=u(0.75, 1.35),
    )


# ------------------------------------------------------------------------------------------ rendering


def _soft(d: np.ndarray, width: float = 0.7) -> np.ndarray:
    """Partial-volume occupancy from a signed distance in pixels (negative inside)."""
    return 0.5 * (1.0 - np.tanh(d / width))


def _ellipse_sd(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float,
                angle: float = 0.0) -> np.ndarray:
    """First-order signed distance (pixels) to an ellipse with semi-axes a, b rotated by `angle`."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    u, v = dx * c + dy * s, -dx * s + dy * c
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) + 1e-9
    return (rho - 1.0) * rho / grad


def _paint(img: np.ndarray, mask: np.ndarray, value: np.ndarray | float) -> None:
    """Composite `value` over `img` with soft occupancy `mask`, in place."""
    img += mask * (value - img)


def _scene_grid(size: int, rotation: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates centred on the image and rotated into the patient's scene frame."""
    idx = np.arange(size, dtype=np.float32) - (size - 1) / 2.0
    yy, xx = np.meshgrid(idx, idx, indexing="ij")
    c, s = math.cos(rotation), math.sin(rotation)
    return xx * c + yy * s, -xx * s + yy * c


def _heart_frame(p: _Patient, x: np.ndarray, y: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Polar coordinates (radius, angle) around the heart axis at depth z, with elliptic distortion."""
    hx, hy = p.heart[0] + p.drift[0] * z, p.heart[1] + p.drift[1] * z
    c, s = math.cos(p.distort_axis), math.sin(p.distort_axis)
    dx, dy = x - hx, y - hy
    u, v = (dx * c + dy * s) / p.distort, (-dx * s + dy * c) * p.distort
    xs, ys = u * c - v * s, u * s + v * c  # back to scene orientation, distorted
    return np.hypot(xs, ys), np.arctan2(ys, xs)


def _heart_sizes(p: _Patient, z: float, systole: bool) -> tuple[float, float, float]:
    """LV radius, myocardial thickness and RV scale (<= 0.15: no RV) at depth z (0 base, 1 apex)."""
    r_lv = p.r_lv * max(0.0, 1.0 - 0.8 * z**1.7)
    thick = p.thick * (1.0 - 0.25 * z)
    rv = 1.0 - p.rv_decay * z**1.5
    if systole:
        r_lv, thick, rv = r_lv * p.es_lv, thick * p.es_thick, rv * p.es_rv
    return r_lv, thick, rv


def _rv_distance(p: _Patient, xs: np.ndarray, ys: np.ndarray, epi: float, scale: float) -> np.ndarray:
    """Signed distance to the RV ellipse: it reaches `rv_thick * scale` beyond the epicardium and wraps it."""
    along = p.rv_along * epi
    across = p.rv_across * epi * (0.6 + 0.4 * scale)
    centre = epi + p.rv_thick * scale - along
    cx, cy = centre * math.cos(p.rv_angle), centre * math.sin(p.rv_angle)
    return _ellipse_sd(xs, ys, cx, cy, along, across, p.rv_angle)


def _render_heart(img: np.ndarray, lab: np.ndarray, p: _Patient, x: np.ndarray, y: np.ndarray,
                  z: float, systole: bool) -> None:
    """Paint epicardial fat, myocardium, RV and LV (with papillary muscles) and write their labels."""
    r, th = _heart_frame(p, x, y, z)
    xs, ys = r * np.cos(th), r * np.sin(th)
    r_lv, thick, rv_scale = _heart_sizes(p, z, systole)
    shape = 1.0 + sum(a * np.cos(k * th + ph) for k, (a, ph) in zip((2, 3, 4), p.harmonics))
    d_lv = r - r_lv * shape
    d_epi = r - (r_lv * shape + thick * (1.0 + 0.18 * np.cos(th - p.thick_phase)))
    q = p.intens
    fat = np.clip(np.cos(th - p.fat_angle), 0.0, None) * _soft(np.abs(d_epi - 1.2) - 1.0)
    _paint(img, fat, q["fat"])
    if rv_scale > 0.15:
        d_ell = _rv_distance(p, xs, ys, r_lv + thick, rv_scale)
        wall = max(1.0, 0.012 * img.shape[0])
        _paint(img, _soft(np.maximum(d_ell - wall, -d_epi)), q["myo"])
        d_rv = np.maximum(d_ell, -d_epi)
        _paint(img, _soft(d_rv), q["rv"])
        lab[d_rv < 0] = 1
    _paint(img, _soft(d_epi), q["myo"])
    lab[d_epi < 0] = 2
    if r_lv > 0.5:
        _paint(img, _soft(d_lv), q["lv"])
        lab[d_lv < 0] = 3
        for a in p.papillary:
            ang = p.rv_angle + math.pi + a
            px, py = 0.62 * r_lv * math.cos(ang), 0.62 * r_lv * math.sin(ang)
            d_pap = np.hypot(xs - px, ys - py) - 0.2 * r_lv
            _paint(img, _soft(np.maximum(d_pap, d_lv)) * 0.85, q["myo"])


def _render_context(img: np.ndarray, p: _Patient, x: np.ndarray, y: np.ndarray, z: float,
                    tex: np.ndarray) -> None:
    """Paint the unlabeled anatomy around the heart."""
    q = p.intens
    s = img.shape[0]
    bx, by, ba, bb = p.body
    fat_w = 0.035 * s
    _paint(img, _soft(_ellipse_sd(x, y, bx, by, ba, bb)), q["fat"])
    inner = _soft(_ellipse_sd(x, y, bx, by, ba - fat_w, bb - fat_w), 1.5)
    _paint(img, inner, q["tissue"] * (1.0 + tex))
    for lx, ly, la, lb in p.lungs:
        k = 1.0 - 0.35 * z
        _paint(img, inner * _soft(_ellipse_sd(x, y, lx, ly, la * k, lb * k), 1.2), q["lung"] * (1.0 + 2 * tex))
    lx, ly, la, lb = p.liver
    k = 0.55 + 0.45 * z
    liver = _soft(_ellipse_sd(x, y, lx, ly - 0.05 * s * z, la * k, lb * k, 0.3), 1.2)
    _paint(img, inner * liver, q["liver"] * (1.0 + 0.5 * tex))
    sx, sy, sr = p.spine
    _paint(img, _soft(np.hypot(x - sx, y - sy) - sr), q["bone"] * 0.5)
    _paint(img, _soft(np.hypot(x - sx, y - sy) - 0.75 * sr), q["bone"] * (1.0 + tex))
    ax, ay, ar = p.aorta
    _paint(img, _soft(np.hypot(x - ax, y - ay) - ar), q["aorta"])
    for cx, cy, sig, amp in p.blobs:
        img += inner * amp * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sig**2))
    if p.outflow and z < 0.2:
        hx, hy = p.heart
        ang = p.rv_angle - 1.2
        d = p.r_lv + p.thick * 2.2 + 0.35 * p.r_lv
        ox, oy = hx + d * math.cos(ang), hy + d * math.sin(ang)
        _paint(img, _soft(np.hypot(x - ox, y - oy) - 0.45 * p.r_lv), q["aorta"])


def _bias_field(p: _Patient, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth multiplicative coil-sensitivity field."""
    half = x.shape[0] / 2.0
    u, v = x / half, y / half
    c = [float(k) for k in p.bias]
    return np.exp(c[0] * u + c[1] * v + c[2] * u * v + c[3] * u * u + c[4] * v * v)


def _texture(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """Zero-mean tissue texture: fine grain plus coarse blotches, std about `amplitude`."""
    scale = size / 128.0
    fine = gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 1.5 * scale)
    coarse = gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 6.0 * scale)
    tex = fine / (fine.std() + 1e-6) + 0.8 * coarse / (coarse.std() + 1e-6)
    return tex * (amplitude / 1.28)


def _render_slice(p: _Patient, x: np.ndarray, y: np.ndarray, z: float, systole: bool,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One raw (unnormalised) image and its label."""
    size = x.shape[0]
    tex = _texture(rng, size, p.intens["texture"])
    img = np.full((size, size), p.intens["air"], dtype=np.float32)
    lab = np.zeros((size, size), dtype=np.uint8)
    _render_context(img, p, x, y, z, tex)
    _render_heart(img, lab, p, x, y, z, systole)
    img = gaussian_filter(img, p.blur) * _bias_field(p, x, y)
    n1, n2 = p.noise * rng.standard_normal((2, size, size), dtype=np.float32)
    return np.sqrt((img + n1) ** 2 + n2**2), lab


def _render_volume(p: _Patient, size: int, systole: bool,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A frame's volume, min-max normalised to [0, 1] over the whole volume, then contrast-adjusted."""
    x, y = _scene_grid(size, p.rotation)
    depth = np.linspace(0.0, 1.0, p.slices) if p.slices > 1 else np.zeros(1)
    pairs = [_render_slice(p, x, y, float(z), systole, rng) for z in depth]
    img = np.stack([a for a, _ in pairs])
    lab = np.stack([b for _, b in pairs])
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
    return (img**p.gamma).astype(np.float32), lab


# ---------------------------------------------------------------------------------------------- writing


def _patient_ids(spec: SyntheticSpec) -> tuple[list[int], list[int], list[int]]:
    """Unique ids 1..N shuffled by seed; train keeps the shuffled order, val and test are sorted."""
    perm = np.random.default_rng([spec.seed, 7919]).permutation(spec.total_patients) + 1
    t, v = spec.train_patients, spec.val_patients
    ids = [int(i) for i in perm]
    return ids[:t], sorted(ids[t:t + v]), sorted(ids[t + v:])


def write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)


def _frames(spec: SyntheticSpec, pid: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (name, image, label) for frame01 (ED) and frame02 (ES) of one patient."""
    rng = np.random.default_rng([spec.seed, pid])
    patient = _sample_patient(rng, spec)
    for frame, systole in (("frame01", False), ("frame02", True)):
        image, label = _render_volume(patient, spec.size, systole, rng)
        yield f"patient{pid:03d}_{frame}", image, label


def write_lists(root: Path, lists: dict[str, list[str]]) -> None:
    for name, rows in lists.items():
        (root / name).write_text("".join(f"{r}\n" for r in rows))


def generate(root: Path, spec: SyntheticSpec) -> None:
    """Write the dataset into `root` (created), SSL4MIS layout. Deterministic given spec."""
    root = Path(root)
    slices_dir = root / "data" / "slices"
    slices_dir.mkdir(parents=True, exist_ok=True)
    train, val, test = _patient_ids(spec)
    lists: dict[str, list[str]] = {"train_slices.list": [], "train.list": [], "val.list": [], "test.list": []}
    for pid in train:
        for name, image, label in _frames(spec, pid):
            lists["train.list"].append(name)
            for z in range(image.shape[0]):
                slice_name = f"{name}_slice_{z + 1}"
                write_h5(slices_dir / f"{slice_name}.h5", image[z], label[z])
                lists["train_slices.list"].append(slice_name)
    for split, ids in (("val.list", val), ("test.list", test)):
        for pid in ids:
            for name, image, label in _frames(spec, pid):
                write_h5(root / "data" / f"{name}.h5", image, label)
                lists[split].append(name)
    write_lists(root, lists)


# ------------------------------------------------------------------------------------------ caching
# Shared by every generator (benchmark/data/generators.py): `ensure_generated` installs any generated tree
# atomically under a marker holding the spec and the generator's version.


def marker_content(spec, version: int = GENERATOR_VERSION) -> dict:
    """What the marker of a tree generated from `spec` by a generator at `version` holds."""
    return {**spec.to_dict(), "generator_version": version}


def marker_matches(root: Path, spec, version: int = GENERATOR_VERSION) -> bool:
    try:
        return json.loads((root / MARKER).read_text()) == marker_content(spec, version)
    except (OSError, ValueError):
        return False


def write_marker(root: Path, spec, version: int = GENERATOR_VERSION) -> None:
    tmp = root / f"{MARKER}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(marker_content(spec, version), sort_keys=True, indent=1))
    os.replace(tmp, root / MARKER)


def clean_leftovers(root: Path) -> None:
    """Remove retired trees and temp trees of crashed runs (temp ones only after an hour: never a live one)."""
    now = time.time()
    for path in root.parent.glob(f".{root.name}.old-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.parent.glob(f".{root.name}{_TMP_TAG}*"):
        try:
            if now - path.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def retire(root: Path) -> None:
    """Move an outdated generated tree out of the way, then delete it. Refuses foreign folders."""
    if not root.exists():
        return
    if not (root / MARKER).exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists, is not empty and holds no {MARKER}; "
                              f"refusing to replace a folder the synthetic generator did not write")
    trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex}"
    try:
        os.rename(root, trash)
    except FileNotFoundError:  # another process moved it first
        return
    shutil.rmtree(trash, ignore_errors=True)


def ensure_generated(root: Path, spec, write: Callable[[Path, Any], None], version: int) -> Path:
    """Run `write(folder, spec)` once into `root` unless a complete copy of the same spec and version is there.

    Generation goes to a sibling temp folder that is renamed into place with the marker written last,
    so `root` is either absent, an old complete copy, or a new complete copy. Concurrent callers are
    safe: the loser of the rename race uses the winner's copy. `spec` needs `to_dict()` (JSON-able,
    lists rather than tuples, so that it reads back equal). Returns root.
    """
    root = Path(root)
    if marker_matches(root, spec, version):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}{_TMP_TAG}", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the installed tree should read like any other
        write(tmp, spec)
        write_marker(tmp, spec, version)
        for _ in range(5):
            if marker_matches(root, spec, version):
                return root
            retire(root)
            try:
                os.rename(tmp, root)
                return root
            except OSError:  # someone else's tree landed in between: loop and look at it
                continue
        raise RuntimeError(f"could not install the generated dataset at {root}: concurrent writers kept racing")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_synthetic(root: Path, spec: SyntheticSpec) -> Path:
    """Generate the cardiac dataset once into `root` (see `ensure_generated`). Returns root."""
    return ensure_generated(root, spec, generate, GENERATOR_VERSION)
