"""``RunSummary``: what a parallel run did, read back from the database."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunSummary:
    """Counts of a run. ``total == succeeded + failed + skipped``."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    #: Records written by this run (inputs whose content was already stored add none).
    records: int = 0
    #: Seconds for the whole command, and from its start to the first input committed.
    elapsed_s: float = 0.0
    startup_s: float | None = None
    #: Inputs left pending (interrupted, or retries not yet due).
    pending: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    skipped_inputs: list[dict[str, str]] = field(default_factory=list)
    #: Paths under the input directory that are not inputs (FIFOs, escaping symlinks...).
    ignored_paths: list[dict[str, str]] = field(default_factory=list)
    run_id: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.pending == 0

    @property
    def files_per_s(self) -> float:
        return self.total / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ignored"] = len(self.ignored_paths)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        data["startup_s"] = None if self.startup_s is None else round(self.startup_s, 3)
        data["files_per_s"] = round(self.files_per_s, 1)
        data["records_per_s"] = round(self.records_per_s, 1)
        return data

    def to_text(self) -> str:
        lines = [
            f"{self.succeeded} succeeded, {self.failed} failed, {self.skipped} skipped "
            f"(of {self.total} input(s)); {self.records} record(s) written",
            f"{self.elapsed_s:.1f} s elapsed"
            + (f" ({self.startup_s:.1f} s start-up)" if self.startup_s is not None else "")
            + f"; {self.files_per_s:.1f} files/s, {self.records_per_s:.0f} records/s",
        ]
        if self.pending:
            lines.append(f"{self.pending} input(s) left pending (run drain-db to finish them)")
        for ignored in self.ignored_paths[:20]:
            lines.append(f"ignored {ignored['path']}: {ignored['reason']}")
        if len(self.ignored_paths) > 20:
            lines.append(f"... and {len(self.ignored_paths) - 20} more ignored path(s)")
        for failure in self.failures[:50]:
            lines.append(f"FAILED {failure['input']} (job {failure['job']}): {failure['error']}")
        if len(self.failures) > 50:
            lines.append(f"... and {len(self.failures) - 50} more failure(s); see --json")
        return "\n".join(lines)

    def table_rows(self) -> list[dict[str, Any]]:
        """Rows for a Prefect table artifact."""
        return [
            {"figure": key, "value": value}
            for key, value in (
                ("total", self.total),
                ("succeeded", self.succeeded),
                ("failed", self.failed),
                ("skipped", self.skipped),
                ("records", self.records),
                ("elapsed_s", round(self.elapsed_s, 3)),
                ("startup_s", None if self.startup_s is None else round(self.startup_s, 3)),
                ("ignored", len(self.ignored_paths)),
            )
        ]
