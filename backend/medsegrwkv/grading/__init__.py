"""Respiratory-motion artefact grading: k-space motion simulator, timm graders, training, grading."""

from medsegrwkv.grading.simulator import GRADE_OF_SCORE, MotionParameters, MotionSimulator, score_from_severity

__all__ = ["GRADE_OF_SCORE", "MotionParameters", "MotionSimulator", "score_from_severity"]
