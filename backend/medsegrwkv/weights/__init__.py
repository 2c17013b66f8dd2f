"""Trained weights: safetensors + a JSON manifest with a SHA-256 that is checked at load."""

from medsegrwkv.weights.store import (
    MODELS_DIR, WeightsStatus, load_manifest, load_model, save_weights, sha256_file, weights_status,
)

__all__ = ["MODELS_DIR", "WeightsStatus", "load_manifest", "load_model", "save_weights", "sha256_file",
           "weights_status"]
