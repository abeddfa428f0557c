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
#: How a skipped input's reason begins when it is REJECTED and its file unchanged (the
#: summary lists those: they are failures a person may still have to look at).
REJECTED_BEFORE = "rejected by its last run"
