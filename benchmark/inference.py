"""Inference protocols as objects: one case's image (C, *spatial) float32 -> a label map (*spatial) uint8.

A predictor maps a batch (B, C, *patch) to logits (B, K, *patch) (`Predictor`); an `Inferer` decides which
patches it sees and how its outputs become one label map. The card's `evaluation.inference` names one of:

  slicewise       `SliceWise`: a 2D network on a volume (C, S, H, W). Each slice (C, H, W) goes to the network at
                  the patch size and back, and the slices are stacked into (S, H, W). `resize: nearest` = scipy
                  zoom order 0 of every image channel in, argmax, zoom order 0 of the label map out (SSL4MIS
                  `val_2D.py` / `test_2D_fully.py`, SS-Net, BCP, CML; PROTOCOLS.md §2.1);
                  `resize: bilinear_logits` = bilinear image in, bilinear logits out, then argmax (UniMatch;
                  PROTOCOLS.md §5.5); `resize: cubic` = zoom order 3 of every image channel in, argmax, zoom
                  order 0 of the label map out (TransUNet's Synapse test, Beckschen/TransUNet@2ffa29f
                  `utils.py::test_single_volume`). Slices go through the network `chunk` at a time.
  sliding_window  `SlidingWindow`: an n-D network (3D for LA: patch 112x112x80, stride 18x18x4) on an image
                  (C, *spatial). The image is zero-padded symmetrically to at least the patch (d // 2 before,
                  d - d // 2 after), windows start every `stride` voxels along each axis with the last one flush
                  with the end (`window_starts`), softmax is averaged over overlapping windows, then argmax, and
                  the padding is cropped back (SS-Net / BCP / CML `test_single_case`). Windows go through the
                  network `batch` at a time and are accumulated in place on the device.
  whole_image     `WholeImage`: a 2D network on a 2D image (C, H, W) (ISIC-like skin-lesion sets): the whole
                  image is resized to the patch, predicted once and brought back to (H, W); `nearest` = zoom
                  order 0 in, argmax, zoom order 0 of the label map out; `bilinear_logits` = bilinear image in,
                  bilinear logits out (align_corners=False), then argmax; `cubic` = zoom order 3 in, argmax,
                  zoom order 0 out.

`build_inferer(inference, patch, stride, resize)` makes one from a card's fields; unknown names raise an error
listing the valid ones (`INFERERS`). For a single channel, `SliceWise` and `SlidingWindow` give exactly the label
maps of `benchmark.evaluate.predict_slicewise` / `predict_sliding_window` on `image[0]`.
"""
from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from functools import reduce
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.data.augment import resize_cubic, resize_nearest
from benchmark.registry import Registry

Predictor = Callable[[torch.Tensor], torch.Tensor]
RESIZE_MODES = ("nearest", "bilinear_logits", "cubic")
#: the image resize of the modes that resize the image with scipy zoom and bring the ARGMAX back with order 0
_ZOOM_IN = {"nearest": resize_nearest, "cubic": resize_cubic}


