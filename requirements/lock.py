"""Re-resolve ``requirements/lock.txt`` from ``pyproject.toml``.

``make lock`` keeps every pin the lock already has and resolves only what is new or no
longer fits ``pyproject.toml``; ``make lock-upgrade`` (``--upgrade``) moves every package to
the newest version allowed.

Two steps, because each tool does one of them well here:

1. ``pip-compile`` resolves the newest versions ``pyproject.toml`` allows (runtime + every
   extra but ``bench``), with the "via" notes that say why each package is there.
2. ``pip install --dry-run --report`` over those pins gives the sha256 of the exact file pip
   installs on this platform (Linux x86-64, CPython 3.11, the platform of every machine the
   project runs on), read from the index. ``pip-compile --generate-hashes`` would instead
   download every platform's wheel of every pin to hash it: gigabytes for torch's CUDA wheels.

The lock is installed with ``pip install --require-hashes --no-deps``: nothing it does not
name gets in, and a file whose bytes changed is refused.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOCK = HERE / "lock.txt"
#: Every extra but `bench` (anomalib, for one benchmark): `make demo` and `make test` install them all.
EXTRAS = ("--extra", "train", "--extra", "serve", "--extra", "scale", "--extra", "assist", "--extra", "test")
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def compile_pins(out: Path, *, upgrade: bool) -> None:
    """Resolve into ``out`` (pins and "via" notes, no hashes): pip-compile starts from the pins
    already in ``out`` unless ``upgrade``."""
    if LOCK.is_file() and not upgrade:
        out.write_text(LOCK.read_text())
    subprocess.run(
        [sys.executable, "-m", "piptools", "compile", "--quiet", *EXTRAS, "--allow-unsafe",
         "--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--no-header",
         *(["--upgrade"] if upgrade else []),
         "--output-file", str(out), "pyproject.toml"],
        check=True, cwd=REPO,
    )


def installed_hashes(pins: Path) -> dict[str, str]:
    """``{normalised name: sha256}`` of the files pip would install for ``pins`` here."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--no-deps",
             "--report", str(report), "-r", str(pins)],
            check=True,
        )
        items = json.loads(report.read_text())["install"]
    hashes = {}
    for item in items:
        info = item["download_info"].get("archive_info", {})
        digest = info.get("hashes", {}).get("sha256") or (info.get("hash", "").partition("sha256=")[2])
        if not digest:
            raise SystemExit(f"no sha256 for {item['metadata']['name']} ({item['download_info']['url']})")
        hashes[_normalise(item["metadata"]["name"])] = digest
    return hashes


def with_hashes(pins_text: str, hashes: dict[str, str]) -> str:
    """The pip-compile output with a ``--hash`` continuation after every pin."""
    lines = [
        "# The exact packages `make demo` and `make test` install (pip --require-hashes --no-deps).",
        "# Linux x86-64, CPython 3.11. Made by `make lock` (requirements/lock.py); do not edit by hand.",
    ]
    for line in pins_text.splitlines():
        m = PIN.match(line)
        if m:
            name = _normalise(m.group(1))
            if name not in hashes:
                raise SystemExit(f"pip would not install the pinned {line!r}")
            line = f"{line} \\\n    --hash=sha256:{hashes[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    upgrade = "--upgrade" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        pins = Path(tmp) / "pins.txt"
        compile_pins(pins, upgrade=upgrade)
        text = pins.read_text()
        LOCK.write_text(with_hashes(text, installed_hashes(pins)))
    print(f"wrote {LOCK.relative_to(REPO)}: {sum(1 for line in text.splitlines() if PIN.match(line))} packages")


if __name__ == "__main__":
    main()
