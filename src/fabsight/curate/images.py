"""Health checks for die-image folders before training (or self-supervised adaptation).

One streaming pass reads every file (:func:`fabsight.curate.features.read_record`); the
checks then work on those small records:

- unreadable files (PIL verify + full decode), unusual modes and tiny images;
- copies: equal bytes, equal decoded pixels, perceptual hash within ``phash_distance``
  bits and, with a backbone, embedding cosine ≥ ``cosine``; each group keeps one copy;
- label conflicts (one picture under two labels: every copy is dropped, the right label
  is unknown) and leakage (one picture in two splits: the later split's copy is dropped);
- blur (variance of the Laplacian) and low information (intensity entropy) below the
  data's own robust threshold, and blank frames (intensity std < ``blank_std``);
- with a backbone, outliers whose distance to the nearest class centroid (unlabelled data:
  mean distance to the ``k`` nearest images) is above the data's own robust threshold
  ("irrelevant" images: another product, a lens cap).

Nothing is deleted: the result is a manifest (``keep`` and reasons per file).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fabsight.curate.dedup import cosine_pairs, hamming_pairs, pair_correlation, pair_groups
from fabsight.curate.features import MEASURE_SIDE, ImageRecord, read_record
from fabsight.curate.scan import Entry, scan, split_rank
from fabsight.curate.stats import balance, robust_threshold
from fabsight.utils.progress import track

#: Checks whose flag removes the file from the cleaned set; the others only ask for a look.
DROP_CHECKS = frozenset({"unreadable", "duplicate", "label_conflict", "leakage", "blurry", "blank", "outlier"})

KEEP_RULE = ("in each group of copies the kept one is: in the earliest split (train before val before test), "
             "then the most pixels, then the largest file (least compressed), then the first by path; "
             "a group whose copies carry different labels keeps none (label conflict)")


@dataclass
class CurateOptions:
    """Thresholds; each is explained in the manifest's ``thresholds`` section."""

    phash_distance: int | None = 6  # None: no perceptual-hash matching (embeddings only)
    min_correlation: float = 0.98
    cosine: float = 0.99
    blur_k: float = 3.0
    entropy_k: float = 3.0
    outlier_k: float = 3.0
    blank_std: float = 2.0
    min_side: int = 16
    knn: int = 5


def _flag(flags: list[dict[str, Any]], check: str, detail: str, **extra: Any) -> None:
    flags.append({"check": check, "drop": check in DROP_CHECKS, "detail": detail, **extra})


def _keeper(members: list[int], entries: Sequence[Entry], recs: Sequence[ImageRecord]) -> int:
    return min(members, key=lambda i: (split_rank(entries[i].split), -recs[i].pixels, -recs[i].size,
                                       str(entries[i].path)))


def _copy_groups(entries: Sequence[Entry], recs: Sequence[ImageRecord], ok: np.ndarray,
                 opts: CurateOptions, embeddings: np.ndarray | None) -> list[dict[str, Any]]:
    """Groups of copies (any evidence), each with its keeper and how close the copies are."""
    idx = np.flatnonzero(ok)
    links: list[np.ndarray] = []
    by_pixels: dict[str, int] = {}
    for i in idx:
        j = by_pixels.setdefault(recs[i].pixel_sha, int(i))
        if j != i:
            links.append(np.array([[j, i]]))
    ph = np.zeros((0, 2), int)
    if opts.phash_distance is not None:
        ph, _ = hamming_pairs([recs[i].phash for i in idx], opts.phash_distance)
    if len(ph):
        ph = ph[pair_correlation(np.stack([recs[i].thumb for i in idx]), ph) >= opts.min_correlation]
    links.append(idx[ph])
    if embeddings is not None:
        ep, _ = cosine_pairs(embeddings, opts.cosine)
        links.append(idx[ep])
    pairs = np.concatenate(links) if links else np.zeros((0, 2), int)
    groups = []
    ph_linked = set(idx[ph].ravel().tolist())  # both ends of a pHash link lie in the same group
    for members in pair_groups(len(recs), pairs):
        keep = _keeper(members, entries, recs)
        if len({recs[i].bytes_sha for i in members}) == 1:
            kind = "exact_bytes"
        elif len({recs[i].pixel_sha for i in members}) == 1:
            kind = "exact_pixels"
        elif ph_linked.intersection(members):
            kind = "near_phash"
        else:
            kind = "near_embedding"
        labels = sorted({str(entries[i].label) for i in members})
        splits = sorted({str(entries[i].split) for i in members})
        groups.append({"members": members, "keep": keep, "kind": kind,
                       "label_conflict": len(labels) > 1, "leakage": len(splits) > 1,
                       "labels": labels, "splits": splits})
    return groups