# ------------------------------------------------------------------------------------------ helpers
def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Window origins along one axis: every `stride`, the last one flush with the end (SS-Net placement)."""
    if not 0 < stride <= patch:
        raise ValueError(f"stride {stride} must be in 1..patch ({patch}), or voxels between windows go unseen")
    if size <= patch:
        return [0]
    return [min(i * stride, size - patch) for i in range(math.ceil((size - patch) / stride) + 1)]


def _ints(value: int | Sequence[int], what: str, dims: int | None = None) -> tuple[int, ...]:
    """`value` as a tuple of positive ints; with `dims`, an int or a 1-tuple is repeated to `dims` entries."""
    items = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if dims is not None and len(items) == 1:
        items = items * dims
    if not items or any(isinstance(v, bool) or int(v) != v or int(v) < 1 for v in items):
        raise ValueError(f"{what} must be positive integers, got {value!r}")
    items = tuple(int(v) for v in items)
    if dims is not None and len(items) != dims:
        raise ValueError(f"{what} must have {dims} entries (or one, used for every axis), got {list(items)}")
    return items


def _check_resize(resize: str, inference: str) -> str:
    if resize not in RESIZE_MODES:
        raise ValueError(f"{inference}: unknown resize {resize!r}; valid: {', '.join(RESIZE_MODES)}")
    return resize


def _check_image(image: np.ndarray, spatial: int, layout: str, inference: str) -> np.ndarray:
    """The image as float32 (no copy when it already is), after checking it is (C, *spatial) with `spatial` axes."""
    image = np.asarray(image)
    if image.ndim != spatial + 1:
        hint = ("add the channel axis (image[None]) to a single-channel image" if image.ndim == spatial else
                f"give one case at a time, laid out {layout}")
        raise ValueError(f"{inference} expects an image {layout} ({spatial} spatial axes after the channel axis), "
                         f"got shape {tuple(image.shape)}; {hint}")
    if min(image.shape) < 1:
        raise ValueError(f"{inference}: empty image of shape {tuple(image.shape)}")
    return image.astype(np.float32, copy=False)


def _check_logits(logits: torch.Tensor, batch: int, patch: tuple[int, ...], inference: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.shape[0] != batch or tuple(logits.shape[2:]) != patch:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{inference}: the predictor must map (B, C, *patch) to logits (B, K, *patch) = "
                         f"({batch}, K, {', '.join(map(str, patch))}), got {got}; wrap a network with several "
                         "outputs so that it returns the segmentation logits only")


# ------------------------------------------------------------------------------------------ inferers
class Inferer(ABC):
    """Turns one case's image (C, *spatial) into a label map (*spatial) uint8."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, predict: Predictor, image: np.ndarray, device: torch.device) -> np.ndarray: ...

    @classmethod
    @abstractmethod
    def from_fields(cls, patch: int | Sequence[int], stride: int | Sequence[int] | None, resize: str) -> "Inferer":
        """The inferer a card's `evaluation.{patch, stride, resize}` describe (see `build_inferer`)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


INFERERS: Registry[type[Inferer]] = Registry("inference")


def _no_stride(stride: object, inference: str) -> None:
    if stride is not None:
        raise ValueError(f"{inference} takes no stride (got {stride!r}); drop evaluation.stride or use "
                         "inference: sliding_window")


def _patch_2d(patch: Any, stride: Any, name: str) -> tuple[int, ...]:
    """The patch of a 2D-network inferer from a card's fields (no stride; 1 or 2 entries)."""
    _no_stride(stride, name)
    patch = _ints(patch, f"{name} patch")
    if len(patch) > 2:
        raise ValueError(f"{name} runs a 2D network, so its patch has 1 or 2 entries, got {list(patch)}; "
                         "a 3D patch belongs to inference: sliding_window")
    return patch


class Inferer2D(Inferer):
    """An inferer that feeds a 2D network, resizing to its patch: built from a card's patch and resize."""

    @classmethod
    def from_fields(cls, patch, stride, resize) -> "Inferer":
        return cls(_patch_2d(patch, stride, cls.name), resize)


@INFERERS.register("slicewise", "2D network slice by slice on a volume (C, S, H, W), resized to the patch and back")
class SliceWise(Inferer2D):
    """A 2D network applied to each slice (C, H, W) of a volume (C, S, H, W) at `patch`, slices stacked."""

    name = "slicewise"

    def __init__(self, patch: int | Sequence[int], resize: str = "nearest", chunk: int = 32) -> None:
        self.patch = _ints(patch, "slicewise patch (P1, P2)", dims=2)
        self.resize = _check_resize(resize, self.name)
        self.chunk = _ints(chunk, "slicewise chunk")[0]

    @torch.no_grad()
    def __call__(self, predict: Predictor, image: np.ndarray, device: torch.device) -> np.ndarray:
        image = _check_image(image, 3, "(C, S, H, W)", self.name)
        c, s, h, w = image.shape
        out = np.empty((s, h, w), dtype=np.uint8)
        for i in range(0, s, self.chunk):
            stop = min(i + self.chunk, s)
            if self.resize in _ZOOM_IN:
                zoom_in = _ZOOM_IN[self.resize]
                small = np.stack([np.stack([zoom_in(image[ch, k], self.patch) for ch in range(c)])
                                  for k in range(i, stop)]).astype(np.float32, copy=False)
                logits = predict(torch.from_numpy(small).to(device))
                _check_logits(logits, stop - i, self.patch, self.name)
                for j, lab in enumerate(logits.argmax(1).to(torch.uint8).cpu().numpy()):
                    out[i + j] = resize_nearest(lab, (h, w))
            else:  # bilinear_logits
                x = torch.from_numpy(np.ascontiguousarray(image[:, i:stop].transpose(1, 0, 2, 3))).to(device)
                logits = predict(F.interpolate(x, size=self.patch, mode="bilinear", align_corners=False))
                _check_logits(logits, stop - i, self.patch, self.name)
                logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
                out[i:stop] = logits.argmax(1).to(torch.uint8).cpu().numpy()
        return out


