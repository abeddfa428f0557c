"""Deterministic benchmark workloads: folders of text files shaped to stress different costs.

* ``W1`` - 200 files x 200 lines: the balanced, typical case.
* ``W2`` - 2,000 files x 10 lines: per-file overhead (scheduling, transactions, small writes).
* ``W3`` - 20 files x 20,000 lines: per-record cost (parsing, JSON size, bulk inserts).
* ``W4`` - one 2 GB file of ~80-character lines: a file too big to hold in memory.
* ``W4s`` - W4's very lines, in the same order, cut into files of 64 KiB: the same bytes as
  small files, so a run's W4 MB/s over its W4s MB/s is "a large file against small files
  of the same lines".
* ``W5`` - one 2 GB file of ~10-character lines: the most records per byte.
* ``W5s`` - W5's lines cut into files of 64 KiB, as W4s is W4's.
* ``W6`` - ten 1 GB files of ~80-character lines: many large inputs in flight at once.
* ``STDLIB`` - the ``.py`` files of the running interpreter's standard library (not
  ``site-packages``), copied: real source text instead of generated words.

For W1-W3 ``scale`` multiplies the file counts only (at least one file), so lines per file
and hence the per-file work stay the same whatever the scale. For W4-W6 it multiplies the
size of each big file instead (``--scale 0.001`` makes W4 ~2 MB), and for W4s/W5s the
total they cut into 64 KiB files (so their file count follows). For STDLIB a scale below 1
takes that share of the files, evenly spread over the sorted list; 1 or more takes them
all. Generated files are spread over sub-folders of ``FILES_PER_FOLDER`` files each so
output paths keep a realistic relative layout; STDLIB keeps the standard library's own.

The text is seeded-random, so every invocation on any machine builds byte-identical inputs.
A few lines are blank or whitespace-only, some files use CRLF or lone-CR line endings and
some start with a UTF-8 BOM, so the "records" are not simply "lines" and every
implementation has to get the parsing rules right for the row counts to agree. The big
files pick once for the whole workload: W4 (and W4s) have CRLF endings and a BOM, W5, W5s
and W6 plain LF. STDLIB depends on the interpreter: its manifest records the Python
version, the folder copied, the file count and bytes, and the files left out because they
are not UTF-8 text (a few of the test suite's files are deliberately in other encodings).

Run ``python benchmarks/workloads.py DEST [--scale S] [--workloads W1,W4]`` to build them
(W1-W3 unless told otherwise).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import json
import platform
import random
import shutil
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

FILES_PER_FOLDER = 100
BASE_SEED = 20240601
# Manifest format version: bump it when the generator changes so stale caches are rebuilt.
GENERATOR_VERSION = 3
BOM = b"\xef\xbb\xbf"
# Big files are written from a pool of seeded lines, drawn at random a block at a time: a
# 2 GB file is 25-180 million lines, too many to make one by one (minutes instead of
# seconds), and a block at a time keeps memory small however big the file.
POOL_LINES = 65_536
BLOCK_LINES = 65_536
GB = 1_000_000_000
KIB = 1024
#: Smallest big file at any scale.
MIN_BIG_FILE_BYTES = 1_000
#: Folders of the standard library that are not the standard library.
STDLIB_SKIP = frozenset({"site-packages", "dist-packages"})

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
    #: Set for a workload of big files: the size of each in bytes at scale 1. ``scale``
    #: then multiplies this size (``lines_per_file`` is unused), not the file count.
    file_bytes: int = 0
    #: Big files only (small ones pick per file, at random): line ending and leading BOM.
    newline: str = "\n"
    bom: bool = False
    #: How far (+/- characters) line lengths stray from ``line_chars``.
    jitter: int = 15
    #: Set for a workload of the lines of another (a one-file big workload), in the same
    #: order, cut into files of ``piece_bytes`` (each with that workload's BOM, if any).
    #: The line shape and size come from that workload; the fields above are unused.
    split_of: str = ""
    piece_bytes: int = 0
    #: ``"stdlib"``: copied from the running interpreter's standard library, not generated.
    source: str = ""


@dataclass(frozen=True)
class Workload:
    """A generated workload on disk, with the counts every implementation must reproduce."""

    name: str
    path: Path
    files: int
    lines: int
    records: int
    bytes: int
    #: Where the files came from when that is worth saying (STDLIB).
    note: str = ""


def _split(of: str, piece_bytes: int = 64 * KIB) -> WorkloadSpec:
    """The spec of workload ``of``'s lines cut into files of ``piece_bytes``."""
    return WorkloadSpec(f"{of}s", 0, 0, 0, split_of=of, piece_bytes=piece_bytes)


