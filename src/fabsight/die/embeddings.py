"""Batched, cached embedding extraction.

Embedding a few thousand die images on a tool PC's CPU takes minutes; every experiment
(probe, layer choice, label budget, clustering) reuses them. Each image's vectors are
cached on disk per layer, keyed by (image content hash, backbone name + weights hash +
input size + preprocessing, augmentation), so asking for other layers only computes what
is missing and a rerun costs a file read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fabsight.die.data import augment, read_image
from fabsight.utils.atomic import atomic_path
from fabsight.utils.cache import cache_dir
from fabsight.utils.progress import track

if TYPE_CHECKING:  # the ONNX runtime embeds through this module without importing torch
    from fabsight.backbones import Backbone

Item = str | os.PathLike[str] | np.ndarray


def content_key(item: Item) -> str:
    """Hash of a file's bytes or an array's pixels (shape included)."""
    h = hashlib.sha256()
    if isinstance(item, np.ndarray):
        h.update(str((item.shape, item.dtype.str)).encode())
        h.update(np.ascontiguousarray(item).tobytes())
    else:
        with open(item, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:32]


def load_item(item: Item, augmentation: str | None = None) -> np.ndarray:
    img = item if isinstance(item, np.ndarray) else read_image(item)
    return augment(img, augmentation) if augmentation else img


class _VectorCache:
    """One ``.npz`` per (image, namespace) holding a vector per layer name."""

    def __init__(self, root: Path | None, namespace: str) -> None:
        self.root = None if root is None else Path(root) / hashlib.sha256(namespace.encode()).hexdigest()[:20]
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            marker = self.root / "namespace.txt"
            if not marker.exists():
                with atomic_path(marker) as tmp:
                    tmp.write_text(namespace + "\n", encoding="utf-8")

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str, names: Sequence[str]) -> dict[str, np.ndarray] | None:
        if self.root is None:
            return None
        p = self._path(key)
        if not p.is_file():
            return None
        try:
            with np.load(p) as z:
                if all(n in z.files for n in names):
                    return {n: z[n] for n in z.files}
        except (OSError, ValueError, EOFError):  # a damaged cache entry is recomputed
            return None
        return None

    def put(self, key: str, vectors: dict[str, np.ndarray]) -> None:
        if self.root is None:
            return
        p = self._path(key)
        merged = dict(vectors)
        if p.is_file():
            try:
                with np.load(p) as z:
                    merged = {**{n: z[n] for n in z.files}, **vectors}
            except (OSError, ValueError, EOFError):
                pass
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **merged)


def cached_vectors(
    items: Sequence[Item],
    names: Sequence[str],
    compute: Callable[[list[np.ndarray]], dict[str, np.ndarray]],
    *,
    namespace: str,
    cache: str | os.PathLike[str] | None,
    batch_size: int,
    augmentation: str | None,
    description: str,
) -> dict[str, np.ndarray]:
    """Per-image vectors for ``names`` (N×D_name each), computing only cache misses, in batches."""
    store = _VectorCache(None if cache is None else Path(cache), namespace)
    keys = [content_key(it) + (f"-{augmentation}" if augmentation else "") for it in items]
    results: list[dict[str, np.ndarray] | None] = [store.get(k, names) for k in keys]
    missing = [i for i, r in enumerate(results) if r is None]
    batches = [missing[i:i + batch_size] for i in range(0, len(missing), batch_size)]
    for batch in track(batches, description, total=len(batches)):
        images = [load_item(items[i], augmentation) for i in batch]
        out = compute(images)
        for row, i in enumerate(batch):
            vec = {n: out[n][row] for n in names}
            store.put(keys[i], vec)
            results[i] = vec
    if not items:
        return {n: np.zeros((0, 0), np.float32) for n in names}
    return {n: np.stack([r[n] for r in results]).astype(np.float32) for n in names}  # type: ignore[index]


def default_cache() -> Path:
    return cache_dir() / "embeddings"


def extract(
    backbone: Backbone,
    paths_or_images: Sequence[Item],
    batch_size: int = 32,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    layers: Sequence[str] | None = None,
    augmentation: str | None = None,
) -> np.ndarray:
    """N×D embeddings (``backbone.embed`` over ``layers``, concatenated in order), cached per layer.

    ``cache_dir=None`` disables the cache; pass :func:`default_cache` for the usual place.
    """
    layers = tuple(layers or backbone.cfg.default_layers)
    per_layer = extract_layers(backbone, paths_or_images, layers, batch_size, cache_dir, augmentation=augmentation)
    return np.concatenate([per_layer[n] for n in layers], axis=1)


def extract_layers(
    backbone: Backbone,
    paths_or_images: Sequence[Item],
    layers: Sequence[str],
    batch_size: int = 32,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    augmentation: str | None = None,
) -> dict[str, np.ndarray]:
    """Each layer's N×D block separately; one forward pass serves all layers of a batch."""
    layers = tuple(layers)
    widths = [backbone.embed_dim_for([name]) for name in layers]

    def one_pass(images: list[np.ndarray]) -> dict[str, np.ndarray]:
        raw = np.asarray(backbone.embed(backbone.preprocess(images), layers))  # torch tensor or ONNX array
        bounds = np.cumsum([0, *widths])
        return {name: raw[:, bounds[i]:bounds[i + 1]] for i, name in enumerate(layers)}

    return cached_vectors(
        paths_or_images, layers, one_pass, namespace=f"embed|{backbone.fingerprint()}",
        cache=cache_dir, batch_size=batch_size, augmentation=augmentation,
        description=f"embedding with {backbone.cfg.name}",
    )
