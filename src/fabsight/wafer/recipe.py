"""The training recipe behind ``fabsight wafer train``: labelled sources → fitted classifier.

Reading several labelled sources (folders, LSWMD pickles, MixedWM38 .npz, any format
:mod:`fabsight.io` reads), agreeing on one spelling per class across them, adding
generated maps when asked, and choosing the estimator's settings live here so the CLI
only parses and prints, and a notebook or a batch job trains the same model.

Problems with the data are one-line :class:`~fabsight.errors.FabsightError` naming the
file, or a Python warning (the CLI prints it as one ``warning:`` line): a model is never
trained silently on something other than what the user meant.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fabsight.errors import FabsightError
from fabsight.io import ReadLog
from fabsight.types import MIXEDWM38_LABELS, WM811K_CLASSES, WaferMap
from fabsight.wafer.classifier import (
    FEW_SHOT_MAX_PER_CLASS,
    SYNTH_SHAPES,
    WaferClassifier,
    label_tuple,
    load_model,
)
from fabsight.wafer.pretrained import PRETRAINED_DIR, PRETRAINED_NAME, pretrained_dir, resolve_model

#: What ``Recipe.init`` (``--init``) takes for "no start model: train from scratch".
SCRATCH = "none"
#: The network size the shipped model has: a recipe asking for another one trains from scratch.
SHIPPED_ARCH = "compact"

#: Epochs when the user names none.
DEFAULT_EPOCHS = 15
#: Gradient steps (batches of 64) a network trained from scratch gets at least when the
#: user names no epoch count: a small set's 15 epochs are a few hundred to a few thousand
#: steps, and under-train (MixedWM38 20 %, 7,602 maps: 15 epochs = 1,785 steps, exact match
#: 0.87 with the old patience rule; 4,005 steps: 0.96, still rising at the end). Large
#: sets reach it anyway (WM-811K's 37k maps: 8,760 steps), so they are unchanged.
SCRATCH_MIN_STEPS = 4000

#: Class names a differently spelt label is mapped onto first (``Edge_Loc`` → ``Edge-Loc``).
KNOWN_NAMES: tuple[str, ...] = (*WM811K_CLASSES, *MIXEDWM38_LABELS)


@dataclass
class LabelledSource:
    """The labelled maps of one file or folder, with what was left out and its format."""

    path: Path
    maps: list[WaferMap]
    n_unlabelled: int
    format: str

    def describe(self) -> str:
        return f"{self.path} ({self.format}: {len(self.maps)} labelled maps, {self.n_unlabelled} unlabelled ignored)"


def read_all(path: str | Path, log: ReadLog | None = None) -> tuple[list[WaferMap], str]:
    """Every map of ``path`` (a file or folder in any format :mod:`fabsight.io` reads) and
    the format; a source without one map is an error, naming it.

    Reader warnings (an empty class folder) pass through. With a lenient ``log``,
    unreadable files of a folder are recorded there and the rest is read.
    """
    from fabsight.io import detect_format, read_maps

    path = Path(path)
    fmt = detect_format(path)
    log = log if log is not None else ReadLog(strict=True)
    maps = read_maps(path, log=log)
    if not maps:
        raise log.nothing_read(path, "holds no wafer maps")
    return maps, fmt


def read_labelled(path: str | Path, log: ReadLog | None = None) -> LabelledSource:
    """Labelled maps of ``path`` (see :func:`read_all`)."""
    maps, fmt = read_all(path, log)
    labelled = [m for m in maps if m.labels]
    return LabelledSource(Path(path), labelled, len(maps) - len(labelled), fmt)


def read_unlabeled(paths: Sequence[str | Path], log: ReadLog | None = None) -> tuple[list[WaferMap], list[str]]:
    """Every map of ``paths`` for self-training, labels dropped (a labelled file may serve as
    unlabelled data: its labels are not used), and one description per source."""
    maps: list[WaferMap] = []
    described = []
    for p in paths:
        found, fmt = read_all(p, log)
        maps += [replace(m, labels=()) for m in found]
        described.append(f"{p} ({fmt}: {len(found)} maps used unlabelled)")
    return maps, described


def name_key(name: str) -> str:
    """What two spellings of one class share: case, spaces, ``_`` and ``-`` ignored."""
    return re.sub(r"[\s_\-]+", "", name).casefold()


def _spellings(source: LabelledSource) -> dict[str, str]:
    """Each class-name key of one source → its spelling there; two spellings of one key
    in the same source are two classes the user may mean apart: refused."""
    seen: dict[str, str] = {}
    for m in source.maps:
        for label in m.labels:
            for part in label.split("+"):
                other = seen.setdefault(name_key(part), part)
                if other != part:
                    raise FabsightError(
                        source.path,
                        f"class names {other!r} and {part!r} differ only in case, spaces, '_' or '-': "
                        "rename one (merge them or tell them apart)",
                    )
    return seen


def harmonise(sources: Sequence[LabelledSource], preferred: Sequence[str] = KNOWN_NAMES) -> list[str]:
    """Give every class one spelling across ``sources`` (in place); returns what was renamed.

    A label whose :func:`name_key` matches a ``preferred`` name takes that name; otherwise
    the first spelling met wins. Parts of ``A+B`` mixed labels are renamed one by one.
    """
    canonical = {name_key(n): n for n in reversed(preferred)}  # first of equal keys wins
    per_source = [_spellings(s) for s in sources]
    for spellings in per_source:
        for key, spelling in spellings.items():
            canonical.setdefault(key, spelling)
    renamed = []
    for source, spellings in zip(sources, per_source, strict=True):
        mapping = {sp: canonical[key] for key, sp in spellings.items() if canonical[key] != sp}
        if not mapping:
            continue
        renamed.append(f"{source.path}: " + ", ".join(f"{a} -> {b}" for a, b in sorted(mapping.items())))
        source.maps = [
            replace(m, labels=tuple("+".join(mapping.get(p, p) for p in lab.split("+")) for lab in m.labels))
            for m in source.maps
        ]
    return renamed


def read_sources(
    paths: Sequence[str | Path], what: str = "training", log: ReadLog | None = None
) -> list[LabelledSource]:
    """Read labelled sources; a source without one labelled map is refused, since passing
    unlabelled data as labelled is a mistake that would otherwise vanish in the mix."""
    sources = [read_labelled(p, log) for p in paths]
    for s in sources:
        if not s.maps:
            raise FabsightError(s.path, f"no labelled maps ({s.n_unlabelled} unlabelled): not usable as {what} data")
        if s.n_unlabelled:
            warnings.warn(f"{s.path}: {s.n_unlabelled} unlabelled maps ignored for supervised training", stacklevel=2)
    return sources


def _is_multilabel(sources: Sequence[LabelledSource], maps: Sequence[WaferMap]) -> bool:
    return any(s.format == "mixedwm38" for s in sources) or any(len(label_tuple(m.labels)) > 1 for m in maps)


@dataclass
class Recipe:
    """Settings of :func:`train` beyond the data (the CLI's options, with its defaults)."""

    synthetic: int = 0
    #: Generator profile of the synthetic maps (``fabsight.synth.PROFILES``); ``None``:
    #: ``wm811k`` for single-label data, ``default`` for multi-label.
    synthetic_profile: str | None = None
    review_per_class: int = 40
    #: ``None``: :data:`DEFAULT_EPOCHS`, lengthened to :data:`SCRATCH_MIN_STEPS` steps in
    #: all when training from scratch; a number: exactly that many epochs.
    epochs: int | None = None
    input_size: int | None = None
    #: Where training starts: a model directory, ``"pretrained"`` (the shipped WM-811K model),
    #: ``"none"`` (:data:`SCRATCH`: from scratch), or ``None``: decided by :func:`choose_start`.
    init: str | os.PathLike[str] | None = None
    head: str = "auto"
    multilabel: bool | None = None
    seed: int = 0
    threads: int = 2
    arch: str = SHIPPED_ARCH
    device: str = "cpu"
    max_minutes: float | None = None
    class_balance: str | None = None
    #: Share of the training maps held out (stratified) when no ``val`` is given;
    #: ``None`` takes the estimator's default.
    validation_fraction: float | None = None
    #: Sources of maps without labels to self-train on (``--unlabeled``; labels in them are ignored).
    unlabeled: tuple[Path, ...] = ()
    #: Self-training rounds and the least calibrated confidence of a pseudo-label.
    rounds: int = 1
    pseudo_threshold: float = 0.9


def _given_init(init: str | os.PathLike[str] | None) -> Path | None:
    """The start model ``init`` names, resolved (``pretrained`` → the shipped one); ``None``
    when it names none (not given, or :data:`SCRATCH`)."""
    if init is None or str(init) == SCRATCH:
        return None
    return resolve_model(init)


def choose_start(recipe: Recipe, maps: Sequence[WaferMap], multilabel: bool) -> tuple[Path | None, str]:
    """Where training on ``maps`` starts, and why in one line (the card's ``training.start``).

    ``recipe.init`` decides when given. Without it, single-label data whose rarest class has
    at most :data:`~fabsight.wafer.classifier.FEW_SHOT_MAX_PER_CLASS` maps starts from the
    shipped WM-811K model: a handful of maps per class cannot train a network, but they can
    adapt one that already knows wafer patterns. Multi-label data (the shipped model is
    single-label) and a recipe asking for another network (``arch``, ``input_size``) start
    from scratch.
    """
    given = _given_init(recipe.init)
    if given is not None:
        return given, f"from {recipe.init} (--init)"
    if recipe.init is not None:
        return None, f"from scratch (--init {SCRATCH})"
    rarest = min(Counter(m.labels[0] for m in maps).values(), default=0)
    own_net = recipe.arch != SHIPPED_ARCH or recipe.input_size is not None
    if multilabel or own_net or not maps or rarest > FEW_SHOT_MAX_PER_CLASS:
        return None, "from scratch"
    return pretrained_dir(), (
        f"from the shipped WM-811K model ({PRETRAINED_NAME}): few-shot data, the rarest class has {rarest} "
        f"maps (<= {FEW_SHOT_MAX_PER_CLASS}); --init {SCRATCH} trains from scratch"
    )


def schedule(recipe: Recipe, init: Path | None) -> dict[str, int]:
    """The estimator's ``epochs`` and ``min_steps`` for a recipe starting from ``init``
    (:func:`choose_start`): an epoch count the user gave is kept as is; otherwise
    :data:`DEFAULT_EPOCHS`, and from scratch (``init`` None) at least
    :data:`SCRATCH_MIN_STEPS` gradient steps, since a few hundred maps' 15 epochs would be a
    few hundred steps whatever the data."""
    if recipe.epochs is not None:
        return {"epochs": recipe.epochs, "min_steps": 0}
    return {"epochs": DEFAULT_EPOCHS, "min_steps": SCRATCH_MIN_STEPS if init is None else 0}


def _synthetic(
    recipe: Recipe, maps: list[WaferMap], multilabel: bool, where: Path | None
) -> tuple[list[WaferMap], list[WaferMap] | None, list[str]]:
    """Generated training maps of the data's classes, the harder review maps, and their description."""
    from fabsight.synth import MIXED_COMBINATIONS, generate_dataset
    from fabsight.wafer.review import shifted_maps

    if multilabel:
        wanted = {label_tuple(m.labels) for m in maps}
        classes: list = [c for c in MIXED_COMBINATIONS if not maps or c in wanted]
    else:
        wanted_single = {m.labels[0] for m in maps}
        classes = [c for c in WM811K_CLASSES if not maps or c in wanted_single]
    if not classes:
        raise FabsightError(where, "--synthetic: none of the data's classes is a pattern the generator knows")
    n, seed = recipe.synthetic, recipe.seed
    profile = recipe.synthetic_profile or ("default" if multilabel else "wm811k")
    # The default profile's one 52x52 grid suits tests; a model must meet every die pitch.
    shapes = SYNTH_SHAPES if profile == "default" else None
    generated = generate_dataset(n, shapes=shapes, classes=classes, mixed=multilabel, seed=seed, profile=profile)
    described = [
        f"{n} synthetic maps per class x {len(classes)} classes (fabsight.synth, {profile} profile, seed {seed})"
    ]
    review = None
    if recipe.review_per_class > 0:
        # Harder maps of the same classes (another seed) set the review threshold; maps
        # like the training ones would leave it at its floor.
        review = shifted_maps(recipe.review_per_class, classes, mixed=multilabel, seed=seed + 1)
        described.append(f"review threshold on {len(review)} shifted synthetic maps (fabsight.wafer.review)")
    return generated, review, described


def train(
    data: Sequence[str | Path],
    val: str | Path | None = None,
    recipe: Recipe | None = None,
    *,
    log: ReadLog | None = None,
) -> WaferClassifier:
    """Fit a wafer-pattern classifier on every labelled map of ``data`` (any number of
    sources, any formats), early-stopped and calibrated on ``val`` when given, self-trained
    on the maps of ``recipe.unlabeled`` when given (see :class:`WaferClassifier` ``rounds``).

    Class names are harmonised across the sources and ``val`` (:func:`harmonise`; each
    renaming is a warning). ``recipe.class_balance=None`` takes the estimator's default.
    Where training starts (``recipe.init``, or the shipped model for few-shot data: see
    :func:`choose_start`) is recorded in ``training_["start"]``.
    """
    from fabsight.wafer.net import ARCHITECTURES

    recipe = recipe or Recipe()
    if recipe.arch not in ARCHITECTURES:
        raise FabsightError(None, f"--arch must be one of {', '.join(ARCHITECTURES)}, got {recipe.arch!r}")
    if not data and recipe.synthetic <= 0:
        raise FabsightError(None, "give training DATA, --synthetic N, or both")
    sources = read_sources(data, log=log)
    unlabeled, described_unlabeled = read_unlabeled(recipe.unlabeled, log) if recipe.unlabeled else (None, [])
    val_source = read_sources([val], "validation", log)[0] if val is not None else None
    for line in harmonise(sources + ([val_source] if val_source else [])):
        warnings.warn(f"class names harmonised: {line}", stacklevel=2)
    maps = [m for s in sources for m in s.maps]
    described = [s.describe() for s in sources]
    given = _given_init(recipe.init)
    multilabel = recipe.multilabel
    if multilabel is None:
        multilabel = load_model(given).multilabel if given is not None and not maps else None
        multilabel = _is_multilabel(sources, maps) if multilabel is None else multilabel
    review = None
    if recipe.synthetic > 0:
        generated, review, more = _synthetic(recipe, maps, multilabel, sources[0].path if sources else None)
        maps, described = maps + generated, described + more
    if val_source is not None:
        described.append(f"validation: {val_source.describe()}")
    described += [f"unlabelled: {d}" for d in described_unlabeled]
    init, start = choose_start(recipe, maps, multilabel)
    widths, embed_dim = ARCHITECTURES[recipe.arch]
    clf = WaferClassifier(
        input_size=recipe.input_size or 64,
        multilabel=multilabel,
        widths=widths,
        embed_dim=embed_dim,
        **schedule(recipe, init),
        init=init,
        head=recipe.head,
        n_threads=recipe.threads,
        device=recipe.device,
        random_state=recipe.seed,
        max_minutes=recipe.max_minutes,
        rounds=recipe.rounds,
        pseudo_threshold=recipe.pseudo_threshold,
    )
    if recipe.class_balance is not None:
        clf.set_params(class_balance=recipe.class_balance)
    if recipe.validation_fraction is not None:
        clf.set_params(validation_fraction=recipe.validation_fraction)
    try:
        clf.fit(
            maps,
            data="; ".join(described),
            review_maps=review,
            val_maps=val_source and val_source.maps,
            unlabeled=unlabeled,
        )
    except ValueError as exc:  # parameter combinations the user chose (e.g. --head probe without --init)
        raise FabsightError(None, str(exc)) from None
    if init == PRETRAINED_DIR:  # the card names it, not where this install keeps it
        clf.training_["init"] = PRETRAINED_NAME
    clf.training_["start"] = start
    return clf
