"""Unsupervised discovery: cluster die images to surface defect types nobody has labelled yet.

Embeddings → standardise → PCA (or UMAP) → HDBSCAN (density clusters + noise) or k-means
with k chosen by silhouette. Each cluster is shown by the images nearest its centre on an
HTML contact sheet, so an engineer can name it (Applied Materials: ResNet features +
clustering). When the folder happens to have class sub-folders, agreement with them
(adjusted Rand index, purity) is reported too, which is how the method is checked.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fabsight.errors import FabsightError
from fabsight.utils.atomic import write_text

if TYPE_CHECKING:
    from fabsight.io import ReadLog


def reduce(X: np.ndarray, method: str = "pca", dims: int = 32, seed: int = 0) -> np.ndarray:
    """Standardise, then PCA to at most ``dims`` (or 90 % of the variance), then optionally UMAP.

    No whitening: it would blow the many low-variance (noise) directions up to the size of
    the few that separate defect types, which ruins the distances clustering relies on.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    Xs = StandardScaler().fit_transform(X)
    cap = int(min(dims if method == "pca" else 50, Xs.shape[0] - 1, Xs.shape[1]))
    pca = PCA(n_components=cap, random_state=seed).fit(Xs)
    keep = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), 0.9) + 1)
    Z = pca.transform(Xs)[:, : max(2, min(keep, cap))]
    if method == "pca":
        return Z
    if method != "umap":
        raise FabsightError("--reduce", f"must be pca or umap, got {method!r}")
    import umap

    n_neighbors = int(min(15, len(Z) - 1))
    return umap.UMAP(n_components=min(dims, 10), n_neighbors=n_neighbors, random_state=seed).fit_transform(Z)


