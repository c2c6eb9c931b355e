"""End-to-end fine-tuning of a backbone with a linear head (``fabsight die train --method finetune``).

A frozen probe on ImageNet or DINOv2 features tops out near 80 % on DeepPCB defect crops
(docs/benchmarks.md): PCB line scans are far from both training sets. NVIDIA TAO closes the
gap by training the network itself; this module does the same on CPU-scale hardware —
the whole backbone plus a linear head, cross-entropy, AdamW with a cosine schedule, random
flips / 90° turns / brightness and contrast shifts (inspection images have no canonical
orientation or exposure), early stopping on a stratified validation split, and a softmax
temperature fitted on that split so confidences are calibrated. The ``needs_review`` gate
is the probe's: distance to the nearest class centroid of the fine-tuned embedding.

Images are resized once (``Backbone.preprocess``, exactly as at prediction time) and held
as float16 tensors, so an epoch costs only the network.

Few labels, many unlabeled images (the usual state of a fab): ``fit(X, y, unlabeled=...)``
self-trains Noisy-Student style. The network trained on the labels (the teacher) labels the
unlabeled pool, by default from its logits averaged over each image's flips and quarter
turns (``pseudo_tta``: 40–60 % fewer wrong pseudo-labels in one DeepPCB run); only images
whose *temperature-calibrated* confidence reaches ``pseudo_threshold`` are kept, at most the
median class's share of each class's predicted images (so the classes the teacher finds easy
cannot swamp the rest, and a lot's majority defect type is not cut down to a minority's count);
a student is fine-tuned from the pretrained backbone on labels + pseudo-labels under the same
augmentation and dropout noise, through its whole cosine schedule (a validation split of a
few dozen labels cannot rank students that all score near 100 % on it), and becomes the next
round's teacher. ``min_change`` ends the rounds early once the pseudo-labels stop changing.
The labelled validation split is fixed before the first round and never
receives a pseudo-label, so early stopping, the temperature and the card's metrics stay
measured on true labels; unlabeled files identical to a labelled one are dropped.
A full round of FixMatch-style consistency training would cost a forward pass over unlabeled
batches at every step, which a 2-core CPU cannot afford; this loop costs one prediction pass
over the pool and one more training run per round.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from fabsight.backbones import Backbone, create_backbone
from fabsight.backbones.base import file_sha256, state_dict_sha256
from fabsight.calibration import fit_temperature, select_pseudo_labels
from fabsight.die.classifier import NetworkDecisionsMixin, nearest_centroid_distance
from fabsight.die.embeddings import Item, content_key, load_item
from fabsight.die.metrics import classification_metrics
from fabsight.die.views import average_views
from fabsight.errors import FabsightError, ModelError
from fabsight.utils.device import reproducible_cudnn
from fabsight.utils.progress import track

NETWORK_FILE = "finetuned.safetensors"


def pooled(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """The ``head`` embedding of :meth:`Backbone.embed`, with gradients: mean-pooled CNN map,
    or ViT CLS token ⊕ mean patch token."""
    out = backbone.model.forward_features(x)
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    return torch.cat([out[:, 0], out[:, backbone.model.num_prefix_tokens:].mean(dim=1)], dim=1)


class _Network(nn.Module):
    """Backbone body + dropout + linear head; returns (logits, pooled embedding)."""

    def __init__(self, backbone: Backbone, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.body = backbone.model  # registered so state_dict() holds body.* and head.*
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.embed_dim_for(["head"]), n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = pooled(self.backbone, x)
        return self.head(self.drop(z)), z


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips, 90° turns (square inputs) and gain/offset per image of a normalised batch.

    Gain/offset act on normalised values, i.e. a contrast and brightness change of ±20 %
    and ±0.2 σ; the geometric ones keep every defect label valid on inspection images.
    Whole-batch tensor operations on ``x``'s device (a GPU batch never visits the CPU); the
    random draws come from the CPU ``generator``, so a seed gives the same views anywhere.
    """
    n = x.shape[0]
    r = torch.rand(n, 4, generator=generator).to(x.device)
    gain = (1.0 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.4).to(x.device)
    offset = ((torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.4).to(x.device)
    out = torch.where((r[:, 0] < 0.5).view(n, 1, 1, 1), x.flip(-1), x)
    out = torch.where((r[:, 1] < 0.5).view(n, 1, 1, 1), out.flip(-2), out)
    if out.shape[-1] == out.shape[-2]:
        quarter = (r[:, 2] * 4).long()
        turned = out.clone()
        for k in (1, 2, 3):
            m = quarter == k
            if m.any():
                turned[m] = torch.rot90(out[m], k, dims=(-2, -1))
        out = turned
    return out * gain + offset


def epochs_within(budget_s: float, elapsed_s: float, done: int, planned: int) -> int:
    """How many epochs the run should have in all, after ``done`` of them took ``elapsed_s``: as many
    of the ``planned`` as the rest of ``budget_s`` fits at the mean epoch time so far, at least ``done``.
    The cosine schedule is stretched over that many, so a run cut by its budget still ends on a
    small learning rate instead of stopping half-way down the schedule."""
    fits = done + int(max(0.0, budget_s - elapsed_s) // (elapsed_s / done))
    return max(done, min(planned, fits))


class FinetuneClassifier(NetworkDecisionsMixin, ClassifierMixin, BaseEstimator):
    """Fine-tune ``backbone`` end to end on labelled images (``X``: paths or uint8 arrays).

    Parameters
    ----------
    backbone, weights, input_size : the starting network (see ``create_backbone``).
    epochs : most passes over the training part; early stopping usually ends sooner.
    batch_size, lr, head_lr_scale, weight_decay : AdamW (the new head learns ``head_lr_scale`` × faster).
    val_fraction : stratified share held out for early stopping and the temperature.
    patience : epochs without a better validation accuracy before stopping.
    augment : random flips, 90° turns and brightness/contrast during training.
    dropout : before the linear head.
    max_minutes : wall-clock budget of the whole fit. With unlabeled images, each training run
        (teacher, then each student) gets an even share of what is left when it starts. After each
        epoch a run shortens its cosine schedule to the epochs its share still fits, so it ends
        annealed; it stops after the epoch that exceeds the share.
    device, seed : where to train; the seed fixes the split, the order and the augmentation.
    min_confidence, review_quantile : the ``needs_review`` gate (as in :class:`DieClassifier`).
    rounds : self-training rounds (teacher → pseudo-labels → student) when ``fit`` gets unlabeled images.
    pseudo_threshold : least calibrated confidence for a pseudo-label.
    pseudo_tta : the teacher labels the unlabeled images averaging its logits over their flips and
        quarter turns (8 forward passes each, once per round): fewer wrong pseudo-labels.
    student_epochs : epochs of each student (default ``epochs``); a student sees many more
        images per epoch than the teacher.
    student_early_stop : stop a student on the labelled validation split like the teacher. Off by
        default: a student runs its whole cosine schedule and keeps its last weights, because a
        split of a few dozen labelled images is too small to pick among students that all score
        near 100 % on it (it stopped DeepPCB students at epoch 2–6 of 10, learning rate still high).
    min_change : stop self-training early once a round's pseudo-labels differ from the previous
        round's on less than this share of the pool (``changed_since_last_round``): the set has
        settled, and another student would mostly relearn the same labels. The previous student
        stands. ``None`` (the default) runs every round. On DeepPCB (ten draws, five rounds) the
        share fell 17 % → 6 % → 4 % → 3 % from round 2 to 5 while accuracy gained 0.8, 0.2, 0.07 and
        0.06 points (docs/benchmarks.md).
    max_unlabeled : at most this many unlabeled images (a seeded sample) take part. The kept
        pseudo-labelled images are held in memory like the labelled ones (float16, ≈ 75 kB each
        at 112 px), so a folder of a whole fab's history needs a bound.

    Attributes
    ----------
    classes_ : labels in logit order.
    network_ : the fine-tuned ``nn.Module`` (body.* = backbone, head.* = linear head).
    backbone_ : a :class:`Backbone` sharing the fine-tuned body (for ``embed`` / caches).
    temperature_ : softmax temperature fitted on the validation split.
    embed_mean_, embed_std_, centroids_, ood_threshold_ : the out-of-distribution gate.
    history_ : per epoch train loss, validation loss and accuracy, seconds, learning rate at its end.
    best_epoch_ : the epoch whose weights were kept (1-based).
    validation_ : classification metrics of the kept weights on the validation split.
    self_training_ : with unlabeled images, what each round did (the model card's record).
    pseudo_labels_ : with unlabeled images, per round the pseudo-labelled positions in ``unlabeled``,
        their labels and calibrated confidences.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str | None = None,
                 input_size: int | None = None, epochs: int = 15, batch_size: int = 32, lr: float = 3e-4,
                 head_lr_scale: float = 10.0, weight_decay: float = 1e-4, val_fraction: float = 0.15,
                 patience: int = 3, augment: bool = True, dropout: float = 0.2, max_minutes: float | None = None,
                 device: str = "cpu", seed: int = 0, min_confidence: float = 0.5,
                 review_quantile: float = 0.99, rounds: int = 1, pseudo_threshold: float = 0.9,
                 student_epochs: int | None = None, max_unlabeled: int | None = None,
                 pseudo_tta: bool = True, student_early_stop: bool = False,
                 min_change: float | None = None) -> None:
        self.backbone = backbone
        self.weights = weights
        self.input_size = input_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.head_lr_scale = head_lr_scale
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.augment = augment
        self.dropout = dropout
        self.max_minutes = max_minutes
        self.device = device
        self.seed = seed
        self.min_confidence = min_confidence
        self.review_quantile = review_quantile
        self.rounds = rounds
        self.pseudo_threshold = pseudo_threshold
        self.student_epochs = student_epochs
        self.max_unlabeled = max_unlabeled
        self.pseudo_tta = pseudo_tta
        self.student_early_stop = student_early_stop
        self.min_change = min_change

    # data ------------------------------------------------------------------------------
    def _tensors(self, bb: Backbone, X: Sequence[Item], what: str) -> torch.Tensor:
        """Every training image preprocessed once, kept as float16 on the CPU (N×3×H×W): an epoch then
        costs only the network, and a 224-px training set fits in memory."""
        batches = [X[i:i + 64] for i in range(0, len(X), 64)]
        parts = [bb.preprocess([load_item(it) for it in batch]).to("cpu", torch.float16)
                 for batch in track(batches, f"reading {what}", total=len(batches))]
        return torch.cat(parts)

    def _split(self, yi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(yi))
        n_val = max(len(self.classes_), round(self.val_fraction * len(yi)))
        return train_test_split(idx, test_size=n_val, stratify=yi, random_state=self.seed)

    # training --------------------------------------------------------------------------
    def fit(self, X: Sequence[Item], y: Sequence[str], *, unlabeled: Sequence[Item] | None = None,
            callback: Callable[[int, FinetuneClassifier], None] | None = None) -> FinetuneClassifier:
        """Fine-tune on ``X``/``y``; with ``unlabeled`` images, then self-train for ``rounds`` rounds.

        ``callback(round, self)`` runs after the teacher (round 0) and after each student with
        the estimator ready to predict, e.g. to score every round on a test set.
        """
        if not 0.0 < self.val_fraction < 0.5:
            raise FabsightError(None, f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 2 or (self.student_epochs is not None and self.student_epochs < 1):
            raise FabsightError(None, "epochs and student_epochs must be ≥ 1 and batch_size ≥ 2")
        if self.max_unlabeled is not None and self.max_unlabeled < 1:
            raise FabsightError(None, f"max_unlabeled must be ≥ 1, got {self.max_unlabeled}")
        if self.min_change is not None and not 0.0 < self.min_change <= 1.0:
            raise FabsightError(None, f"min_change must be in (0, 1], got {self.min_change}")
        if unlabeled is not None and (self.rounds < 1 or not 0.0 < self.pseudo_threshold < 1.0):
            raise FabsightError(None, f"self-training needs rounds ≥ 1 and a pseudo-label threshold in (0, 1), "
                                f"got {self.rounds} and {self.pseudo_threshold}")
        y = np.asarray(y).astype(str)
        if len(X) != len(y):
            raise FabsightError(None, f"{len(X)} images but {len(y)} labels")
        self.classes_, yi = np.unique(y, return_inverse=True)
        counts = np.bincount(yi)
        if len(self.classes_) < 2 or counts.min() < 2:
            raise FabsightError(None, "fine-tuning needs at least two classes with ≥ 2 images each "
                                f"(counts: {dict(zip(self.classes_.tolist(), counts.tolist(), strict=True))})")
        started = time.perf_counter()
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        bb = create_backbone(self.backbone, device="cpu", weights=self.weights, input_size=self.input_size)
        images = self._tensors(bb, X, "training images")
        tr, va = self._split(yi)
        pool = self._unlabeled_pool(X, unlabeled) if unlabeled is not None else None
        stages = 1 + (self.rounds if pool is not None else 0)
        net = self._train_network(bb, images, yi, tr, va, gen, self.epochs, self._budget(started, stages), "fine-tune")
        self._finish(net, bb, images, yi, tr, va)
        if callback is not None:
            callback(0, self)
        if pool is None:
            return self
        self.pseudo_labels_ = []
        student_epochs = self.student_epochs or self.epochs
        self.self_training_ = {
            "n_unlabeled": len(unlabeled), "n_duplicates_of_labelled": len(unlabeled) - len(pool),
            "max_unlabeled": self.max_unlabeled, "threshold": self.pseudo_threshold, "tta": self.pseudo_tta,
            "rounds_requested": self.rounds, "student_epochs": student_epochs,
            "student_early_stop": self.student_early_stop, "min_change": self.min_change, "stopped": None,
            "teacher": self._stage_summary(len(tr)), "rounds": []}
        assigned = None
        for r in range(1, self.rounds + 1):
            keep, labels, conf, assigned, record = self._pseudo_label(r, pool, unlabeled, assigned)
            self.self_training_["rounds"].append(record)
            changed = record["changed_since_last_round"]
            if not len(keep):  # nothing confident enough: the last model stands
                self.self_training_["stopped"] = f"round {r}: no confident pseudo-labels"
                break
            if self.min_change is not None and changed is not None and changed < self.min_change:
                self.self_training_["stopped"] = (f"round {r}: pseudo-labels changed on {changed:.1%} of the pool "
                                                  f"(< {self.min_change:.1%}), settled")
                break
            self.pseudo_labels_.append({"index": keep, "label": self.classes_[labels], "confidence": conf})
            extra = self._tensors(bb, [unlabeled[i] for i in keep], f"pseudo-labelled images, round {r}")
            all_images = torch.cat([images, extra])
            targets = np.concatenate([yi, labels])
            student_tr = np.concatenate([tr, len(yi) + np.arange(len(keep))])
            student = create_backbone(self.backbone, device="cpu", weights=self.weights, input_size=self.input_size)
            net = self._train_network(student, all_images, targets, student_tr, va, gen, student_epochs,
                                      self._budget(started, stages - r), f"student {r}",
                                      early_stop=self.student_early_stop)
            self._finish(net, student, all_images, targets, tr, va)  # OOD centroids from true labels only
            record.update(self._stage_summary(len(student_tr)))
            if callback is not None:
                callback(r, self)
        return self

    def _budget(self, started: float, stages_left: int) -> float | None:
        """Seconds for the next training run: an even share of what is left of ``max_minutes``."""
        if self.max_minutes is None:
            return None
        return max(0.0, 60 * self.max_minutes - (time.perf_counter() - started)) / stages_left

    def _unlabeled_pool(self, X: Sequence[Item], unlabeled: Sequence[Item]) -> np.ndarray:
        """Positions in ``unlabeled`` of the images that are not byte-for-byte a labelled one (a
        validation image copied into the unlabeled folder would otherwise be trained on), at most
        ``max_unlabeled`` of them, drawn with the seed."""
        if len(unlabeled) == 0:
            raise FabsightError(None, "no unlabeled images given")
        positions = np.arange(len(unlabeled))
        if self.max_unlabeled is not None and len(unlabeled) > self.max_unlabeled:
            positions = np.sort(np.random.default_rng(self.seed).choice(positions, self.max_unlabeled, replace=False))
        labelled = {content_key(it) for it in X}
        return np.asarray([i for i in positions if content_key(unlabeled[i]) not in labelled], dtype=int)

    def _pseudo_label(self, round_: int, pool: np.ndarray, unlabeled: Sequence[Item], previous: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The current model labels ``pool``; returns the kept positions in ``unlabeled``, their label
        indices and calibrated confidences, every pool image's pseudo-label (-1: not kept) and the
        round's record for the card, which says what share of the pool changed since ``previous``."""
        if len(pool):
            proba = self.predict_proba([unlabeled[i] for i in pool], tta=self.pseudo_tta)
        else:
            proba = np.zeros((0, len(self.classes_)))
        rows, confident, caps = select_pseudo_labels(proba, self.pseudo_threshold)
        labels = proba[rows].argmax(axis=1)
        names = self.classes_.tolist()
        assigned = np.full(len(pool), -1)  # each pool image's pseudo-label, -1 where none was kept
        assigned[rows] = labels
        record = {"round": round_, "n_pool": len(pool),
                  "confident": dict(zip(names, confident.tolist(), strict=True)),
                  "cap_per_class": dict(zip(names, caps.tolist(), strict=True)),
                  "changed_since_last_round": None if previous is None else float(np.mean(assigned != previous)),
                  "pseudo_labelled": dict(zip(names, np.bincount(labels, minlength=len(names)).tolist(),
                                              strict=True))}
        return pool[rows], labels, proba[rows].max(axis=1), assigned, record

    def _stage_summary(self, n_train: int) -> dict[str, Any]:
        """The card's record of the training run just finished (teacher or student)."""
        return {"n_train": n_train, "epochs_run": len(self.history_), "best_epoch": self.best_epoch_,
                "val_accuracy": self.validation_["accuracy"], "temperature": self.temperature_}

    @reproducible_cudnn()
    def _train_network(self, bb: Backbone, images: torch.Tensor, targets: np.ndarray, tr: np.ndarray,
                       va: np.ndarray, gen: torch.Generator, epochs: int, budget_s: float | None,
                       what: str, early_stop: bool = True) -> _Network:
        """One training run of a fresh head on ``bb`` over ``images[tr]``. With ``early_stop``, stops on
        ``images[va]`` and keeps the best epoch's weights; without, runs every epoch (or until the
        budget) and keeps the last. Sets ``history_`` and ``best_epoch_``."""
        net = _Network(bb, len(self.classes_), self.dropout).to(self.device)
        for p in net.parameters():
            p.requires_grad_(True)
        bb.device = torch.device(self.device)
        opt = torch.optim.AdamW([
            {"params": net.body.parameters(), "lr": self.lr},
            {"params": net.head.parameters(), "lr": self.lr * self.head_lr_scale},
        ], weight_decay=self.weight_decay)
        steps_per_epoch = max(1, len(tr) // self.batch_size)
        planned = epochs  # shrinks to what the budget allows, so the learning rate still anneals
        total = steps_per_epoch * planned
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        counts = np.bincount(targets[tr], minlength=len(self.classes_)).clip(min=1)
        weight = torch.tensor(len(tr) / (len(counts) * counts), dtype=torch.float32, device=self.device)
        loss_fn = nn.CrossEntropyLoss(weight=weight)  # balanced, as the probes' class_weight
        y_t = torch.from_numpy(targets).long()
        best: tuple[float, float] = (-1.0, math.inf)
        best_state, self.history_, self.best_epoch_ = None, [], 0
        started, stale = time.perf_counter(), 0
        epoch = 0
        while epoch < planned:
            t0 = time.perf_counter()
            net.train()
            order = tr[torch.randperm(len(tr), generator=gen).numpy()]
            batches = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(steps_per_epoch)]
            losses = []
            for batch in track(batches, f"{what} epoch {epoch + 1}/{planned}"):
                x = images[batch].to(self.device, non_blocking=True).float()
                if self.augment:
                    x = augment_batch(x, gen)
                logits, _ = net(x)
                loss = loss_fn(logits, y_t[batch].to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            val_logits, _ = self._run(net, images[va])
            val_loss = float(nn.functional.cross_entropy(torch.from_numpy(val_logits), y_t[va]))
            val_acc = float((val_logits.argmax(1) == targets[va]).mean())
            self.history_.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                                  "val_accuracy": val_acc, "seconds": time.perf_counter() - t0,
                                  "lr": opt.param_groups[0]["lr"]})
            if not early_stop:
                self.best_epoch_ = epoch + 1
            elif (val_acc, -val_loss) > (best[0], -best[1]):
                best, best_state, self.best_epoch_, stale = (val_acc, val_loss), copy.deepcopy(net.state_dict()), \
                    epoch + 1, 0
            else:
                stale += 1
            epoch += 1
            if budget_s is not None:  # past the budget this plans no further epoch
                planned = epochs_within(budget_s, time.perf_counter() - started, epoch, planned)
                total = steps_per_epoch * planned
            if early_stop and stale >= self.patience:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        return net

    def _finish(self, net: _Network, bb: Backbone, images: torch.Tensor, yi: np.ndarray, tr: np.ndarray,
                va: np.ndarray) -> None:
        """Temperature on the validation split; OOD centroids from the un-augmented training part."""
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        val_logits, _ = self._run(net, images[va])
        self.temperature_ = fit_temperature(val_logits, yi[va], multilabel=False)
        self.validation_ = classification_metrics(self.classes_[yi[va]], self.classes_[val_logits.argmax(1)],
                                                  self.classes_)
        _, z = self._run(net, images[tr])
        self.embed_mean_, self.embed_std_ = z.mean(axis=0), z.std(axis=0) + 1e-6
        zs = (z - self.embed_mean_) / self.embed_std_
        self.centroids_ = np.stack([zs[yi[tr] == c].mean(axis=0) for c in range(len(self.classes_))])
        self.ood_threshold_ = float(np.quantile(nearest_centroid_distance(zs, self.centroids_),
                                                self.review_quantile))
        self.network_ = net
        bb.cfg.weights_hash = state_dict_sha256(net.body.state_dict())  # no cache mixes it with the base
        self.backbone_ = bb

    @torch.no_grad()
    def _run(self, net: _Network, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled embeddings in eval mode (no augmentation), batched."""
        was_training = net.training
        net.eval()
        logits, emb = [], []
        for i in range(0, len(images), 64):
            lo, z = net(images[i:i + 64].float().to(self.device))
            logits.append(lo.cpu())
            emb.append(z.cpu())
        net.train(was_training)
        return torch.cat(logits).numpy(), torch.cat(emb).numpy()

    # prediction ------------------------------------------------------------------------
    def logits_and_embedding(self, X: Sequence[Item], tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Streamed in float32 batches: unlike the training set, nothing is held in half precision, so
        the ONNX twin (numpy preprocessing, float32) sees the same values up to the last bit."""
        check_is_fitted(self)
        if len(X) == 0:
            raise FabsightError(None, "no images to classify")

        def forward(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            if tta:  # the views are numpy (shared with the ONNX twin); without them the batch stays on the device
                return average_views(lambda v: self._run(self.network_, torch.from_numpy(v)), x.cpu().numpy())
            return self._run(self.network_, x)

        batches = [X[i:i + 64] for i in range(0, len(X), 64)]
        parts = [forward(self.backbone_.preprocess([load_item(it) for it in batch]))
                 for batch in track(batches, "images", total=len(batches))]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    # persistence -----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the network: its weights go to ``finetuned.safetensors`` (see :func:`save`)."""
        state = dict(self.__dict__)
        state.pop("network_", None)
        state.pop("backbone_", None)
        return state


def save(clf: FinetuneClassifier, out_dir: str | os.PathLike[str], classifier_file: str) -> str:
    """Write the network weights (safetensors) and the rest of the fitted estimator (joblib);
    returns the weights' hash for the card."""
    import joblib

    from fabsight.utils.tensors import save_tensors

    out = Path(out_dir)
    check_is_fitted(clf)
    save_tensors(clf.network_.state_dict(), out / NETWORK_FILE)
    joblib.dump(clf, out / classifier_file)
    return file_sha256(out / NETWORK_FILE)


def load(model_dir: str | os.PathLike[str], files: dict[str, str], network_sha256: str | None, *,
         device: str = "cpu") -> FinetuneClassifier:
    """Rebuild a saved :class:`FinetuneClassifier`: base architecture, then the fine-tuned weights."""
    import joblib
    from safetensors.torch import load_file

    d = Path(model_dir)
    path = d / files["network"]
    if not path.is_file():
        raise ModelError(path, "fine-tuned network weights are missing from the model directory")
    digest = file_sha256(path)
    if network_sha256 and digest != network_sha256:
        raise ModelError(path, "fine-tuned weights do not match the hash in card.json (file replaced or damaged)")
    clf: FinetuneClassifier = joblib.load(d / files["classifier"])
    bb = create_backbone(clf.backbone, device="cpu", weights=clf.weights, input_size=clf.input_size)
    net = _Network(bb, len(clf.classes_), clf.dropout)
    try:
        net.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise ModelError(path, f"weights do not fit '{clf.backbone}': {str(exc).splitlines()[0]}") from None
    for p in net.parameters():
        p.requires_grad_(False)
    clf.device = device
    clf.network_ = net.eval().to(device)
    bb.device = torch.device(device)
    bb.cfg.weights_hash = digest  # embeddings of the fine-tuned body are never mixed with the base's
    clf.backbone_ = bb
    return clf
