"""Finding input files under a directory: streamed, sorted, and safe.

Directories are walked one at a time in sorted order (runs are reproducible and the list
is never built whole); hidden names are skipped; symlinks are followed only when they stay
inside the root; FIFOs, sockets and devices are reported and never opened (opening a FIFO
blocks). Each input gets the JSON path job A writes: inputs keep their folder relative to
the root under the output directory, so files that share a name in different folders never
clash, and two files in one folder whose stems clash (``a.txt``, ``a.md``) keep their full
names (``a.txt_processed.json``, ``a.md_processed.json``).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prefect_pipeline.exceptions import UsageError
from prefect_pipeline.jobs.document import OUTPUT_SUFFIX


@dataclass(frozen=True)
class Found:
    """An input file and where its JSON goes."""

    path: str
    output_path: str
    size: int
    mtime_ns: int


def printable(path: str | os.PathLike[str]) -> str:
    """A path as text that can be printed and stored: bytes that are not UTF-8 (a name
    made on another system) appear as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def utf8_name(path: str) -> bool:
    """Whether a path's bytes are UTF-8 text. Paths are stored, printed and sent to Prefect
    as text, so a name that is not (Python holds its bytes as surrogates) cannot be an
    input; it is reported instead of stopping the run."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NOT_UTF8 = "file name is not valid UTF-8 (rename it; paths are stored as text)"


@dataclass(frozen=True)
class Ignored:
    """Something under the root that is not an input (a FIFO, an escaping symlink...), or
    that could not be looked at (``unreadable``: a folder that cannot be listed, a name that
    cannot be stat'ed), so inputs under it may have been missed."""

    path: str
    reason: str
    unreadable: bool = False


def stem_of(name: str) -> str:
    """``PurePath(name).stem`` of a file name, without making a path (once per file)."""
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def output_names(names: Iterable[str]) -> dict[str, str]:
    """Map each file name of one folder to its JSON name, deterministically and uniquely."""
    names = sorted(names)
    stems: dict[str, int] = {}
    for name in names:
        stem = stem_of(name)
        stems[stem] = stems.get(stem, 0) + 1
    taken: set[str] = set()
    result = {}
    for name in names:
        stem = stem_of(name)
        base = stem if stems[stem] == 1 else name
        candidate = f"{base}{OUTPUT_SUFFIX}"
        counter = 2
        while candidate in taken:  # e.g. "a.txt" (stem clash) vs "a.txt.md" (stem "a.txt")
            candidate = f"{base}-{counter}{OUTPUT_SUFFIX}"
            counter += 1
        taken.add(candidate)
        result[name] = candidate
    return result


def folder_output_names(folder: Path) -> dict[str, str]:
    """``output_names`` of every visible regular file in ``folder``."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return {}
    return output_names(
        e.name
        for e in entries
        if not e.name.startswith(".") and utf8_name(e.name) and e.is_file(follow_symlinks=True)
    )


def iter_inputs(
    root: Path | str,
    output_root: Path | str,
    *,
    pattern: str = "*",
    recursive: bool = True,
    exclude: Iterable[Path | str] = (),
) -> Iterator[Found | Ignored]:
    """Yield the inputs under ``root`` (and what was ignored), folder by folder.

    Each input's JSON goes to ``output_root`` / its folder relative to ``root``. Paths in
    ``exclude`` (the output directory, the database) are never inputs.
    """
    root_path = Path(os.path.abspath(root))
    if not root_path.exists():
        raise UsageError(f"{root_path}: no such directory")
    if not root_path.is_dir():
        raise UsageError(f"{root_path}: not a directory")
    real_root = Path(os.path.realpath(root_path))
    out = Path(os.path.abspath(output_root))
    excluded = {os.path.realpath(p) for p in exclude}
    yield from _walk(root_path, real_root, root_path, out, pattern, recursive, excluded)


def _unreadable(exc: OSError) -> bool:
    """Whether a folder or name that could not be looked at may hide inputs: refused
    (permissions, an I/O error), not gone (removed meanwhile) or a link that leads nowhere
    (dangling, a loop), which are reported and ignored like any other non-input."""
    return exc.errno in (errno.EACCES, errno.EPERM, errno.EIO)


def _found_itself(real: str, real_root: Path, pattern: str, recursive: bool) -> bool:
    """Whether the walk finds the file at ``real`` (a symlink's target, inside the root)
    under its own name: in a folder it walks, not hidden, matching ``pattern``."""
    if not _inside(real, real_root) or not os.path.isfile(real):
        return False
    parts = os.path.relpath(real, real_root).split(os.sep)
    if any(part.startswith(".") for part in parts) or not (recursive or len(parts) == 1):
        return False
    return fnmatch.fnmatch(parts[-1], pattern)


def _inside(real: str, real_root: Path) -> bool:
    return real == str(real_root) or real.startswith(str(real_root) + os.sep)


def _walk(
    folder: Path,
    real_root: Path,
    root: Path,
    out: Path,
    pattern: str,
    recursive: bool,
    excluded: set[str],
) -> Iterator[Found | Ignored]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        yield Ignored(str(folder), f"cannot list folder ({exc.strerror})", _unreadable(exc))
        return
    files: list[tuple[str, os.stat_result]] = []
    # Every regular file's name, matched or not: output names must not depend on --pattern,
    # or a.txt and a.md run by two commands with different patterns would share a JSON.
    regular: list[str] = []
    subfolders: list[Path] = []
    real_folder = os.path.realpath(folder)
    # Per file, text paths only (``entry.path`` is the folder's path joined with the name):
    # a pathlib join and its str() cost more than the rest of a small file's discovery.
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = entry.path
        if not utf8_name(entry.name):
            yield Ignored(printable(path), NOT_UTF8)
            continue
        # Only a symlink's real path differs from its folder's (realpath per file cost a
        # stat of every component of its path, ~15% of the writer's time on small files).
        is_link = entry.is_symlink()
        real = os.path.realpath(path) if is_link else os.path.join(real_folder, entry.name)
        if real in excluded or any(real.startswith(e + os.sep) for e in excluded):
            continue
        if is_link:
            if not _inside(real, real_root):
                yield Ignored(path, "symlink points outside the input directory")
                continue
            if os.path.isdir(real):
                # A link to a folder inside the root is reached through the folder itself;
                # following it could loop.
                continue
            if _found_itself(real, real_root, pattern, recursive):
                # Its file is an input of its own: run twice, both would write the one
                # batch of that source file, and with --force each would replace the
                # other's.
                shown = os.path.relpath(real, real_root)
                yield Ignored(path, f"symlink to {shown}, which is an input itself")
                continue
        try:
            st = os.stat(path)
        except OSError as exc:
            yield Ignored(path, f"cannot stat ({exc.strerror})", _unreadable(exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            if recursive:
                subfolders.append(Path(path))
        elif stat.S_ISREG(st.st_mode):
            regular.append(entry.name)
            if fnmatch.fnmatch(entry.name, pattern):
                files.append((entry.name, st))
        elif fnmatch.fnmatch(entry.name, pattern):
            kind = (
                "FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "socket"
                if stat.S_ISSOCK(st.st_mode)
                else "device file"
            )
            yield Ignored(path, f"{kind}, not a regular file")
    if files:
        in_folder = os.fspath(folder)
        out_folder = os.fspath(out / folder.relative_to(root))
        names = output_names(regular)
        for name, st in files:
            yield Found(
                path=os.path.join(in_folder, name),
                output_path=os.path.join(out_folder, names[name]),
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
            )
    for sub in subfolders:
        yield from _walk(sub, real_root, root, out, pattern, recursive, excluded)


def given_files(paths: Iterable[Path | str], output_dir: Path) -> Iterator[Found | Ignored]:
    """Found entries for explicit files; their JSON mirrors each file's absolute folder
    under ``output_dir`` and is named as a folder run names it (the stems of the folder's
    other files count)."""
    names_in: dict[Path, dict[str, str]] = {}
    for raw in paths:
        path = Path(os.path.abspath(raw))
        if not utf8_name(str(path)):
            yield Ignored(printable(path), NOT_UTF8)
            continue
        try:
            st: os.stat_result | None = path.stat()
        except OSError:
            st = None
        folder = output_dir / path.parent.relative_to(path.anchor)
        if path.parent not in names_in:
            names_in[path.parent] = folder_output_names(path.parent)
        name = names_in[path.parent].get(path.name) or output_names([path.name])[path.name]
        yield Found(
            str(path), str(folder / name), st.st_size if st else 0, st.st_mtime_ns if st else 0
        )
