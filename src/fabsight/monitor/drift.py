"""Two-sample drift test: permutation tests of wafer features, pattern mix and embedding.

Up to three statistics are computed on every split of the pooled wafers, each answering
"did the process change?" from a different side:

* **features**: the sliced Wasserstein distance (SWD) between the distributions of the
  named per-wafer features, after standardising every feature with the pooled mean and
  standard deviation (so a yield feature in [0, 1] and a cluster count in the tens weigh
  alike). Needs no model: a change of spatial signature, e.g. fails moving to the edge.
* **pattern mix** (with a classifier): the largest squared two-proportion z statistic
  over the predicted classes, ``max_k (f_A,k − f_B,k)² / (p̄_k (1 − p̄_k) (1/n_A + 1/n_B))``
  with the pooled share ``p̄_k``: the likelihood-ratio statistic for "one class became
  more (or less) frequent, the others in proportion". A change of mix is usually one
  pattern rising, and the maximum keeps the power a chi-square spreads over every class's
  degrees of freedom (with true WM-811K labels and windows of 300, a 10 % Center or Loc
  shift reached p ≤ 0.01 about 1.3× as often as with Pearson's chi-square).
* **embedding** (with a classifier): the maximum mean discrepancy (MMD²) of a Gaussian
  kernel on the classifier's embedding, bandwidth the median pooled distance, computed
  with random Fourier features so one permutation costs one matrix product; it sees
  shifts the class list has no name for.

The pooled statistics (means, SDs, class shares, bandwidth) do not change when wafers
are relabelled, so every test stays exact: under "both sets come from one distribution"
every split of the pooled wafers into sets of the observed sizes is equally likely, and
a component's ``p = (1 + #{permuted ≥ observed}) / (1 + n_permutations)`` (the +1 counts
the observed split itself and keeps p > 0; Phipson & Smyth 2010). The components are
combined on the *same* permutations (non-parametric combination, Pesarin 2001): every
permuted split gets its own component p-values, Fisher's ``−Σ log p`` (or the smallest
p, ``combine="min-p"``) scores each split, and the drift p-value is the share of splits
scoring at least as extreme as the observed one. That controls the false-alarm rate at α
exactly, whatever the (strong) dependence between the components, with no Bonferroni
loss; predicted labels need not be right for the level to hold, only for the power.

Speed comes from doing the expensive work once. All pooled wafers are projected on all
directions once (``Z = X @ θ``) and each projection is sorted once. A permutation only
changes which sorted entries belong to set A, so the sorted values of each set are read
off with a boolean mask (no sort per permutation), and the 1-D Wasserstein distance of
every projection is one weighted sum over a quantile grid that depends only on the two
set sizes. Class counts and kernel means of a batch of permutations are one matrix
product each. Nothing loops over projections or wafers in Python.

The same permutations also test each feature on its own axis, which yields the
per-feature shifts an engineer reads ("fail_rate_ring4 moved 0.9 pooled SDs, p=0.002").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial.distance import pdist

from fabsight.errors import FabsightError
from fabsight.monitor.features import FeatureTable

#: Elements (permutations × projections × wafers) handled per batch: bounds memory to a
#: few hundred MB whatever the set sizes.
_BATCH_ELEMENTS = 4_000_000
#: Random Fourier frequencies of the embedding MMD (a cosine and a sine each): the
#: approximation's own noise is ~1/16 of the kernel's, small beside the sampling noise.
MMD_FREQUENCIES = 256
#: Pooled wafers (a seeded sample) whose median distance sets the kernel bandwidth.
_BANDWIDTH_SAMPLE = 1000

COMBINE_METHODS: tuple[str, ...] = ("fisher", "min-p")
#: A permuted split's statistics for a boolean (splits × wafers) membership of set A.
_Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass
class FeatureShift:
    """How one feature moved from set A to set B."""

    name: str
    distance: float  # 1-D Wasserstein-p distance in pooled standard deviations
    p_value: float  # permutation p-value of that feature alone (same permutations)
    p_holm: float  # Holm-adjusted over all features, for "which features really moved"
    mean_a: float
    mean_b: float
    smd: float  # standardised mean difference (mean_b - mean_a) / pooled SD


@dataclass
class PatternChange:
    """Change of one predicted pattern's frequency (needs a classifier)."""

    pattern: str
    count_a: int
    count_b: int
    fraction_a: float
    fraction_b: float
    change: float  # fraction_b - fraction_a
    p_value: float  # two-sided Fisher exact test


@dataclass
class ComponentTest:
    """One statistic of the drift test, with its own permutation p-value."""

    name: str  # "features", "pattern mix" or "embedding"
    statistic: float  # SWD, largest squared z over classes, or MMD²
    p_value: float


