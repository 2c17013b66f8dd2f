"""Many studies in one run: `medsegrwkv segment-cohort`, sharded across torchrun ranks."""

from medsegrwkv.cohort.run import CohortRank, list_studies, run_cohort, study_ids, summary_rows

__all__ = ["CohortRank", "list_studies", "run_cohort", "study_ids", "summary_rows"]
