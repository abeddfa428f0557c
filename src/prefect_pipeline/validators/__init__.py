"""Input validation shared by the jobs."""

from prefect_pipeline.validators.input_validators import (
    decode_text,
    read_bytes,
    validate_batch_id,
    validate_document,
    validate_file_path,
)

__all__ = [
    "decode_text",
    "read_bytes",
    "validate_batch_id",
    "validate_document",
    "validate_file_path",
]
