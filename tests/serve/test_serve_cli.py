"""``fabsight serve``: user mistakes end before the server starts, as one line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fabsight.cli.main import main


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["fabsight", "serve", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return int(exc.value.code or 0), capsys.readouterr().err


def test_serve_refuses_bad_store_and_models(tmp_path: Path, monkeypatch, capsys) -> None:
    code, err = _run(monkeypatch, capsys, "--db", str(tmp_path))
    assert code == 2 and err == f"error: {tmp_path}: is a folder; give the SQLite database file (e.g. store.sqlite)\n"
    code, err = _run(monkeypatch, capsys, "--db", str(tmp_path / "s.sqlite"), "--models", str(tmp_path / "none"))
    assert code == 2 and err.startswith("error: ") and "models folder does not exist" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, err = _run(monkeypatch, capsys, "--db", str(tmp_path / "s.sqlite"), "--models", str(tmp_path / "empty"))
    assert code == 2 and "no wafer-pattern or anomaly model in this folder" in err


def test_serve_json_startup_line_then_server(tmp_path: Path, monkeypatch, capsys, wafer_models_dir: Path) -> None:
    import fabsight.serve as serve

    started = {}

    def fake_run(app, host, port, **_kw):  # the real uvicorn would block: record what it was given
        started.update(app=app, host=host, port=port)

    monkeypatch.setattr(serve, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["fabsight", "serve", "--db", str(tmp_path / "s.sqlite"), "--models",
                                      str(wafer_models_dir), "--port", "8123", "--json"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert not exc.value.code
    info = json.loads(capsys.readouterr().out)
    assert info["url"] == "http://127.0.0.1:8123/" and info["wafer_model"].startswith("wafer")
    assert started["port"] == 8123 and started["app"].title == "fabsight"
    assert (tmp_path / "s.sqlite").is_file() and (tmp_path / "s-files").is_dir()
