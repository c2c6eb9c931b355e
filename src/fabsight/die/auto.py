"""``die train --auto``: choose backbone, layers, input size and method from the user's own labels.

Why: the fixed defaults (layers, input size, probe) were chosen on DeepPCB crops; on another
image type another block or backbone wins by points, and with a few labels per class the only
judge that does not need a test set is cross-validation on the training images themselves.

- Each (backbone, input size) is embedded once through the embedding cache, one forward pass
  for every candidate layer, so the search costs about one embedding pass per pair plus cheap
  probe fits; a rerun or the final fit reads the cache.
- Candidates are layer sets × C of the linear probe (the C grid is part of the search), then
  the hybrid features (⊕ GLCM + Zernike) on the best deep candidates.
- Scores: balanced accuracy (a rare defect counts as much as a common one) over repeated
  stratified k-fold, every candidate on the same folds, k from the smallest class.
- The best mean wins only if it wins clearly: with few labels the best of many candidates is
  often best by chance, so hybrid must beat the best probe, and the winner the plain default
  probe, by more than the paired fold-by-fold gain's standard error times √(2 ln m), m the
  candidates it was the best of ("prefer the simpler unless the other wins clearly").
- ``max_minutes`` bounds the search: an embedding pass that would not fit is skipped and said so.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fabsight.die.data import ImageFolder, scan_folder
from fabsight.errors import FabsightError

if TYPE_CHECKING:
    from fabsight.backbones import Backbone
    from fabsight.die.model import TrainResult
    from fabsight.io import ReadLog

BUILTIN_BACKBONES = ("efficientnet_lite0", "dinov2_vits14")
C_GRID = (0.05, 0.5)
MAX_FOLDS = 5
HYBRID_TOP = 2  # deep candidates that are also tried with the hand-crafted features
DEFAULT_MINUTES = 20.0
METHOD_RANK = {"probe": 0, "hybrid": 1}
REFERENCE_BACKBONE = "dinov2_vits14"  # what die train uses without --auto
REFERENCE_C = 0.5


@dataclass(frozen=True)
class Candidate:
    """One setting the search scores: features (backbone, input size, layers, hand-crafted) and probe C."""

    backbone: str
    input_size: int
    layers: tuple[str, ...]
    method: str
    C: float
    dim: int = 0

    @property
    def name(self) -> str:
        return f"{self.backbone}@{self.input_size} {'+'.join(self.layers)} {self.method} C={self.C:g}"

    def simplicity(self) -> tuple[float, ...]:
        """Smaller is simpler (breaks ties): method, feature width, layer count, input size, then C."""
        return (METHOD_RANK[self.method], self.dim, len(self.layers), self.input_size, self.C)


@dataclass
class Scores:
    """Per-fold balanced accuracies of one candidate (every candidate on the same folds)."""

    candidate: Candidate
    folds: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.folds.mean())

    @property
    def sd(self) -> float:
        return float(self.folds.std(ddof=1)) if len(self.folds) > 1 else 0.0


@dataclass
class SearchResult:
    """The winner, every candidate's scores, and the notes a user must read (fallbacks, skips, mixed images)."""

    winner: Candidate
    scores: list[Scores] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    why: str = ""
    folds: int = 0
    repeats: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON the card keeps: what was tried, CV mean ± sd, the winner and why."""
        ranked = sorted(self.scores, key=lambda s: -s.mean)
        return {
            "winner": self.winner.name, "why": self.why, "folds": self.folds, "repeats": self.repeats,
            "metric": "balanced accuracy over held-out folds of the training images",
            "candidates": [{"name": s.candidate.name, "backbone": s.candidate.backbone,
                            "input_size": s.candidate.input_size, "layers": list(s.candidate.layers),
                            "method": s.candidate.method, "C": s.candidate.C, "feature_dim": s.candidate.dim,
                            "cv_mean": round(s.mean, 4), "cv_sd": round(s.sd, 4)} for s in ranked],
            "notes": self.notes, "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "images": self.images,
        }


def layer_sets(bb: Backbone) -> list[tuple[str, ...]]:
    """Candidate layer sets from a backbone's own layer list (a rule, not names tuned to one data set).

    ViT: blocks at 2/3 and 5/6 of the depth and the final normed output (CLS ⊕ mean patch
    each). CNN: the last two stages alone and together, and the last stage with the pooled head.
    """
    head = "head"
    deep = [n for n in bb.cfg.layers if n != head]
    if len({bb.cfg.layers[n][0] for n in deep}) == 1:  # ViT: every block has the same width
        depth = len(deep)
        picks = sorted({deep[round(depth * 2 / 3)], deep[round(depth * 5 / 6)]}, key=deep.index)
        return [(p,) for p in picks] + [(head,)]
    if len(deep) < 2:
        return [(head,)]
    a, b = deep[-2], deep[-1]
    return [(a,), (b,), (a, b), (b, head)]


def image_summary(paths: Sequence[Path]) -> dict[str, Any]:
    """Sizes and colour modes from the image headers (no decoding): what the input size is chosen from."""
    from PIL import Image

    sides, modes = [], {"grey": 0, "colour": 0}
    for p in paths:
        with Image.open(p) as im:
            sides.append(im.size)
            modes["grey" if im.mode in ("L", "I;16", "I", "1", "LA") else "colour"] += 1
    short = np.asarray([min(s) for s in sides])
    return {"n": len(paths), "distinct_sizes": len(set(sides)), "short_side_min": int(short.min()),
            "short_side_median": int(np.median(short)), "short_side_max": int(short.max()), "modes": modes}


def input_sizes(default: int, patch: int, summary: dict[str, Any]) -> list[int]:
    """The backbone's own size, plus one nearer the images: their median short side when they are
    much smaller (less up-sampling blur, cheaper), 1.5 × when they are much larger (small defects
    keep more pixels). Multiples of ``patch`` (the ViT patch, or 32 for a CNN's stride)."""
    median = summary["short_side_median"]
    sizes = [default]
    if median < 0.6 * default:
        sizes.append(max(2 * patch, math.ceil(median / patch) * patch))
    elif median > 2 * default:
        sizes.append(math.ceil(1.5 * default / patch) * patch)
    return sizes


def image_notes(summary: dict[str, Any], sizes: Sequence[int]) -> list[str]:
    """What a user should know about mixed inputs (handled: every image is resized and made RGB)."""
    notes = []
    if summary["distinct_sizes"] > 1:
        notes.append(f"images come in {summary['distinct_sizes']} sizes (short side {summary['short_side_min']}"
                     f"–{summary['short_side_max']} px): each is resized whole to the input size "
                     f"({', '.join(map(str, sizes))} tried)")
    if summary["modes"]["grey"] and summary["modes"]["colour"]:
        notes.append(f"mixed grey ({summary['modes']['grey']}) and colour ({summary['modes']['colour']}) images: "
                     "grey ones are replicated to 3 channels")
    return notes


def plan_folds(folder: ImageFolder) -> tuple[int, int, list[str]]:
    """(k, repeats, notes): k from the smallest class (at most 5), repeats so that small sets get
    more held-out predictions; k = 0 when a class has a single image (no search possible)."""
    counts = folder.counts()
    smallest_class = min(counts, key=counts.__getitem__)
    smallest = counts[smallest_class]
    notes = []
    if smallest < 2:
        return 0, 0, [f"class '{smallest_class}' has {smallest} image: cross-validation needs 2 per class, so "
                      "no search was run and the fallback setting was trained"]
    k = min(MAX_FOLDS, smallest)
    if k < MAX_FOLDS:
        notes.append(f"{k}-fold cross-validation instead of {MAX_FOLDS}: class '{smallest_class}' has only "
                     f"{smallest} images")
    repeats = int(np.clip(math.ceil(400 / len(folder)), 1, 5))
    return k, repeats, notes


def fold_splits(y: np.ndarray, k: int, repeats: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Repeated stratified k-fold (seeded), the same for every candidate so they compare pairwise."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    return list(RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=0).split(np.zeros(len(y)), y))


def cv_scores(X: np.ndarray, y: np.ndarray, Cs: Sequence[float],
              splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """len(Cs) × folds balanced accuracies of the probe (uncalibrated: calibration does not move the argmax).

    BLAS runs single-threaded here: these matrices are small, and on a busy machine a
    multi-threaded BLAS made the same fits several times slower (measured: 0.3 s against < 0.05 s).
    """
    from sklearn.metrics import balanced_accuracy_score
    from threadpoolctl import threadpool_limits

    from fabsight.die.classifier import ProbeClassifier

    out = np.zeros((len(Cs), len(splits)))
    with threadpool_limits(limits=1):
        for j, (train_idx, test_idx) in enumerate(splits):
            for i, C in enumerate(Cs):
                model = ProbeClassifier(C=C, calibrate=False).fit(X[train_idx], y[train_idx])
                out[i, j] = balanced_accuracy_score(y[test_idx], model.predict(X[test_idx]))
    return out


def _paired(best: Scores, other: Scores, folds: int) -> tuple[float, float]:
    """Mean fold-by-fold gain of ``best`` over ``other`` and its standard error (sd of the paired
    differences / √k: conservative, since repeats of the k folds are not independent)."""
    diff = best.folds - other.folds
    se = float(diff.std(ddof=1)) / math.sqrt(folds) if len(diff) > 1 else 0.0
    return float(diff.mean()), se


def _clear_win(best: Scores, other: Scores, folds: int, rivals: int = 1) -> tuple[bool, str]:
    """Whether ``best`` beats ``other`` clearly, and the sentence that says so.

    Clearly: the paired gain exceeds its standard error times √(2 ln m), m = ``rivals`` (at least 1 SE):
    ``best`` is the maximum of m candidates, and the largest of m chance gains reaches about
    √(2 ln m) standard errors, so a gain a single comparison would accept is no evidence here.
    """
    gain, se = _paired(best, other, folds)
    bar = se * max(1.0, math.sqrt(2 * math.log(max(rivals, 1))))
    verdict = ">" if gain > bar else "≤"
    return gain > bar, (f"{best.candidate.name} vs {other.candidate.name}: {best.mean:.4f} vs {other.mean:.4f}, "
                        f"paired gain {gain:+.4f} {verdict} {bar:.4f} (SE {se:.4f}, best of {rivals})")


def reference(scores: Sequence[Scores], defaults: dict[str, tuple[int, tuple[str, ...]]]) -> Scores | None:
    """The plain default among the candidates: the default backbone's (else the first one's) own
    layers at its own input size (``defaults``: backbone → (size, layers)), as a probe with the
    default C; what ``die train`` trains without ``--auto``."""
    for name in (REFERENCE_BACKBONE, scores[0].candidate.backbone):
        for s in scores:
            c = s.candidate
            if name in defaults and (c.backbone, c.method, c.C, (c.input_size, c.layers)) == (
                    name, "probe", REFERENCE_C, defaults[name]):
                return s
    return None


def pick(scores: Sequence[Scores], folds: int,
         defaults: dict[str, tuple[int, tuple[str, ...]]] | None = None) -> tuple[Candidate, str]:
    """The best cross-validated candidate, unless it fails to beat a simpler choice clearly
    (:func:`_clear_win`): hybrid must beat the best probe, and the winner must beat the reference
    (the plain default probe). With a few labels per class the fold scores swing by tens of points
    and the best of many candidates is often best by chance; the default then stands."""
    best = max(scores, key=lambda s: (s.mean, tuple(-v for v in s.candidate.simplicity())))
    steps = [f"best cross-validated balanced accuracy: {best.candidate.name}, {best.mean:.4f} ± {best.sd:.4f}"]
    probes = [s for s in scores if s.candidate.method == "probe"]
    if best.candidate.method != "probe" and probes:
        alt = max(probes, key=lambda s: s.mean)
        clear, text = _clear_win(best, alt, folds, rivals=len(scores) - len(probes))
        steps.append(text + ("" if clear else ": not clearly, the simpler probe is kept"))
        best = best if clear else alt
    ref = reference(scores, defaults or {})
    if ref is not None and ref is not best:
        clear, text = _clear_win(best, ref, folds, rivals=len(scores) - 1)
        steps.append(text + ("" if clear else ": not clearly, the default stands"))
        best = best if clear else ref
    return best.candidate, "; ".join(steps)


@dataclass
class _Budget:
    """Wall-clock budget of the search; an embedding pass whose estimated cost does not fit is skipped."""

    seconds: float
    start: float = field(default_factory=time.monotonic)
    per_image: dict[str, float] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def fits(self, backbone: str, size: int, default: int, n: int) -> bool:
        known = self.per_image.get(backbone) or max(self.per_image.values(), default=0.0)
        return self.elapsed() + known * n * (size / default) ** 2 <= self.seconds


def build_backbone(name: str, weights: str | None, size: int | None, device: str) -> Backbone:
    from fabsight.backbones import create_backbone

    return create_backbone(name, device=device, weights=weights if name not in BUILTIN_BACKBONES else None,
                           input_size=size)


def candidate_sizes(bb: Backbone, summary: dict[str, Any], given: int | None = None) -> list[int]:
    """:func:`input_sizes` for a backbone built at its default size, or the ``given`` size (a ViT's
    rounded up to its patch multiple)."""
    vit = len({bb.cfg.layers[n][0] for n in bb.cfg.layers}) == 1
    patch = bb.cfg.layers["head"][1] if vit else 32
    if given:
        return [math.ceil(given / patch) * patch if vit else given]
    return input_sizes(int(bb.cfg.input_size[0]), patch, summary)


def embed_candidates(bb: Backbone, paths: Sequence[Path], cache: str | os.PathLike[str] | None,
           batch_size: int) -> dict[str, np.ndarray]:
    """Every candidate layer of ``bb`` in one (cached) pass."""
    from fabsight.die.embeddings import extract_layers

    wanted = sorted({n for s in layer_sets(bb) for n in s}, key=list(bb.cfg.layers).index)
    return extract_layers(bb, paths, wanted, batch_size, cache)


def _deep_candidates(bb: Backbone, name: str, size: int, blocks: dict[str, np.ndarray], y: np.ndarray,
                     splits: list, features: dict[Candidate, np.ndarray]) -> list[Scores]:
    out = []
    for layers in layer_sets(bb):
        X = np.concatenate([blocks[n] for n in layers], axis=1)
        for C, folds in zip(C_GRID, cv_scores(X, y, C_GRID, splits), strict=True):
            cand = Candidate(name, size, layers, "probe", C, int(X.shape[1]))
            features[cand] = X
            out.append(Scores(cand, folds))
    return out


def search(folder: ImageFolder, *, backbones: Sequence[str] = BUILTIN_BACKBONES, weights: str | None = None,
           input_size: int | None = None, max_minutes: float | None = None, device: str = "cpu",
           cache: str | os.PathLike[str] | None = None, batch_size: int = 32) -> SearchResult:
    """Score every candidate by repeated stratified k-fold on ``folder`` and pick the winner (see module doc)."""
    from fabsight.die.handcrafted import extract_handcrafted

    budget = _Budget(60.0 * (DEFAULT_MINUTES if max_minutes is None else max_minutes))
    summary = image_summary(folder.paths)
    y = np.asarray(folder.classes)[folder.labels]
    k, repeats, notes = plan_folds(folder)
    plan: list[tuple[str, int, int, Backbone | None]] = []
    defaults: dict[str, tuple[int, tuple[str, ...]]] = {}
    for name in backbones:
        bb = build_backbone(name, weights, None, device)
        sizes = candidate_sizes(bb, summary, input_size)
        default = int(bb.cfg.input_size[0])
        defaults[name] = (sizes[0] if input_size else default, tuple(bb.cfg.default_layers))
        plan += [(name, s, default, bb if s == default else None) for s in sizes]
    notes += image_notes(summary, sorted({s for _, s, _, _ in plan}))
    if k == 0:
        name, size = plan[0][:2]
        return SearchResult(Candidate(name, size, (), "probe", 0.5), notes=notes, images=summary,
                            why="fallback: too few images for cross-validation")
    splits = fold_splits(y, k, repeats)
    scores: list[Scores] = []
    features: dict[Candidate, np.ndarray] = {}
    seconds = {"embedding": 0.0, "fits": 0.0}
    for name, size, default, built in plan:
        if scores and not budget.fits(name, size, default, len(folder)):
            notes.append(f"skipped {name} at {size} px: its embedding pass would not fit the "
                         f"{budget.seconds / 60:g}-minute budget")
            continue
        t0 = time.monotonic()
        bb = built or build_backbone(name, weights, size, device)
        blocks = embed_candidates(bb, folder.paths, cache, batch_size)
        t1 = time.monotonic()
        budget.per_image.setdefault(name, (t1 - t0) / len(folder) * (default / size) ** 2)
        scores += _deep_candidates(bb, name, size, blocks, y, splits, features)
        seconds["embedding"] += t1 - t0
        seconds["fits"] += time.monotonic() - t1
    t0 = time.monotonic()
    hand = extract_handcrafted(folder.paths, cache_dir=cache)
    for s in sorted(scores, key=lambda s: -s.mean)[:HYBRID_TOP]:
        c = s.candidate
        X = np.concatenate([features[c], hand], axis=1)
        cand = Candidate(c.backbone, c.input_size, c.layers, "hybrid", c.C, int(X.shape[1]))
        scores.append(Scores(cand, cv_scores(X, y, [c.C], splits)[0]))
    seconds["hybrid"] = time.monotonic() - t0
    winner, why = pick(scores, k, defaults)
    seconds["total"] = budget.elapsed()
    return SearchResult(winner, scores, notes, why, k, repeats, seconds, summary)


def train_auto(data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
               extra_backbone: str | None = None, weights: str | os.PathLike[str] | None = None,
               input_size: int | None = None, max_minutes: float | None = None, cv_folds: int = 5,
               device: str = "cpu", cache: str | os.PathLike[str] | None = None,
               log: ReadLog | None = None) -> TrainResult:
    """Search (:func:`search`) on ``DATA/CLASS`` images, then train the winner and record the search
    in the card (``training.auto``). ``extra_backbone`` (a ``timm:`` name with ``weights``, or an
    adapted directory) joins the two built-in backbones."""
    from fabsight.die.embeddings import default_cache
    from fabsight.die.model import train

    folder = scan_folder(data_dir, min_per_class=1, log=log)
    if len(folder.classes) < 2:
        raise FabsightError(data_dir, "needs at least two class folders to train a classifier")
    backbones = [*BUILTIN_BACKBONES, *([str(extra_backbone)] if extra_backbone else [])]
    cache = default_cache() if cache is None else cache
    w = None if weights is None else str(weights)
    result = search(folder, backbones=backbones, weights=w, input_size=input_size, max_minutes=max_minutes,
                    device=device, cache=cache)
    win = result.winner
    return train(data_dir, out_dir, backbone=win.backbone, weights=w if win.backbone not in BUILTIN_BACKBONES else None,
                 method=win.method, layers=win.layers or None, input_size=win.input_size, C=win.C,
                 cv_folds=cv_folds, device=device, cache=cache, log=log, auto_search=result.record())
