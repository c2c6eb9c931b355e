"""`WaferClassifier`: the scikit-learn-style estimator behind every wafer-pattern command.

Training, calibration, review routing and saving live here so the CLI, the REST service
and batch jobs share one implementation. See :mod:`fabsight.wafer` for the public API.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from fabsight import calibration as cal
from fabsight.artifacts import ModelCard, load_card, save_card
from fabsight.errors import FabsightError, ModelError
from fabsight.types import MIXEDWM38_LABELS, WM811K_CLASSES, WaferMap
from fabsight.utils.atomic import atomic_dir
from fabsight.utils.device import reproducible_cudnn
from fabsight.utils.progress import track
from fabsight.utils.threads import single_blas_thread
from fabsight.wafer.preprocess import CHANNELS, PREPROCESSING, maps_to_array
from fabsight.wafer.pretrained import resolve_model
from fabsight.wafer.review import grid_checks

TASK = "wafer-pattern"
WEIGHTS_FILE = "model.safetensors"
HEADS = ("auto", "finetune", "probe", "prototype")
#: Label budget (examples of the rarest class) up to which ``head="auto"`` uses
#: :data:`FEW_SHOT_HEAD` instead of fine-tuning everything.
FEW_SHOT_MAX_PER_CLASS = 20
#: The head ``head="auto"`` picks for small label budgets: a linear head on the frozen
#: embedding beat prototypes and matched full fine-tuning at 5–20 labels per class in the
#: few-shot benchmark (docs/benchmarks.md), at a fraction of the training cost.
FEW_SHOT_HEAD = "probe"
#: Fine-tuning starts from good weights: a smaller step keeps what pre-training learned.
FINETUNE_LR_SCALE = 0.3
#: Prototype logits are cosine similarities times this scale before temperature scaling.
PROTOTYPE_SCALE = 10.0
#: Below this many held-out maps, calibration would fit noise: it is skipped and recorded.
MIN_VALIDATION = 8
_BATCH = 256
#: Grid shapes synthetic maps of the ``default`` profile are drawn on for training (``wafer
#: train --synthetic`` on mixed-type data or with ``--synthetic-profile default``, ``distill``):
#: small to large, square and not, so the model meets every die pitch it will be fed. The
#: ``wm811k`` profile brings its own grids, drawn like the real WM-811K ones.
#: 32×32 divides the default 64-pixel input: its maps arrive as sharp 2×2 blocks of 0/1
#: instead of fractions, the regime a grid as large as the input is in.
SYNTH_SHAPES: tuple[tuple[int, int], ...] = (
    (26, 26),
    (32, 32),
    (39, 39),
    (52, 52),
    (48, 64),
    (72, 72),
    (100, 100),
    (150, 150),
)
MIN_INPUT_SIZE = 32
#: Views of each training map (as is + augmented) the OOD statistics are fitted on.
OOD_VIEWS = 4
#: Training maps per class the OOD statistics see at most: a 128-D mean and tied
#: covariance are settled long before that, and four views of all 37k WM-811K maps would
#: cost minutes of forward passes on two cores.
OOD_MAX_PER_CLASS = 512
#: How the training loss copes with unequal classes (``class_balance``): ``sampling``
#: draws every class equally often, ``sqrt`` draws a class in proportion to the square
#: root of its size, ``loss`` draws maps uniformly and weights each map's loss by the
#: inverse of its class size, ``none`` does neither.
CLASS_BALANCE = ("sampling", "sqrt", "loss", "none")
#: Share of the one-cycle schedule spent warming up (as torch's ``OneCycleLR``).
WARMUP = 0.3
#: Share of the schedule after which early stopping may end a run: the step size has
#: fallen below half its peak. Before that held-out scores dip while the step is large
#: and recover as it anneals (20 real maps per class: best epoch 6 of 15, then a dip that
#: stopped the run at epoch 9 with macro-F1 0.44). Patience is counted from here too, not
#: from a best epoch reached at the peak step size: otherwise a lucky early epoch ends
#: the run the moment stopping is allowed, before any annealing (MixedWM38 20 %: best
#: epoch 5, stopped at epoch 10 of 15 with exact match 0.867).
SETTLED = WARMUP + (1 - WARMUP) / 2
#: Maps preprocessed at a time by ``fit``: bounds the float32 temporaries for large sets.
_PREPROCESS_CHUNK = 4096
#: Views the teacher labels each unlabelled map from (``fit(unlabeled=...)``): its logits
#: averaged over the 8 exact symmetries of the square (4 quarter turns × mirror), which
#: change no pixel, so a pattern the network half-recognises in one orientation counts.
PSEUDO_VIEWS = 8


def _canonical_order(names: set[str], multilabel: bool) -> list[str]:
    """Known pattern names in the public data sets' order, then any others sorted."""
    known = MIXEDWM38_LABELS if multilabel else WM811K_CLASSES
    return [c for c in known if c in names] + sorted(names - set(known))


def label_tuple(labels: str | Sequence[str]) -> tuple[str, ...]:
    """Labels as a tuple of basic pattern names: ``"Center+Loc"`` (a mixed folder name) splits."""
    names = [labels] if isinstance(labels, str) else list(labels)
    return tuple(dict.fromkeys(part for name in names for part in str(name).split("+") if part))


def single_example_warning(name: str, given_val: bool, unlabeled: bool) -> str:
    """What a model can and cannot learn of a class with one labelled map."""
    why = "the model will hardly learn it" if given_val else "nothing of it can be held out"
    if unlabeled:
        why = (
            "the model learns it from that map's turns, mirrors and noise, and from unlabelled maps only "
            "where the teacher already finds it confidently (variants unlike that map stay unknown); "
            + ("its held-out score rests on the validation maps alone" if given_val else "its score is not measured")
        )
    return f"class {name!r} has a single example: {why}"


def _source_of(item: Any, index: int) -> str:
    return (item.source or f"map {index}") if isinstance(item, WaferMap) else f"map {index}"


