"""The test suite of prefect_pipeline."""