WORKLOADS: dict[str, WorkloadSpec] = {
    "W1": WorkloadSpec("W1", files=200, lines_per_file=200, line_chars=60),
    "W2": WorkloadSpec("W2", files=2_000, lines_per_file=10, line_chars=60),
    "W3": WorkloadSpec("W3", files=20, lines_per_file=20_000, line_chars=60),
    # A Windows export: CRLF endings and a BOM, so every streaming reader meets CRLFs split
    # across its chunk boundaries.
    "W4": WorkloadSpec("W4", 1, 0, line_chars=80, file_bytes=2 * GB, newline="\r\n", bom=True),
    "W4s": _split("W4"),
    # A target of 9 +/- 4 makes lines of 10.2 characters on average (blank ones included:
    # a line stops at the first word that reaches the target, spaces counted).
    "W5": WorkloadSpec("W5", 1, 0, line_chars=9, file_bytes=2 * GB, jitter=4),
    "W5s": _split("W5"),
    "W6": WorkloadSpec("W6", 10, 0, line_chars=80, file_bytes=GB),
    "STDLIB": WorkloadSpec("STDLIB", 0, 0, 0, source="stdlib"),
}

#: What runs when no workloads are named: the big ones need ~4 GB of input and far more
#: for outputs, so they are asked for by name.
DEFAULT_WORKLOADS = ("W1", "W2", "W3")


def scaled_file_count(spec: WorkloadSpec, scale: float) -> int:
    """Number of files for ``spec`` at ``scale``: rounded, never below one.

    0 for the workloads whose count is known only once built (W4s, W5s, STDLIB).
    """
    if spec.split_of or spec.source:
        return 0
    if spec.file_bytes:
        return spec.files
    return max(1, round(spec.files * scale))


def scaled_file_bytes(spec: WorkloadSpec, scale: float) -> int:
    """Target size of each of a big workload's files at ``scale`` (for W4s, W5s: of all of
    them together); 0 for the others."""
    if spec.split_of:
        return scaled_file_bytes(WORKLOADS[spec.split_of], scale)
    if not spec.file_bytes:
        return 0
    return max(MIN_BIG_FILE_BYTES, round(spec.file_bytes * scale))


def _make_line(rng: random.Random, target_chars: int, jitter: int = 15) -> str:
    """One line of words about ``target_chars`` long, with occasional edge-of-line padding."""
    words: list[str] = []
    length = 0
    # Vary the target a little so lines are "about" the size, not a fixed width.
    target = max(1, target_chars + rng.randint(-jitter, jitter))
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


def _make_any_line(rng: random.Random, line_chars: int, jitter: int = 15) -> str:
    """A line of text, or (5% of the time) a blank or whitespace-only one."""
    roll = rng.random()
    if roll < 0.03:
        return ""
    if roll < 0.05:
        return " \t "
    return _make_line(rng, line_chars, jitter)


def _make_text(rng: random.Random, lines: int, line_chars: int) -> tuple[str, int]:
    """Return (text with "\\n" endings, number of non-blank lines) for one file."""
    out = [_make_any_line(rng, line_chars) for _ in range(lines)]
    records = sum(1 for line in out if line.strip())
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


def _write_small_files(
    folder: Path, rng: random.Random, spec: WorkloadSpec, n_files: int
) -> tuple[int, int, int]:
    """Write ``n_files`` files of ``spec.lines_per_file`` lines; return (lines, records, bytes)."""
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
    return lines, records, size


#: Pools already made in this process, by (the state of the RNG before, the line shape):
#: W4 and W4s draw the same pool, and making one takes a second or two.
_POOLS: dict[tuple[object, ...], tuple[list[bytes], list[bool], object]] = {}


def _line_pool(rng: random.Random, spec: WorkloadSpec) -> tuple[list[bytes], list[bool]]:
    """``POOL_LINES`` seeded lines of ``spec``'s shape: (encoded with their line ending,
    whether each is a record). ``rng`` ends in the same state whether the pool was made
    now or taken from ``_POOLS``."""
    key = (rng.getstate(), spec.line_chars, spec.jitter, spec.newline)
    if key not in _POOLS:
        pool = [_make_any_line(rng, spec.line_chars, spec.jitter) for _ in range(POOL_LINES)]
        encoded = [(line + spec.newline).encode("utf-8") for line in pool]
        _POOLS[key] = (encoded, [bool(line.strip()) for line in pool], rng.getstate())
    encoded, is_record, state = _POOLS[key]
    rng.setstate(state)  # type: ignore[arg-type]
    return encoded, is_record


