"""What every anomaly method shares: tiling, batching, maps → scores → decisions.

A method only says how to learn from good network inputs (``_fit_crops``) and how to turn
a batch of inputs into anomaly maps (``_map_batch``). Everything else is here, once:
images of any size are tiled or resized (:mod:`fabsight.anomaly.tiling`), maps are
stitched back to image size, an image's score is the maximum of its map, and an image is
anomalous when its score reaches the threshold, so "anomalous" and "has a pixel in its
defect mask" always agree.

Scores follow anomalib and the PatchCore paper: higher means more anomalous (the opposite
of scikit-learn's outlier detectors, whose ``score_samples`` is higher for inliers).
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np

from fabsight.anomaly.thresholds import Threshold, manual_threshold, threshold_best_f1, threshold_from_good
from fabsight.anomaly.tiling import Placement, Tiler
from fabsight.errors import FabsightError
from fabsight.utils.device import resolve_device

if TYPE_CHECKING:  # torch is imported where a method needs it, so the ONNX runtime can subclass this
    import torch


class NotFittedError(FabsightError):
    """A model used before ``fit`` (or loaded without its learned state)."""


def check_image(image: np.ndarray, index: int) -> np.ndarray:
    """A uint8 H×W or H×W×3 image, or a one-line error naming which one is wrong."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or min(a.shape[:2]) < 8:
        raise FabsightError(f"image #{index}", f"expected uint8 H×W or H×W×3 of at least 8×8 pixels, got "
                                              f"{a.dtype} {a.shape}")
    return a


