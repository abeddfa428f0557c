"""Deterministic benchmark workloads: folders of text files shaped to stress different costs.

* ``W1`` - 200 files x 200 lines: the balanced, typical case.
* ``W2`` - 2,000 files x 10 lines: per-file overhead (scheduling, transactions, small writes).
* ``W3`` - 20 files x 20,000 lines: per-record cost (parsing, JSON size, bulk inserts).

``scale`` multiplies the file counts only (at least one file), so lines per file and hence
the per-file work stay the same whatever the scale. Files are spread over sub-folders of
``FILES_PER_FOLDER`` files each so output paths keep a realistic relative layout.

The text is seeded-random, so every invocation on any machine builds byte-identical inputs.
A few lines are blank or whitespace-only, some files use CRLF or lone-CR line endings and
some start with a UTF-8 BOM, so the "records" are not simply "lines" and every
implementation has to get the parsing rules right for the row counts to agree.

Run ``python benchmarks/workloads.py DEST [--scale S] [--workloads W1,W2]`` to build them.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

FILES_PER_FOLDER = 100
BASE_SEED = 20240601
# Manifest format version: bump it when the generator changes so stale caches are rebuilt.
GENERATOR_VERSION = 2

# A small vocabulary keeps generation fast while giving varied line lengths and content;
# the accented words make the inputs genuinely UTF-8, not ASCII.
_VOCABULARY = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
    "sigma tau upsilon phi chi psi omega river stone cloud ember quartz meadow harbor lantern "
    "orbit signal vector matrix kernel buffer packet ledger batch record sample status commit "
    "café naïve façade jalapeño über smörgåsbord crème brûlée 42 1999 3.14 0x1f -7"
)
_WORDS = tuple(_VOCABULARY.split())


@dataclass(frozen=True)
class WorkloadSpec:
    """Shape of one workload before scaling."""

    name: str
    files: int
    lines_per_file: int
    line_chars: int


@dataclass(frozen=True)
class Workload:
    """A generated workload on disk, with the counts every implementation must reproduce."""

    name: str
    path: Path
    files: int
    lines: int
    records: int
    bytes: int


WORKLOADS: dict[str, WorkloadSpec] = {
    "W1": WorkloadSpec("W1", files=200, lines_per_file=200, line_chars=60),
    "W2": WorkloadSpec("W2", files=2_000, lines_per_file=10, line_chars=60),
    "W3": WorkloadSpec("W3", files=20, lines_per_file=20_000, line_chars=60),
}


def scaled_file_count(spec: WorkloadSpec, scale: float) -> int:
    """Number of files for ``spec`` at ``scale``: rounded, never below one."""
    return max(1, round(spec.files * scale))


def _make_line(rng: random.Random, target_chars: int) -> str:
    """One line of words about ``target_chars`` long, with occasional edge-of-line padding."""
    words: list[str] = []
    length = 0
    # Vary the target a little so lines are "about" the size, not a fixed width.
    target = max(1, target_chars + rng.randint(-15, 15))
    while length < target:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    line = " ".join(words)
    # Leading/trailing whitespace must be stripped from the stored content.
    roll = rng.random()
    if roll < 0.03:
        line = "  " + line
    elif roll < 0.06:
        line = line + " \t"
    return line


def _make_text(rng: random.Random, lines: int, line_chars: int) -> tuple[str, int]:
    """Return (text with "\\n" endings, number of non-blank lines) for one file."""
    out: list[str] = []
    records = 0
    for _ in range(lines):
        roll = rng.random()
        if roll < 0.03:
            out.append("")
        elif roll < 0.05:
            out.append(" \t ")
        else:
            out.append(_make_line(rng, line_chars))
            records += 1
    return "\n".join(out) + "\n", records


def _encode(rng: random.Random, text: str) -> bytes:
    """Apply this file's line-ending style and optional BOM, then encode as UTF-8."""
    style = rng.random()
    if style < 0.15:
        text = text.replace("\n", "\r\n")
    elif style < 0.20:
        text = text.replace("\n", "\r")
    data = text.encode("utf-8")
    if rng.random() < 0.10:
        data = b"\xef\xbb\xbf" + data
    return data


def _file_relpath(index: int) -> Path:
    """Relative path of file ``index``: ``part-NNN/file-NNNNN.txt``."""
    return Path(f"part-{index // FILES_PER_FOLDER:03d}") / f"file-{index:05d}.txt"


def _manifest_path(folder: Path) -> Path:
    """The manifest lives beside (not inside) the input folder so it is never processed."""
    return folder.with_name(folder.name + ".manifest.json")


def _load_cached(folder: Path, key: dict[str, object]) -> Workload | None:
    """Return the cached workload if ``folder`` was built with exactly ``key``."""
    manifest = _manifest_path(folder)
    if not (manifest.is_file() and folder.is_dir()):
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("key") != key:
        return None
    counts = data["counts"]
    return Workload(path=folder, **counts)


def generate(name: str, root: Path, scale: float = 1.0, *, force: bool = False) -> Workload:
    """Build workload ``name`` under ``root`` (reusing an identical earlier build).

    Returns the workload's folder and its expected counts. The folder name encodes the
    scale so different scales can live side by side in one cache root.
    """
    spec = WORKLOADS[name]
    n_files = scaled_file_count(spec, scale)
    folder = Path(root) / f"{name}-{n_files}files"
    key = {"generator": GENERATOR_VERSION, "spec": asdict(spec), "files": n_files}
    if not force and (cached := _load_cached(folder, key)) is not None:
        return cached

    if folder.exists():
        shutil.rmtree(folder)
    # One RNG per workload, seeded from the name, so W2's content does not depend on
    # whether W1 was generated first.
    rng = random.Random(f"{BASE_SEED}:{name}")
    lines = records = size = 0
    for index in range(n_files):
        text, file_records = _make_text(rng, spec.lines_per_file, spec.line_chars)
        data = _encode(rng, text)
        target = folder / _file_relpath(index)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        lines += spec.lines_per_file
        records += file_records
        size += len(data)

    workload = Workload(name, folder, n_files, lines, records, size)
    counts = {k: v for k, v in asdict(workload).items() if k != "path"}
    # Written last: a build interrupted half-way has no manifest and is rebuilt next time.
    _manifest_path(folder).write_text(json.dumps({"key": key, "counts": counts}), "utf-8")
    return workload


def parse_names(text: str) -> list[str]:
    """Parse a comma-separated workload list, rejecting unknown names."""
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        raise ValueError(f"unknown workloads {unknown}; choose from {sorted(WORKLOADS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: build the requested workloads and print their counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to build the workloads in")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies file counts")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="e.g. W1,W3")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    for name in parse_names(args.workloads):
        workload = generate(name, args.dest, args.scale, force=args.force)
        print(json.dumps({**asdict(workload), "path": str(workload.path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
