"""What a segmentation manifest says about its labels, so Slicer shows named, coloured segments.

Terminology: DICOM CID 7152 (cardiac structure segmentation types) codes the ventricles as
SNOMED CT 87878005 "Left ventricle" and 53085002 "Right ventricle"; with no widely used
pre-coordinated "cavity" concept there, the ventricle codes stand for the blood pool, and the
myocardium is SNOMED CT 74281007 "Myocardium" with the left ventricle as anatomic region.
"""

from __future__ import annotations

from typing import Any

from medsegrwkv import LABELS

ANATOMICAL_STRUCTURE = {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"}

# The names are the package's (medsegrwkv.LABELS); this adds colours and terminology codes.
SEGMENTATION_LABELS: list[dict[str, Any]] = [
    {"value": 1, "name": LABELS[1], "color": [0.29, 0.53, 0.91],
     "category": ANATOMICAL_STRUCTURE,
     "type": {"scheme": "SCT", "code": "53085002", "meaning": "Right ventricle"}},
    {"value": 2, "name": LABELS[2], "color": [0.80, 0.36, 0.29],
     "category": ANATOMICAL_STRUCTURE,
     "type": {"scheme": "SCT", "code": "74281007", "meaning": "Myocardium"},
     "region": {"scheme": "SCT", "code": "87878005", "meaning": "Left ventricle"}},
    {"value": 3, "name": LABELS[3], "color": [0.98, 0.82, 0.33],
     "category": ANATOMICAL_STRUCTURE,
     "type": {"scheme": "SCT", "code": "87878005", "meaning": "Left ventricle"}},
]

ACDC_LICENCE = ("Trained on the ACDC training set (Bernard et al., IEEE TMI 37(11), 2018), redistributed "
                "under CC BY-NC-SA 4.0: research and non-commercial use only; cite the paper.")
