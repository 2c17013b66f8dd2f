"""MedSegRWKV backend: cardiac cine MRI segmentation and motion-artifact grading."""

__version__ = "0.1.0"

# ACDC convention, also the network output order (docs/design.md §4).
LABELS = {0: "background", 1: "RV cavity", 2: "LV myocardium", 3: "LV cavity"}
# Short names of the structures in metrics, tables and model cards.
STRUCTURES = {1: "RV", 2: "Myo", 3: "LV"}
