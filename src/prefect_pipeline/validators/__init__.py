"""Input validation shared by the jobs."""

from prefect_pipeline.validators.input_validators import (
    binary_file,
    decode_text,
    format_bytes,
    invalid_utf8,
    line_too_long,
    open_input,
    read_bytes,
    validate_batch_id,
    validate_document,
    validate_file_path,
)

__all__ = [
    "binary_file",
    "decode_text",
    "format_bytes",
    "invalid_utf8",
    "line_too_long",
    "open_input",
    "read_bytes",
    "validate_batch_id",
    "validate_document",
    "validate_file_path",
]
