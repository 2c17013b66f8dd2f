"""Interactive correction: refine one structure's mask with positive and negative clicks."""

from medsegrwkv.interactive.clicks import Click, click_maps, next_click
from medsegrwkv.interactive.refiner import (
    INPUT_CHANNELS, STRUCTURES, InteractiveImage, Refiner, VoxelClick, refinement_input,
)

__all__ = ["Click", "click_maps", "next_click", "INPUT_CHANNELS", "STRUCTURES", "InteractiveImage", "Refiner",
           "VoxelClick", "refinement_input"]