def _draw_lines(rng: random.Random, encoded: list[bytes], budget: int) -> Iterator[list[int]]:
    """Pool indexes of the lines of one big file, ``BLOCK_LINES`` at a time: whole lines
    until they total at least ``budget`` bytes (the last block cut after the line that
    reaches it)."""
    written = 0
    while written < budget:
        picks = rng.choices(range(POOL_LINES), k=BLOCK_LINES)
        ends = list(itertools.accumulate(map(len, map(encoded.__getitem__, picks))))
        if written + ends[-1] > budget:
            picks = picks[: bisect.bisect_left(ends, budget - written) + 1]
        written += ends[len(picks) - 1]
        yield picks


def _write_big_files(
    folder: Path, rng: random.Random, spec: WorkloadSpec, n_files: int, size: int
) -> tuple[int, int, int]:
    """Write ``n_files`` files of at least ``size`` bytes each (whole lines); return
    (lines, records, bytes).

    Lines are drawn at random from a pool of ``POOL_LINES`` seeded lines, ``BLOCK_LINES``
    at a time, and written as they are drawn: fast, and memory stays small.
    """
    encoded, is_record = _line_pool(rng, spec)
    bom = BOM if spec.bom else b""
    lines = records = written = 0
    for index in range(n_files):
        target = folder / _file_relpath(index)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            written += out.write(bom)
            for picks in _draw_lines(rng, encoded, size - len(bom)):
                written += out.write(b"".join(map(encoded.__getitem__, picks)))
                lines += len(picks)
                records += sum(map(is_record.__getitem__, picks))
    return lines, records, written


def _write_split_files(
    folder: Path, rng: random.Random, spec: WorkloadSpec, size: int, piece: int
) -> tuple[int, int, int, int]:
    """The lines ``_write_big_files`` writes for one file of ``spec`` (same seed, same
    draws), cut into files of at least ``piece`` bytes (whole lines; the last file is
    what remains), each starting with ``spec``'s BOM if it has one. Returns (files, lines,
    records, bytes)."""
    encoded, is_record = _line_pool(rng, spec)
    bom = BOM if spec.bom else b""
    files = lines = records = written = 0
    out = None
    in_file = 0
    try:
        for picks in _draw_lines(rng, encoded, size - len(bom)):
            ends = list(itertools.accumulate(map(len, map(encoded.__getitem__, picks))))
            block = b"".join(map(encoded.__getitem__, picks))
            start = offset = 0  # first line of the block not written yet, and its offset
            while start < len(picks):
                if out is None:
                    target = folder / _file_relpath(files)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    out = target.open("wb")
                    files += 1
                    in_file = out.write(bom)
                # The line that brings this file to ``piece`` bytes, if the block has it.
                cut = bisect.bisect_left(ends, offset + piece - in_file, lo=start)
                stop = min(cut + 1, len(picks))
                end = ends[stop - 1]
                in_file += out.write(block[offset:end])
                lines += stop - start
                records += sum(map(is_record.__getitem__, picks[start:stop]))
                start, offset = stop, end
                if in_file >= piece:
                    written += in_file
                    out.close()
                    out = None
    finally:
        if out is not None:
            written += in_file
            out.close()
    return files, lines, records, written


def _text_counts(data: bytes) -> tuple[int, int]:
    """(lines, records) of one input file by the pipeline's rules: a leading BOM dropped,
    lines split on CRLF, CR and LF only, a record per line with something besides
    whitespace."""
    text = data.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    split = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    records = sum(1 for line in split if line.strip())
    return len(split) - (split[-1] == ""), records


def stdlib_files(root: Path) -> list[Path]:
    """The standard library's ``.py`` files under ``root``, relative, in sorted order:
    not under ``site-packages`` (nor ``dist-packages``), nor hidden."""
    return sorted(
        (
            relative
            for path in root.rglob("*.py")
            if path.is_file()
            and not STDLIB_SKIP & set((relative := path.relative_to(root)).parts)
            and not any(part.startswith(".") for part in relative.parts)
        ),
        key=Path.as_posix,
    )


def _stdlib_key(root: Path, chosen: list[Path]) -> str:
    """A digest of the chosen files' names and sizes: another interpreter, or an updated
    one, rebuilds the copy."""
    listing = hashlib.sha256()
    for relative in chosen:
        listing.update(f"{relative.as_posix()}\t{(root / relative).stat().st_size}\n".encode())
    return listing.hexdigest()


