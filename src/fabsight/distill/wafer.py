"""Distil a wafer-pattern teacher into a student ≥10× smaller, from unlabelled maps only.

Labels are what a fab lacks; unlabelled wafer maps it has by the million. Following
Shukla et al. (2023, arXiv 2303.13974), the student learns to reproduce the teacher on
unlabelled maps: its softened outputs (KL divergence at temperature ``T`` for softmax
models, binary cross-entropy to the teacher's sigmoid probabilities for mixed-type
models) and its penultimate embedding (a linear projection of the student's embedding is
pulled towards the teacher's, by cosine distance, so the student also inherits the
geometry the OOD detector and few-shot heads rely on). Both networks see the same
augmented views (rotation, mirroring, extra failing dies), so the teacher's knowledge of
those invariances transfers too.

Session 1 showed where a student loses accuracy: not capacity first, but too little
imitation (a few hundred steps on ~1,000 maps left the student agreeing with the teacher
on only 95 % of maps like its own training data). Following Beyer et al. (2022, "Knowledge
distillation: a good teacher is patient and consistent"), distillation is treated as
*function matching*: teacher and student see the very same view (consistent), the schedule
is long (patient), and the inputs cover the space between the training maps: fresh
generated maps every epoch (``synthetic_per_epoch``; their labels are never read) and
mixup of two maps (``mixup``; a convex mix of the fraction channels is still a valid
input, and the teacher says what it makes of it).

The student is an ordinary :class:`~fabsight.wafer.WaferClassifier` of the same network
family (:data:`fabsight.wafer.net.ARCHITECTURES`), calibrated, saved, exported and served
exactly like a supervised one. Its calibration (temperature, review threshold, label
thresholds, OOD statistics) is fitted on held-out maps against the teacher's
predictions, or against true labels when a labelled holdout is given.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from fabsight import calibration as cal
from fabsight.errors import FabsightError
from fabsight.types import WaferMap
from fabsight.utils.device import reproducible_cudnn
from fabsight.utils.progress import track
from fabsight.wafer.classifier import SYNTH_SHAPES, WaferClassifier, label_tuple, load_model
from fabsight.wafer.preprocess import maps_to_array
from fabsight.wafer.pretrained import resolve_model

#: Student sizes ``fabsight distill --size`` offers: ``auto`` (see :func:`student_size`) or a
#: member of the network family (``micro`` is ≥10× smaller than ``compact``, the shipped
#: model; ``tiny`` and ``small`` are ≥10× smaller than ``wide``).
STUDENT_SIZES: tuple[str, ...] = ("auto", "micro", "tiny", "small")
#: How many times fewer parameters *and* FLOPs per map than its teacher ``auto`` asks of a student.
MIN_COMPRESSION = 10.0
#: Below this many maps there is nothing meaningful to imitate.
MIN_MAPS = 16


def _attention(features: Any) -> Any:
    """Where a stage's features fire: channel mean of squared activations, L2-normalised per map."""
    from torch.nn import functional as F

    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1)


def _describe(model: str | os.PathLike[str] | WaferClassifier | None) -> str:
    """A model as the card names it: its directory (``None``: the shipped one), or that it was passed in memory."""
    return "in-memory model" if isinstance(model, WaferClassifier) else str(resolve_model(model))


def student_size(teacher: WaferClassifier, factor: float = MIN_COMPRESSION) -> str:
    """The largest family member with at least ``factor``× fewer parameters and FLOPs than ``teacher``.

    A student's worth is its cost relative to the model it replaces, so the size follows the
    teacher: ``micro`` for the shipped ``compact`` model, ``small`` for a ``wide`` one.
    "Largest" is by parameters: the most capacity the cost bound allows.
    """
    from fabsight.wafer.net import ARCHITECTURES, WaferNet, n_flops, n_parameters

    t_params, t_flops = n_parameters(teacher.net_), n_flops(teacher.net_, teacher.input_size_)
    fits = []
    for name, (widths, embed_dim) in ARCHITECTURES.items():
        net = WaferNet(len(teacher.classes_), widths, embed_dim)
        params, flops = n_parameters(net), n_flops(net, teacher.input_size_)
        if t_params >= factor * params and t_flops >= factor * flops:
            fits.append((params, name))
    if not fits:
        raise FabsightError(
            None, f"no student size is {factor:g}x smaller than this teacher ({t_params:,} parameters): pick --size"
        )
    return max(fits)[1]