def one_cycle(progress: float) -> float:
    """Learning-rate factor at ``progress`` ∈ [0, 1] of the run: ``OneCycleLR``'s shape
    (cosine warm-up from 1/25 over :data:`WARMUP`, cosine anneal to 1/25e4).

    A function of the share done rather than a fixed scheduler, so a time budget that
    shortens the run mid-way still ends it with a fully annealed step size.
    """
    p = min(max(progress, 0.0), 1.0)
    if p < WARMUP:
        start, end, t = 1 / 25, 1.0, p / WARMUP
    else:
        start, end, t = 1.0, 1 / 25e4, (p - WARMUP) / (1 - WARMUP)
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def balance_weights(groups: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Sampling probabilities and per-map loss weights of the training maps for a
    :data:`CLASS_BALANCE` mode (loss weights average 1 over the maps)."""
    counts = Counter(groups.tolist())
    n = np.array([counts[g] for g in groups.tolist()], dtype=np.float64)
    ones = np.ones_like(n)
    sampling, loss = {
        "sampling": (1.0 / n, ones),
        "sqrt": (1.0 / np.sqrt(n), ones),
        "loss": (ones, len(n) / (len(counts) * n)),
        "none": (ones, ones),
    }[mode]
    return sampling / sampling.sum(), loss


def student_balance(labelled: np.ndarray, groups: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`balance_weights` of a self-training student's maps (``groups``: the labelled
    maps' classes, then the pseudo-labels) that keep each class's share of the draws and its
    loss weight what they were among the ``labelled`` maps alone.

    Pseudo-labels come mostly from the classes the teacher already knows well; counted as
    ordinary maps they would shift the draws towards those classes and away from the ones
    it hesitates over (a student on 24 labelled + 91 pseudo-labelled generated maps, none
    of them Scratch, lost 9 points of accuracy to its teacher). So they add variety within a
    class, never weight.
    """
    p_l, w_l = balance_weights(labelled, mode)
    p = np.empty(len(groups))
    w = np.empty(len(groups))
    for g in np.unique(labelled):
        mine, theirs = groups == g, labelled == g
        p[mine] = p_l[theirs].sum() / mine.sum()
        w[mine] = w_l[theirs][0]
    return p / p.sum(), w


def _inputs(maps: Sequence[Any], size: int) -> np.ndarray:
    """Model inputs of every map as float16, converted in chunks (no whole-set float32 copy)."""
    out = np.empty((len(maps), 3, size, size), dtype=np.float16)
    for s in range(0, len(maps), _PREPROCESS_CHUNK):
        out[s : s + _PREPROCESS_CHUNK] = maps_to_array(maps[s : s + _PREPROCESS_CHUNK], size)
    return out


def _ood_subset(groups: np.ndarray, seed: int) -> np.ndarray:
    """Indices of at most :data:`OOD_MAX_PER_CLASS` maps of each class (all of a small set)."""
    rng = np.random.default_rng(seed)
    keep = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        keep.append(idx if len(idx) <= OOD_MAX_PER_CLASS else rng.choice(idx, OOD_MAX_PER_CLASS, replace=False))
    return np.sort(np.concatenate(keep))


class _Worker:
    """A one-thread executor for :meth:`WaferClassifier._outputs`, or (``threaded`` false)
    one that runs each task at once: the batch loop is the same either way."""

    def __init__(self, threaded: bool) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fabsight-prep") if threaded else None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        done: Future[Any] = Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:  # re-raised by result(), where the threaded worker raises it
            done.set_exception(exc)
        return done

    def __enter__(self) -> _Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class _BestEpoch:
    """Early stopping: scores the network on held-out maps after each epoch, keeps a copy
    of the best weights and says when ``patience`` epochs brought nothing better.

    Without held-out maps it never stops early and keeps the last weights.
    """

    def __init__(self, clf: WaferClassifier, val: tuple[np.ndarray, np.ndarray] | None, patience: int) -> None:
        self.clf, self.val, self.patience = clf, val, patience
        self.history: list[list[float]] = []
        self.best: tuple[float, float, dict[str, Any]] | None = None  # score, epoch, weights
        self.settled: float | None = None  # the first epoch at which stopping was allowed
        self.stopped_early = False

    def check(self, epoch: float, may_stop: bool = True) -> bool:
        """Score after ``epoch`` epochs; True when training should stop (only if ``may_stop``)."""
        if self.val is None:
            return False
        score = self.clf._val_score(self.val)
        self.history.append([round(epoch, 3), round(score, 4)])
        if self.best is None or score > self.best[0] + 1e-4:
            state = {k: v.detach().clone() for k, v in self.clf.net_.state_dict().items()}
            self.best = (score, epoch, state)
        if may_stop:
            if self.settled is None:
                self.settled = epoch
            self.stopped_early = epoch - max(self.best[1], self.settled) >= self.patience
        return self.stopped_early

    def finish(self, cut_by_budget: bool) -> dict[str, Any]:
        """Restore the best weights; what happened, for the model card."""
        if self.best is not None:
            self.clf.net_.load_state_dict(self.best[2])
        stop = "patience" if self.stopped_early else "time budget" if cut_by_budget else "planned epochs"
        return {
            "metric": None if self.val is None else f"{self.clf.stopping_metric()} on held-out maps",
            "history": self.history,
            "best_epoch": None if self.best is None else round(self.best[1], 3),
            "best_score": None if self.best is None else round(self.best[0], 4),
            "stopped_by": stop,
        }


class WaferClassifier(BaseEstimator):
    """Compact CNN wafer-pattern classifier with calibrated probabilities and review routing.

    Parameters
    ----------
    input_size : side of the square model input (maps of any grid are area-resampled to it);
        taken from ``init`` when fine-tuning.
    multilabel : one sigmoid per basic pattern (MixedWM38-style mixed maps) instead of softmax.
    classes : explicit class order; default: the labels seen in ``fit`` (WM-811K order first).
    widths, embed_dim : network size (see :class:`fabsight.wafer.net.WaferNet`).
    epochs, batch_size, learning_rate, weight_decay : optimisation (AdamW, one-cycle schedule).
        An epoch is ``max(n_train, 8 * batch_size)`` draws, so tiny few-shot sets still get
        enough steps.
    min_steps : gradient steps the whole run gets at least: epochs are lengthened to
        ``min_steps / epochs`` batches when the maps are too few to fill them (held-out
        scoring stays once per epoch). ``fabsight wafer train`` sets it for networks trained
        from scratch (:data:`fabsight.wafer.recipe.SCRATCH_MIN_STEPS`).
    class_balance : how unequal classes are handled, one of :data:`CLASS_BALANCE`.
    patience : epochs without a better held-out score (:meth:`stopping_metric`) after which
        training stops, counted from :data:`SETTLED` of the schedule at the earliest; the
        best epoch's weights are kept (scored on
        ``fit``'s ``val_maps``, else the held-out maps).
    max_minutes : wall-clock budget of the gradient steps (from the start of ``fit``); the
        learning-rate schedule is shortened to end within it. Calibration comes after it.
    rotate, flip, max_noise : augmentation (any-angle rotation, mirroring, extra random
        failing dies up to this density). Turn ``rotate`` off when the notch position matters.
    validation_fraction : stratified share of the maps held out for calibration.
    review_precision : confidence threshold is the lowest at which predictions above it are
        this precise (never below 0.5), on ``fit``'s ``review_maps`` when given, else on the
        held-out maps.
    ood_quantile : Mahalanobis distances above this quantile of held-out maps flag "out of
        distribution".
    rounds, pseudo_threshold : self-training when ``fit`` gets ``unlabeled`` maps: each round
        the current network (the teacher) labels them from :data:`PSEUDO_VIEWS` symmetric
        views, the maps whose temperature-calibrated confidence reaches ``pseudo_threshold``
        are kept class-balanced (:func:`fabsight.calibration.select_pseudo_labels`), and the
        network goes on training (the student, from the teacher's weights at the fine-tuning
        step size) on the labelled plus pseudo-labelled maps, each class drawn as often as
        among the labelled maps alone (:func:`student_balance`); it is the next round's
        teacher. A student started from scratch under the same number of epochs did worse
        than its teacher on generated maps (0.80 against 0.85 accuracy); going on from the
        teacher's weights did not (0.85–0.86). The student takes as many steps as the teacher
        (an epoch stays the size of the labelled set): a round costs one teacher run plus
        :data:`PSEUDO_VIEWS` forward passes per unlabelled map. Single-label only.
    init : a model directory or fitted ``WaferClassifier`` to start from (few-shot, new fab).
    head : with ``init``: ``finetune`` (all weights), ``probe`` (new linear head on the frozen
        embedding), ``prototype`` (cosine nearest class mean, no gradient steps) or ``auto``
        (``FEW_SHOT_HEAD`` when the rarest class has ≤ 20 maps, else ``finetune``).
    n_threads : CPU threads. Prediction with 2 or more gives one to a worker that
        preprocesses and checks grids while the network runs on the others (:meth:`_outputs`).
    device : where the gradient steps run (``cpu``, ``cuda``, ``cuda:N`` or ``auto``). Only
        training uses it: augmentation stays on the CPU with its seeded generator, and the
        fitted network comes back to the CPU, so calibration, saving and prediction are the
        same whichever device trained it.
    random_state : seed for weights, split, sampling and augmentation.

    Attributes
    ----------
    classes_ : list of class names (multi-label: basic patterns; no label = "none").
    input_size_ : the input side actually used.
    net_ : the trained :class:`~fabsight.wafer.net.WaferNet`.
    temperature_ : calibration temperature.
    review_threshold_ : confidence below which ``needs_review`` is set.
    label_thresholds_ : per-label decision thresholds (multi-label; 0.5 otherwise).
    ood_ : :class:`~fabsight.calibration.MahalanobisOOD` on the embedding.
    head_ : the head actually trained (``scratch``, ``finetune``, ``probe``, ``prototype``).
    self_training_ : with ``unlabeled`` maps: the pseudo-labels of each round (counts per
        class, the least confidence kept per class, the caps) and each student's training;
        also in ``training_["self_training"]`` and the model card.
    metrics_ : held-out metrics (accuracy, macro-F1, ECE before/after calibration, review rates)
        and, with ``review_maps``, the same on those (key ``review``).
    training_ : summary of the training data, written to the model card.
    """

    #: Preprocess and check grids in a worker thread beside the network (see :meth:`_outputs`).
    #: The ONNX Runtime predictor turns it off: its session's thread count is fixed.
    OVERLAP = True

    def __init__(
        self,
        input_size: int = 64,
        multilabel: bool = False,
        *,
        classes: Sequence[str] | None = None,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        embed_dim: int = 128,
        epochs: int = 15,
        min_steps: int = 0,
        batch_size: int = 64,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
        rotate: bool = True,
        flip: bool = True,
        max_noise: float = 0.05,
        class_balance: str = "sqrt",
        patience: int = 3,
        max_minutes: float | None = None,
        validation_fraction: float = 0.2,
        review_precision: float = 0.98,
        ood_quantile: float = 0.99,
        rounds: int = 1,
        pseudo_threshold: float = 0.9,
        init: str | os.PathLike[str] | WaferClassifier | None = None,
        head: str = "auto",
        n_threads: int = 2,
        device: str = "cpu",
        random_state: int | None = 0,
    ) -> None:
        self.input_size = input_size
        self.multilabel = multilabel
        self.classes = classes
        self.widths = widths
        self.embed_dim = embed_dim
        self.epochs = epochs
        self.min_steps = min_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.rotate = rotate
        self.flip = flip
        self.max_noise = max_noise
        self.class_balance = class_balance
        self.patience = patience
        self.max_minutes = max_minutes
        self.validation_fraction = validation_fraction
        self.review_precision = review_precision
        self.ood_quantile = ood_quantile
        self.rounds = rounds
        self.pseudo_threshold = pseudo_threshold
        self.init = init
        self.head = head
        self.n_threads = n_threads
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ labels
    def _label_lists(self, maps: Sequence[Any], y: Any) -> list[tuple[str, ...]]:
        """Every target as a tuple of names (single-label: exactly one)."""
        if y is None:
            if not all(isinstance(m, WaferMap) for m in maps):
                raise FabsightError(None, "labels missing: pass y or WaferMap objects with labels")
            raw: list[tuple[str, ...]] = [tuple(m.labels) for m in maps]
        elif isinstance(y, np.ndarray) and y.ndim == 2:
            names = list(self.classes) if self.classes is not None else list(MIXEDWM38_LABELS)
            if y.shape[1] != len(names):
                raise FabsightError(None, f"multi-hot y has {y.shape[1]} columns but there are {len(names)} classes")
            raw = [tuple(n for n, v in zip(names, row, strict=True) if v) or ("none",) for row in y]
        else:
            raw = [(v,) if isinstance(v, str) else tuple(str(s) for s in v) for v in y]
        if self.multilabel:
            raw = [label_tuple(t) for t in raw]
        if len(raw) != len(maps):
            raise FabsightError(None, f"{len(maps)} maps but {len(raw)} labels")
        for i, labels in enumerate(raw):
            if not labels:
                raise FabsightError(_source_of(maps[i], i), "map has no label")
            if not self.multilabel and len(labels) != 1:
                raise FabsightError(
                    _source_of(maps[i], i),
                    f"has labels {'+'.join(labels)}; a single-label model needs one (train with multilabel)",
                )
        return raw

    def _resolve_classes(self, labels: list[tuple[str, ...]], maps: Sequence[Any]) -> list[str]:
        seen = {n for t in labels for n in t}
        if self.multilabel:
            seen.discard("none")
        if self.classes is None:
            classes = _canonical_order(seen, self.multilabel)
        else:
            classes = [c for c in self.classes if not (self.multilabel and c == "none")]
            for i, t in enumerate(labels):
                unknown = [n for n in t if n not in classes and not (self.multilabel and n == "none")]
                if unknown:
                    raise FabsightError(_source_of(maps[i], i), f"label {unknown[0]!r} is not one of {classes}")
        if not self.multilabel and len(classes) < 2:
            raise FabsightError(None, f"need at least two classes to train a classifier, got {classes}")
        if self.multilabel and not classes:
            raise FabsightError(None, "no pattern labels in the training data (all maps are 'none')")
        return classes

    def _targets(self, labels: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
        """Network targets (class indices, or multi-hot rows) and each map's group name."""
        index = {c: j for j, c in enumerate(self.classes_)}
        if self.multilabel:
            targets = np.zeros((len(labels), len(self.classes_)), dtype=np.float32)
            for i, t in enumerate(labels):
                for n in t:
                    if n != "none":
                        targets[i, index[n]] = 1.0
            return targets, np.array(["+".join(t) for t in labels])
        return np.array([index[t[0]] for t in labels], dtype=np.int64), np.array([t[0] for t in labels])

    def _held_out_set(self, maps: Sequence[WaferMap], what: str) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs and targets of labelled maps never trained on (``what``: ``review``
        or ``validation``); a label the model will not have is an error, not a silent miss."""
        if len(maps) < MIN_VALIDATION:
            raise FabsightError(None, f"{what} maps: need at least {MIN_VALIDATION} labelled maps, got {len(maps)}")
        labels = self._label_lists(maps, None)
        known = set(self.classes_) | ({"none"} if self.multilabel else set())
        for i, t in enumerate(labels):
            unknown = [n for n in t if n not in known]
            if unknown:
                raise FabsightError(
                    _source_of(maps[i], i), f"{what} label {unknown[0]!r} is not one of {self.classes_}"
                )
        targets = self._targets(labels)[0]
        if what == "validation":
            missing = [c for c in self.classes_ if c not in {n for t in labels for n in t}]
            if missing:
                warnings.warn(f"validation maps hold no {', '.join(missing)}: not scored for those", stacklevel=3)
        return _inputs(maps, self.input_size_), targets

    # ----------------------------------------------------------------- network
    def network_outputs(self, x: np.ndarray, description: str,
                        augment_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings of preprocessed maps, in batches, in eval mode.

        With ``augment_seed`` each batch is first augmented as in training (one random view).
        """
        import torch

        from fabsight.wafer.net import augment

        gen = None if augment_seed is None else torch.Generator().manual_seed(augment_seed)
        self.net_.eval()
        device = next(self.net_.parameters()).device  # the training device while fitting, else the CPU
        logits, embeddings = [], []
        starts = range(0, len(x), _BATCH)
        with torch.inference_mode():
            for s in track(starts, description, total=len(starts)):
                xb = torch.from_numpy(np.ascontiguousarray(x[s : s + _BATCH], dtype=np.float32))
                if gen is not None:
                    xb = augment(xb, gen, rotate=self.rotate, flip=self.flip, max_noise=self.max_noise)
                z = self.net_.embed(xb.to(device))
                embeddings.append(z.cpu().numpy())
                logits.append(self.net_.classify(z).cpu().numpy())
        return np.concatenate(logits), np.concatenate(embeddings)

    def stopping_metric(self) -> str:
        """What early stopping maximises: exact match for multi-label models (a mixed map is
        right only with every label right; macro-F1 rewards a model that gets each label
        mostly right on different maps), macro-F1 over classes otherwise."""
        return "exact_match" if self.multilabel else "macro_f1"

    def _val_score(self, val: tuple[np.ndarray, np.ndarray]) -> float:
        """:meth:`stopping_metric` of the current network on held-out maps (multi-label: each logit > 0)."""
        from sklearn.metrics import f1_score

        logits = self.network_outputs(val[0], "scoring held-out maps")[0]
        if self.multilabel:
            return float(((logits > 0) == val[1].astype(bool)).all(axis=1).mean())
        labels = range(len(self.classes_))
        return float(f1_score(val[1], logits.argmax(axis=1), labels=labels, average="macro", zero_division=0))

    @reproducible_cudnn()
    def _train(
        self,
        x: np.ndarray,
        targets: np.ndarray,
        balance: tuple[np.ndarray, np.ndarray],
        *,
        lr: float,
        head_only: bool,
        seed: int,
        val: tuple[np.ndarray, np.ndarray] | None = None,
        deadline: float | None = None,
        epoch_size: int | None = None,
    ) -> dict[str, Any]:
        """Gradient steps with early stopping on ``val`` and the ``deadline`` (monotonic s).

        An epoch is ``epoch_size`` draws (default ``len(x)``), lengthened to at least 8
        batches and to ``min_steps / epochs`` batches (short sets still get enough steps).

        ``balance``: sampling probabilities and loss weights (:func:`balance_weights`).
        Returns what happened (epochs run, best epoch, why it stopped) for the model card.
        """
        import torch
        from torch import nn

        from fabsight.wafer.net import augment

        net = self.net_
        dev = next(net.parameters()).device
        params = list(net.head.parameters()) if head_only else list(net.parameters())
        for p in net.parameters():
            p.requires_grad_(not head_only)
        for p in params:
            p.requires_grad_(True)
        floor = max(8, math.ceil(self.min_steps / self.epochs))  # batches per epoch at least
        steps = max(math.ceil((epoch_size or len(x)) / self.batch_size), floor)
        total = planned = steps * self.epochs
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        loss_fn: nn.Module = (nn.BCEWithLogitsLoss if self.multilabel else nn.CrossEntropyLoss)(reduction="none")
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        draws = rng.choice(len(x), size=total * self.batch_size, p=balance[0])
        y_all = torch.from_numpy(targets.astype(np.float32) if self.multilabel else targets.astype(np.int64)).to(dev)
        w_all = torch.from_numpy(balance[1].astype(np.float32)).to(dev)
        stopper = _BestEpoch(self, val, self.patience)
        started = time.monotonic()
        # A frozen backbone keeps its batch-norm statistics: eval mode for the whole net.
        net.train(not head_only)
        for step in track(range(total), f"training ({self.head_})", total=total):
            if step >= planned:
                break
            for group in opt.param_groups:
                group["lr"] = lr * one_cycle(step / planned)
            b = draws[step * self.batch_size : (step + 1) * self.batch_size]
            xb = augment(
                torch.from_numpy(x[b].astype(np.float32)),
                gen,
                rotate=self.rotate,
                flip=self.flip,
                max_noise=self.max_noise,
            ).to(dev, non_blocking=True)
            bt = torch.from_numpy(b).to(dev)
            loss = (loss_fn(net(xb), y_all[bt]).reshape(len(b), -1).mean(dim=1) * w_all[bt]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = step + 1
            if deadline is not None and done % 10 == 0:
                # Re-planned from the pace so far, up or down (a shared machine's pace varies).
                rate = (time.monotonic() - started) / done
                planned = min(total, done + max(0, int((deadline - time.monotonic()) / rate)))
            if (done % steps == 0 or done == planned) and stopper.check(done / steps, done / planned >= SETTLED):
                break
            net.train(not head_only)
        for p in net.parameters():
            p.requires_grad_(True)
        net.eval()
        return {"steps_per_epoch": steps, **stopper.finish(planned < total)}

    def _fit_prototypes(self, x: np.ndarray, targets: np.ndarray, seed: int, views: int = 8) -> None:
        """Cosine head whose weights are the mean normalised embedding of each class."""
        import torch
        from torch.nn import functional as F

        from fabsight.wafer.net import augment

        gen = torch.Generator().manual_seed(seed)
        self.net_.eval()
        device = next(self.net_.parameters()).device
        sums = torch.zeros(len(self.classes_), self.net_.config["embed_dim"], device=device)
        with torch.inference_mode():
            for s in range(0, len(x), _BATCH):
                xb = torch.from_numpy(x[s : s + _BATCH].astype(np.float32))
                yb = torch.from_numpy(targets[s : s + _BATCH].astype(np.int64)).to(device)
                for v in range(views):
                    xv = xb if v == 0 else augment(xb, gen, rotate=self.rotate, flip=self.flip, max_noise=0.0)
                    sums.index_add_(0, yb, F.normalize(self.net_.embed(xv.to(device)), dim=1))
            self.net_.head.weight.copy_(F.normalize(sums, dim=1) * PROTOTYPE_SCALE)
            self.net_.head.bias.zero_()

    def _build_net(self, base: WaferClassifier | None, head: str) -> None:
        import torch
        from torch import nn

        from fabsight.wafer.net import WaferNet

        n_out = len(self.classes_)
        if base is None:
            torch.manual_seed(0 if self.random_state is None else self.random_state)
            self.net_ = WaferNet(n_out, tuple(self.widths), self.embed_dim)
            return
        net = copy.deepcopy(base.net_)
        old_head = net.head
        net.head = nn.Linear(old_head.in_features, n_out)
        cosine = head == "prototype"
        if cosine == net.cosine_head and base.multilabel == self.multilabel:
            # Keep what the base model knew about classes the new task shares.
            with torch.no_grad():
                for j, c in enumerate(self.classes_):
                    if c in base.classes_:
                        k = base.classes_.index(c)
                        net.head.weight[j] = old_head.weight[k]
                        net.head.bias[j] = old_head.bias[k]
        net.cosine_head = cosine
        net.config.update(n_outputs=n_out, cosine_head=cosine)
        self.net_ = net

    # ---------------------------------------------------------- self-training
    def _deadline(self, started: float, stages_left: int) -> float | None:
        """End (monotonic s) of the next training run: an even share of what is left of
        ``max_minutes`` among the runs still to come (teacher, then each student)."""
        if self.max_minutes is None:
            return None
        now = time.monotonic()
        return now + max(0.0, started + 60.0 * float(self.max_minutes) - now) / stages_left

    def _train_stage(
        self,
        data: tuple[np.ndarray, np.ndarray, np.ndarray],
        seed: int,
        val: tuple[np.ndarray, np.ndarray] | None,
        deadline: float | None,
        labelled: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Gradient steps of ``head_`` on (inputs, targets, groups), class-balanced as asked.

        ``labelled``: the groups of the labelled maps when ``data`` adds pseudo-labelled ones;
        the network then goes on from its current (teacher's) weights at the fine-tuning
        step size (:data:`FINETUNE_LR_SCALE`) for as many steps as the teacher took, so a
        round costs one teacher run plus labelling the pool, however large the pool is.
        """
        x, targets, groups = data
        lr = self.learning_rate * (FINETUNE_LR_SCALE if self.head_ == "finetune" or labelled is not None else 1.0)
        if labelled is None:
            balance = balance_weights(groups, self.class_balance)
        else:
            balance = student_balance(labelled, groups, self.class_balance)
        head_only = self.head_ == "probe"
        size = None if labelled is None else len(labelled)
        return self._train(
            x, targets, balance, lr=lr, head_only=head_only, seed=seed, val=val, deadline=deadline, epoch_size=size
        )

    def _symmetric_logits(self, x: np.ndarray) -> np.ndarray:
        """Logits of preprocessed maps averaged over :data:`PSEUDO_VIEWS` exact symmetries."""
        import torch

        from fabsight.wafer.net import inference_copy

        device = next(self.net_.parameters()).device
        net = inference_copy(self.net_)  # batch norm folded: about twice as fast on the CPU
        out = []
        starts = range(0, len(x), _BATCH)
        with torch.inference_mode():
            for s in track(starts, "teacher labelling unlabelled maps", total=len(starts)):
                xb = torch.from_numpy(x[s : s + _BATCH].astype(np.float32))
                views = torch.cat([torch.rot90(v, k, dims=(2, 3)) for v in (xb, xb.flip(-1)) for k in range(4)])
                views = views.to(device).contiguous(memory_format=torch.channels_last)
                logits = net(views).reshape(PSEUDO_VIEWS, len(xb), -1).mean(dim=0)
                out.append(logits.cpu().numpy())
        return np.concatenate(out)

    def _pseudo_labels(
        self, x_u: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """The current network labels ``x_u``: kept rows, their class indices, and the card's record."""
        temperature = 1.0
        if val is not None:
            temperature = cal.fit_temperature(self.network_outputs(val[0], "calibrating the teacher")[0], val[1], False)
        proba = cal.probabilities(self._symmetric_logits(x_u), temperature, False)
        rows, confident, caps = cal.select_pseudo_labels(proba, float(self.pseudo_threshold))
        labels, conf = proba[rows].argmax(axis=1), proba[rows].max(axis=1)
        self.pseudo_labels_.append({"index": rows, "label": labels, "confidence": conf})
        kept = np.bincount(labels, minlength=len(self.classes_))
        return (
            rows,
            labels,
            {
                "teacher_temperature": round(float(temperature), 4),
                "confident": dict(zip(self.classes_, confident.tolist(), strict=True)),
                "cap_per_class": dict(zip(self.classes_, caps.tolist(), strict=True)),
                "pseudo_labelled": dict(zip(self.classes_, kept.tolist(), strict=True)),
                "least_confidence_kept": {
                    c: round(float(conf[labels == j].min()), 4) for j, c in enumerate(self.classes_) if kept[j]
                },
            },
        )

    def _self_train(
        self,
        unlabeled: Sequence[Any],
        labelled: tuple[np.ndarray, np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray] | None,
        seed: int,
        started: float,
        teacher: dict[str, Any],
    ) -> dict[str, Any]:
        """Teacher → pseudo-labels → student, ``rounds`` times; the last student's early stopping."""
        x_u = _inputs(unlabeled, self.input_size_)
        x_l, t_l, g_l = labelled
        names = np.asarray(self.classes_)
        record: dict[str, Any] = {
            "n_unlabeled": len(x_u),
            "threshold": float(self.pseudo_threshold),
            "views": PSEUDO_VIEWS,
            "selection": "calibrated confidence ≥ threshold, each class capped at the median class's share",
            "rounds_requested": int(self.rounds),
            "teacher": {"n_train": len(x_l), "early_stopping": teacher},
            "rounds": [],
            "stopped": None,
        }
        self.self_training_ = record
        stopping = teacher
        for r in range(1, int(self.rounds) + 1):
            keep, labels, round_record = self._pseudo_labels(x_u, val)
            record["rounds"].append({"round": r, **round_record})
            if not len(keep):  # nothing confident enough: the last network stands
                record["stopped"] = f"round {r}: no confident pseudo-labels"
                break
            data = (
                np.concatenate([x_l, x_u[keep]]),
                np.concatenate([t_l, labels]),
                np.concatenate([g_l, names[labels]]),
            )
            deadline = self._deadline(started, 1 + int(self.rounds) - r)
            # The whole schedule, last weights: a hold-out of a few labelled maps per class
            # ranked the first epoch of a WM-811K student best (the step size still rising)
            # and stopped it there, which threw away what the pseudo-labels taught.
            stopping = self._train_stage(data, seed + r, None, deadline, labelled=g_l)
            record["rounds"][-1]["student"] = {"n_train": len(data[0]), "early_stopping": stopping}
        return stopping

    # -------------------------------------------------------------------- fit
    def _check_params(self) -> None:
        """Parameter combinations that cannot train (``ValueError``, as scikit-learn does)."""
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.class_balance not in CLASS_BALANCE:
            raise ValueError(f"class_balance must be one of {CLASS_BALANCE}, got {self.class_balance!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if int(self.input_size) < MIN_INPUT_SIZE:
            raise ValueError(f"input_size must be ≥ {MIN_INPUT_SIZE} (five 2x downsamplings), got {self.input_size}")
        if self.init is None and self.head in ("probe", "prototype"):
            raise ValueError(f"head={self.head!r} needs init (a trained model to take embeddings from)")
        if self.head == "prototype" and self.multilabel:
            raise ValueError("head='prototype' is single-label only")
        if int(self.rounds) < 1 or not 0.0 < float(self.pseudo_threshold) < 1.0:
            raise ValueError(
                f"self-training needs rounds ≥ 1 and pseudo_threshold in (0, 1), "
                f"got {self.rounds} and {self.pseudo_threshold}"
            )

    def _check_unlabeled(self, unlabeled: Sequence[Any], head: str) -> None:
        """Self-training needs a single-label network trained by gradient steps, and maps."""
        if self.multilabel:
            raise ValueError("self-training on unlabelled maps is single-label only")
        if head == "prototype":
            raise ValueError("self-training needs gradient steps: head='prototype' cannot use unlabelled maps")
        if len(unlabeled) == 0:
            raise FabsightError(None, "no unlabelled maps given")

    def _hold_out(self, groups: np.ndarray, seed: int) -> np.ndarray:
        """Stratified hold-out mask: every group with ≥ 3 maps gives at least one
        (none at all when that would be fewer than :data:`MIN_VALIDATION` maps)."""
        rng = np.random.default_rng(seed)
        val_mask = np.zeros(len(groups), dtype=bool)
        for g, n in Counter(groups.tolist()).items():
            if n >= 3:
                idx = np.nonzero(groups == g)[0]
                k = max(1, round(n * self.validation_fraction))
                val_mask[rng.choice(idx, size=k, replace=False)] = True
        if val_mask.sum() < MIN_VALIDATION:
            val_mask[:] = False
        return val_mask

    def fit(
        self,
        maps: Sequence[WaferMap] | Sequence[np.ndarray],
        y: Any = None,
        *,
        data: str | None = None,
        review_maps: Sequence[WaferMap] | None = None,
        val_maps: Sequence[WaferMap] | None = None,
        unlabeled: Sequence[WaferMap] | Sequence[np.ndarray] | None = None,
    ):
        """Train on wafer maps; ``y`` defaults to the maps' own labels.

        ``y``: class names (single-label), or tuples of names / ``"A+B"`` strings / a
        multi-hot array whose columns are ``classes`` (default: the MixedWM38 order) for
        multi-label; ``('none',)`` or an all-zero row is a map without pattern.
        ``data`` is a free-text description of the data kept in the model card.
        ``review_maps``: labelled maps, never trained on, harder than the training data
        (another fab's wafers, or :func:`fabsight.wafer.review.shifted_maps`); the review
        threshold is learnt on them instead of on the held-out maps, which are as easy as
        the training maps and would leave it at its floor.
        ``val_maps``: labelled maps never trained on that drive early stopping, calibration
        and (without ``review_maps``) the review threshold; every training map is then
        trained on. Without them a stratified ``validation_fraction`` is held out instead.
        ``unlabeled``: maps without labels (any labels they carry are ignored) to self-train
        on (see ``rounds``); the held-out maps never get a pseudo-label, so early stopping,
        calibration and the metrics stay measured on true labels.
        """
        import torch

        self._check_params()
        from fabsight.utils.device import resolve_device

        started = time.monotonic()
        device = resolve_device(self.device)  # an unavailable device fails now, not after preprocessing
        torch.set_num_threads(self.n_threads)
        seed = 0 if self.random_state is None else int(self.random_state)
        base = self.init if isinstance(self.init, WaferClassifier) or self.init is None else load_model(self.init)
        if base is not None:
            check_is_fitted(base)
            if base.multilabel != self.multilabel and self.head in ("probe", "prototype"):
                raise ValueError("a frozen-embedding head needs a base model of the same (single/multi-label) kind")
        labels = self._label_lists(maps, y)
        self.classes_ = self._resolve_classes(labels, maps)
        self.input_size_ = base.input_size_ if base is not None else int(self.input_size)
        review = None if review_maps is None else self._held_out_set(review_maps, "review")
        given_val = None if val_maps is None else self._held_out_set(val_maps, "validation")

        targets, groups = self._targets(labels)
        counts = Counter(groups.tolist())
        for g, n in sorted(counts.items()):
            if n == 1:
                warnings.warn(single_example_warning(g, given_val is not None, unlabeled is not None), stacklevel=2)

        head = self.head
        if base is None:
            head = "scratch"
        elif head == "auto":
            head = FEW_SHOT_HEAD if min(counts.values()) <= FEW_SHOT_MAX_PER_CLASS else "finetune"
        self.head_ = head
        if unlabeled is not None:
            self._check_unlabeled(unlabeled, head)

        val_mask = np.zeros(len(groups), dtype=bool) if given_val is not None else self._hold_out(groups, seed)
        x = _inputs(maps, self.input_size_)
        x_tr, t_tr, g_tr = x[~val_mask], targets[~val_mask], groups[~val_mask]
        val = given_val if given_val is not None else (x[val_mask], targets[val_mask]) if val_mask.any() else None

        self._build_net(base, head)
        self.net_.to(device)
        stopping = None
        self.self_training_: dict[str, Any] | None = None
        self.pseudo_labels_: list[dict[str, np.ndarray]] = []
        if head == "prototype":
            self._fit_prototypes(x_tr, t_tr, seed)
        else:
            stages = 1 + (int(self.rounds) if unlabeled is not None else 0)
            stopping = self._train_stage((x_tr, t_tr, g_tr), seed, val, self._deadline(started, stages))
            if unlabeled is not None:
                stopping = self._self_train(unlabeled, (x_tr, t_tr, g_tr), val, seed, started, stopping)
        empty = (x[:0], targets[:0])
        self._calibrate(*(val or empty), x_tr, g_tr, seed, review, given=given_val is not None)
        self.net_.cpu()  # a fitted model predicts, saves and exports on the CPU, wherever it trained
        self.training_ = {
            "data": data,
            "n_maps": len(labels),
            "n_train": int((~val_mask).sum()),
            "n_validation": int(val_mask.sum()) if given_val is None else len(given_val[1]),
            "validation": "maps given to fit (val_maps)" if given_val is not None else "stratified hold-out",
            "per_class": dict(sorted(counts.items())),
            "grid_shapes": self._shape_summary(maps),
            "head": head,
            "init": "in-memory model" if isinstance(self.init, WaferClassifier) else self.init and str(self.init),
            "epochs": 0 if head == "prototype" else self.epochs,
            "early_stopping": stopping,
            "self_training": self.self_training_,
            "augmentation": {"rotate": self.rotate, "flip": self.flip, "max_noise": self.max_noise},
            "class_balance": self.class_balance,
            "seed": seed,
            "device": device,
            "seconds": round(time.monotonic() - started, 1),
        }
        return self

    @staticmethod
    def _shape_summary(maps: Sequence[Any]) -> dict[str, Any]:
        shapes = Counter(tuple(np.shape(m.grid if isinstance(m, WaferMap) else m)) for m in maps)
        return {"distinct": len(shapes), "most_common": [[list(s), n] for s, n in shapes.most_common(5)]}

    def _scored(self, p_cal: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Whether each prediction is entirely right, and accuracy / exact match and macro-F1."""
        from sklearn.metrics import f1_score

        if self.multilabel:
            pred = p_cal >= self.label_thresholds_
            correct = (pred == targets.astype(bool)).all(axis=1)
            f1 = f1_score(targets, pred, average="macro", zero_division=0)
            return correct, {"exact_match": float(correct.mean()), "macro_f1": float(f1)}
        pred = p_cal.argmax(axis=1)
        correct = pred == targets
        f1 = f1_score(targets, pred, average="macro", labels=range(len(self.classes_)), zero_division=0)
        return correct, {"accuracy": float(correct.mean()), "macro_f1": float(f1)}

    def _calibrate(
        self,
        x_val: np.ndarray,
        t_val: np.ndarray,
        x_tr: np.ndarray,
        g_tr: np.ndarray,
        seed: int,
        review: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        given: bool = False,
    ) -> None:
        """Temperature, thresholds and OOD model from held-out maps (see calibration module);
        the review threshold from ``review`` (inputs, targets) when given. ``given``: the
        held-out maps are ``fit``'s ``val_maps`` rather than a stratified part of the data."""
        # The OOD statistics see each training map as it is and in augmented views, so the
        # ordinary variation of a class (orientation, extra noise) is not "unusual".
        keep = _ood_subset(g_tr, seed)
        x_tr, g_tr = x_tr[keep], g_tr[keep]
        views = [self.network_outputs(x_tr, "embedding training maps")[1]]
        views += [self.network_outputs(x_tr, f"embedding training maps, view {v + 2}", seed + v)[1]
                  for v in range(OOD_VIEWS - 1)]
        emb_tr = np.concatenate(views)
        self.ood_ = cal.MahalanobisOOD.fit(emb_tr, np.tile(g_tr, OOD_VIEWS))
        n_classes = len(self.classes_)
        self.temperature_ = 1.0
        self.label_thresholds_ = np.full(n_classes, 0.5)
        self.review_threshold_ = 0.5
        self.metrics_ = {"validation": None}
        if len(x_val) == 0:
            self.ood_.set_threshold(self.ood_.score(emb_tr), self.ood_quantile)
            self.metrics_["note"] = f"fewer than {MIN_VALIDATION} held-out maps: not calibrated"
        else:
            logits, emb = self.network_outputs(x_val, "calibrating")
            self.temperature_ = cal.fit_temperature(logits, t_val, self.multilabel)
            p_raw = cal.probabilities(logits, 1.0, self.multilabel)
            p_cal = cal.probabilities(logits, self.temperature_, self.multilabel)
            if self.multilabel:
                self.label_thresholds_ = cal.label_thresholds(p_cal, t_val)
            correct, quality = self._scored(p_cal, t_val)
            confidence = self._confidence(p_cal)
            self.review_threshold_ = cal.review_threshold(confidence, correct, self.review_precision, floor=0.5)
            scores = self.ood_.score(emb)
            # A quantile of a handful of maps is noise: pool with the training maps then.
            pool = scores if len(scores) >= 50 else np.concatenate([scores, self.ood_.score(emb_tr)])
            self.ood_.set_threshold(pool, self.ood_quantile)
            self.metrics_["validation"] = {
                "measured_on": f"{len(x_val)} "
                + ("validation maps given to fit" if given else "maps held out (stratified) from the training data")
                + ", never trained on",
                "n": len(x_val),
                **quality,
                "ece_before_calibration": cal.expected_calibration_error(p_raw, t_val, self.multilabel),
                "ece_after_calibration": cal.expected_calibration_error(p_cal, t_val, self.multilabel),
                "temperature": self.temperature_,
                "review_threshold": self.review_threshold_,
                "review_rate_low_confidence": float(np.mean(confidence < self.review_threshold_)),
                "review_rate_ood": float(np.mean(scores > self.ood_.threshold)),
            }
        if review is not None:
            p_rev = cal.probabilities(
                self.network_outputs(review[0], "scoring review maps")[0], self.temperature_, self.multilabel
            )
            correct, quality = self._scored(p_rev, review[1])
            confidence = self._confidence(p_rev)
            self.review_threshold_ = cal.review_threshold(confidence, correct, self.review_precision, floor=0.5)
            passed = confidence >= self.review_threshold_
            self.metrics_["review"] = {
                "measured_on": f"{len(confidence)} review maps (harder than training, never trained on)",
                "n": len(confidence),
                **quality,
                "review_threshold": self.review_threshold_,
                "target_precision": self.review_precision,
                "review_rate": float(1.0 - passed.mean()),
                "accuracy_of_unflagged": float(correct[passed].mean()) if passed.any() else None,
            }
            if self.metrics_["validation"] is not None:
                self.metrics_["validation"]["review_rate_low_confidence"] = float(
                    np.mean(self._confidence(p_cal) < self.review_threshold_)
                )

    # ---------------------------------------------------------------- predict
    def _confidence(self, probs: np.ndarray) -> np.ndarray:
        """Probability that the whole prediction is right (multi-label: labels independent)."""
        if not self.multilabel:
            return probs.max(axis=1)
        on = probs >= self.label_thresholds_
        return np.prod(np.where(on, probs, 1.0 - probs), axis=1)

    def _doubt(self, probs: np.ndarray) -> str:
        """What the model hesitates over: the runner-up class, or the label nearest its threshold."""
        if not self.multilabel:
            j = int(np.argsort(-probs)[1])
            return f"runner-up {self.classes_[j]} {probs[j]:.2f}"
        j = int(np.argmin(np.abs(probs - self.label_thresholds_)))
        return f"least certain label {self.classes_[j]} {probs[j]:.2f}"

    def forward(self, x: np.ndarray, n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings of one preprocessed batch, on ``n_threads`` (default
        :attr:`n_threads`; :meth:`_outputs` passes one fewer while it preprocesses beside it).

        The only step that needs the network: the ONNX Runtime predictor
        (:mod:`fabsight.deploy.runtime`) overrides it and inherits everything else.
        """
        import torch

        torch.set_num_threads(n_threads or self.n_threads)
        net = self._inference_net()
        with torch.inference_mode():
            z = net.embed(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
            return net.classify(z).numpy(), z.numpy()

    def _inference_net(self) -> Any:
        """:func:`~fabsight.wafer.net.inference_copy` of ``net_``, kept while ``net_`` is the
        same object with every tensor unchanged (torch counts in-place writes in each
        tensor's ``_version``), so training, fine-tuning or loading new weights rebuilds it."""
        from itertools import chain

        from fabsight.wafer.net import inference_copy

        versions = tuple(t._version for t in chain(self.net_.parameters(), self.net_.buffers()))
        cached = getattr(self, "_inference", None)
        if cached is None or cached[0] is not self.net_ or cached[1] != versions:
            self._inference = (self.net_, versions, inference_copy(self.net_))
        return self._inference[2]

    def _inputs_of(self, parts: Sequence[Sequence[Any]], k: int) -> np.ndarray:
        """Model inputs of batch ``k`` of :data:`_BATCH` maps (a bad map named by its position in the call)."""
        return maps_to_array(parts[k], self.input_size_, start=k * _BATCH)

    def _outputs(
        self, maps: Sequence[WaferMap] | Sequence[np.ndarray], checks: bool = False
    ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Calibrated probabilities, embeddings and (with ``checks``) the grid rules'
        reasons (:func:`~fabsight.wafer.review.grid_checks`), batch by batch.

        The numpy work (preprocessing, grid checks) is single-threaded and the network's
        is not, so with :data:`OVERLAP` and ``n_threads`` ≥ 2 a worker thread preprocesses
        the next batch and checks this one's grids while the network runs this one on one
        thread fewer: the same work, on every core at once. Each map's numbers do not
        depend on the batch or thread it went through, so the outputs are those of
        ``maps_to_array`` → network → ``grid_checks`` one after the other.
        """
        check_is_fitted(self)
        if len(maps) == 0:
            raise FabsightError(None, "no wafer maps given")
        parts = [maps[s : s + _BATCH] for s in range(0, len(maps), _BATCH)]
        overlap = self.OVERLAP and self.n_threads >= 2
        logits, embeddings, reasons = [], [], []
        # One BLAS thread held for the whole loop: the network does not use BLAS, and the
        # worker's own entries into the limit (maps_to_array) then restore it to one, never
        # to a count the main thread set and left meanwhile.
        with single_blas_thread(), _Worker(overlap) as worker:
            ready = worker.submit(self._inputs_of, parts, 0)
            for k in track(range(len(parts)), "classifying wafer maps", total=len(parts)):
                x = ready.result()  # raises the first bad grid's FabsightError
                grids = [m.grid if isinstance(m, WaferMap) else np.asarray(m) for m in parts[k]] if checks else []
                checked = worker.submit(grid_checks, grids)
                if k + 1 < len(parts):
                    ready = worker.submit(self._inputs_of, parts, k + 1)
                busy = overlap and (checks or k + 1 < len(parts))
                batch_logits, batch_embeddings = self.forward(x, self.n_threads - 1 if busy else self.n_threads)
                logits.append(batch_logits)
                embeddings.append(batch_embeddings)
                reasons += checked.result()
        probs = cal.probabilities(np.concatenate(logits), self.temperature_, self.multilabel)
        return probs, np.concatenate(embeddings), reasons

    def predict_proba(self, maps: Sequence[WaferMap] | Sequence[np.ndarray]) -> np.ndarray:
        """N×C calibrated probabilities (softmax, or one sigmoid per label when multi-label)."""
        return self._outputs(maps)[0]

    def embed(self, maps: Sequence[WaferMap] | Sequence[np.ndarray]) -> np.ndarray:
        """N×D penultimate-layer features (drift, clustering, few-shot heads)."""
        return self._outputs(maps)[1]

    def decode(self, probs: np.ndarray) -> list[Any]:
        if not self.multilabel:
            return [self.classes_[j] for j in probs.argmax(axis=1)]
        on = probs >= self.label_thresholds_
        return [tuple(c for c, o in zip(self.classes_, row, strict=True) if o) or ("none",) for row in on]

    def predict(self, maps: Sequence[WaferMap] | Sequence[np.ndarray]) -> list[str] | list[tuple[str, ...]]:
        """Class names (single-label) or tuples of pattern names, ``('none',)`` for none."""
        return self.decode(self.predict_proba(maps))

    def predict_details(self, maps: Sequence[WaferMap] | Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """Per map: label, calibrated probability, top-3, review flag with its reason, OOD score.

        The reason is the first that applies: a rule on the raw die grid
        (:func:`fabsight.wafer.review.grid_checks`: whole-wafer or periodic failures, which
        look like ordinary classes once resampled), an embedding far from every training
        class, or a confidence below the learnt review threshold.
        """
        probs, emb, reasons = self._outputs(maps, checks=True)  # also checks every grid
        with single_blas_thread():  # not two BLAS threads beside the network's spinning ones
            ood = self.ood_.score(emb)
        confidence = self._confidence(probs)
        far = ood > self.ood_.threshold
        unsure = confidence < self.review_threshold_
        # Decisions are made on whole arrays; only the maps that get a reason pay for its text.
        for i in np.flatnonzero(far | unsure).tolist():
            if reasons[i] is not None:
                continue
            if far[i]:
                reasons[i] = f"out of distribution: embedding distance {ood[i]:.1f} > {self.ood_.threshold:.1f}"
            else:
                th = self.review_threshold_
                reasons[i] = f"low confidence: {confidence[i]:.2f} < {th:.2f} ({self._doubt(probs[i])})"
        top = np.argsort(-probs, axis=1)[:, :3]
        names = [[self.classes_[j] for j in row] for row in top.tolist()]
        top_p = np.take_along_axis(probs, top, axis=1).tolist()
        labels = [label if isinstance(label, str) else "+".join(label) for label in self.decode(probs)]
        return [
            {
                "label": label,
                "probability": conf,
                "top3": [list(pair) for pair in zip(n, p, strict=True)],
                "needs_review": reason is not None,
                "review_reason": reason,
                "ood_score": d,
            }
            for label, conf, n, p, reason, d in zip(
                labels, confidence.tolist(), names, top_p, reasons, ood.tolist(), strict=True
            )
        ]

    # ------------------------------------------------------------- save/load
    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        """Write weights + card.json atomically (an existing model is replaced only on success)."""
        from fabsight.utils.tensors import save_tensors
        from fabsight.wafer.net import n_parameters

        check_is_fitted(self)
        import torch

        tensors = {f"net.{k}": v for k, v in self.net_.state_dict().items()}
        tensors["ood.means"] = torch.from_numpy(self.ood_.means)
        tensors["ood.precision"] = torch.from_numpy(self.ood_.precision)
        # where it was trained is history (training_), not a setting to carry to another machine
        params = {k: v for k, v in self.get_params().items() if k not in ("init", "device")}
        params["widths"] = list(params["widths"])
        params["classes"] = None if params["classes"] is None else list(params["classes"])
        card = ModelCard(
            task=TASK,
            classes=list(self.classes_),
            input={
                "size": self.input_size_,
                "channels": list(CHANNELS),
                "values": {"0": "off-wafer", "1": "good die", "2": "failing die"},
                "preprocessing": PREPROCESSING,
            },
            backbone={"arch": "fabsight.wafer.net.WaferNet", **self.net_.config, "parameters": n_parameters(self.net_)},
            training=self.training_,
            metrics=self.metrics_,
            files={"weights": WEIGHTS_FILE},
            extra={
                "multilabel": self.multilabel,
                "temperature": self.temperature_,
                "review_threshold": self.review_threshold_,
                "label_thresholds": [float(t) for t in self.label_thresholds_],
                "ood": {
                    "method": "mahalanobis (Ledoit-Wolf tied covariance)",
                    "threshold": self.ood_.threshold,
                    "quantile": self.ood_quantile,
                },
                "head": self.head_,
                "hyperparameters": params,
            },
        )
        with atomic_dir(model_dir) as tmp:
            save_tensors(tensors, tmp / WEIGHTS_FILE)
            save_card(tmp, card)
        return Path(model_dir)


def restore_fitted(
    clf: WaferClassifier, model_dir: str | os.PathLike[str], card: ModelCard, ood: tuple[np.ndarray, np.ndarray]
) -> WaferClassifier:
    """Set everything but the network that a model card (and the OOD statistics) describe.

    Shared by :func:`load_model` and the ONNX Runtime predictor, so both read a card the
    same way; ``clf`` is built with :func:`card_params`.
    """
    extra = card.extra
    try:
        clf.multilabel = bool(extra["multilabel"])
        clf.classes_ = list(card.classes)
        clf.input_size_ = int(card.input["size"])
        clf.temperature_ = float(extra["temperature"])
        clf.review_threshold_ = float(extra["review_threshold"])
        clf.label_thresholds_ = np.asarray(extra["label_thresholds"], dtype=np.float64)
        clf.ood_ = cal.MahalanobisOOD(ood[0], ood[1], float(extra["ood"]["threshold"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(model_dir, f"model card is incomplete or malformed ({exc!r})") from None
    clf.head_ = extra.get("head", "scratch")
    clf.metrics_ = card.metrics
    clf.training_ = card.training
    return clf


def card_params(model_dir: str | os.PathLike[str], card: ModelCard) -> dict[str, Any]:
    """The estimator hyper-parameters recorded in a card (unknown ones dropped)."""
    try:
        hyper = dict(card.extra["hyperparameters"])
        hyper["widths"] = tuple(hyper.get("widths", (card.backbone or {})["widths"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(model_dir, f"model card is incomplete or malformed ({exc!r})") from None
    known = WaferClassifier().get_params()
    return {k: v for k, v in hyper.items() if k in known}


def load_model(model_dir: str | os.PathLike[str]) -> WaferClassifier:
    """Load a model written by :meth:`WaferClassifier.save`; any mismatch is a ``ModelError``.

    ``model_dir`` may be the name ``pretrained``: the shipped WM-811K model
    (:mod:`fabsight.wafer.pretrained`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from fabsight.wafer.net import WaferNet

    model_dir = resolve_model(model_dir)

    card = load_card(model_dir, task=TASK)
    try:
        cfg = card.backbone or {}
        net = WaferNet(int(cfg["n_outputs"]), tuple(cfg["widths"]), int(cfg["embed_dim"]), bool(cfg["cosine_head"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(model_dir, f"model card is incomplete or malformed ({exc!r})") from None
    if cfg["n_outputs"] != len(card.classes):
        n_out = cfg["n_outputs"]
        raise ModelError(model_dir, f"card lists {len(card.classes)} classes but the network has {n_out} outputs")
    path = Path(model_dir) / card.files.get("weights", WEIGHTS_FILE)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(path, f"unreadable weights ({exc})") from None
    state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(path, f"weights do not match the architecture in the card ({first})") from None
    if "ood.means" not in tensors or "ood.precision" not in tensors:
        raise ModelError(path, "weights file lacks the OOD statistics (ood.means, ood.precision)")
    net.eval()
    clf = WaferClassifier(**card_params(model_dir, card))
    clf.net_ = net
    return restore_fitted(clf, model_dir, card, (tensors["ood.means"].numpy(), tensors["ood.precision"].numpy()))
