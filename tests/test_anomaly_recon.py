"""The recon model's learning-rate schedule at every step count, and tiny training runs.

torch's ``OneCycleLR`` with 10 % warm-up divided by zero at ``steps=10`` (warm-up end at
step 0) and overshot below 10 steps; the schedule is now written out
(:func:`fabsight.anomaly.recon.lr_factor`), so any step count trains.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from fabsight.anomaly import ReconDetector
from fabsight.anomaly.recon import lr_factor


@pytest.mark.parametrize("steps", [1, 2, 3, 9, 10, 11, 19, 20, 21, 100, 1500])
def test_lr_factor_is_a_one_cycle_at_every_step_count(steps: int) -> None:
    f = np.array([lr_factor(s, steps) for s in range(steps)])
    assert np.isfinite(f).all() and (f > 0).all() and (f <= 1.0 + 1e-12).all()
    peak = int(np.argmax(f))
    assert np.all(np.diff(f[: peak + 1]) > 0) and np.all(np.diff(f[peak:]) < 0)  # up, then down
    assert f[0] == pytest.approx(1 / 25)
    if steps >= 20:  # long enough for the whole curve: peak 1 after 10 %, end near zero
        assert abs(peak - (0.1 * steps - 1)) <= 1 and f[peak] > 0.98
        assert f[-1] == pytest.approx(1 / 25e4)


@pytest.mark.parametrize("steps", [20, 200, 1500])
def test_lr_factor_is_torch_one_cycle_where_torch_works(steps: int) -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=steps, pct_start=0.1,
                                                cycle_momentum=False)
    theirs = []
    for _ in range(steps):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [lr_factor(s, steps) for s in range(steps)] == pytest.approx(theirs, rel=1e-9, abs=1e-12)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: on the shared 2-core machine two made these tiny steps several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("steps", [1, 10])
def test_recon_trains_with_a_tiny_step_count(steps: int) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(90, 160, (32, 32), dtype=np.uint8) for _ in range(4)]
    model = ReconDetector(input_size=32, width=4, depth=2, steps=steps, train_crop=16, batch_size=2, device="cpu")
    model.fit(images)
    assert len(model.loss_history_) == min(steps, 10) and np.isfinite(model.loss_history_).all()
    scores = model.score_samples(images[:2])
    assert scores.shape == (2,) and np.isfinite(scores).all()