@INFERERS.register("sliding_window", "n-D windows every stride, softmax averaged over overlaps (SS-Net test_single_case)")
class SlidingWindow(Inferer):
    """Overlapping n-D windows over a zero-padded image (C, *spatial), softmax averaged, argmax, padding cropped."""

    name = "sliding_window"

    def __init__(self, patch: Sequence[int], stride: int | Sequence[int], batch: int = 4) -> None:
        self.patch = _ints(patch, "sliding_window patch")
        self.stride = _ints(stride, "sliding_window stride", dims=len(self.patch))
        bad = [(s, p) for s, p in zip(self.stride, self.patch) if s > p]
        if bad:
            raise ValueError(f"sliding_window stride {list(self.stride)} exceeds the patch {list(self.patch)} "
                             f"on some axis, leaving voxels between windows unseen; use a stride <= the patch")
        self.batch = _ints(batch, "sliding_window batch")[0]

    @classmethod
    def from_fields(cls, patch, stride, resize) -> "SlidingWindow":
        if stride is None:
            raise ValueError("sliding_window needs a stride as well as the patch (LA: patch [112, 112, 80], "
                             "stride [18, 18, 4]); set evaluation.stride")
        if resize != "nearest":
            raise ValueError(f"sliding_window does not resize (got resize {resize!r}); drop evaluation.resize")
        return cls(patch, stride)

    def corners(self, shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Window origins over a (padded) spatial `shape`, in the order windows are visited (last axis fastest)."""
        return list(itertools.product(*(window_starts(n, p, s) for n, p, s in zip(shape, self.patch, self.stride))))

    @torch.no_grad()
    def __call__(self, predict: Predictor, image: np.ndarray, device: torch.device) -> np.ndarray:
        dims = len(self.patch)
        image = _check_image(image, dims, "(C, " + ", ".join(f"D{i + 1}" for i in range(dims)) + ")", self.name)
        c, spatial = image.shape[0], image.shape[1:]
        pads = [max(p - n, 0) for p, n in zip(self.patch, spatial)]
        before = [d // 2 for d in pads]
        shape = tuple(n + d for n, d in zip(spatial, pads))
        inner = tuple(slice(lo, lo + n) for lo, n in zip(before, spatial))
        vol = torch.zeros((c, *shape), dtype=torch.float32, device=device)
        vol[(slice(None), *inner)] = torch.from_numpy(np.ascontiguousarray(image)).to(device)

        # Visits per voxel = the product of per-axis visit counts (exact small integers, as counting one by one).
        per_axis = []
        for axis, (n, p, s) in enumerate(zip(shape, self.patch, self.stride)):
            hits = torch.zeros(n, dtype=torch.float32, device=device)
            for start in window_starts(n, p, s):
                hits[start:start + p] += 1
            per_axis.append(hits.view(*(-1 if a == axis else 1 for a in range(dims))))
        count = reduce(torch.mul, per_axis)

        windows = [tuple(slice(a, a + p) for a, p in zip(corner, self.patch)) for corner in self.corners(shape)]
        score = None
        for i in range(0, len(windows), self.batch):
            group = windows[i:i + self.batch]
            logits = predict(torch.stack([vol[(slice(None), *w)] for w in group]))
            _check_logits(logits, len(group), self.patch, self.name)
            probs = logits.float().softmax(1)
            if score is None:
                score = torch.zeros((probs.shape[1], *shape), dtype=torch.float32, device=device)
            for w, p in zip(group, probs):
                score[(slice(None), *w)] += p
        del vol
        score /= count
        return score[(slice(None), *inner)].argmax(0).to(torch.uint8).cpu().numpy()


@INFERERS.register("whole_image", "2D network on the whole 2D image (C, H, W), resized to the patch and back")
class WholeImage(Inferer2D):
    """A 2D image (C, H, W) resized to `patch`, predicted once, and its label map brought back to (H, W)."""

    name = "whole_image"

    def __init__(self, patch: int | Sequence[int], resize: str = "nearest") -> None:
        self.patch = _ints(patch, "whole_image patch (P1, P2)", dims=2)
        self.resize = _check_resize(resize, self.name)

    @torch.no_grad()
    def __call__(self, predict: Predictor, image: np.ndarray, device: torch.device) -> np.ndarray:
        image = _check_image(image, 2, "(C, H, W)", self.name)
        h, w = image.shape[1:]
        if self.resize in _ZOOM_IN:
            zoom_in = _ZOOM_IN[self.resize]
            small = np.stack([zoom_in(channel, self.patch) for channel in image])[None].astype(np.float32, copy=False)
            logits = predict(torch.from_numpy(small).to(device))
            _check_logits(logits, 1, self.patch, self.name)
            return resize_nearest(logits.argmax(1)[0].to(torch.uint8).cpu().numpy(), (h, w))
        x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
        logits = predict(F.interpolate(x, size=self.patch, mode="bilinear", align_corners=False))
        _check_logits(logits, 1, self.patch, self.name)
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def build_inferer(inference: str, patch: int | Sequence[int], stride: int | Sequence[int] | None = None,
                  resize: str = "nearest") -> Inferer:
    """The inferer named `inference` (slicewise | sliding_window | whole_image) for a card's patch/stride/resize.

    2D inferers accept one integer for a square patch (as cards give it); `stride` is for sliding_window only,
    and `resize` for the 2D inferers only.
    """
    return INFERERS.get(inference).from_fields(patch, stride, resize)
