"""Grouping copies: equal keys, close 64-bit hashes and close embeddings, without O(n²) loops.

- Exact copies: records sharing a key (byte hash, decoded-pixel hash) are found by sorting.
- Perceptual near copies: two 64-bit hashes within Hamming distance ``t`` agree exactly on
  at least one of ``t + 1`` disjoint bit bands (pigeonhole), so candidate pairs come from
  per-band buckets (sort + equal runs) and only those candidates are checked with a popcount.
  Every pair within ``t`` is found; the work grows with the bucket sizes, not n². 64 bits
  are coarse for sparse pictures (a small blob centred on a blank crop hashes alike
  whatever its shape), so a hash match is confirmed by the correlation of 32×32 thumbnails.
- Embedding near copies: a radius query on L2-normalised vectors (scikit-learn's
  NearestNeighbors, cosine ≥ ``s`` ⇔ Euclidean distance ≤ √(2 − 2s)).

Pairs are merged into groups with a union-find, so A≈B and B≈C end in one group.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence

import numpy as np


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return int(i)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        """Sets with more than one member, each sorted, ordered by their first member."""
        roots = np.array([self.find(i) for i in range(len(self.parent))])
        order = np.argsort(roots, kind="stable")
        bounds = np.flatnonzero(np.diff(roots[order])) + 1
        return [sorted(g.tolist()) for g in np.split(order, bounds) if len(g) > 1]


def equal_key_groups(keys: Sequence[Hashable | None]) -> list[list[int]]:
    """Indices sharing a key (``None`` keys never group)."""
    by_key: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        if k is not None:
            by_key.setdefault(k, []).append(i)
    return sorted((g for g in by_key.values() if len(g) > 1), key=lambda g: g[0])


def _popcount64(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def hamming_pairs(hashes: Sequence[int], threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(i, j)``, ``i < j``, of 64-bit hashes at Hamming distance ≤ ``threshold`` → (pairs, distances)."""
    h = np.asarray([int(x) for x in hashes], dtype=np.uint64)
    n_bands = threshold + 1
    edges = np.linspace(0, 64, n_bands + 1).astype(int)
    cand: list[np.ndarray] = []
    for lo, hi in itertools.pairwise(edges):
        band = (h >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        sb = band[order]
        starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
        sizes = np.diff(np.r_[starts, len(sb)])
        for s, m in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            members = order[s:s + m]
            a, b = np.triu_indices(m, 1)
            cand.append(np.stack([members[a], members[b]], axis=1))
    if not cand:
        return np.zeros((0, 2), int), np.zeros(0, int)
    pairs = np.unique(np.sort(np.concatenate(cand), axis=1), axis=0)
    dist = _popcount64(h[pairs[:, 0]] ^ h[pairs[:, 1]])
    ok = dist <= threshold
    return pairs[ok], dist[ok]


def pair_correlation(thumbs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Pearson correlation of the two thumbnails of each pair (brightness and contrast do not count)."""
    t = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    t -= t.mean(axis=1, keepdims=True)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-6)
    return (t[pairs[:, 0]] * t[pairs[:, 1]]).sum(axis=1) if len(pairs) else np.zeros(0, np.float32)


def cosine_pairs(X: np.ndarray, min_similarity: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of rows with cosine similarity ≥ ``min_similarity`` → (pairs, similarities)."""
    from sklearn.neighbors import NearestNeighbors

    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    radius = float(np.sqrt(max(0.0, 2.0 - 2.0 * min_similarity)))
    nn = NearestNeighbors(radius=radius).fit(Z)
    dist, idx = nn.radius_neighbors(Z, return_distance=True, sort_results=False)
    rows = np.repeat(np.arange(len(Z)), [len(i) for i in idx])
    cols = np.concatenate(idx) if len(idx) else np.zeros(0, int)
    d = np.concatenate(dist) if len(dist) else np.zeros(0)
    keep = rows < cols
    pairs = np.stack([rows[keep], cols[keep]], axis=1).astype(int)
    return pairs, 1.0 - d[keep] ** 2 / 2.0


def pair_groups(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components (size > 1) of the pair graph."""
    uf = UnionFind(n)
    for a, b in pairs:
        uf.union(int(a), int(b))
    return uf.groups()