def _embed(entries: Sequence[Entry], ok: np.ndarray, backbone: str, device: str, input_size: int | None) -> np.ndarray:
    from fabsight.backbones import create_backbone
    from fabsight.die.embeddings import default_cache, extract

    bb = create_backbone(backbone, device=device, input_size=input_size)
    return extract(bb, [entries[i].path for i in np.flatnonzero(ok)], 32, default_cache())


def _outliers(X: np.ndarray, labels: Sequence[str | None], k: int, thr_k: float, reference: np.ndarray
              ) -> tuple[np.ndarray, dict[str, Any] | None, str]:
    """An outlier score per row, its robust upper threshold, and how the score was measured.

    The threshold's median and MAD come from the ``reference`` rows only (boolean mask: the
    sharp ones), so blurry frames, which sit far from everything, do not widen the spread.

    Labelled data: cosine distance to the nearest class centroid ("far from every class").
    A group of foreign images (another product) is its own tight neighbourhood, so a kNN
    distance misses it once it outnumbers ``k``; the class centroids do not move much for
    it. Unlabelled data has no centroids: mean cosine distance to the ``k`` nearest rows.
    """
    from sklearn.neighbors import NearestNeighbors

    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    lab = np.array([str(x) for x in labels])
    if all(x is not None for x in labels):
        C = np.stack([Z[lab == c].mean(axis=0) for c in sorted(set(lab))])
        C /= np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
        score, how = 1.0 - (Z @ C.T).max(axis=1), "cosine distance to the nearest class centroid"
    else:
        kk = min(k + 1, len(Z))
        d, _ = NearestNeighbors(n_neighbors=kk).fit(Z).kneighbors(Z)
        score, how = (d[:, 1:] ** 2 / 2.0).mean(axis=1), f"mean cosine distance to the {k} nearest images"
    # Linear, not log space: the distances are bounded and most sit near their centroid, and a
    # log stretches those small values so much that its MAD hid every foreign image planted in
    # the real magnetic-tile and DeepPCB sets (docs/benchmarks.md, "Dataset curation").
    return score, robust_threshold(score[reference], thr_k, side="high", log=False), how


def _flag_basic(flags: list[list[dict[str, Any]]], recs: Sequence[ImageRecord], opts: CurateOptions) -> None:
    """Unreadable files, files whose mode differs from the set's usual one, and tiny pictures."""
    modes = Counter(r.mode for r in recs if r.error is None)
    usual = modes.most_common(1)[0][0] if modes else ""
    for i, r in enumerate(recs):
        if r.error:
            _flag(flags[i], "unreadable", r.error)
            continue
        if r.mode != usual:
            _flag(flags[i], "odd_mode", f"mode {r.mode}; most files are {usual} "
                                        f"({modes[usual]} of {sum(modes.values())})")
        if min(r.width, r.height) < opts.min_side:
            _flag(flags[i], "tiny", f"{r.width}×{r.height} px (< {opts.min_side} px side)")


def _flag_copies(flags: list[list[dict[str, Any]]], entries: Sequence[Entry], groups: list[dict[str, Any]]) -> None:
    """Label conflicts, split leakage and duplicates, each pointing at the group's keeper."""
    for gi, g in enumerate(groups):
        keeper = entries[g["keep"]].path
        for i in g["members"]:
            if g["label_conflict"]:
                _flag(flags[i], "label_conflict", f"the same picture is labelled {', '.join(g['labels'])}", group=gi)
            if i == g["keep"]:
                continue
            if g["leakage"] and entries[i].split != entries[g["keep"]].split:
                _flag(flags[i], "leakage", f"also in split {entries[g['keep']].split}: {keeper}", group=gi)
            _flag(flags[i], "duplicate", f"{g['kind'].replace('_', ' ')} copy of {keeper}", group=gi)


@dataclass
class _Quality:
    """Which readable pictures are blank, and the data-driven blur / entropy thresholds."""

    blank: np.ndarray
    sharpness: np.ndarray
    blur: dict[str, Any] | None
    entropy: dict[str, Any] | None