def _spread(items: list[Path], scale: float) -> list[Path]:
    """All of ``items`` for a scale of 1 or more; else that share of them (at least one),
    evenly spread over the list."""
    if scale >= 1 or not items:
        return items
    count = max(1, round(len(items) * scale))
    return [items[i * len(items) // count] for i in range(count)]


def _generate_stdlib(spec: WorkloadSpec, root: Path, scale: float, force: bool) -> Workload:
    """Copy the running interpreter's standard library ``.py`` files (a share of them
    below scale 1) into a folder of ``root``, keeping their relative paths.

    Files that are not UTF-8 text (a NUL byte, or not UTF-8) are left out and named in the
    note: they would only fail, in every implementation alike.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    every = stdlib_files(stdlib)
    chosen = _spread(every, scale)
    folder = Path(root) / f"{spec.name}-{platform.python_version()}-{len(chosen)}files"
    key: dict[str, object] = {
        "generator": GENERATOR_VERSION,
        "spec": asdict(spec),
        "stdlib": str(stdlib),
        "python": platform.python_version(),
        "listing": _stdlib_key(stdlib, chosen),
    }
    if not force and (cached := _load_cached(folder, key)) is not None:
        return cached
    if folder.exists():
        shutil.rmtree(folder)
    files = lines = records = size = 0
    left_out: list[str] = []
    for relative in chosen:
        data = (stdlib / relative).read_bytes()
        try:
            if b"\x00" in data:
                raise ValueError("NUL byte")
            file_lines, file_records = _text_counts(data)
        except (UnicodeDecodeError, ValueError):
            left_out.append(relative.as_posix())
            continue
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files += 1
        lines += file_lines
        records += file_records
        size += len(data)
    note = (
        # Not the folder's path: it says where this machine keeps its interpreter.
        f"the .py files of Python {platform.python_version()}'s standard library"
        f" (not {' or '.join(sorted(STDLIB_SKIP))})"
    )
    if len(chosen) < len(every):
        note += f", scale {scale:g}: {len(chosen)} of its {len(every)} files, evenly spread"
    if left_out:
        note += f"; left out, not UTF-8 text: {', '.join(left_out)}"
    return _finish(Workload(spec.name, folder, files, lines, records, size, note), key)


def _finish(workload: Workload, key: dict[str, object]) -> Workload:
    """Write the manifest of a built workload (last: an interrupted build has none, and is
    rebuilt next time) and return it."""
    counts = {k: v for k, v in asdict(workload).items() if k != "path"}
    _manifest_path(workload.path).write_text(json.dumps({"key": key, "counts": counts}), "utf-8")
    return workload


def generate(name: str, root: Path, scale: float = 1.0, *, force: bool = False) -> Workload:
    """Build workload ``name`` under ``root`` (reusing an identical earlier build).

    Returns the workload's folder and its expected counts. The folder name encodes the
    scale (file count, or a big file's size) so different scales can live side by side in
    one cache root.
    """
    spec = WORKLOADS[name]
    if spec.source == "stdlib":
        return _generate_stdlib(spec, root, scale, force)
    n_files = scaled_file_count(spec, scale)
    file_bytes = scaled_file_bytes(spec, scale)
    folder = Path(root) / (f"{name}-{file_bytes}bytes" if file_bytes else f"{name}-{n_files}files")
    key: dict[str, object] = {
        "generator": GENERATOR_VERSION,
        "spec": asdict(spec),
        "files": n_files,
    }
    if file_bytes:
        key["file_bytes"] = file_bytes
    if spec.split_of:
        key["lines_of"] = asdict(WORKLOADS[spec.split_of])
    if not force and (cached := _load_cached(folder, key)) is not None:
        return cached

    if folder.exists():
        shutil.rmtree(folder)
    # One RNG per workload, seeded from the name, so W2's content does not depend on
    # whether W1 was generated first; W4s draws W4's, to get the very same lines.
    rng = random.Random(f"{BASE_SEED}:{spec.split_of or name}")
    if spec.split_of:
        source = WORKLOADS[spec.split_of]
        n_files, lines, records, size = _write_split_files(
            folder, rng, source, file_bytes, spec.piece_bytes
        )
    elif file_bytes:
        lines, records, size = _write_big_files(folder, rng, spec, n_files, file_bytes)
    else:
        lines, records, size = _write_small_files(folder, rng, spec, n_files)
    return _finish(Workload(name, folder, n_files, lines, records, size), key)


def parse_names(text: str) -> list[str]:
    """Parse a comma-separated workload list (any case), rejecting unknown names."""
    by_upper = {name.upper(): name for name in WORKLOADS}
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n.upper() not in by_upper]
    if unknown or not names:
        raise ValueError(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    return [by_upper[n.upper()] for n in names]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: build the requested workloads and print their counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to build the workloads in")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies file counts or sizes (see above)"
    )
    parser.add_argument(
        "--workloads", default=",".join(DEFAULT_WORKLOADS), help="e.g. W1,W3 (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    for name in parse_names(args.workloads):
        workload = generate(name, args.dest, args.scale, force=args.force)
        print(json.dumps({**asdict(workload), "path": str(workload.path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
