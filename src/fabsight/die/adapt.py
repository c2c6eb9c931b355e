"""Self-supervised domain adaptation of a backbone on unlabeled die images (DINO self-distillation).

A student network sees 2 global and N local random crops of each image; an EMA teacher
sees the global crops only; the student is trained to match the teacher's centred,
sharpened softmax over a DINO projection head (Caron et al. 2021, as in NVIDIA TAO's
``nvdinov2 train``). The teacher backbone, not the student, is kept: it is the smoother
average and what DINO evaluates. The output directory is a backbone directory
(``create_backbone(DIR)``) plus ``checkpoint.pt`` so a run can resume, epoch by epoch.

Three things keep a short run from damaging ImageNet features (measured in docs/benchmarks.md):
- BatchNorm statistics stay frozen. Re-estimating them on multi-crop batches (small local
  crops, colour jitter, blur) alone costs a DeepPCB probe 9–15 points, without any weight
  changing; the probe sees whole, un-jittered images.
- The projection head is trained alone first (``head_warmup``): a freshly initialised head
  has nothing to distil, and its gradients only push the backbone around.
- The backbone's learning rate then warms up linearly and decays with a cosine; norms and
  biases get no weight decay.
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fabsight.backbones import Backbone, create_backbone, save_backbone_dir
from fabsight.die.data import list_images, read_image, readable_images
from fabsight.errors import FabsightError, NothingReadable
from fabsight.io import ReadLog
from fabsight.utils.atomic import atomic_dir
from fabsight.utils.device import reproducible_cudnn, resolve_device
from fabsight.utils.progress import track

CHECKPOINT = "checkpoint.pt"


class DINOHead(nn.Module):
    """MLP → L2-normalised bottleneck → weight-normalised prototypes (DINO's projection head)."""

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden: int = 512, bottleneck: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(nn.functional.normalize(self.mlp(x), dim=-1))


class DINOLoss(nn.Module):
    """Cross-entropy between teacher (centred, temperature-sharpened) and student over crop pairs."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        targets = [torch.softmax((t - self.center) / self.teacher_temp, dim=-1).detach() for t in teacher]
        total, pairs = 0.0, 0
        for ti, t in enumerate(targets):
            for si, s in enumerate(student):
                if si == ti:  # the same global view
                    continue
                total = total + torch.sum(-t * torch.log_softmax(s / self.student_temp, dim=-1), dim=-1).mean()
                pairs += 1
        with torch.no_grad():
            batch_center = torch.cat(teacher).mean(dim=0, keepdim=True)
            self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
        return total / pairs


def _crop_size(base: int, scale: float, multiple: int) -> int:
    return max(multiple, round(base * scale / multiple) * multiple)


class MultiCrop:
    """2 global + ``n_local`` local views of a uint8 image, as normalised tensors."""

    def __init__(self, bb: Backbone, n_local: int) -> None:
        from torchvision.transforms import v2

        h, w = bb.cfg.input_size
        multiple = int(bb.cfg.layers[next(iter(bb.cfg.layers))][1]) if bb.cfg.architecture.startswith("vit") else 1
        local = (_crop_size(h, 0.4375, multiple), _crop_size(w, 0.4375, multiple))
        common = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
                  v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3)], p=0.8)]
        norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(bb.cfg.mean), list(bb.cfg.std))]
        self.global_t = v2.Compose([v2.RandomResizedCrop((h, w), scale=(0.4, 1.0), antialias=True), *common,
                                    v2.RandomApply([v2.GaussianBlur(5)], p=0.5), *norm])
        self.local_t = v2.Compose([v2.RandomResizedCrop(local, scale=(0.05, 0.4), antialias=True), *common, *norm])
        self.n_local = n_local

    def __call__(self, image: np.ndarray) -> list[torch.Tensor]:
        t = torch.from_numpy(np.ascontiguousarray(image))
        t = t[None].expand(3, -1, -1) if t.ndim == 2 else t.permute(2, 0, 1)
        return [self.global_t(t), self.global_t(t)] + [self.local_t(t) for _ in range(self.n_local)]


class _Views(torch.utils.data.Dataset):
    """The multi-crop views of each image, made wherever the loader runs it (worker processes)."""

    def __init__(self, files: list[Path], crops: MultiCrop) -> None:
        self.files, self.crops = files, crops

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        return self.crops(read_image(self.files[i]))


def _stack_views(batch: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """One tensor per view position (global 1, global 2, locals) across the batch."""
    return [torch.stack([views[k] for views in batch]) for k in range(len(batch[0]))]


def default_workers(device: str) -> int:
    """Crop-making processes beside the training loop: on a GPU the crops, not the network,
    set the pace (one image's views cost ~4 ms of CPU), so use most cores; on a CPU they
    would only compete with the training for the same cores."""
    return 0 if device == "cpu" else max(0, min(8, (os.cpu_count() or 1) - 1))


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: it normalises with the pretrained running
    statistics and leaves them alone, while its affine weights still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def backbone_lr_factor(it: int, total: int, head_steps: int) -> float:
    """Backbone learning-rate multiplier at step ``it``: 0 while the head warms up, a linear
    ramp over as many steps again, then a cosine down to 1 % (DINO's schedule, shifted)."""
    if it < head_steps:
        return 0.0
    ramp_end = min(total, 2 * head_steps)
    if it < ramp_end:
        return (it - head_steps + 1) / (ramp_end - head_steps)
    t = (it - ramp_end) / max(1, total - ramp_end)
    return 0.01 + 0.99 * (math.cos(math.pi * t) + 1) / 2


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and kernels only (not on norms or biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def unlabeled_images(root: str | os.PathLike[str], log: ReadLog | None = None, *, least: int = 2,
                     purpose: str = "self-distillation") -> list[Path]:
    """All image files under ``root`` (any depth): class folders, if any, are ignored.

    With a ``log`` each image is checked once (:func:`~fabsight.die.data.readable_images`) and
    the unreadable ones are recorded there and left out; fewer than ``least`` is an error.
    """
    r = Path(root)
    if not r.is_dir():
        raise FabsightError(r, "is not a directory of images")
    files = listed = list_images(r, recursive=True)
    if log is not None:
        files = readable_images(listed, log)
    if len(files) < least:
        detail = f" readable ({len(listed) - len(files)} could not be read)" if len(files) < len(listed) else ""
        raise NothingReadable(r, f"has {len(files)} image(s){detail}; {purpose} needs at least {least}",
                              log.errors if log is not None else [])
    return files


@reproducible_cudnn()
def _check_options(epochs: int, batch_size: int, head_warmup: float, workers: int | None) -> None:
    if epochs < 1 or batch_size < 2:
        raise FabsightError(None, "--epochs must be ≥ 1 and --batch-size ≥ 2")
    if not 0.0 <= head_warmup < 0.5:
        raise FabsightError(None, f"--head-warmup must be in [0, 0.5), got {head_warmup}")
    if workers is not None and workers < 0:
        raise FabsightError(None, f"--workers must be ≥ 0, got {workers}")


def _resume(ckpt_path: Path, out: Path, backbone: str, dev: str, modules: dict[str, Any],
            opt: torch.optim.Optimizer) -> tuple[int, list[float]]:
    """Load an interrupted run's networks, optimizer and random state → (next epoch, loss history)."""
    state = torch.load(ckpt_path, map_location=dev, weights_only=False)
    if state["backbone"] != backbone:
        raise FabsightError(out, f"--resume: the run used backbone '{state['backbone']}', not '{backbone}'")
    for key, module in modules.items():
        module.load_state_dict(state[key])
    try:
        opt.load_state_dict(state["optimizer"])
    except ValueError as e:  # a checkpoint from before the per-group learning rates
        raise FabsightError(out, f"--resume: the checkpoint's optimizer does not match this version ({e})") from e
    # map_location moved every tensor to the device; the CPU generator's state must stay on the CPU
    torch.set_rng_state(state["rng"].cpu())
    return state["epoch"], state["history"]


@torch.no_grad()
def _ema_update(teacher: tuple[nn.Module, nn.Module], student: tuple[nn.Module, nn.Module], m: float) -> None:
    """Teacher (backbone, head) ← m·teacher + (1 − m)·student; buffers (BatchNorm statistics) copied."""
    for t, s in zip(teacher, student, strict=True):
        for pt, ps in zip(t.parameters(), s.parameters(), strict=True):
            pt.mul_(m).add_(ps.detach(), alpha=1 - m)
    for bt, bs in zip(teacher[0].buffers(), student[0].buffers(), strict=True):
        bt.copy_(bs)


def adapt(
    unlabeled_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    backbone: str = "dinov2_vits14",
    weights: str | os.PathLike[str] | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    n_local: int = 4,
    lr: float = 2e-5,
    head_lr: float = 1e-3,
    head_warmup: float = 0.2,
    weight_decay: float = 0.04,
    momentum: float = 0.996,
    out_dim: int = 1024,
    input_size: int | None = None,
    resume: bool = False,
    device: str = "auto",
    seed: int = 0,
    max_images: int | None = None,
    workers: int | None = None,
    log: ReadLog | None = None,
) -> dict[str, Any]:
    """Run DINO self-distillation; write the teacher backbone + checkpoint to ``out_dir`` after every epoch.

    With a lenient ``log`` unreadable images are recorded there and left out of training.

    ``workers``: processes making the crops (``None``: :func:`default_workers`; 0 = in this process).
    ``lr`` is the backbone's peak learning rate and ``head_lr`` the projection head's;
    ``head_warmup`` is the share of all steps during which only the head trains.
    """
    _check_options(epochs, batch_size, head_warmup, workers)
    dev = resolve_device(device)
    n_workers = default_workers(dev) if workers is None else workers
    files = unlabeled_images(unlabeled_dir, log)
    if max_images:
        files = files[:max_images]
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    if resume and not ckpt_path.is_file():
        raise FabsightError(out, f"--resume: no {CHECKPOINT} from an earlier run here")
    if not resume and ckpt_path.is_file():
        raise FabsightError(out, "holds an adaptation run already; pass --resume to continue it (or pick a new --out)")

    torch.manual_seed(seed)
    base = create_backbone(backbone, device=dev, weights=weights, input_size=input_size)
    student = copy.deepcopy(base.model).train()
    freeze_batchnorm_stats(student)
    for p in student.parameters():
        p.requires_grad_(True)
    dim = int(_pooled(student, torch.zeros(2, 3, *base.cfg.input_size, device=dev)).shape[1])
    s_head = DINOHead(dim, out_dim).to(dev)
    teacher, t_head = copy.deepcopy(student).eval(), copy.deepcopy(s_head).eval()
    for p in [*teacher.parameters(), *t_head.parameters()]:
        p.requires_grad_(False)
    loss_fn = DINOLoss(out_dim).to(dev)
    params = [p for p in [*student.parameters(), *s_head.parameters()] if p.requires_grad]
    backbone_groups = _param_groups(student, weight_decay)
    opt = torch.optim.AdamW([*backbone_groups, *_param_groups(s_head, weight_decay)], lr=lr)
    start_epoch, history = 0, []
    if resume:
        start_epoch, history = _resume(ckpt_path, out, backbone, dev, {
            "student": student, "student_head": s_head, "teacher": teacher, "teacher_head": t_head,
            "loss": loss_fn}, opt)
    # Shuffling and the workers' seeds come from the global generator, which the checkpoint
    # saves, so a resumed run draws what an uninterrupted one would have.
    loader = torch.utils.data.DataLoader(
        _Views(files, MultiCrop(base, n_local)), batch_size=min(batch_size, len(files)), shuffle=True,
        drop_last=True, num_workers=n_workers, collate_fn=_stack_views, pin_memory=dev.startswith("cuda"))
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * epochs
    head_steps = int(head_warmup * total_steps)
    t0 = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        losses = []
        for step, views in enumerate(track(loader, f"adapt epoch {epoch + 1}/{epochs}", total=steps_per_epoch)):
            it = epoch * steps_per_epoch + step
            stacked = [v.to(dev, non_blocking=True) for v in views]
            with torch.no_grad():
                t_out = [t_head(_pooled(teacher, x)) for x in stacked[:2]]
            head_only = it < head_steps
            with torch.set_grad_enabled(not head_only):  # the frozen backbone needs no graph
                features = [_pooled(student, x) for x in stacked]
            s_out = [s_head(f) for f in features]
            loss = loss_fn(s_out, t_out)
            factor = backbone_lr_factor(it, total_steps, head_steps)
            head_factor = 0.01 + 0.99 * (math.cos(math.pi * it / total_steps) + 1) / 2
            for i, group in enumerate(opt.param_groups):
                group["lr"] = lr * factor if i < len(backbone_groups) else head_lr * head_factor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 3.0)
            opt.step()
            m = 1 - (1 - momentum) * (math.cos(math.pi * it / total_steps) + 1) / 2  # cosine to 1
            _ema_update((teacher, t_head), (student, s_head), m)
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
        _save(out, base, teacher, {
            "backbone": backbone, "epoch": epoch + 1, "history": history, "student": student.state_dict(),
            "student_head": s_head.state_dict(), "teacher": teacher.state_dict(), "teacher_head": t_head.state_dict(),
            "loss": loss_fn.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
        }, training={"method": "DINO self-distillation", "unlabeled": str(Path(unlabeled_dir).resolve()),
                     "n_images": len(files), "epochs": epoch + 1, "batch_size": batch_size, "local_crops": n_local,
                     "lr": lr, "head_lr": head_lr, "head_warmup_steps": head_steps,
                     "batchnorm_stats": "frozen", "ema_momentum": momentum, "loss_per_epoch": history, "device": dev,
                     "crop_workers": n_workers,
                     "base_backbone": backbone, "base_weights": base.cfg.weights_source})
    return {"out": str(out), "epochs": len(history), "loss_per_epoch": history, "n_images": len(files),
            "device": dev, "crop_workers": n_workers, "seconds": time.perf_counter() - t0}


def _save(out: Path, base: Backbone, teacher: nn.Module, state: dict[str, Any], training: dict[str, Any]) -> None:
    """Write the teacher as a backbone directory plus the resumable checkpoint, atomically."""
    from fabsight.backbones import BackboneConfig

    cfg = BackboneConfig.from_dict(base.cfg.to_dict())
    cfg.name = str(out.resolve())
    cfg.weights_source = f"DINO-adapted from {base.cfg.name} ({base.cfg.weights_source}) on {training['unlabeled']}"
    adapted = Backbone(copy.deepcopy(teacher).cpu(), cfg)
    with atomic_dir(out) as tmp:
        save_backbone_dir(tmp, adapted, training=training)
        torch.save(state, tmp / CHECKPOINT)