def _flag_quality(flags: list[list[dict[str, Any]]], recs: Sequence[ImageRecord], ok: np.ndarray,
                  opts: CurateOptions) -> _Quality:
    """Blank, blurry and low-information pictures; blur/entropy limits come from the set itself."""
    blank = ok & np.array([r.std < opts.blank_std for r in recs])
    for i in np.flatnonzero(blank):
        _flag(flags[i], "blank", f"intensity std {recs[i].std:.2f} < {opts.blank_std} grey levels")
    live = ok & ~blank
    sharp = np.array([r.sharpness for r in recs])
    ent = np.array([r.entropy for r in recs])
    blur_t = robust_threshold(sharp[live], opts.blur_k, side="low", log=True)
    ent_t = robust_threshold(ent[live], opts.entropy_k, side="low", log=False)
    if blur_t:
        for i in np.flatnonzero(live & (sharp < blur_t["threshold"])):
            _flag(flags[i], "blurry", f"variance of Laplacian {sharp[i]:.3g} < {blur_t['threshold']:.3g}")
    if ent_t:
        for i in np.flatnonzero(live & (ent < ent_t["threshold"])):
            _flag(flags[i], "low_information", f"intensity entropy {ent[i]:.2f} bits < {ent_t['threshold']:.2f}")
    return _Quality(blank, sharp, blur_t, ent_t)


