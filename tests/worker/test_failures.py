"""What a failed job's owner reads: a sentence that says what to do, without internals."""

from __future__ import annotations

import pytest
import torch

from clipfit_core.config import TrainConfig
from clipfit_core.models import WeightsUnavailableError, create_base_model
from worker.failures import failure_message


def test_missing_weights_name_the_model_but_not_the_server_path(tmp_path):
    with pytest.raises(WeightsUnavailableError) as e:
        create_base_model("clipfit-mini", cache_dir=tmp_path / "nothing-here")
    assert "nothing-here" in str(e.value)  # the operator's log has the path ...
    message = failure_message(e.value, base_model="clipfit-mini")
    assert "nothing-here" not in message and "'clipfit-mini'" in message  # ... the owner not
    assert message.startswith("the weights of base model")


def test_out_of_memory_suggests_a_smaller_batch():
    for error in (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                  MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: "
                                              "you tried to allocate 1 bytes. out of memory")):
        assert "smaller batch_size" in failure_message(error, base_model="x")


def test_refused_settings_keep_the_reason():
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict({"seed": -1}, templates=["a photo of a {}."])
    message = failure_message(e.value, base_model="x")
    assert message.startswith("the job's settings were refused:") and "seed must be >= 0" in message


def test_anything_else_is_named_by_type_only():
    message = failure_message(KeyError("/srv/secret/path"), base_model="x")
    assert "KeyError" in message and "/srv/secret" not in message


def test_a_diverged_delta_is_refused_with_what_to_do():
    from clipfit_core.delta import Delta, DeltaConfig
    from worker.failures import TrainingDiverged, check_finite

    config = DeltaConfig(base_model="clipfit-tiny", base_fingerprint="f", classnames=["a", "b"],
                         templates=["a photo of a {}."])
    good = {"visual.ln_post.bias": torch.zeros(4), "visual.ln_post.weight": torch.ones(4)}
    check_finite(Delta(config=config, tensors=good))  # finite: nothing raised
    for bad in (float("nan"), float("inf")):
        tensors = dict(good, **{"visual.ln_post.bias": torch.tensor([0.0, bad, 0.0, 0.0])})
        with pytest.raises(TrainingDiverged) as e:
            check_finite(Delta(config=config, tensors=tensors))
        assert "'visual.ln_post.bias' holds 1 NaN or infinite values" in str(e.value)
        message = failure_message(e.value, base_model="clipfit-tiny")
        assert message.startswith("training diverged (tensor 'visual.ln_post.bias'")
        assert "lower lr" in message
