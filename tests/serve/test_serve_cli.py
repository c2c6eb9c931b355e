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
    assert code == 2 and "no wafer-pattern, anomaly or die model in this folder" in err


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


def _fake_run(monkeypatch: pytest.MonkeyPatch) -> dict:
    import fabsight.serve as serve

    started: dict = {}
    monkeypatch.setattr(serve, "run", lambda app, host, port, **_kw: started.update(app=app, host=host, port=port))
    return started


@pytest.mark.parametrize(("args", "env", "refused"), [
    (["--host", "0.0.0.0"], {}, "give the access token (FABSIGHT_TOKEN or --token-file) or add --allow-remote"),
    (["--host", "10.1.2.3", "--public-read"], {"FABSIGHT_TOKEN": "t" * 20}, "--public-read there lets anyone"),
    (["--host", "0.0.0.0"], {"FABSIGHT_TOKEN": "t" * 20}, None),
    (["--host", "::", "--allow-remote"], {}, None),
    (["--host", "localhost", "--public-read"], {}, None),
])
def test_non_loopback_host_needs_an_explicit_token_or_allow_remote(
    tmp_path: Path, monkeypatch, capsys, args: list[str], env: dict[str, str], refused: str | None
) -> None:
    monkeypatch.delenv("FABSIGHT_TOKEN", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    started = _fake_run(monkeypatch)
    code, err = _run(monkeypatch, capsys, "--db", str(tmp_path / "s.sqlite"), *args)
    if refused:
        assert code == 2 and err.startswith(f"error: --host {args[1]}: not a loopback address") and err.count("\n") == 1
        assert refused in err and not started and not (tmp_path / "s.sqlite").exists()
    else:
        assert code == 0 and started["host"] == args[1]


def test_generated_token_is_shown_once_and_kept_private(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("FABSIGHT_TOKEN", raising=False)
    started = _fake_run(monkeypatch)
    code, err = _run(monkeypatch, capsys, "--db", str(tmp_path / "s.sqlite"))
    stored = tmp_path / "s-files" / ".fabsight-token"
    token = stored.read_text().strip()
    assert code == 0 and f"access token (shown once; kept in {stored}, mode 0600): {token}\n" in err
    assert stored.stat().st_mode & 0o777 == 0o600
    code, err = _run(monkeypatch, capsys, "--db", str(tmp_path / "s.sqlite"))
    assert code == 0 and token not in err and f"access token: from {stored}" in err
    from fastapi.testclient import TestClient

    with TestClient(started["app"]) as c:
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/health", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    given = tmp_path / "token"
    given.write_text("x" * 8)
    given.chmod(0o600)
    code, err = _run(monkeypatch, capsys, "--db", str(tmp_path / "s.sqlite"), "--token-file", str(given))
    assert code == 2 and err == f"error: {given}: the access token must be at least 16 printable characters " \
                                "without spaces\n"


def test_demo_serve_shows_its_token_and_keeps_to_loopback(tmp_path: Path, monkeypatch, capsys,
                                                          wafer_models_dir: Path) -> None:
    monkeypatch.delenv("FABSIGHT_TOKEN", raising=False)
    started = _fake_run(monkeypatch)
    out = tmp_path / "demo"
    monkeypatch.setattr(sys, "argv", ["fabsight", "demo", "--out", str(out), "--serve", "--host", "0.0.0.0"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: --host 0.0.0.0: not a loopback address") and not out.exists()
    monkeypatch.setattr(sys, "argv", ["fabsight", "demo", "--out", str(out), "--models", str(wafer_models_dir),
                                      "--serve"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert not exc.value.code
    token = (out / "store-files" / ".fabsight-token").read_text().strip()
    assert f"mode 0600): {token}\n" in capsys.readouterr().err
    from fastapi.testclient import TestClient

    with TestClient(started["app"]) as c:
        assert c.get("/api/health", headers={"Authorization": f"Bearer {token}"}).json()["counts"]["wafers"] > 0
        assert c.get("/api/health").status_code == 401
