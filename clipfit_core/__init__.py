"""ClipFit as a library: few-shot CLIP fine-tuning of text FFN biases and image LayerNorms.

Pure torch + open_clip + safetensors: no web, SQL or queue code, no environment variables.

The names below load their submodule on first use (PEP 562), so that ``clipfit_core.config``
(the training spec the client's command line derives its flags from) and
``clipfit_core.version`` import without torch.
"""

from __future__ import annotations

import importlib

from .version import __version__ as __version__

_EXPORTS = {  # submodule: the public names it gives the package
    "classify": ("Classifier", "Prediction", "calibration_for", "predict", "resolve_templates"),
    "config": ("TrainConfig", "prepare_training_set"),
    "data": ("FewShotDataset", "Sample", "load_dataset", "sample_few_shot", "split_train_val"),
    "delta": ("Delta", "DeltaConfig", "DeltaError", "applied", "apply_delta", "config_problems",
              "restore"),
    "evaluate": ("accuracy", "harmonic_mean", "per_class_accuracy"),
    "models": ("BaseModel", "WeightsUnavailableError", "create_base_model"),
    "params": ("UnsupportedArchitectureError", "count_trainable", "trainable_parameters"),
    "recipes": ("RECIPES", "get_recipe", "list_recipes"),
    "train": ("TrainingCancelled", "TrainProgress", "train_clipfit"),
}
_SOURCE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "RECIPES", "BaseModel", "Classifier", "Delta", "DeltaConfig", "DeltaError", "FewShotDataset",
    "Prediction", "Sample", "TrainConfig", "TrainProgress", "TrainingCancelled",
    "UnsupportedArchitectureError", "WeightsUnavailableError", "accuracy", "applied",
    "apply_delta", "calibration_for", "config_problems", "count_trainable",
    "create_base_model", "get_recipe", "harmonic_mean", "list_recipes", "load_dataset",
    "per_class_accuracy", "predict", "prepare_training_set", "resolve_templates", "restore",
    "sample_few_shot", "split_train_val", "train_clipfit", "trainable_parameters",
]


def __getattr__(name: str):
    module = _SOURCE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
