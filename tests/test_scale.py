"""Batch jobs (fabsight.scale, ``fabsight batch``) on ~2,000 generated maps, in-process and on a local Ray.

The results are checked against the classifier called directly on the same maps, Ray
against in-process, resume against a full run, and a crash while writing against what
is left on disk. One local Ray (2 CPUs) is started for the module and stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.errors import FabsightError
from fabsight.io import iter_maps, write_folder, write_lswmd, write_mixedwm38
from fabsight.scale import job as job_module
from fabsight.scale import run_batch
from fabsight.synth import generate_dataset
from fabsight.wafer import load_model

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = ("Center", "Edge-Ring", "Scratch", "none")
KEY = ["source", "index"]


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A local Ray with 2 CPUs whose workers import this checkout's fabsight; shut down afterwards."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(SRC)}},
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """~1,700 labelled maps in three formats (2 LSWMD pickles, a .npz, a ROOT/CLASS/*.npy folder) and a corrupt file."""
    root = tmp_path_factory.mktemp("batch_inputs")
    maps = generate_dataset(480, classes=CLASSES, shapes=((32, 32), (44, 40)), seed=11)
    rng = np.random.default_rng(0)
    maps = [maps[i] for i in rng.permutation(len(maps))]
    write_lswmd(maps[:700], root / "lot_a.pkl")
    write_lswmd(maps[700:1400], root / "lot_b.pkl")
    write_mixedwm38([m for m in maps[1400:1800] if m.shape == (32, 32)], root / "mixed.npz")
    write_folder(maps[1800:], root / "folder")
    (root / "broken.000").write_text("FileVersion 1 2;\nWaferID \"W1\"\n")  # KLARF cut short
    return root


@pytest.fixture(scope="module")
def model(wafer_models_dir) -> Path:
    return wafer_models_dir / "wafer"


@pytest.fixture(scope="module")
def in_process(inputs, model, tmp_path_factory) -> tuple[dict, pd.DataFrame]:
    out = tmp_path_factory.mktemp("runs") / "inproc.parquet"
    summary = run_batch([inputs], out, model=model, batch_size=128)
    return summary, _read(out)


def _read(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values(KEY).reset_index(drop=True)


def test_in_process_rows_are_the_classifiers_own_predictions(inputs, model, in_process):
    summary, df = in_process
    maps = list(iter_maps([inputs / "lot_a.pkl", inputs / "lot_b.pkl", inputs / "mixed.npz", inputs / "folder"]))
    assert summary["rows"] == len(df) == len(maps) > 1700
    assert summary["failed"] == 1 and summary["processed"] == summary["inputs"] - 1
    errors = [json.loads(line) for line in (Path(summary["out"]) / "_errors.jsonl").read_text().splitlines()]
    assert [e["file"] for e in errors] == [str(inputs / "broken.000")] and errors[0]["error"]

    clf = load_model(model)
    expected = pd.DataFrame(
        [{"source": m.source, "wafer_id": m.wafer_id, **d}
         for m, d in zip(maps, clf.predict_details(maps), strict=True)]
    )
    merged = df.merge(expected, on=["source", "wafer_id"], suffixes=("", "_direct"))
    assert len(merged) == len(df)
    assert (merged["label"] == merged["label_direct"]).all()
    np.testing.assert_allclose(merged["confidence"], merged["probability"], atol=1e-5)
    assert (merged["needs_review"] == merged["needs_review_direct"]).all()
    assert set(df["format"]) == {"lswmd", "mixedwm38", "npy"}
    # the folder's class names and the files' own labels arrive as truth; the tiny model gets most right
    assert df["truth"].notna().all() and set(df["truth"]) == set(CLASSES)
    assert (df["truth"] == df["label"]).mean() > 0.8
    assert all(len(t) == 3 and t[0]["label"] == lab for t, lab in zip(df["top3"], df["label"], strict=True))
    assert (df["model_ms"] > 0).all() and (df["read_ms"] >= 0).all()


def test_ray_with_two_actors_gives_the_in_process_results(ray_local, inputs, model, in_process, tmp_path):
    @ray_local.remote(num_cpus=0.5)
    def where() -> str:
        import fabsight

        return fabsight.__file__

    assert Path(ray_local.get(where.remote())).resolve().is_relative_to(SRC)  # workers run this checkout
    summary = run_batch([inputs], tmp_path / "ray.parquet", model=model, batch_size=128, ray="local", workers=2)
    _, expected = in_process
    got = _read(tmp_path / "ray.parquet")
    assert summary["rows"] == len(got) == len(expected) and summary["failed"] == 1
    for col in ("source", "index", "lot_id", "wafer_id", "truth", "label", "needs_review", "format"):
        assert (got[col] == expected[col]).all(), col
    np.testing.assert_allclose(got["confidence"], expected["confidence"], atol=1e-5)
    assert got["worker"].nunique() >= 1 and not got["worker"].isin(expected["worker"]).any()


def test_resume_skips_finished_inputs_and_redoes_changed_ones(inputs, model, in_process, tmp_path):
    work = tmp_path / "in"
    shutil.copytree(inputs, work)
    out = tmp_path / "out.parquet"
    first = run_batch([work / "lot_a.pkl", work / "folder"], out, model=model, batch_size=128)
    assert first["skipped_done"] == 0
    # a crash between writing a part and committing it leaves an orphan part and a torn manifest line
    (out / "part-0123456789abcdef.parquet").write_bytes((out / next(iter(_parts(out)))).read_bytes())
    with open(out / "_manifest.jsonl", "a") as fh:
        fh.write('{"file": "/cut/sh')
    second = run_batch([work], out, model=model, batch_size=128)
    assert second["skipped_done"] == first["processed"]
    assert second["processed"] == 2  # lot_b.pkl and mixed.npz; broken.000 fails again
    assert "part-0123456789abcdef.parquet" not in _parts(out)
    _, full = in_process
    df = _read(out)
    assert len(df) == len(full) and not df.duplicated(KEY).any()

    os.utime(work / "lot_b.pkl", ns=(1, 1))  # the file changed since: its part is redone
    third = run_batch([work], out, model=model, batch_size=128)
    assert third["skipped_done"] == third["inputs"] - 2 and third["rows"] == 700
    assert len(_read(out)) == len(full)
    again = run_batch([work], out, model=model, batch_size=128, overwrite=True)
    assert again["skipped_done"] == 0 and again["rows"] == len(full)


def _parts(out: Path) -> set[str]:
    return {p.name for p in out.glob("part-*.parquet")}


def test_a_crash_while_writing_leaves_only_whole_parts(inputs, model, monkeypatch, tmp_path):
    out = tmp_path / "out.parquet"
    real = pq.write_table
    calls = []

    def failing(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) == 3:
            Path(where).write_bytes(b"PAR1 half a part")
            raise OSError("disk full")
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(job_module.pq, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        run_batch([inputs], out, model=model, batch_size=128)
    assert len(_parts(out)) == 2 and not [p for p in out.iterdir() if p.name.startswith(".")]
    committed = {json.loads(x)["part"] for x in (out / "_manifest.jsonl").read_text().splitlines()}
    assert committed == _parts(out)
    for part in _parts(out):
        assert pq.read_table(out / part).num_rows > 0
    monkeypatch.setattr(job_module.pq, "write_table", real)
    summary = run_batch([inputs], out, model=model, batch_size=128)
    assert summary["skipped_done"] >= 2 and not _read(out).duplicated(KEY).any()


def test_explain_and_embed_columns(inputs, model, tmp_path):
    folder = inputs / "folder" / "Scratch"
    run_batch([folder], tmp_path / "o.parquet", model=model, batch_size=64, explain=True, embed=True)
    df = _read(tmp_path / "o.parquet")
    maps = list(iter_maps([folder]))
    direct = load_model(model).embed(maps)
    by_source = {m.source: i for i, m in enumerate(maps)}
    got = np.stack(df["embedding"].to_list())
    np.testing.assert_allclose(got, direct[[by_source[s] for s in df["source"]]], atol=1e-4)
    assert df["explanation"].str.len().gt(20).all()


def test_cli_json_and_one_line_errors(inputs, model, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.parquet"
    ok = runner.invoke(app, ["batch", str(inputs / "mixed.npz"), "--model", str(model), "--out", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["rows"] == pq.read_table(out).num_rows > 0
    for args, needle in [
        (["batch", str(inputs), "--backbone", "efficientnet_lite0", "--model", str(model), "--out",
          str(tmp_path / "x")], "--model and --explain are for wafer maps"),
        (["batch", str(inputs / "mixed.npz"), "--model", str(model), "--out", str(out), "--embed"], "different job"),
        (["batch", str(inputs / "nope.pkl"), "--model", str(model), "--out", str(tmp_path / "y")], "no such file"),
        (["batch", str(inputs / "mixed.npz"), "--model", str(inputs), "--out", str(tmp_path / "z")], str(inputs)),
        (["batch", str(inputs / "mixed.npz"), "--model", str(model), "--out", str(inputs)], "did not write"),
    ]:
        with pytest.raises(FabsightError, match=needle):
            runner.invoke(app, args, catch_exceptions=False)
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_real_industry_files(shared, model, tmp_path):
    fixtures = shared / "fixtures"
    files = [fixtures / "klarf" / "QUU_NUU.000", fixtures / "stdf" / "lot2.stdf"]
    files += sorted((fixtures / "g85").glob("*.xml"))
    bad = sorted((fixtures / "klarf").glob("bad12*.klarf"))
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(str(p) for p in [*files, *bad]) + "\n")
    summary = run_batch([], tmp_path / "real.parquet", model=model, list_file=listing)
    df = _read(tmp_path / "real.parquet")
    expected = list(iter_maps(files))
    assert len(df) == len(expected) == summary["rows"]
    assert summary["failed"] == len(bad) > 0
    assert set(df["format"]) == {"klarf", "stdf", "g85"}
    assert sorted(df["wafer_id"]) == sorted(m.wafer_id for m in expected)


def test_die_image_embeddings_match_the_backbone(tmp_path):
    """``--backbone``: one row per image, the backbone's own embedding, class folder as truth, bad image logged."""
    import cv2

    from fabsight.backbones import create_backbone
    from fabsight.die.embeddings import extract

    rng = np.random.default_rng(3)
    for cls in ("scratch", "particle"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "img" / cls / f"{i}.png"), rng.integers(0, 255, (48, 64), dtype=np.uint8))
    (tmp_path / "img" / "scratch" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    summary = run_batch([tmp_path / "img"], tmp_path / "emb.parquet", backbone="efficientnet_lite0", batch_size=4)
    df = _read(tmp_path / "emb.parquet")
    assert summary["rows"] == len(df) == 6 and summary["failed"] == 1
    assert sorted(set(df["truth"])) == ["particle", "scratch"] and (df["format"] == "image").all()
    direct = extract(create_backbone("efficientnet_lite0"), list(df["source"]), cache_dir=None)
    np.testing.assert_allclose(np.stack(df["embedding"].to_list()), direct, atol=1e-4)
    assert df["label"].isna().all()


def test_onnx_runtime_gives_the_torch_labels(inputs, model, in_process, tmp_path):
    from fabsight.deploy import export_onnx

    exported = tmp_path / "model"
    shutil.copytree(model, exported)
    export_onnx(exported)
    run_batch([inputs / "mixed.npz"], tmp_path / "onnx.parquet", model=exported, runtime="onnx")
    got = _read(tmp_path / "onnx.parquet")
    _, torch_rows = in_process
    expected = torch_rows[torch_rows["source"] == str(inputs / "mixed.npz")].reset_index(drop=True)
    assert len(got) == len(expected) > 0
    assert (got["label"] == expected["label"]).all()
    np.testing.assert_allclose(got["confidence"], expected["confidence"], atol=1e-4)


def test_local_ray_auth_is_set_only_before_ray_is_imported():
    probe = ("import os, sys; from fabsight.scale.job import local_ray_auth; {pre}local_ray_auth(); import ray; "
             "from ray._raylet import get_authentication_mode as m; print(os.environ.get('RAY_AUTH_MODE'), int(m()))")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("RAY_AUTH_MODE", None)
    before = subprocess.run([sys.executable, "-c", probe.format(pre="")], env=env, capture_output=True, text=True)
    assert before.stdout.split() == ["token", "1"], before.stderr  # the driver and the cluster agree
    after = subprocess.run([sys.executable, "-c", probe.format(pre="import ray; ")], env=env, capture_output=True,
                           text=True)
    assert after.stdout.split() == ["None", "0"], after.stderr  # too late: left to Ray's own default


@pytest.mark.slow
def test_cli_local_ray_starts_without_warnings(model, tmp_path):
    write_folder(generate_dataset(3, classes=CLASSES, shapes=((26, 26),), seed=3), tmp_path / "maps")
    env = {**os.environ, "PYTHONPATH": str(SRC), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_AUTH_MODE", None)
    proc = subprocess.run([sys.executable, "-m", "fabsight", "batch", str(tmp_path / "maps"), "--model", str(model),
                           "--out", str(tmp_path / "r.parquet"), "--ray", "local", "--workers", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "12 rows from 12 inputs" in proc.stdout
    for noise in ("Token authentication", "Progress bars disabled"):
        assert noise not in proc.stderr, proc.stderr
