"""The statuses stored in the tables (a module of its own: importable without Peewee)."""

# processing_batches and processed_records
PENDING = "pending"
FINALIZED = "finalized"
# pipeline_inputs (also PENDING)
PROCESSING = "processing"
DONE = "done"
FAILED = "failed"
# pipeline_inputs.outcome: how an input's last run ended ("processed" and "unchanged" once
# done; REJECTED once failed on its own content, which only a change of the file (or
# ``requeue --failed``, or ``--force``) makes worth running again)
REJECTED = "rejected"
#: ``REJECTED`` for a content too large for a --max-line-bytes (``rejected_outcome``).
_TOO_LARGE = f"{REJECTED} (--max-line-bytes "


def rejected_outcome(max_line_bytes: int | None = None) -> str:
    """The outcome of an input rejected for its content: ``REJECTED``, with the
    --max-line-bytes it was too large for when only that limit refused it."""
    return REJECTED if max_line_bytes is None else f"{_TOO_LARGE}{max_line_bytes})"


def _too_large_for(outcome: str | None) -> int | None:
    """The --max-line-bytes an input of ``outcome`` was too large for, if that was all."""
    if outcome is None or not outcome.startswith(_TOO_LARGE) or not outcome.endswith(")"):
        return None
    limit = outcome[len(_TOO_LARGE) : -1]
    return int(limit) if limit.isdigit() else None


def still_rejected(outcome: str | None, max_line_bytes: int | None) -> bool:
    """Whether an input of ``outcome`` would be rejected again, as long as its file is
    unchanged, by a run whose limit is ``max_line_bytes`` (None: not known): always, unless
    it was too large for a smaller limit than this one."""
    if outcome == REJECTED:
        return True
    limit = _too_large_for(outcome)
    return limit is not None and (max_line_bytes is None or max_line_bytes <= limit)


def rejected_reason(outcome: str | None, again: str = "runs it again") -> str:
    """Why an unchanged input that its content failed is skipped, and what ``again`` (runs
    it, queues it) once more; starts with ``REJECTED_BEFORE``."""
    ways = "requeue --failed or --force"
    limit = _too_large_for(outcome)
    if limit is not None:
        ways = f"requeue --failed, --force or a --max-line-bytes above {limit} bytes"
    return f"{REJECTED_BEFORE} and unchanged since ({ways} {again})"


#: How a skipped input's reason begins when it is REJECTED and its file unchanged (the
#: summary lists those: they are failures a person may still have to look at).
REJECTED_BEFORE = "rejected by its last run"