@dataclass
class DriftResult:
    """Outcome of :func:`drift_test`; ``per_feature`` is sorted, largest shift first.

    ``p_value`` combines the ``components`` (``combine``); ``distance`` is the SWD of the
    features component.
    """

    distance: float
    p_value: float
    alpha: float
    drift: bool
    n_a: int
    n_b: int
    n_projections: int
    n_permutations: int
    p: int
    seed: int
    per_feature: list[FeatureShift] = field(default_factory=list)
    pattern_changes: list[PatternChange] | None = None
    components: list[ComponentTest] = field(default_factory=list)
    combine: str = "fisher"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile_grid(n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into the sorted sets and weights so that W_p^p = Σ w |a[ia] - b[ib]|^p.

    The quantile functions of two empirical distributions are step functions with steps
    at i/n_a and j/n_b; between consecutive steps both are constant. Breakpoints are kept
    as integers over n_a·n_b so the grid is exact.
    """
    cuts = np.union1d(np.arange(n_a + 1) * n_b, np.arange(n_b + 1) * n_a)
    mid2 = cuts[:-1] + cuts[1:]  # twice the midpoints, still integers
    total = n_a * n_b
    ia = (mid2 * n_a) // (2 * total)
    ib = (mid2 * n_b) // (2 * total)
    return ia, ib, np.diff(cuts) / total


class _Sliced:
    """Projected, sorted pooled sample; evaluates W_p^p per projection for any split."""

    def __init__(self, z: np.ndarray, n_a: int, p: int) -> None:
        order = np.argsort(z, axis=0, kind="stable")
        self.sorted_t = np.ascontiguousarray(np.take_along_axis(z, order, axis=0).T)  # (L, N)
        self.order_t = np.ascontiguousarray(order.T)  # (L, N)
        self.n_a, self.n_b = n_a, z.shape[0] - n_a
        self.ia, self.ib, self.w = _quantile_grid(self.n_a, self.n_b)
        self.p = p

    def power(self, in_a: np.ndarray) -> np.ndarray:
        """``in_a`` (P, N) bool split(s) → (P, L) W_p^p of every projection."""
        member = in_a[:, self.order_t]  # (P, L, N): which sorted entries belong to A
        n_p, n_l = member.shape[:2]
        # Boolean selection keeps row order, so each row of a/b comes out sorted.
        vals = self.sorted_t if n_p == 1 else np.broadcast_to(self.sorted_t, member.shape)
        a = vals[member.reshape(vals.shape)].reshape(n_p, n_l, self.n_a)
        b = vals[~member.reshape(vals.shape)].reshape(n_p, n_l, self.n_b)
        if self.n_a != self.n_b:  # equal sizes: the quantile grid is the identity
            a, b = np.take(a, self.ia, axis=-1), np.take(b, self.ib, axis=-1)
        diff = np.abs(a - b)
        return (diff**self.p) @ self.w


def _holm(p: np.ndarray) -> np.ndarray:
    order = np.argsort(p)
    m = len(p)
    adjusted = np.maximum.accumulate(np.minimum(1.0, p[order] * (m - np.arange(m))))
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def _as_table(x: FeatureTable | np.ndarray, which: str) -> FeatureTable:
    if isinstance(x, FeatureTable):
        return x
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise FabsightError(None, f"set {which}: features must be a 2-D array (wafers × features), got {arr.shape}")
    return FeatureTable(arr, [f"x{j}" for j in range(arr.shape[1])])


def _pattern_changes(a: FeatureTable, b: FeatureTable) -> list[PatternChange] | None:
    if a.predicted is None or b.predicted is None:
        return None
    classes = a.classes or sorted(set(a.predicted) | set(b.predicted))
    out = []
    for c in classes:
        ca, cb = a.predicted.count(c), b.predicted.count(c)
        fa, fb = ca / len(a), cb / len(b)
        p = stats.fisher_exact([[ca, len(a) - ca], [cb, len(b) - cb]]).pvalue
        out.append(PatternChange(c, ca, cb, fa, fb, fb - fa, float(p)))
    return sorted(out, key=lambda r: (-abs(r.change), r.pattern))


def mix_statistic(labels: np.ndarray, n_a: int) -> _Statistic:
    """Largest squared two-proportion z over classes, for splits of the pooled ``labels``.

    ``labels`` are class indices of the pooled wafers (set A first). The pooled share of
    each class is the same for every split, so only the counts in A change; classes that
    every wafer or no wafer has carry no information and are left out.
    """
    onehot = np.eye(int(labels.max()) + 1)[labels]
    n_b = len(labels) - n_a
    total = onehot.sum(axis=0)
    share = total / len(labels)
    var = share * (1 - share) * (1 / n_a + 1 / n_b)
    keep = var > 0
    onehot, total, var = onehot[:, keep], total[keep], var[keep]

    def statistic(split: np.ndarray) -> np.ndarray:
        if not keep.any():
            return np.zeros(split.shape[0])
        in_a = split @ onehot
        diff = in_a / n_a - (total - in_a) / n_b
        return (diff**2 / var).max(axis=1)

    return statistic


def mmd_statistic(embedding: np.ndarray, n_a: int, rng: np.random.Generator) -> _Statistic:
    """MMD² of a Gaussian kernel (median-distance bandwidth) between splits of ``embedding``.

    Random Fourier features φ (Rahimi & Recht 2007) make the kernel mean of a set one
    average, so ``MMD² ≈ ‖mean φ(A) − mean φ(B)‖²`` costs one matrix product per batch of
    splits, linear in the wafers.
    """
    n = embedding.shape[0]
    sample = embedding[rng.choice(n, size=min(n, _BANDWIDTH_SAMPLE), replace=False)]
    dist = pdist(sample)
    positive = dist[dist > 0]
    bandwidth = float(np.median(positive)) if positive.size else 1.0
    omega = rng.standard_normal((embedding.shape[1], MMD_FREQUENCIES)) / bandwidth
    proj = embedding @ omega
    phi = np.hstack([np.cos(proj), np.sin(proj)]) / np.sqrt(MMD_FREQUENCIES)
    total = phi.sum(axis=0)
    n_b = n - n_a

    def statistic(split: np.ndarray) -> np.ndarray:
        in_a = split @ phi
        return ((in_a / n_a - (total - in_a) / n_b) ** 2).sum(axis=1)

    return statistic


def tail_p(t: np.ndarray) -> np.ndarray:
    """``t`` (splits × statistics), the observed split among them → each split's p-value per
    statistic: the share of splits whose statistic is at least as large (ties count)."""
    r = t.shape[0]
    out = np.empty_like(t, dtype=np.float64)
    for k in range(t.shape[1]):
        col = t[:, k]
        tol = 1e-9 * max(1.0, float(np.abs(col).max()))
        out[:, k] = (r - np.searchsorted(np.sort(col), col - tol, side="left")) / r
    return out


def combined_p(t: np.ndarray, combine: str = "fisher") -> float:
    """Non-parametric combination of the statistics ``t`` (row 0 observed, then permutations).

    Every split is scored by Fisher's ``−Σ log p`` (or ``−min p``) of its own permutation
    p-values; the p-value is the share of splits scoring at least the observed score. The
    permutations calibrate the score, so any dependence between the statistics is allowed.
    """
    p = tail_p(t)
    score = -np.log(p).sum(axis=1) if combine == "fisher" else -p.min(axis=1)
    return float(np.mean(score >= score[0] - 1e-9 * max(1.0, abs(float(score[0])))))


def _check(ta: FeatureTable, tb: FeatureTable, n_projections: int, n_permutations: int, p: int, alpha: float,
           combine: str) -> None:
    """Refuse inputs the test cannot use, with the reason."""
    if ta.values.shape[1] != tb.values.shape[1] or ta.names != tb.names:
        raise FabsightError(None, "the two sets have different features (was a model used for only one of them?)")
    if (ta.embedding is None) != (tb.embedding is None) or (
        ta.embedding is not None and tb.embedding is not None and ta.embedding.shape[1] != tb.embedding.shape[1]
    ):
        raise FabsightError(None, "the two sets have different embeddings (was a model used for only one of them?)")
    if len(ta) < 2 or len(tb) < 2:
        raise FabsightError(None, f"a drift test needs at least 2 wafers per set, got {len(ta)} and {len(tb)}")
    if n_projections < 1 or n_permutations < 1 or p < 1:
        raise FabsightError(None, "n_projections, n_permutations and p must be at least 1")
    if not 0 < alpha < 1:
        raise FabsightError(None, f"alpha must lie in (0, 1), got {alpha}")
    if combine not in COMBINE_METHODS:
        raise FabsightError(None, f"combine must be one of {', '.join(COMBINE_METHODS)}, got {combine!r}")


def _model_statistics(ta: FeatureTable, tb: FeatureTable, rng: np.random.Generator) -> dict[str, _Statistic]:
    """The pattern-mix and embedding statistics the two tables allow (none without a model)."""
    out: dict[str, _Statistic] = {}
    if ta.predicted is not None and tb.predicted is not None:
        classes = ta.classes or sorted(set(ta.predicted) | set(tb.predicted))
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[c] for c in [*ta.predicted, *tb.predicted]], dtype=np.int64)
        out["pattern mix"] = mix_statistic(labels, len(ta))
    if ta.embedding is not None and tb.embedding is not None:
        emb = np.vstack([ta.embedding, tb.embedding]).astype(np.float64)
        if not np.isfinite(emb).all():
            raise FabsightError(None, "embeddings contain NaN or infinite values")
        out["embedding"] = mmd_statistic(emb, len(ta), rng)
    return out


def drift_test(
    a: FeatureTable | np.ndarray,
    b: FeatureTable | np.ndarray,
    *,
    n_projections: int = 128,
    n_permutations: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    p: int = 2,
    combine: str = "fisher",
) -> DriftResult:
    """Test whether wafer sets ``a`` and ``b`` come from the same distribution.

    ``a``/``b`` are :class:`FeatureTable` (names and, with a model, predicted patterns and
    embeddings are used) or plain (wafers × features) arrays, which get the features test
    alone. The result is reproducible for a given ``seed``; the reported distance is the
    SWD of the standardised features, equal to ``ot.sliced_wasserstein_distance`` with the
    same projections.
    """
    ta, tb = _as_table(a, "A"), _as_table(b, "B")
    _check(ta, tb, n_projections, n_permutations, p, alpha, combine)

    pooled = np.vstack([ta.values, tb.values])
    if not np.isfinite(pooled).all():
        raise FabsightError(None, "features contain NaN or infinite values")
    sd = pooled.std(axis=0)
    z = (pooled - pooled.mean(axis=0)) / np.where(sd > 0, sd, 1.0)

    rng = np.random.default_rng(seed)
    n_feat = z.shape[1]
    theta = rng.standard_normal((n_feat, n_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    # Random directions for the joint statistic, then the feature axes for per-feature shifts.
    sliced = _Sliced(np.hstack([z @ theta, z]), len(ta), p)
    extra = _model_statistics(ta, tb, rng)

    n = pooled.shape[0]
    observed = np.zeros((1, n), dtype=bool)
    observed[0, : len(ta)] = True

    def evaluate(split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        powers = sliced.power(split)
        weights = split.astype(np.float64)
        joint = [powers[:, :n_projections].mean(axis=1), *(f(weights) for f in extra.values())]
        return np.stack(joint, axis=1), powers[:, n_projections:]

    obs_joint, obs_feat = evaluate(observed)
    batch = max(1, _BATCH_ELEMENTS // (n * (n_projections + n_feat)))
    rows = [obs_joint]
    feat_exceed = np.zeros(n_feat, dtype=np.int64)
    tol = 1e-12 * max(1.0, float(obs_feat.max(initial=0.0)))  # ties with the observed value count as exceeding
    done = 0
    while done < n_permutations:
        k = min(batch, n_permutations - done)
        joint, feat = evaluate(rng.permuted(np.repeat(observed, k, axis=0), axis=1))
        rows.append(joint)
        feat_exceed += np.count_nonzero(feat >= obs_feat[0] - tol, axis=0)
        done += k

    t = np.vstack(rows)
    own_p = tail_p(t)[0]
    p_value = combined_p(t, combine)
    feat_p = (1 + feat_exceed) / (1 + n_permutations)
    holm = _holm(feat_p)
    mean_a, mean_b = ta.values.mean(axis=0), tb.values.mean(axis=0)
    shifts = [
        FeatureShift(
            name=ta.names[j],
            distance=float(obs_feat[0, j] ** (1 / p)),
            p_value=float(feat_p[j]),
            p_holm=float(holm[j]),
            mean_a=float(mean_a[j]),
            mean_b=float(mean_b[j]),
            smd=float((mean_b[j] - mean_a[j]) / sd[j]) if sd[j] > 0 else 0.0,
        )
        for j in range(n_feat)
    ]
    shifts.sort(key=lambda s: (-s.distance, s.name))
    distance = float(obs_joint[0, 0]) ** (1 / p)
    observed_stats = [distance, *obs_joint[0, 1:].tolist()]
    components = [
        ComponentTest(name, float(observed_stats[k]), float(own_p[k])) for k, name in enumerate(["features", *extra])
    ]
    return DriftResult(
        distance=distance,
        p_value=p_value,
        alpha=alpha,
        drift=bool(p_value < alpha),
        n_a=len(ta),
        n_b=len(tb),
        n_projections=n_projections,
        n_permutations=n_permutations,
        p=p,
        seed=seed,
        per_feature=shifts,
        pattern_changes=_pattern_changes(ta, tb),
        components=components,
        combine=combine,
    )