def synthetic_classes(teacher: WaferClassifier) -> list[str | tuple[str, ...]]:
    """Generator patterns (mixed-type: combinations) made only of what ``teacher`` knows.

    Generated maps of a pattern the teacher has never heard of would only teach the
    student the teacher's confusion; when nothing matches, every pattern is used.
    """
    from fabsight.synth import MIXED_COMBINATIONS
    from fabsight.types import WM811K_CLASSES

    known = set(teacher.classes_) | ({"none"} if teacher.multilabel else set())
    pool = MIXED_COMBINATIONS if teacher.multilabel else WM811K_CLASSES
    return [c for c in pool if set(label_tuple(c)) <= known] or list(pool)


class WaferDistiller(BaseEstimator):
    """Train a small student to imitate a wafer-pattern teacher on unlabelled maps.

    Parameters
    ----------
    teacher : a model directory or a fitted :class:`~fabsight.wafer.WaferClassifier`;
        ``None`` (or ``"pretrained"``): the shipped WM-811K model.
    size : student architecture: ``auto`` (:func:`student_size`: the largest family member
        ≥10× smaller than the teacher in parameters and FLOPs) or a key of
        :data:`fabsight.wafer.net.ARCHITECTURES`.
    temperature : distillation temperature ``T``; softened targets carry the teacher's
        "dark knowledge" (which wrong classes look alike). Losses are scaled by ``T²``.
    feature_weight : weight of the embedding-matching loss (0 turns it off).
    hard_weight : weight of a cross-entropy (multi-label: binary cross-entropy) to the
        teacher's *decisions*, added to the soft loss; it pulls the student's top-1 towards
        the teacher's where the softened targets are nearly flat (0 turns it off).
    synthetic_per_epoch : fresh generated maps (patterns the teacher knows, grids of
        :data:`~fabsight.wafer.classifier.SYNTH_SHAPES`) added to every epoch; their
        generator labels are discarded. 0: the given maps only.
    mixup : Beta(``mixup``, ``mixup``) parameter for mixing each map with another of its
        batch (0 turns it off); teacher and student see the same mixed map.
    attention_weight : weight of attention transfer (Zagoruyko & Komodakis 2017) after each
        conv stage: the student's spatial map of where its features fire (channel mean of
        squared activations, L2-normalised) is pulled towards the teacher's. Teaches *where*
        to look, which the pooled outputs say little about for thin patterns (scratches).
        0 turns it off.
    init : a student model directory or fitted student to continue distilling from (same
        classes, input size and ``size`` as this run); ``None`` starts from random weights.
    epochs, batch_size, learning_rate, weight_decay : optimisation (AdamW, one-cycle).
        An epoch is ``max(n_train + synthetic_per_epoch, 8 * batch_size)`` draws; the given
        maps are drawn weighted by the teacher's predicted class (``class_balance``) so rare
        patterns in unlabelled data are not drowned out (generated maps are balanced already).
    class_balance : how strongly draws are balanced over the teacher's predicted classes: a
        map of a class the teacher predicts ``n`` times is drawn with weight ``n ** -class_balance``
        (1: every class equally often; 0: as the maps come; 0.5 between). A student far smaller
        than its teacher cannot match it everywhere; full balance spends its capacity on rare
        patterns and it then errs on the common maps (on WM-811K: ``none`` maps called Scratch).
    rotate, flip, max_noise : augmentation shared by teacher and student.
    validation_fraction : share of the unlabelled maps held out for calibration when no
        labelled holdout is given.
    n_threads : torch CPU threads.
    device : where teacher and student run during imitation (``cpu``, ``cuda``, ``cuda:N`` or
        ``auto``); augmentation and generated maps stay on the CPU, and both networks come
        back to the CPU afterwards, so calibration and the saved student do not depend on it.
    random_state : seed.

    Attributes
    ----------
    student_ : the fitted student :class:`~fabsight.wafer.WaferClassifier`.
    teacher_ : the fitted teacher.
    size_ : the student architecture used (what ``auto`` resolved to).
    compression_ : teacher/student parameters and FLOPs per map, and their ratios.
    agreement_ : share of held-out maps on which student and teacher predict the same.
    """

    def __init__(
        self,
        teacher: str | os.PathLike[str] | WaferClassifier | None = None,
        *,
        size: str = "auto",
        temperature: float = 4.0,
        feature_weight: float = 1.0,
        hard_weight: float = 0.0,
        synthetic_per_epoch: int = 0,
        mixup: float = 0.0,
        attention_weight: float = 0.0,
        class_balance: float = 1.0,
        init: str | os.PathLike[str] | WaferClassifier | None = None,
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
        rotate: bool = True,
        flip: bool = True,
        max_noise: float = 0.05,
        validation_fraction: float = 0.2,
        n_threads: int = 2,
        device: str = "cpu",
        random_state: int | None = 0,
    ) -> None:
        self.teacher = teacher
        self.size = size
        self.temperature = temperature
        self.feature_weight = feature_weight
        self.hard_weight = hard_weight
        self.synthetic_per_epoch = synthetic_per_epoch
        self.mixup = mixup
        self.attention_weight = attention_weight
        self.class_balance = class_balance
        self.init = init
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.rotate = rotate
        self.flip = flip
        self.max_noise = max_noise
        self.validation_fraction = validation_fraction
        self.n_threads = n_threads
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ helpers
    def _pseudo_targets(self, teacher: WaferClassifier, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Teacher decisions as training-style targets and groups (class / label combination)."""
        if teacher.multilabel:
            on = probs >= teacher.label_thresholds_
            groups = np.array(
                ["+".join(c for c, o in zip(teacher.classes_, row, strict=True) if o) or "none" for row in on]
            )
            return on.astype(np.float32), groups
        idx = probs.argmax(axis=1)
        return idx.astype(np.int64), np.array([teacher.classes_[j] for j in idx])

    def _label_targets(self, student: WaferClassifier, maps: Sequence[WaferMap]) -> np.ndarray:
        """True labels of a labelled holdout as the student's targets."""
        labels = student._label_lists(maps, None)
        index = {c: j for j, c in enumerate(student.classes_)}
        for i, t in enumerate(labels):
            unknown = [n for n in t if n not in index and not (student.multilabel and n == "none")]
            if unknown:
                raise FabsightError(maps[i].source or None, f"label {unknown[0]!r} is not a class of the teacher")
        if not student.multilabel:
            return np.array([index[t[0]] for t in labels], dtype=np.int64)
        out = np.zeros((len(labels), len(index)), dtype=np.float32)
        for i, t in enumerate(labels):
            for n in t:
                if n != "none":
                    out[i, index[n]] = 1.0
        return out

    @staticmethod
    def _agreement(student: WaferClassifier, teacher: WaferClassifier, x: np.ndarray) -> float:
        """Share of preprocessed maps on which student and teacher make the same decision."""
        decided = [
            clf.decode(cal.probabilities(clf.network_outputs(x, f"{role} on held-out maps")[0], clf.temperature_,
                                         clf.multilabel))
            for role, clf in (("student", student), ("teacher", teacher))
        ]
        return float(np.mean([a == b for a, b in zip(*decided, strict=True)]))

    def _synthetic_inputs(self, teacher: WaferClassifier, epoch: int, seed: int) -> np.ndarray:
        """This epoch's fresh generated maps, preprocessed (float16); their labels are dropped."""
        from fabsight.synth import generate_dataset

        classes = synthetic_classes(teacher)
        per_class = math.ceil(self.synthetic_per_epoch / len(classes))
        epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
        maps = generate_dataset(
            per_class, shapes=SYNTH_SHAPES, classes=classes, mixed=teacher.multilabel, seed=epoch_seed
        )
        return maps_to_array([m.grid for m in maps], teacher.input_size_).astype(np.float16)

    @reproducible_cudnn()
    def _train(
        self, student: WaferClassifier, teacher: WaferClassifier, x: np.ndarray, weights: np.ndarray, seed: int
    ) -> tuple[dict[str, float], np.ndarray | None]:
        """Imitation loop; returns the last losses and the last epoch's generated maps (or None)."""
        import torch
        from torch import nn
        from torch.nn import functional as F

        from fabsight.wafer.net import augment

        s_net, t_net = student.net_, teacher.net_
        dev = next(s_net.parameters()).device
        t_net.eval()
        # Attention transfer reads each conv stage's output (after its pooling) through hooks.
        stage_outputs: dict[str, list[Any]] = {"teacher": [], "student": []}
        hooks = [
            layer.register_forward_hook(lambda _m, _i, out, role=role: stage_outputs[role].append(out))
            for role, net in (("teacher", t_net), ("student", s_net))
            for layer in net.features
            if isinstance(layer, nn.MaxPool2d) and self.attention_weight > 0
        ]
        projection = nn.Linear(s_net.config["embed_dim"], t_net.config["embed_dim"]).to(dev)
        params = list(s_net.parameters()) + list(projection.parameters())
        n_synthetic = 0
        if self.synthetic_per_epoch > 0:
            n_classes = len(synthetic_classes(teacher))
            n_synthetic = math.ceil(self.synthetic_per_epoch / n_classes) * n_classes
        per_epoch = len(x) + n_synthetic
        steps = math.ceil(max(per_epoch, 8 * self.batch_size) / self.batch_size)
        total = steps * self.epochs
        opt = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.learning_rate, total_steps=total)
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        T = float(self.temperature)
        thresholds = torch.from_numpy(np.asarray(teacher.label_thresholds_, dtype=np.float32)).to(dev)
        pool, synthetic, draws = x, None, np.empty(0, dtype=np.int64)
        s_net.train()
        last: dict[str, float] = {}
        try:
            for step in track(range(total), f"distilling into {self.size_}", total=total):
                if step % steps == 0:  # a new epoch: fresh generated maps, new draws
                    if n_synthetic:
                        synthetic = self._synthetic_inputs(teacher, step // steps, seed)
                        pool = np.concatenate([x, synthetic])
                    p = np.concatenate([weights * (len(x) / per_epoch), np.full(n_synthetic, 1.0 / per_epoch)])
                    draws = rng.choice(len(pool), size=steps * self.batch_size, p=p / p.sum())
                b = draws[(step % steps) * self.batch_size : (step % steps + 1) * self.batch_size]
                xb = augment(
                    torch.from_numpy(pool[b].astype(np.float32)),
                    gen,
                    rotate=self.rotate,
                    flip=self.flip,
                    max_noise=self.max_noise,
                )
                if self.mixup > 0:
                    lam = torch.from_numpy(rng.beta(self.mixup, self.mixup, size=(len(b), 1, 1, 1)).astype(np.float32))
                    xb = lam * xb + (1.0 - lam) * xb[torch.randperm(len(b), generator=gen)]
                xb = xb.to(dev, non_blocking=True)
                stage_outputs["teacher"].clear()
                stage_outputs["student"].clear()
                with torch.no_grad():
                    z_t = t_net.embed(xb)
                    logits_t = t_net.classify(z_t)
                z_s = s_net.embed(xb)
                logits_s = s_net.classify(z_s)
                if teacher.multilabel:
                    soft = torch.sigmoid(logits_t / T)
                    kd = F.binary_cross_entropy_with_logits(logits_s / T, soft) * T * T
                else:
                    kd = F.kl_div(
                        F.log_softmax(logits_s / T, dim=1),
                        F.log_softmax(logits_t / T, dim=1),
                        reduction="batchmean",
                        log_target=True,
                    ) * (T * T)
                feat = (1.0 - F.cosine_similarity(projection(z_s), z_t, dim=1)).mean()
                loss = kd + self.feature_weight * feat
                last = {"kd": kd.item(), "feature": feat.item()}
                if self.attention_weight > 0:
                    att = sum(
                        (_attention(f_s) - _attention(f_t)).pow(2).sum(dim=1).mean()
                        for f_s, f_t in zip(stage_outputs["student"], stage_outputs["teacher"], strict=True)
                    )
                    loss = loss + self.attention_weight * att
                    last["attention"] = float(att.detach())
                if self.hard_weight > 0:
                    if teacher.multilabel:
                        decided = (torch.sigmoid(logits_t / teacher.temperature_) >= thresholds).float()
                        hard = F.binary_cross_entropy_with_logits(logits_s, decided)
                    else:
                        hard = F.cross_entropy(logits_s, logits_t.argmax(dim=1))
                    loss = loss + self.hard_weight * hard
                    last["hard"] = hard.item()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        finally:  # the teacher may be the caller's model: leave no hook on it
            for hook in hooks:
                hook.remove()
        s_net.eval()
        return last, synthetic

    def _initial_student(self, teacher: WaferClassifier, widths: tuple[int, ...], size: str) -> WaferClassifier:
        """The ``init`` student, checked to fit this teacher and size."""
        base = self.init if isinstance(self.init, WaferClassifier) else load_model(self.init)
        check_is_fitted(base)
        where = None if isinstance(self.init, WaferClassifier) else str(self.init)
        if base.classes_ != teacher.classes_ or base.multilabel != teacher.multilabel:
            raise FabsightError(where, f"init student has classes {base.classes_}, the teacher {teacher.classes_}")
        if base.input_size_ != teacher.input_size_ or tuple(base.net_.config["widths"]) != tuple(widths):
            raise FabsightError(where, f"init student is not a {size} student of {teacher.input_size_}px input")
        return base

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        maps: Sequence[WaferMap] | Sequence[np.ndarray],
        y: None = None,
        *,
        holdout: Sequence[WaferMap] | None = None,
        data: str | None = None,
    ) -> WaferDistiller:
        """Distil on unlabelled ``maps`` (any labels they carry are ignored).

        ``holdout``: labelled maps to calibrate the student on (true labels instead of the
        teacher's predictions). ``data``: free-text description kept in the model card.
        """
        import torch

        from fabsight.wafer.net import ARCHITECTURES, WaferNet, n_flops, n_parameters

        if self.size != "auto" and self.size not in ARCHITECTURES:
            raise ValueError(f"size must be 'auto' or one of {list(ARCHITECTURES)}, got {self.size!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        for name in ("hard_weight", "synthetic_per_epoch", "mixup", "attention_weight", "class_balance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if len(maps) < MIN_MAPS:
            raise FabsightError(None, f"need at least {MIN_MAPS} unlabelled maps to distil on, got {len(maps)}")
        from fabsight.utils.device import resolve_device

        device = resolve_device(self.device)  # an unavailable device fails before any work
        torch.set_num_threads(self.n_threads)
        seed = 0 if self.random_state is None else int(self.random_state)
        teacher = self.teacher if isinstance(self.teacher, WaferClassifier) else load_model(resolve_model(self.teacher))
        check_is_fitted(teacher)
        teacher.n_threads = self.n_threads
        self.size_ = student_size(teacher) if self.size == "auto" else self.size
        widths, embed_dim = ARCHITECTURES[self.size_]
        student = WaferClassifier(
            input_size=teacher.input_size_,
            multilabel=teacher.multilabel,
            classes=list(teacher.classes_),
            widths=widths,
            embed_dim=embed_dim,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            rotate=self.rotate,
            flip=self.flip,
            max_noise=self.max_noise,
            validation_fraction=self.validation_fraction,
            review_precision=teacher.review_precision,
            ood_quantile=teacher.ood_quantile,
            n_threads=self.n_threads,
            random_state=self.random_state,
        )
        student.classes_ = list(teacher.classes_)
        student.input_size_ = teacher.input_size_
        student.head_ = "distilled"
        torch.manual_seed(seed)
        student.net_ = WaferNet(len(student.classes_), widths, embed_dim)
        if self.init is not None:
            student.net_.load_state_dict(self._initial_student(teacher, widths, self.size_).net_.state_dict())

        # Both networks work on the device until the student is calibrated; the teacher may be
        # the caller's model, so it goes back to the CPU even if something fails.
        student.net_.to(device)
        teacher.net_.to(device)
        try:
            x = maps_to_array(maps, teacher.input_size_)
            t_probs = cal.probabilities(
                teacher.network_outputs(x, "teacher predictions")[0], teacher.temperature_, teacher.multilabel
            )
            targets, groups = self._pseudo_targets(teacher, t_probs)
            rng = np.random.default_rng(seed)
            if holdout is None:
                val_mask = rng.random(len(x)) < self.validation_fraction
            else:
                val_mask = np.zeros(len(x), dtype=bool)
            x_tr, g_tr = x[~val_mask].astype(np.float16), groups[~val_mask]
            counts = Counter(g_tr.tolist())
            weights = np.array([float(counts[g]) ** -self.class_balance for g in g_tr])
            weights /= weights.sum()

            losses, synthetic = self._train(student, teacher, x_tr, weights, seed)
            x_fit, g_fit = x_tr, g_tr
            if synthetic is not None:
                # The OOD statistics should know the generated maps the student learnt from too.
                s_probs = cal.probabilities(
                    teacher.network_outputs(synthetic, "teacher on generated maps")[0], teacher.temperature_,
                    teacher.multilabel,
                )
                x_fit = np.concatenate([x_tr, synthetic])
                g_fit = np.concatenate([g_tr, self._pseudo_targets(teacher, s_probs)[1]])
            if holdout is None:
                x_val, t_val = x[val_mask], targets[val_mask]
                measured_on = f"{len(x_val)} unlabelled maps held out, scored against the teacher's predictions"
            else:
                x_val, t_val = maps_to_array(holdout, teacher.input_size_), self._label_targets(student, holdout)
                measured_on = f"{len(x_val)} labelled holdout maps (true labels)"
            student._calibrate(x_val, t_val, x_fit, g_fit, seed)
            if student.metrics_.get("validation"):
                student.metrics_["validation"]["measured_on"] = measured_on
        finally:
            student.net_.cpu()
            teacher.net_.cpu()

        teacher_p, student_p = n_parameters(teacher.net_), n_parameters(student.net_)
        teacher_f, student_f = n_flops(teacher.net_, teacher.input_size_), n_flops(student.net_, teacher.input_size_)
        self.compression_ = {
            "teacher": {"parameters": teacher_p, "flops": teacher_f, **teacher.net_.config},
            "student": {"size": self.size_, "parameters": student_p, "flops": student_f, **student.net_.config},
            "parameter_ratio": teacher_p / student_p,
            "flop_ratio": teacher_f / student_f,
        }
        self.agreement_ = self._agreement(student, teacher, x_val) if len(x_val) else None
        student.metrics_["agreement_with_teacher"] = self.agreement_
        student.training_ = {
            "data": data,
            "labels_used": "none: the teacher's soft outputs on unlabelled maps"
            + ("; a labelled holdout for calibration" if holdout is not None else ""),
            "n_maps": len(x),
            "n_train": len(x_tr),
            "n_validation": len(x_val),
            "teacher_predicted_classes": dict(sorted(Counter(groups.tolist()).items())),
            "distilled_from": _describe(self.teacher),
            "distillation": {
                "temperature": self.temperature,
                "soft_target_loss": "binary cross-entropy to sigmoid(teacher/T)"
                if teacher.multilabel
                else "KL(teacher/T || student/T)",
                "feature_weight": self.feature_weight,
                "feature_loss": "cosine distance, linear projection of the student embedding to the teacher's",
                "hard_weight": self.hard_weight,
                "synthetic_per_epoch": self.synthetic_per_epoch,
                "mixup": self.mixup,
                "attention_weight": self.attention_weight,
                "continued_from": None if self.init is None else _describe(self.init),
                "final_losses": losses,
            },
            "compression": self.compression_,
            "epochs": self.epochs,
            "augmentation": {"rotate": self.rotate, "flip": self.flip, "max_noise": self.max_noise},
            "class_balanced_sampling": f"by the teacher's predicted class, weight n^-{self.class_balance}",
            "seed": seed,
            "device": device,
        }
        self.teacher_ = teacher
        self.student_ = student
        return self

    # ----------------------------------------------------------------- predict
    def predict(self, maps: Sequence[WaferMap] | Sequence[np.ndarray]) -> list[Any]:
        """The student's predictions (see :meth:`WaferClassifier.predict`)."""
        check_is_fitted(self)
        return self.student_.predict(maps)

    def predict_proba(self, maps: Sequence[WaferMap] | Sequence[np.ndarray]) -> np.ndarray:
        """The student's calibrated probabilities."""
        check_is_fitted(self)
        return self.student_.predict_proba(maps)
