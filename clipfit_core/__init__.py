"""ClipFit as a library: few-shot CLIP fine-tuning of text FFN biases and image LayerNorms.

Pure torch + open_clip + safetensors: no web, SQL or queue code, no environment variables.
"""

from .classify import Classifier, Prediction, resolve_templates
from .config import TrainConfig, prepare_training_set
from .data import FewShotDataset, Sample, load_dataset, sample_few_shot, split_train_val
from .delta import Delta, DeltaConfig, DeltaError, applied, apply_delta, restore
from .evaluate import accuracy, harmonic_mean, per_class_accuracy
from .models import BaseModel, WeightsUnavailableError, create_base_model
from .params import UnsupportedArchitectureError, count_trainable, trainable_parameters
from .train import TrainingCancelled, TrainProgress, train_clipfit

__version__ = "0.1.0"

__all__ = [
    "BaseModel", "Classifier", "Delta", "DeltaConfig", "DeltaError", "FewShotDataset",
    "Prediction", "Sample", "TrainConfig", "TrainProgress", "TrainingCancelled",
    "UnsupportedArchitectureError", "WeightsUnavailableError", "accuracy", "applied",
    "apply_delta", "count_trainable", "create_base_model", "harmonic_mean", "load_dataset",
    "per_class_accuracy", "prepare_training_set", "resolve_templates", "restore", "sample_few_shot", "split_train_val",
    "train_clipfit", "trainable_parameters",
]
