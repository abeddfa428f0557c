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


def still_rejected(outcome: str | None, max_line_bytes: int | None) -> bool:
    """Whether an input of ``outcome`` would be rejected again, as long as its file is
    unchanged, by a run whose limit is ``max_line_bytes`` (None: not known): always, unless
    it was too large for a smaller limit than this one."""
    if outcome == REJECTED:
        return True
    if outcome is None or not outcome.startswith(_TOO_LARGE) or not outcome.endswith(")"):
        return False
    limit = outcome[len(_TOO_LARGE) : -1]
    return limit.isdigit() and (max_line_bytes is None or max_line_bytes <= int(limit))


#: How a skipped input's reason begins when it is REJECTED and its file unchanged (the
#: summary lists those: they are failures a person may still have to look at).
REJECTED_BEFORE = "rejected by its last run"
