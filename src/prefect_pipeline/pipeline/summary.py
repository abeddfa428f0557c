"""``RunSummary``: what a parallel run did, read back from the database."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prefect_pipeline.clock import local_time
from prefect_pipeline.database.statuses import REJECTED_BEFORE


def rate(count: int, elapsed_s: float) -> float:
    """Per second over the whole elapsed time: the summary's figures and the live
    display's use this one formula."""
    return count / elapsed_s if elapsed_s > 0 else 0.0


def problem(error: str, path: str) -> str:
    """An input's error without its path in front (errors name their input: "PATH: ..."),
    for lines that name the input already."""
    prefix = f"{path}: "
    return error[len(prefix) :] if path and error.startswith(prefix) else error


@dataclass
class RunSummary:
    """Counts of a run. ``total == succeeded + failed + skipped + held``."""

    #: The command whose run this is: ``run-parallel`` or ``drain-db``.
    command: str | None = None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    #: Inputs that needed nothing: unchanged since their last run, their content stored
    #: already, or rejected before (``skipped_inputs`` lists each with its reason).
    skipped: int = 0
    #: Inputs not run because another live command holds them (their outcome is that
    #: command's; a rerun after it ends, or after the lease, takes what it left).
    held: int = 0
    #: Records written by this run (inputs whose content was already stored add none).
    records: int = 0
    #: Seconds for the whole command, and from its start to the first input committed.
    elapsed_s: float = 0.0
    startup_s: float | None = None
    #: Seconds this command spent writing (jobs B and C and the ledger, in their
    #: transactions): what more workers cannot shorten, only more writers (drainers).
    writer_s: float = 0.0
    #: Inputs left pending (interrupted, or retries not yet due).
    pending: int = 0
    #: Inputs a run that stopped early never reached: found under its folder but never
    #: looked at, or still queued for a drain (within its --limit). Not in ``total``.
    #: None: some may be, not counted (a folder too large to walk again in time).
    not_reached: int | None = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    skipped_inputs: list[dict[str, str]] = field(default_factory=list)
    #: input, owner ("pid 123 on host"), until (when its lease runs out unless renewed).
    held_inputs: list[dict[str, str]] = field(default_factory=list)
    #: Paths under the input directory that are not inputs (FIFOs, escaping symlinks...).
    ignored_paths: list[dict[str, str]] = field(default_factory=list)
    #: Paths under the input directory that could not be looked at (a folder that cannot
    #: be listed): inputs there may have been missed, and the command exits 1.
    unreadable_paths: list[dict[str, str]] = field(default_factory=list)
    run_id: str = ""
    #: None when the run reached its end; "interrupted" (Ctrl-C, SIGTERM) or "cancelled"
    #: (in Prefect) when it stopped early and gave back its claims.
    stopped: str | None = None
    #: The run's Prefect flow run, and its page in the Prefect UI when the API has one.
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    #: The Dask dashboard of the run's own cluster, while it ran.
    dashboard_url: str | None = None
    #: Worker processes of the run's own cluster that started and joined it: 0 when the
    #: run ended in the command's process before it needed them (``--workers-after``), or
    #: when those it asked for never joined.
    workers_started: int = 0

    @property
    def files_per_s(self) -> float:
        return rate(self.total, self.elapsed_s)

    @property
    def records_per_s(self) -> float:
        return rate(self.records, self.elapsed_s)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ignored"] = len(self.ignored_paths)
        data["unreadable"] = len(self.unreadable_paths)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        data["startup_s"] = None if self.startup_s is None else round(self.startup_s, 3)
        data["writer_s"] = round(self.writer_s, 3)
        data["files_per_s"] = round(self.files_per_s, 1)
        data["records_per_s"] = round(self.records_per_s, 1)
        return data

    def to_text(self) -> str:
        """The summary as plain text (what is printed when stdout is not a terminal)."""
        return "\n".join(text for text, _ in self.styled_lines())

    def to_rich(self) -> Any:
        """The same lines as a rich ``Text``, styled for a terminal."""
        from rich.text import Text

        return Text("\n").join(Text(text, style=style) for text, style in self.styled_lines())

    def styled_lines(self) -> list[tuple[str, str]]:
        """The summary's lines, each with a rich style for terminals ("" for none)."""
        unfinished = self.pending or self.held or self.not_reached != 0
        broken = self.failed or self.unreadable_paths
        outcome = "bold red" if broken else "bold yellow" if unfinished else "bold green"
        held = f", {self.held} held by another command" if self.held else ""
        lines = [
            (
                f"{self.succeeded} succeeded, {self.failed} failed, {self.skipped} skipped"
                f"{held} (of {self.total} input(s)); {self.records} record(s) written",
                outcome,
            ),
            (
                f"{self.elapsed_s:.1f} s elapsed"
                # The time to the first input committed ("start-up" in the benchmarks):
                # said so, it is not taken for time the run did nothing.
                + (
                    f" (first input stored after {self.startup_s:.1f} s)"
                    if self.startup_s is not None
                    else ""
                )
                + (
                    f"; {self.files_per_s:.1f} files/s, {_per_s(self.records_per_s)} records/s"
                    if self.total
                    else ""  # nothing ran: no rate to give
                ),
                "",
            ),
        ]
        if self.flow_run_url or self.flow_run_id:
            lines.append((f"Prefect flow run: {self.flow_run_url or self.flow_run_id}", "dim"))
        if self.stopped:
            lines.append((f"{self.stopped}: the run stopped before its end", "yellow"))
        if self.pending:
            again = (
                "drain-db again finishes them"
                if self.command == "drain-db"
                else "run the command again, or drain-db, to finish them"
            )
            lines.append((f"{self.pending} input(s) left pending ({again})", "yellow"))
        again = "the next run of this command takes them"
        if self.not_reached:
            lines.append((f"{self.not_reached} input(s) not reached ({again})", "yellow"))
        elif self.not_reached is None:
            uncounted = "more input(s) may not have been reached, not counted"
            lines.append((f"{uncounted} ({again})", "yellow"))
        lines.extend((line, "yellow") for line in self._held_lines())
        rejected = [s for s in self.skipped_inputs if s["reason"].startswith(REJECTED_BEFORE)]
        listed = (
            (self.ignored_paths, 20, "ignored {path}: {reason}", "more ignored path(s)", "dim"),
            (self.unreadable_paths, 20, "cannot read {path}: {reason}",
             "more path(s) that cannot be read", "red"),
            (rejected, 20, "skipped {input}: {reason}", "more rejected before", "yellow"),
            ([{**f, "error": problem(f["error"], f["input"])} for f in self.failures], 50,
             "FAILED {input} (job {job}): {error}", "more failure(s); see --json", "red"),
        )  # fmt: skip
        for entries, shown, line, more, style in listed:
            lines.extend((line.format(**entry), style) for entry in entries[:shown])
            if len(entries) > shown:
                lines.append((f"... and {len(entries) - shown} {more}", style))
        return lines

    def _held_lines(self) -> list[str]:
        """One line per holder: how many inputs, until when, and what to do."""
        holders: dict[str, list[dict[str, str]]] = {}
        for entry in self.held_inputs:
            holders.setdefault(entry["owner"], []).append(entry)
        return [
            f"{len(entries)} input(s) held by {owner} until"
            f" {local_time(max(e['until'] for e in entries))}"
            " (its lease, renewed while it runs): not run; run again once it has finished"
            for owner, entries in holders.items()
        ]

    def table_rows(self) -> list[dict[str, Any]]:
        """Rows for a Prefect table artifact."""
        return [
            {"figure": key, "value": value}
            for key, value in (
                ("total", self.total),
                ("succeeded", self.succeeded),
                ("failed", self.failed),
                ("skipped", self.skipped),
                ("held", self.held),
                ("records", self.records),
                ("elapsed_s", round(self.elapsed_s, 3)),
                ("startup_s", None if self.startup_s is None else round(self.startup_s, 3)),
                ("ignored", len(self.ignored_paths)),
                ("unreadable", len(self.unreadable_paths)),
                ("pending", self.pending),
                ("not_reached", self.not_reached),
                ("dask_dashboard", self.dashboard_url),
            )
        ]


def _per_s(rate: float) -> str:
    """A rate as people read it: whole above ten, a tenth below (3 records in 2 s are not
    "0 records/s")."""
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}"