def choose_kmeans(Z: np.ndarray, k_range: Sequence[int], seed: int = 0) -> tuple[np.ndarray, int, dict[int, float]]:
    """k-means for each k in ``k_range``; the k with the best silhouette wins."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    scores: dict[int, float] = {}
    best: tuple[float, int, np.ndarray] | None = None
    for k in k_range:
        if not 2 <= k < len(Z):
            continue
        labels = KMeans(n_clusters=k, n_init=5, random_state=seed).fit_predict(Z)
        scores[k] = float(silhouette_score(Z, labels))
        if best is None or scores[k] > best[0]:
            best = (scores[k], k, labels)
    if best is None:
        raise FabsightError(None, f"too few images ({len(Z)}) to cluster")
    return best[2], best[1], scores


def cluster(Z: np.ndarray, method: str = "auto", k_range: Sequence[int] = range(2, 16),
            min_cluster_size: int | None = None, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels (−1 = noise for HDBSCAN) and how they were found.

    ``auto`` tries HDBSCAN and falls back to k-means by silhouette when HDBSCAN finds
    fewer than two clusters or calls more than half the images noise.
    """
    from sklearn.cluster import HDBSCAN

    if method not in ("auto", "hdbscan", "kmeans"):
        raise FabsightError("--method", f"must be auto, hdbscan or kmeans, got {method!r}")
    info: dict[str, Any] = {}
    if method in ("auto", "hdbscan"):
        mcs = min_cluster_size or max(5, len(Z) // 50)
        labels = HDBSCAN(min_cluster_size=mcs).fit_predict(Z)
        n = len(set(labels) - {-1})
        noise = float((labels == -1).mean())
        info = {"method": "hdbscan", "min_cluster_size": mcs, "noise_fraction": noise}
        if method == "hdbscan" or (n >= 2 and noise <= 0.5):
            return labels, info
        info = {"hdbscan_rejected": f"{n} clusters, {noise:.0%} noise"}
    labels, k, scores = choose_kmeans(Z, k_range, seed)
    return labels, {**info, "method": "kmeans", "k": k, "silhouette": scores}


def representatives(Z: np.ndarray, labels: np.ndarray, n: int = 8) -> dict[int, list[int]]:
    """Per cluster, indices of the ``n`` members nearest the cluster mean."""
    reps = {}
    for c in sorted(set(labels.tolist()) - {-1}):
        members = np.flatnonzero(labels == c)
        d = np.linalg.norm(Z[members] - Z[members].mean(axis=0), axis=1)
        reps[c] = members[np.argsort(d)[:n]].tolist()
    return reps


def agreement(labels: np.ndarray, truth: Sequence[str]) -> dict[str, float]:
    """Adjusted Rand index, NMI and purity of clusters against known folder labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t = np.asarray(truth)
    purity = sum(np.unique(t[labels == c], return_counts=True)[1].max() for c in set(labels.tolist())) / len(t)
    return {"adjusted_rand": float(adjusted_rand_score(t, labels)),
            "nmi": float(normalized_mutual_info_score(t, labels)), "purity": float(purity)}


def _thumb(path: Path, size: int = 96) -> str:
    from fabsight.die.data import read_image
    from fabsight.report.thumbs import png_uri

    return png_uri(read_image(path), size)


def contact_sheet(out: str | os.PathLike[str], paths: Sequence[Path], labels: np.ndarray,
                  reps: dict[int, list[int]], title: str) -> None:
    """Self-contained HTML: one row of representative thumbnails per cluster (written atomically)."""
    rows = []
    for c, idx in reps.items():
        size = int((labels == c).sum())
        cells = "".join(f'<figure><img src="{_thumb(paths[i])}" alt="">'
                        f"<figcaption>{html.escape(paths[i].name)}</figcaption></figure>" for i in idx)
        rows.append(f"<section><h2>cluster {c} — {size} images</h2><div class=row>{cells}</div></section>")
    noise = int((labels == -1).sum())
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} .row{{display:flex;flex-wrap:wrap;gap:6px}}
figure{{margin:0;text-align:center;font-size:10px;width:100px}}
img{{image-rendering:pixelated;border:1px solid #ccc}}</style>
</head><body><h1>{html.escape(title)}</h1><p>{len(paths)} images, {len(reps)} clusters, {noise} unclustered.</p>
{''.join(rows)}</body></html>
"""
    write_text(out, doc)


def clustering_quality(Z: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of the clustered (non-noise) points; −1 when there are fewer than two clusters."""
    from sklearn.metrics import silhouette_score

    keep = labels != -1
    if len(set(labels[keep].tolist())) < 2:
        return -1.0
    return float(silhouette_score(Z[keep], labels[keep]))


def stability(Z: np.ndarray, labels: np.ndarray, runs: int = 5, share: float = 0.8, seed: int = 0) -> float:
    """Mean adjusted Rand index between the clustering and k-means (same k) refitted on random
    ``share`` subsamples, on the subsampled points: near 1 when the clusters are a property of the
    data, not of one draw."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    k = len(set(labels.tolist()) - {-1})
    if k < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(runs):
        idx = rng.choice(len(Z), size=max(k + 1, int(share * len(Z))), replace=False)
        sub = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(Z[idx])
        scores.append(adjusted_rand_score(labels[idx], sub))
    return float(np.mean(scores))


def choose_layers(blocks: dict[str, np.ndarray], layer_sets: Sequence[tuple[str, ...]], *, reduce_with: str,
                  method: str, k_range: Sequence[int]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray,
                                                                dict[str, Any], list[dict[str, Any]]]:
    """Cluster each candidate layer set; keep the one whose clusters are best separated (silhouette
    in its own reduced space) with stability as the tie-breaker. Returns layers, Z, labels, how
    they were clustered, and the table of every layer set."""
    table, best = [], None
    for layers in layer_sets:
        Z = reduce(np.concatenate([blocks[n] for n in layers], axis=1), reduce_with)
        labels, info = cluster(Z, method, k_range)
        row = {"layers": list(layers), "n_clusters": len(set(labels.tolist()) - {-1}),
               "silhouette": round(clustering_quality(Z, labels), 4), "stability": round(stability(Z, labels), 4),
               "method": info["method"]}
        table.append(row)
        if best is None or (row["silhouette"], row["stability"]) > (best[0]["silhouette"], best[0]["stability"]):
            best = (row, layers, Z, labels, info)
    assert best is not None
    best[0]["chosen"] = True
    return best[1], best[2], best[3], best[4], table


def export_clusters(out: str | os.PathLike[str], paths: Sequence[Path], labels: np.ndarray,
                    reps: dict[int, list[int]], root: Path) -> dict[str, Any]:
    """``OUT/cluster_NN/`` label folders (symlinks to the images; ``unclustered/`` for noise) and
    ``OUT/review.json``, one item per cluster to name: rename a folder to its defect type and the
    tree trains ``die train`` (Applied Materials: clusters seed supervised learning)."""
    import json

    from fabsight.utils.atomic import atomic_dir

    items = []
    with atomic_dir(out) as tmp:
        for c in sorted(set(labels.tolist())):
            name = "unclustered" if c == -1 else f"cluster_{c:02d}"
            (tmp / name).mkdir()
            members = np.flatnonzero(labels == c)
            for i in members:
                rel = "__".join(paths[i].relative_to(root).parts)  # unique within the folder
                (tmp / name / rel).symlink_to(paths[i].resolve())
            if c != -1:
                items.append({"cluster": int(c), "folder": name, "size": len(members), "name": None,
                              "status": "to_name", "representatives": [str(paths[i]) for i in reps[c]]})
        (tmp / "review.json").write_text(json.dumps({"items": items}, indent=1) + "\n", encoding="utf-8")
    return {"folder": str(out), "items": len(items)}


def discover_folder(
    folder: str | os.PathLike[str],
    *,
    backbone: str = "dinov2_vits14",
    weights: str | os.PathLike[str] | None = None,
    method: str = "auto",
    reduce_with: str = "pca",
    k_range: Sequence[int] = range(2, 16),
    layers: Sequence[str] | None = None,
    html_out: str | os.PathLike[str] | None = None,
    export: str | os.PathLike[str] | None = None,
    input_size: int | None = None,
    device: str = "cpu",
    cache: str | os.PathLike[str] | None = None,
    log: ReadLog | None = None,
) -> dict[str, Any]:
    """Embed every image under ``folder``, cluster, pick representatives, optionally write HTML and
    ``export`` label folders + review items (with a lenient ``log``, every readable image: each other
    one is recorded there). Without ``layers`` the backbone's candidate layer sets
    (:func:`fabsight.die.auto.layer_sets`) are each clustered and the best separated one is kept."""
    from fabsight.backbones import create_backbone
    from fabsight.die.adapt import unlabeled_images
    from fabsight.die.auto import layer_sets
    from fabsight.die.embeddings import default_cache, extract_layers

    root = Path(folder)
    paths = unlabeled_images(root, log, least=4, purpose="clustering")
    bb = create_backbone(backbone, device=device, weights=weights, input_size=input_size)
    candidates = [tuple(layers)] if layers else layer_sets(bb)
    wanted = sorted({n for s in candidates for n in s}, key=list(bb.cfg.layers).index)
    bb.check_layers(wanted)
    blocks = extract_layers(bb, paths, wanted, 32, default_cache() if cache is None else cache)
    chosen, Z, labels, info, table = choose_layers(blocks, candidates, reduce_with=reduce_with, method=method,
                                                   k_range=k_range)
    reps = representatives(Z, labels)
    result: dict[str, Any] = {
        "n_images": len(paths), "backbone": bb.cfg.name, "layers": list(chosen), "layer_search": table,
        "reduce": reduce_with, "clustering": info, "n_clusters": len(reps), "noise": int((labels == -1).sum()),
        "clusters": [{"id": c, "size": int((labels == c).sum()), "representatives": [str(paths[i]) for i in idx]}
                     for c, idx in reps.items()],
        "assignments": {str(p.relative_to(root)): int(c) for p, c in zip(paths, labels, strict=True)},
    }
    truth = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in paths]
    if len(set(truth)) > 1 and "" not in truth:
        result["agreement"] = agreement(labels, truth)
    if html_out is not None:
        contact_sheet(html_out, paths, labels, reps, f"fabsight die discover: {root}")
        result["html"] = str(html_out)
    if export is not None:
        result["export"] = export_clusters(export, paths, labels, reps, root)
    return result
