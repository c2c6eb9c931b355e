"""Self-training of the fine-tuned die classifier on unlabeled images (pseudo-labels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fabsight.die import finetune
from fabsight.die.data import scan_folder
from fabsight.die.finetune import FinetuneClassifier, epochs_within, select_pseudo_labels
from fabsight.errors import FabsightError
from test_die import _cli, _stripes_and_dots

torch.set_num_threads(1)  # one thread is far faster than two on a shared, oversubscribed box


def _hidden(src, dst, seed=0):
    """Write ``src/CLASS/*`` into ``dst`` under the *wrong* class folders (stripes ↔ dots): a run
    that read labels from folder names would learn the opposite. Sensor noise (±3 grey levels)
    makes every image new: the generator repeats some stripe patterns exactly.
    Returns {written path: true class}."""
    import cv2

    rng = np.random.default_rng(seed)
    truth = {}
    for cls, wrong in (("stripes", "dots"), ("dots", "stripes")):
        (dst / wrong).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / cls).iterdir()):
            img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE).astype(int) + rng.integers(-3, 4, size=(40, 40))
            target = dst / wrong / f"u_{cls}_{f.name}"
            cv2.imwrite(str(target), np.clip(img, 0, 255).astype(np.uint8))
            truth[target] = cls
    return truth


def test_selection_keeps_confident_rows_capped_at_the_median_share():
    """Class 0 (8 predicted, all confident) is cut to the median class's share, 3/4 of its 8;
    class 1 (2 of 4 confident) and class 2 (3 of 4, the median share) keep every confident row.
    A cap at the median class's *count* (3) would have left the majority class 3 rows."""
    confident = {0: [0.99, 0.95, 0.97, 0.96, 0.98, 0.94, 0.93, 0.92], 1: [0.93, 0.91], 2: [0.92, 0.95, 0.91]}
    unsure = {1: [0.6, 0.7], 2: [0.8]}  # predicted as the class, below the threshold: never kept
    rows = []
    for group in (confident, unsure):
        for c, ps in group.items():
            for p in ps:
                rows.append(np.roll([p, (1 - p) / 2, (1 - p) / 2], c))
    proba = np.asarray(rows)
    keep, counts, caps = select_pseudo_labels(proba, 0.9)
    assert counts.tolist() == [8, 2, 3] and caps.tolist() == [6, 3, 3]  # rint(0.75 × [8, 4, 4])
    # class 0 keeps its six most confident rows (all but 0.93 and 0.92 → rows 6, 7)
    assert keep.tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12]
    assert (proba[keep].max(axis=1) >= 0.9).all()
    keep, counts, caps = select_pseudo_labels(proba, 0.995)
    assert keep.size == 0 and counts.sum() == 0 and caps.sum() == 0


def test_self_training_library_rounds_threshold_and_untouched_validation(tmp_path):
    """Two rounds on a pool that also holds every labelled image: those are dropped (so the
    validation split never gets a pseudo-label), every pseudo-label clears the threshold, the
    pseudo-labels match the hidden truth, and each round leaves a model that predicts.
    (Test accuracy per round is the benchmark's business: with 2 validation images, early
    stopping on toy data is a coin toss.)"""
    labelled = scan_folder(_stripes_and_dots(tmp_path / "lab", 8, seed=0))
    truth = _hidden(_stripes_and_dots(tmp_path / "pool", 12, seed=2), tmp_path / "unl")
    pool = list(truth) + list(labelled.paths)  # 24 new images + copies of all 16 labelled ones
    test = scan_folder(_stripes_and_dots(tmp_path / "test", 8, seed=1))
    scores, teacher = {}, {}

    def score(round_: int, clf: FinetuneClassifier) -> None:
        scores[round_] = clf.predict(test.paths)
        if round_ == 0:  # what the teacher makes of the pool over the 8 flips/turns
            teacher["proba"] = clf.predict_proba(pool, tta=True)

    y = np.asarray(labelled.classes)[labelled.labels]
    clf = FinetuneClassifier(input_size=32, epochs=4, student_epochs=2, batch_size=8, rounds=2,
                             pseudo_threshold=0.6, seed=0)
    clf.fit(labelled.paths, y, unlabeled=pool, callback=score)
    st = clf.self_training_
    assert st["n_unlabeled"] == 40 and st["n_duplicates_of_labelled"] == 16 and st["threshold"] == 0.6
    assert st["tta"] is True  # the default: round 1's pseudo-labels are the teacher's TTA predictions
    assert st["student_epochs"] == 2 and st["student_early_stop"] is False
    assert st["min_change"] is None and st["stopped"] is None  # by default every round runs
    first = clf.pseudo_labels_[0]
    np.testing.assert_allclose(first["confidence"], teacher["proba"][first["index"]].max(axis=1), atol=1e-5)
    assert (first["label"] == clf.classes_[teacher["proba"][first["index"]].argmax(axis=1)]).all()
    assert clf.validation_["n"] == 2 and st["teacher"]["n_train"] == 14
    assert sorted(scores) == [0, *range(1, len(clf.pseudo_labels_) + 1)] and len(clf.pseudo_labels_) >= 1
    for record, used in zip(st["rounds"], clf.pseudo_labels_, strict=False):
        assert (used["index"] < 24).all()  # never a copy of a labelled (train or validation) image
        assert (used["confidence"] >= 0.6).all()
        assert record["n_pool"] == 24 and sum(record["pseudo_labelled"].values()) == len(used["index"])
        assert all(n <= record["cap_per_class"][c] for c, n in record["pseudo_labelled"].items())
        assert record["n_train"] == 14 + len(used["index"])  # the student trained on them
        assert record["epochs_run"] == record["best_epoch"] == 2  # whole schedule, last weights (the default)
        hidden = np.asarray([truth[pool[i]] for i in used["index"]])
        assert (used["label"] == hidden).mean() >= 0.9, (used["label"], hidden)
    assert all(set(p) <= {"dots", "stripes"} and len(p) == len(test) for p in scores.values())
    assert [r["round"] for r in st["rounds"]] == [1, 2]
    # the share of the pool whose pseudo-label (or lack of one) changed between the rounds
    assert st["rounds"][0]["changed_since_last_round"] is None
    assert len(clf.pseudo_labels_) == 2
    given = [dict(zip(u["index"].tolist(), u["label"].tolist(), strict=True)) for u in clf.pseudo_labels_]
    changed = np.mean([given[0].get(i) != given[1].get(i) for i in range(24)])
    assert st["rounds"][1]["changed_since_last_round"] == pytest.approx(changed)
    assert clf.history_[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the last student's cosine schedule ran out


def test_cli_trains_with_unlabeled_folder_and_records_it(tmp_path, monkeypatch, capsys):
    data = _stripes_and_dots(tmp_path / "lab", 4, seed=0)
    truth = _hidden(_stripes_and_dots(tmp_path / "pool", 10, seed=2), tmp_path / "unl")
    code, stdout, stderr = _cli(monkeypatch, capsys, "die", "train", str(data), "--out", str(tmp_path / "m"),
                                "--method", "finetune", "--backbone", "efficientnet_lite0", "--input-size", "32",
                                "--epochs", "3", "--unlabeled", str(tmp_path / "unl"), "--pseudo-threshold", "0.7",
                                "--no-pseudo-tta", "--student-epochs", "2", "--student-early-stop", "--device", "cpu",
                                "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    st = summary["training"]["self_training"]
    assert st["unlabeled"] == str((tmp_path / "unl").resolve()) and st["n_unlabeled"] == len(truth) == 20
    assert st["threshold"] == 0.7 and st["rounds_requested"] == 1 and len(st["rounds"]) == 1 and st["tta"] is False
    assert st["student_epochs"] == 2 and st["student_early_stop"] is True
    assert set(st["rounds"][0]["pseudo_labelled"]) == {"dots", "stripes"}
    assert summary["metrics"]["n"] == 2  # the labelled validation split, unchanged
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["self_training"] == st
    assert card["training"]["counts"] == {"dots": 4, "stripes": 4}  # pseudo-labels are not counted as labels


def test_min_change_stops_self_training_once_the_pseudo_labels_settle(tmp_path, monkeypatch, capsys):
    """With ``--min-change 1`` any round whose pseudo-labels are not all new is "settled": round 2
    labels the pool, finds it changed on less than 100 %, trains no student, and student 1 stands
    (the card says so, and so does the human summary). A threshold of 0.5 lets the toy teacher's
    two-class argmax through, so round 1 always has pseudo-labels to train on."""
    data = _stripes_and_dots(tmp_path / "lab", 4, seed=0)
    _hidden(_stripes_and_dots(tmp_path / "pool", 10, seed=2), tmp_path / "unl")
    code, stdout, stderr = _cli(monkeypatch, capsys, "die", "train", str(data), "--out", str(tmp_path / "m"),
                                "--method", "finetune", "--backbone", "efficientnet_lite0", "--input-size", "32",
                                "--epochs", "3", "--unlabeled", str(tmp_path / "unl"), "--pseudo-threshold", "0.5",
                                "--no-pseudo-tta", "--student-epochs", "2", "--rounds", "3", "--min-change", "1",
                                "--device", "cpu")
    assert code == 0, stderr
    st = json.loads((tmp_path / "m" / "card.json").read_text())["training"]["self_training"]
    assert st["min_change"] == 1.0 and st["rounds_requested"] == 3
    assert [r["round"] for r in st["rounds"]] == [1, 2]
    first, second = st["rounds"]
    assert sum(first["pseudo_labelled"].values()) > 0 and first["n_train"] > 6  # student 1 trained
    assert 0.0 <= second["changed_since_last_round"] < 1.0 and "n_train" not in second  # no student 2
    assert st["stopped"] == (f"round 2: pseudo-labels changed on {second['changed_since_last_round']:.1%} "
                             "of the pool (< 100.0%), settled")
    said = " ".join(stdout.split())  # rich wraps long lines at the test console's width
    assert "self-training round 1:" in said and "self-training round 2:" not in said
    assert f"self-training stopped at {st['stopped']}; the previous model stands" in said


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "probe"], "unlabeled images are only used by --method finetune (self-training), not by probe"),
    (["--method", "finetune", "--pseudo-threshold", "1.0"], "a pseudo-label threshold in (0, 1)"),
    (["--method", "finetune", "--min-change", "0"], "min_change must be in (0, 1], got 0.0"),
])
def test_cli_refuses_unlabeled_misuse_in_one_line(tmp_path, monkeypatch, capsys, extra, message):
    data = _stripes_and_dots(tmp_path / "lab", 2, seed=0)
    _stripes_and_dots(tmp_path / "unl", 2, seed=3)
    code, stdout, stderr = _cli(monkeypatch, capsys, "die", "train", str(data), "--out", str(tmp_path / "m"),
                                "--unlabeled", str(tmp_path / "unl"), "--json", *extra)
    assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: ") and message in stderr
    assert not (tmp_path / "m").exists()


def test_empty_unlabeled_folder_is_a_user_error(tmp_path):
    from fabsight.die.model import train

    data = _stripes_and_dots(tmp_path / "lab", 2, seed=0)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FabsightError, match="contains no images"):
        train(data, tmp_path / "m", backbone="efficientnet_lite0", method="finetune", input_size=32,
              unlabeled=tmp_path / "empty")


def test_max_unlabeled_draws_a_seeded_sample_of_the_pool(tmp_path):
    """A bounded pool: every round sees the same seeded sample of ``max_unlabeled`` images and
    pseudo-labels only from it; the bound is recorded."""
    labelled = scan_folder(_stripes_and_dots(tmp_path / "lab", 6, seed=0))
    pool = list(_hidden(_stripes_and_dots(tmp_path / "pool", 10, seed=2), tmp_path / "unl"))  # 20 images
    y = np.asarray(labelled.classes)[labelled.labels]
    clf = FinetuneClassifier(input_size=32, epochs=2, student_epochs=1, batch_size=8, rounds=2,
                             pseudo_threshold=0.5, seed=0, max_unlabeled=7)
    clf.fit(labelled.paths, y, unlabeled=pool)
    st = clf.self_training_
    assert st["max_unlabeled"] == 7 and st["n_unlabeled"] == 20
    assert [r["n_pool"] for r in st["rounds"]] == [7] * len(st["rounds"]) and st["rounds"]
    sample = set(FinetuneClassifier(seed=0, max_unlabeled=7)._unlabeled_pool(labelled.paths, pool).tolist())
    assert len(sample) == 7 and all(set(used["index"].tolist()) <= sample for used in clf.pseudo_labels_)
    with pytest.raises(FabsightError, match="max_unlabeled"):
        FinetuneClassifier(max_unlabeled=0).fit(labelled.paths, y, unlabeled=pool)


def test_training_runs_with_cudnn_in_deterministic_mode(tmp_path, monkeypatch):
    """On a GPU the same seed must give the same network (cuDNN's default algorithm choice made
    one DeepPCB teacher score 88.9 % and 91.3 % from one seed): every training step runs with
    deterministic cuDNN, and the caller's flags are back afterwards."""
    seen = []

    def watched(x, gen):
        seen.append((torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark))
        return augment(x, gen)

    augment = finetune.augment_batch
    monkeypatch.setattr(finetune, "augment_batch", watched)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    labelled = scan_folder(_stripes_and_dots(tmp_path / "lab", 4, seed=0))
    FinetuneClassifier(input_size=32, epochs=2, batch_size=4, seed=0).fit(
        labelled.paths, np.asarray(labelled.classes)[labelled.labels])
    assert seen and set(seen) == {(True, False)}
    assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.deterministic is False


def test_epochs_within_fits_what_is_left_of_the_budget():
    assert epochs_within(100.0, 30.0, 1, 10) == 3  # 70 s left at 30 s an epoch: 2 more
    assert epochs_within(100.0, 60.0, 2, 10) == 3  # mean 30 s, 40 s left: 1 more
    assert epochs_within(100.0, 10.0, 1, 5) == 5  # room for more than planned: never longer
    assert epochs_within(10.0, 30.0, 1, 10) == 1  # already over: what is done stands


def test_a_budget_shortens_the_schedule_so_the_learning_rate_still_anneals(tmp_path, monkeypatch):
    """A fake clock (one second per reading) makes every epoch cost the same few seconds: a
    budget of about 5 of 20 epochs must end the run early, on the annealed end of a cosine
    schedule fitted to those epochs, not half-way down the 20-epoch one."""
    clock = iter(range(10**6))
    monkeypatch.setattr(finetune, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: next(clock))}))
    labelled = scan_folder(_stripes_and_dots(tmp_path / "lab", 6, seed=0))
    y = np.asarray(labelled.classes)[labelled.labels]
    clf = FinetuneClassifier(input_size=32, epochs=20, batch_size=8, patience=100, max_minutes=0.3, seed=0)
    clf.fit(labelled.paths, y)
    lrs = [h["lr"] for h in clf.history_]
    assert 2 <= len(lrs) < 20
    assert lrs[-1] < 0.05 * clf.lr and lrs == sorted(lrs, reverse=True)
