"""``PipelineRunner``: the Python API. Holds the configuration and runs pipelines."""

from __future__ import annotations

import atexit
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.logs import log_level_scope
from prefect_pipeline.pipeline.definition import PipelineDefinition, default_pipeline


class PipelineRunner:
    """Run the pipeline from Python.

    >>> runner = PipelineRunner(output_dir=Path("out"), db_path=Path("p.db"), log_level="OFF")
    >>> result = runner.run(Path("input.txt"))            # A -> B -> C
    >>> result.success, result.output                      # (True, <batch id>)

    Without ``PREFECT_API_URL`` the runner starts one temporary Prefect server on its first
    run and stops it on ``close()`` (or at exit); use it as a context manager to bound that.

    ``log_level`` applies to the pipeline's, Prefect's and Dask's loggers during each run
    (the caller's levels are restored after it); where log records go is the caller's
    logging configuration, which the runner never changes.
    """

    def __init__(
        self,
        output_dir: Path | str | None = None,
        db_path: Path | str | None = None,
        log_level: str | None = None,
        *,
        definition: PipelineDefinition | None = None,
        config: PipelineConfig | None = None,
    ) -> None:
        overrides: dict[str, Any] = {
            "output_dir": output_dir,
            "db_path": db_path,
            "log_level": log_level,
        }
        if config is not None:
            # Built anew (not model_copy) so that the overrides are validated too.
            given = {k: v for k, v in overrides.items() if v is not None}
            self.config = PipelineConfig(**{**config.model_dump(), **given})
        else:
            self.config = PipelineConfig.from_env(**overrides)
        self.definition = definition or default_pipeline()
        self._api: Any = None

    @property
    def available_jobs(self) -> list[str]:
        """The job names, in order."""
        return self.definition.names

    def _ensure_api(self) -> None:
        if self._api is None:
            from prefect_pipeline.pipeline.server import PrefectApi

            self._api = PrefectApi().__enter__()
            atexit.register(self.close)
            self._api.wait()

    def close(self) -> None:
        """Stop the temporary Prefect server, if this runner started one."""
        api, self._api = self._api, None
        if api is not None:
            api.__exit__(None, None, None)

    def __enter__(self) -> PipelineRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Single input -------------------------------------------------------------------

    def run(
        self,
        input_data: Any,
        start_from: str | None = None,
        stop_after: str | None = None,
        *,
        force: bool = False,
    ) -> Any:
        """Run the jobs from ``start_from`` through ``stop_after`` on one input.

        Returns a ``PipelineResult`` (``success``, ``output``, ``error``, ``results``).
        """
        from prefect_pipeline.pipeline.single import precheck

        # Usage errors and a rejected input before any start-up (Prefect, its server).
        early = precheck(self.definition.job_range(start_from, stop_after), input_data, self.config)
        if early is not None:
            return early
        from prefect_pipeline.pipeline.flows import run_jobs

        with log_level_scope(self.config.log_level):
            self._ensure_api()
            return run_jobs(
                input_data,
                self.definition,
                self.config,
                start_from=start_from,
                stop_after=stop_after,
                force=force,
            )

    def run_full(self, input_data: Any, **kwargs: Any) -> Any:
        """Every job, first to last."""
        return self.run(input_data, **kwargs)

    def run_single(self, job: str, input_data: Any, **kwargs: Any) -> Any:
        """One job only."""
        return self.run(input_data, start_from=job, stop_after=job, **kwargs)

    def run_from(self, job: str, input_data: Any, **kwargs: Any) -> Any:
        """From ``job`` to the last job."""
        return self.run(input_data, start_from=job, **kwargs)

    def run_until(self, job: str, input_data: Any, **kwargs: Any) -> Any:
        """From the first job through ``job``."""
        return self.run(input_data, stop_after=job, **kwargs)

    # Many inputs --------------------------------------------------------------------

    def run_parallel(self, paths: Path | str | Iterable[Path | str], **options: Any) -> Any:
        """Run the chain over a directory (or an iterable of files) on a Dask cluster.

        Options are those of ``run_parallel_from_files``; returns a ``RunSummary``.
        """
        from prefect_pipeline.pipeline.parallel import run_parallel_from_files

        with log_level_scope(self.config.log_level):
            return run_parallel_from_files(
                paths, self.config, definition=self.definition, **options
            )

    def drain_database(self, **options: Any) -> Any:
        """Run the chain on the inputs queued in the database; returns a ``RunSummary``."""
        from prefect_pipeline.pipeline.parallel import run_parallel_from_database

        with log_level_scope(self.config.log_level):
            return run_parallel_from_database(self.config, definition=self.definition, **options)
