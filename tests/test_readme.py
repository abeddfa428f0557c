"""The README's code blocks run as written, in the order written, from a fresh clone.

Its ``bash`` blocks are run in one shell, in a copy of the repository's tracked files (the
repository's ``.venv`` linked in, as ``scripts/setup.sh`` would have made it); each
``python`` block is a file whose first line names it (``# example.py``), written there
when its turn comes and run by a later ``bash`` block. Blocks that cannot run anywhere
use another info string (``text``) and say why.

The shell's environment keeps the run short, as a user's environment may: the commands
report to the session's Prefect server (``PREFECT_API_URL``), and ``PIPELINE_WORKERS=0``
runs ``run-parallel`` and ``drain-db`` without starting a Dask cluster, except where a
line asks for workers (``--workers 2``, ``workers=2``): Dask is tested elsewhere, and
each local cluster costs seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Lines of bash blocks that are not run here, each with the reason.
NOT_RUN = {
    "scripts/test.sh     # set up .venv, then run the linters, mypy and the whole test suite": (
        "the whole test suite, this test included"
    ),
    "scripts/test.sh                     # ruff, mypy, pytest: what CI runs": (
        "the whole test suite, this test included"
    ),
    "scripts/test.sh -k parallel -x      # arguments go to pytest": (
        "a part of the test suite: the suite runs it"
    ),
    ".venv/bin/python benchmarks/run.py --scale 10 --repeats 3 --workers 1,2": (
        "the full benchmark: many minutes on an idle machine (tests/test_benchmarks.py runs "
        "the harness on a tiny scale)"
    ),
}

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def blocks() -> list[tuple[str, str]]:
    """(info string, code) of every fenced block of the README, in order."""
    return [(m[1], m[2]) for m in FENCE.finditer(README.read_text(encoding="utf-8"))]


def test_every_block_says_what_it_is() -> None:
    kinds = {kind for kind, _ in blocks()}

    assert kinds <= {"bash", "python", "text"}, kinds
    for kind, code in blocks():
        if kind == "python":
            assert re.match(r"# [\w/]+\.py\n", code), f"a python block names its file: {code}"


def test_the_lines_not_run_are_in_the_readme() -> None:
    """The list above cannot rot: each line is still in a bash block."""
    lines = {
        line.strip() for kind, code in blocks() if kind == "bash" for line in code.splitlines()
    }

    assert set(NOT_RUN) <= lines, set(NOT_RUN) - lines


def test_commands_that_are_not_run_say_why_right_above() -> None:
    """A ``text`` block of commands (not a diagram) is preceded by the paragraph saying why
    the test does not run it."""
    text = README.read_text(encoding="utf-8")
    commands = [
        m
        for m in FENCE.finditer(text)
        if m[1] == "text" and re.search(r"^(dask|pipeline|python|prefect) ", m[2], re.M)
    ]

    assert commands
    for block in commands:
        above = text[: block.start()].rstrip("\n").rsplit("\n\n", 1)[-1]
        assert "not run by the README's test" in " ".join(above.split()), above


#: The package's source, whose modules "How it works" names.
PACKAGE = ROOT / "src" / "prefect_pipeline"


def how_it_works() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("## How it works, and why", 1)[1].split("\nThe measured problems", 1)[0]


def test_how_it_works_names_every_module_by_its_path() -> None:
    """The diagram and the table below it agree with the folders, module by module: each
    module of the repository under ``src/prefect_pipeline`` is named by its path there, and
    every module path named there exists (a module being written may be named before it is
    committed)."""
    section = how_it_works()
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--", "*.py"],
        cwd=PACKAGE,
        capture_output=True,
        check=True,
    ).stdout.decode()
    modules = sorted(filter(None, tracked.split("\0")))

    missing = [m for m in modules if not re.search(rf"(?<![\w/.]){re.escape(m)}(?!\w)", section)]
    assert missing == [], missing
    named = set(re.findall(r"(?<![\w/.])((?:\w+/)*\w+\.py)\b", section))
    stale = sorted(
        name for name in named if not (PACKAGE / name).exists() and not (ROOT / name).exists()
    )
    assert stale == [], stale


def script() -> str:
    """The README's bash and python blocks as one bash script."""
    parts = ["set -eo pipefail"]
    for number, (kind, code) in enumerate(blocks(), start=1):
        if kind == "bash":
            parts.append(f"echo \">>> README block {number} at $SECONDS s\" >&2")
            for line in code.splitlines():
                reason = NOT_RUN.get(line.strip())
                parts.append(f": not run: {reason!r}" if reason else line)
        elif kind == "python":
            name = code.splitlines()[0].removeprefix("# ").strip()
            parts.append(f"cat > {name} <<'README_PYTHON_BLOCK'\n{code}README_PYTHON_BLOCK")
    return "\n".join(parts) + "\n"


def fresh_clone(destination: Path) -> Path:
    """The repository's tracked files (as they are in the work tree) and its .venv."""
    stamp = ROOT / ".venv" / (
        ".installed-" + hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    )
    if not stamp.exists():
        # scripts/demo.sh would reinstall the package from the copy into the shared .venv.
        pytest.fail("the .venv is not installed for this pyproject.toml: run scripts/setup.sh")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    (destination / ".venv").symlink_to(ROOT / ".venv")
    return destination


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_runs_as_written(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "clone")
    (tmp_path / "readme.sh").write_text(script())
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PIPELINE_", "VIRTUAL_ENV"))
    }
    # A shell of the user's: the environment is activated by the README's own commands.
    env["PIPELINE_WORKERS"] = "0"
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )

    result = subprocess.run(
        ["bash", str(tmp_path / "readme.sh")],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # Where the time goes, for whoever keeps the suite fast (shown with -rA or on failure).
    print("\n".join(line for line in result.stderr.splitlines() if line.startswith(">>>")))
    # What the comments say is what happens.
    stdout = result.stdout
    assert "B: batch 2, 2 record(s) written" in stdout, stdout
    assert "batches: 1 pending, 1 finalized" in stdout, stdout
    assert "C: batch 2 finalized" in stdout, stdout
    assert "2 input(s) queued, 0 already there" in stdout, stdout
    assert "0 input(s) requeued" in stdout, stdout
    assert "Failed" not in stdout.split("Success!")[0], stdout
    assert re.search(r"A: failed: \S+missing\.txt: no such file", stdout), stdout
    assert "['A', 'B', 'C', 'D']" in stdout, stdout


@pytest.mark.slow
def test_the_demo_times_the_pipeline_not_the_set_up(tmp_path: Path) -> None:
    """``scripts/demo.sh`` sets up, then runs the pipeline, which measures its elapsed time
    from its process's start: the set-up (here a stand-in that takes 3 s) must not count."""
    import json
    import time

    clone = fresh_clone(tmp_path / "clone")
    setup = clone / "scripts" / "setup.sh"
    setup.write_text("#!/usr/bin/env bash\nsleep 3\n")
    env = {name: value for name, value in os.environ.items() if not name.startswith("PIPELINE_")}

    began = time.time()
    result = subprocess.run(
        ["scripts/demo.sh", "--json", "--workers", "0"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    whole = time.time() - began

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["succeeded"] > 0
    # The pipeline's clock started after the set-up: its run fits in what is left.
    assert summary["elapsed_s"] <= whole - 3, (summary["elapsed_s"], whole)