def _flag_outliers(flags: list[list[dict[str, Any]]], entries: Sequence[Entry], ok: np.ndarray,
                   groups: list[dict[str, Any]], embeddings: np.ndarray, quality: _Quality,
                   opts: CurateOptions) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Embedding outliers → (score per file, NaN where not scored; threshold record or None).

    Outliers are sought among distinct, non-blank pictures: a dropped copy would give its twin
    a distance of 0, and blank frames carry nothing to embed. Blurry frames are scored (a
    foreign image is often blurry next to the set's own) but left out of the median/MAD,
    which they widen.
    """
    score = np.full(len(entries), np.nan)
    dropped_copy = {i for g in groups for i in g["members"] if i != g["keep"]}
    unique = np.array([i for i in np.flatnonzero(ok & ~quality.blank) if i not in dropped_copy], dtype=int)
    if len(unique) <= opts.knn:
        return score, None
    rows_of = {int(i): r for r, i in enumerate(np.flatnonzero(ok))}
    blur_t = quality.blur
    sharp_enough = (quality.sharpness[unique] >= blur_t["threshold"]) if blur_t else np.ones(len(unique), bool)
    s, out_t, how = _outliers(embeddings[[rows_of[int(i)] for i in unique]], [entries[i].label for i in unique],
                              opts.knn, opts.outlier_k, sharp_enough)
    score[unique] = s
    if out_t:
        out_t = {"rule": f"{how} above median + k·MAD of the sharp, distinct, non-blank images", **out_t}
        for i in unique[s > out_t["threshold"]]:
            _flag(flags[i], "outlier", f"{how} {score[i]:.3g} > {out_t['threshold']:.3g}")
    return score, out_t


def _file_rows(entries: Sequence[Entry], recs: Sequence[ImageRecord], flags: list[list[dict[str, Any]]],
               score: np.ndarray) -> list[dict[str, Any]]:
    """One manifest row per file: where it is, whether it is kept, why, and what was measured."""
    files = []
    for i, (e, r) in enumerate(zip(entries, recs, strict=True)):
        row: dict[str, Any] = {"path": str(e.path), "rel": str(e.rel), "split": e.split, "label": e.label,
                               "keep": not any(f["drop"] for f in flags[i]), "flags": flags[i],
                               "bytes_sha256": r.bytes_sha}
        if r.error is None:
            row.update(mode=r.mode, width=r.width, height=r.height, pixel_sha256=r.pixel_sha,
                       phash=f"{r.phash:016x}", sharpness=round(r.sharpness, 4), entropy=round(r.entropy, 4),
                       std=round(r.std, 3))
            if np.isfinite(score[i]):
                row["outlier_score"] = round(float(score[i]), 5)
        files.append(row)
    return files


def _thresholds(opts: CurateOptions, quality: _Quality, backbone: str | None,
                out_t: dict[str, Any] | None) -> dict[str, Any]:
    """Every limit the checks used, with the rule or reason behind it (written to the manifest)."""
    thresholds = {
        "phash_distance": {"value": opts.phash_distance, "why": "64-bit pHash; resized/re-encoded copies differ in "
                           "a few bits, unrelated pictures in about 32"},
        "thumbnail_correlation": {"value": opts.min_correlation, "why": "a pHash match counts only when the 32×32 "
                                  "grey thumbnails also correlate this well (sparse crops share hashes by chance)"},
        "blurry": {"rule": f"log variance of Laplacian (at ≤ {MEASURE_SIDE} px) below median − k·MAD",
                   **(quality.blur or {"threshold": None, "why": "too few images or no spread"})},
        "low_information": {"rule": "intensity entropy below median − k·MAD",
                            **(quality.entropy or {"threshold": None})},
        "blank": {"value": opts.blank_std, "rule": "intensity std below this many grey levels"},
        "tiny": {"value": opts.min_side, "rule": "shorter side below this many pixels"},
    }
    if backbone is not None:
        thresholds["embedding_duplicate"] = {"value": opts.cosine, "rule": f"cosine similarity of {backbone} "
                                             "embeddings at or above this"}
        thresholds["outlier"] = out_t or {"threshold": None, "why": "too few distinct images or no spread"}
    return thresholds


def curate_images(data: Sequence[str | os.PathLike[str]], *, options: CurateOptions | None = None,
                  backbone: str | None = None, device: str = "cpu", input_size: int | None = None) -> dict[str, Any]:
    """Run every image check over the DATA folders → manifest dict (see :mod:`fabsight.curate`).

    ``backbone`` (a registry name or directory) adds the embedding checks; embeddings are
    cached like every other die command's, so a rerun costs a file read per image.
    """
    opts = options or CurateOptions()
    entries = scan(data)
    t0 = time.perf_counter()
    recs = [read_record(e.path) for e in track(entries, "reading images")]
    read_s = time.perf_counter() - t0
    flags: list[list[dict[str, Any]]] = [[] for _ in entries]
    ok = np.array([r.error is None for r in recs])
    _flag_basic(flags, recs, opts)
    embeddings = None
    if backbone is not None and ok.any():
        embeddings = _embed(entries, ok, backbone, device, input_size)
    groups = _copy_groups(entries, recs, ok, opts, embeddings)
    _flag_copies(flags, entries, groups)
    quality = _flag_quality(flags, recs, ok, opts)
    score, out_t = np.full(len(entries), np.nan), None
    if embeddings is not None:
        score, out_t = _flag_outliers(flags, entries, ok, groups, embeddings, quality, opts)
    files = _file_rows(entries, recs, flags, score)
    thresholds = _thresholds(opts, quality, backbone if embeddings is not None else None, out_t)
    return {"data": [str(d) for d in data], **_manifest(entries, files, groups, thresholds, read_s, backbone)}


def _manifest(entries: Sequence[Entry], files: list[dict[str, Any]], groups: list[dict[str, Any]],
              thresholds: dict[str, Any], read_s: float, backbone: str | None) -> dict[str, Any]:
    checks = Counter(f["check"] for row in files for f in row["flags"])
    splits = sorted({e.split for e in entries if e.split}, key=split_rank)
    train_split = splits[0] if splits else None
    kept_counts = Counter(row["label"] for row in files if row["keep"] and row["label"] is not None
                          and row["split"] == train_split)
    all_counts = Counter(e.label for e in entries if e.label is not None and e.split == train_split)
    summary = {
        "files": len(files), "kept": sum(r["keep"] for r in files), "dropped": sum(not r["keep"] for r in files),
        "flagged": dict(sorted(checks.items())), "duplicate_groups": len(groups),
        "duplicate_groups_by_kind": dict(Counter(g["kind"] for g in groups)),
        "label_conflict_groups": sum(g["label_conflict"] for g in groups),
        "leakage_groups": sum(g["leakage"] for g in groups),
        "splits": splits, "read_seconds": round(read_s, 3),
        "images_per_second": round(len(files) / read_s, 1) if read_s > 0 else None,
    }
    return {
        "kind": "images", "backbone": backbone, "keep_rule": KEEP_RULE, "drop_checks": sorted(DROP_CHECKS),
        "summary": summary, "thresholds": thresholds,
        "balance": {"split": train_split, "before": balance(all_counts) if all_counts else None,
                    "after": balance(kept_counts) if kept_counts else None},
        "groups": [{**g, "members": [files[i]["path"] for i in g["members"]], "keep": files[g["keep"]]["path"]}
                   for g in groups],
        "files": files,
    }