def gaussian_smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blur each B×H×W map: isolated noisy patches fade, real defects (several patches) stay."""
    if sigma <= 0:
        return maps
    return np.stack([cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT) for m in maps])


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """``image`` with the channel count a reconstruction network was fitted on (grey ↔ RGB)."""
    if channels == 1 and image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if channels == 3 and image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return image


class AnomalyModel(ABC):
    """Base estimator: ``fit`` on good images, then ``anomaly_maps`` / ``score_samples`` / ``predict``.

    Parameters shared by all methods
    --------------------------------
    input_size : side of the square network input, in pixels.
    tile : cut images into overlapping ``tile``-pixel squares (each resized to
        ``input_size``) instead of resizing whole images; keeps small defects in big images.
    tile_overlap : fraction of a tile shared with its neighbour.
    max_aspect : without ``tile``, images longer than this (long / short side) keep their
        aspect ratio: short side scaled to ``input_size``, overlapping squares along the
        long side. None squashes every image to a square.
    batch_size : network inputs per forward pass.
    device : ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when present).
    seed : makes random choices (sampling, projections, synthetic defects) repeatable.

    Attributes
    ----------
    threshold_ : :class:`Threshold` or None until calibrated.
    n_train_images_, n_train_crops_, fit_seconds_ : what ``fit`` saw and how long it took.
    """

    method: ClassVar[str]

    def __init__(
        self,
        *,
        input_size: int = 256,
        tile: int | None = None,
        tile_overlap: float = 0.25,
        max_aspect: float | None = None,
        batch_size: int = 8,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.input_size = input_size
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.max_aspect = max_aspect
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    # scikit-learn style parameters ------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" in vars(klass) and klass is not object:
                for p in inspect.signature(klass.__init__).parameters.values():
                    if p.name != "self" and p.kind == p.KEYWORD_ONLY and p.name not in names:
                        names.append(p.name)
        return sorted(names)

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, as scikit-learn's ``get_params`` (stored in the card)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # helpers for subclasses ----------------------------------------------------------
    def _tiler(self) -> Tiler:
        try:
            return Tiler(int(self.input_size), None if self.tile is None else int(self.tile), float(self.tile_overlap),
                         None if self.max_aspect is None else float(self.max_aspect))
        except ValueError as exc:
            raise FabsightError(None, str(exc)) from None

    def _torch_device(self) -> torch.device:
        import torch

        return torch.device(resolve_device(str(self.device)))

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_train_images_"):
            raise NotFittedError(None, f"this {type(self).__name__} is not fitted yet: call fit first")

    # the two method-specific steps ----------------------------------------------------
    @abstractmethod
    def _fit_crops(self, crops: list[np.ndarray], n_images: int) -> None:
        """Learn from the network inputs of all good training images (uint8, ``input_size``²)."""

    @abstractmethod
    def _map_batch(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """B×S×S float32 anomaly maps (already smoothed) for B network inputs, and optionally
        a factor per input that scales the image score when that input holds the image's
        maximum (PatchCore's reweighting); None means factor 1."""

    # public API ---------------------------------------------------------------------
    def fit(self, X: Iterable[np.ndarray], y: Any = None) -> AnomalyModel:
        """Learn what good looks like from good images only (``y`` is accepted and ignored)."""
        start = time.perf_counter()
        tiler = self._tiler()
        crops: list[np.ndarray] = []
        n = 0
        for i, img in enumerate(X):
            c, _ = tiler.split(check_image(img, i))
            crops.extend(c)
            n += 1
        if n == 0:
            raise FabsightError(None, "no training images: anomaly detection needs good images to learn from")
        self._fit_crops(crops, n)
        self.n_train_images_ = n
        self.n_train_crops_ = len(crops)
        self.threshold_: Threshold | None = None
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def iter_maps(self, X: Iterable[np.ndarray]) -> Iterator[tuple[float, np.ndarray]]:
        """``(score, H×W map)`` per image, in order, batching crops across small images."""
        self._check_fitted()
        tiler = self._tiler()
        group: list[Placement] = []
        crops: list[np.ndarray] = []
        for i, img in enumerate(X):
            c, pl = tiler.split(self._prepare(check_image(img, i)))
            group.append(pl)
            crops.extend(c)
            if len(crops) >= self.batch_size:
                yield from self._finish(tiler, group, crops)
                group, crops = [], []
        if group:
            yield from self._finish(tiler, group, crops)

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        """Hook for methods that need a fixed channel count (recon)."""
        return image

    def _finish(
        self, tiler: Tiler, group: list[Placement], crops: list[np.ndarray]
    ) -> Iterator[tuple[float, np.ndarray]]:
        bs = max(1, int(self.batch_size))
        parts = [self._map_batch(crops[k : k + bs]) for k in range(0, len(crops), bs)]
        maps = np.concatenate([p[0] for p in parts])
        factors = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])  # type: ignore[misc]
        k = 0
        for pl in group:
            n = len(pl.boxes)
            m = tiler.stitch(list(maps[k : k + n]), pl)
            score = float(m.max())
            if factors is not None:
                score *= float(factors[k + int(np.argmax(maps[k : k + n].reshape(n, -1).max(axis=1)))])
            k += n
            yield score, m

    def anomaly_maps(self, X: Iterable[np.ndarray]) -> list[np.ndarray]:
        """One H×W float32 map per image, same size as the image; higher = more anomalous."""
        return [m for _, m in self.iter_maps(X)]

    def score_samples(self, X: Iterable[np.ndarray]) -> np.ndarray:
        """Image anomaly scores: the maximum of each image's anomaly map (higher = more anomalous)."""
        return np.array([s for s, _ in self.iter_maps(X)], dtype=np.float64)

    def resolve_threshold(self, threshold: float | None = None) -> float:
        """The threshold to use: the one given, else the calibrated one, else an error."""
        if threshold is not None:
            return float(threshold)
        if getattr(self, "threshold_", None) is None:
            raise NotFittedError(None, "no threshold: calibrate one (calibrate_*) or pass threshold=")
        return float(self.threshold_.value)  # type: ignore[union-attr]

    def predict(self, X: Iterable[np.ndarray], threshold: float | None = None) -> np.ndarray:
        """1 for anomalous images (score ≥ threshold), 0 for good ones."""
        t = self.resolve_threshold(threshold)
        return (self.score_samples(X) >= t).astype(np.int64)

    # thresholds -----------------------------------------------------------------------
    def calibrate_good(self, X_good: Iterable[np.ndarray], false_alarm_rate: float = 0.01) -> AnomalyModel:
        """Set ``threshold_`` so at most ``false_alarm_rate`` of these held-out good images are flagged."""
        self.threshold_ = threshold_from_good(self.score_samples(X_good), false_alarm_rate)
        return self

    def calibrate_f1(self, X: Iterable[np.ndarray], y: Iterable[int]) -> AnomalyModel:
        """Set ``threshold_`` to the best image F1 on validation images with labels (1 = defect)."""
        self.threshold_ = threshold_best_f1(np.asarray(list(y)), self.score_samples(X))
        return self

    def set_threshold(self, value: float) -> AnomalyModel:
        """Set ``threshold_`` by hand."""
        self.threshold_ = manual_threshold(value)
        return self

    # persistence (see fabsight.anomaly.persist) -----------------------------------------
    @abstractmethod
    def _state(self) -> dict[str, torch.Tensor]:
        """Learned tensors to save."""

    @abstractmethod
    def _restore(self, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Rebuild learned state from saved tensors and the card's ``fitted`` info."""

    def _fitted_info(self) -> dict[str, Any]:
        """Small learned facts (not tensors) kept in the card."""
        return {}

    def describe_backbone(self) -> dict[str, Any] | None:
        """The backbone block of the model card (None for methods without one)."""
        return None
