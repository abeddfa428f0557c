"""The statuses stored in the tables (a module of its own: importable without Peewee)."""

# processing_batches and processed_records
PENDING = "pending"
FINALIZED = "finalized"
# pipeline_inputs (also PENDING)
PROCESSING = "processing"
DONE = "done"
FAILED = "failed"
