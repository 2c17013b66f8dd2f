"""Model zoo. Importing this package registers every architecture with the registry."""

from medsegrwkv.nets import baselines  # noqa: F401
from medsegrwkv.nets import ensemble  # noqa: F401  (after the networks it is made of)
from medsegrwkv.nets import graders  # noqa: F401  (motion graders, task "grading")
from medsegrwkv.nets import medsegrwkv_net  # noqa: F401
from medsegrwkv.nets import unetrpp  # noqa: F401
from medsegrwkv.nets import vmunet  # noqa: F401
from medsegrwkv.nets.registry import ModelSpec, create_model, get_spec, list_models, model_config, register_model

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "model_config", "register_model"]
