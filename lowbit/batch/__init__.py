"""Batch conversion: a TOML manifest of sources x schemes, run on local worker processes or Ray,
resumable, with a JSON report, optional Hub upload with a generated model card."""

from lowbit.batch.manifest import BatchManifest, Job, load_manifest, parse_manifest
from lowbit.batch.report import BatchReport, summary_table
from lowbit.batch.runner import run_batch

__all__ = ["BatchManifest", "BatchReport", "Job", "load_manifest", "parse_manifest", "run_batch",
           "summary_table"]
