"""The training spec: one default per hyperparameter, bounds that name every bad value,
a lossless round trip through the saved form, and split-then-sample."""

import dataclasses
import math

import pytest

from clipfit_core.config import TrainConfig, input_name, prepare_training_set, public_name
from clipfit_core.data import load_dataset


def test_defaults_are_the_papers_recipe():
    c = TrainConfig()
    assert (c.lr, c.batch_size, c.lambda_kd, c.momentum, c.weight_decay) == \
        (0.002, 32, 8.0, 0.9, 5e-4)
    assert (c.warmup_epochs, c.warmup_lr, c.crop_scale) == (1, 1e-5, (0.08, 1.0))
    assert c.templates == ["a photo of a {}."]


def test_round_trip_under_public_names_without_runtime_options():
    c = TrainConfig(epochs=3, lambda_kd=2.5, templates="imagenet7", amp="none", num_workers=2)
    saved = c.to_dict()
    assert saved["lambda"] == 2.5 and "lambda_kd" not in saved
    assert "amp" not in saved and "num_workers" not in saved  # how, not what: not saved
    assert len(saved["templates"]) == 7
    again = TrainConfig.from_dict(saved | {"from_a_newer_version": 1})
    assert again.to_dict() == saved
    assert TrainConfig.from_dict({}) == TrainConfig()  # missing keys take the defaults


def test_every_bad_value_is_named_at_once():
    with pytest.raises(ValueError) as e:
        TrainConfig(epochs=0, lr=math.inf, lambda_kd=-1, val_fraction=0.99, seed=-3,
                    crop_min=0, shots=0, templates="no placeholder", amp="fp8")
    message = str(e.value)
    for fragment in ("epochs must be >= 1", "lr must be a finite number", "lambda must be >= 0",
                     "val_fraction must be <= 0.5", "shots must be >= 1", "seed must be >= 0", "crop_min must be > 0",
                     "'no placeholder'", "amp must be one of"):
        assert fragment in message, (fragment, message)
    with pytest.raises(ValueError, match="nothing to train"):
        TrainConfig(train_text=False, train_image=False)


def test_every_field_has_help_and_names_are_unique():
    fields = dataclasses.fields(TrainConfig)
    assert all(f.metadata["help"] for f in fields)
    assert len({public_name(f) for f in fields}) == len(fields)
    assert len({input_name(f) for f in fields}) == len(fields)


def test_prepare_splits_then_samples(colour_train):
    data = load_dataset(colour_train)  # 16 per class
    train, val = prepare_training_set(data, TrainConfig(val_fraction=0.25, shots=5, seed=2))
    assert val.counts() == dict.fromkeys(data.classnames, 4)
    assert train.counts() == dict.fromkeys(data.classnames, 5)
    assert not {s.source for s in train.samples} & {s.source for s in val.samples}
    # the held-out images do not depend on shots
    _, val_all = prepare_training_set(data, TrainConfig(val_fraction=0.25, shots=99, seed=2))
    assert val_all.samples == val.samples
    everything, none = prepare_training_set(data, TrainConfig(val_fraction=0, shots=10_000))
    assert none is None and everything.samples == data.samples


def test_auto_values_follow_the_documented_rule():
    from clipfit_core.config import auto_values

    # bases pretrained here: the replication's recipe; batch at most the training set
    assert auto_values(base_model="clipfit-mini", train_images=130) == \
        {"epochs": 30, "lr": 0.1, "batch_size": 32}
    assert auto_values(base_model="clipfit-tiny:/w/x.pt", train_images=12)["batch_size"] == 12
    # others: the paper's rate; epochs from 5,000 steps, between 10 and 100
    vit = {n: auto_values(base_model="ViT-B-16:openai", train_images=n) for n in
           (160, 3200, 16000, 64000)}
    assert [v["epochs"] for v in vit.values()] == [100, 50, 10, 10]
    assert {v["lr"] for v in vit.values()} == {0.002}
    assert auto_values(base_model="ViT-B-16:openai", train_images=3200,
                       batch_size=64)["epochs"] == 100  # 50 steps an epoch


def test_with_auto_resolves_for_the_training_images_it_will_use(colour_train):
    from clipfit_core.config import with_auto
    from clipfit_core.data import load_dataset

    data = load_dataset(colour_train)  # 4 classes x 16
    values = {"epochs": "auto", "lr": "auto", "batch_size": "auto", "val_fraction": 0.25}
    config, autos = with_auto(values, data, base_model="ViT-B-16:openai")
    assert autos == ["epochs", "lr", "batch_size"]
    # 48 training images after the split: batch 32, 2 steps an epoch, 2,500 -> 100 epochs
    assert (config.epochs, config.lr, config.batch_size) == (100, 0.002, 32)
    config, autos = with_auto({"epochs": 7, "lr": 0.01}, data, base_model="clipfit-tiny")
    assert autos == [] and (config.epochs, config.lr) == (7, 0.01)
    with pytest.raises(ValueError, match="lr must be > 0"):
        with_auto({"epochs": "auto", "lr": -1}, data, base_model="clipfit-tiny")


def test_recipes_are_spec_values_and_the_paper_recipe_is_the_default():
    from clipfit_core.config import recipe_fields
    from clipfit_core.recipes import RECIPES, get_recipe, list_recipes

    assert list_recipes() == ["paper", "small-base", "demo"]
    public = {public_name(f) for f in TrainConfig.exposed_fields()}
    for name, recipe in RECIPES.items():
        assert set(recipe.values) <= public and recipe.description, name
        config = TrainConfig.from_recipe(name)
        assert config.to_dict() == TrainConfig().to_dict() | dict(recipe.values)
    assert TrainConfig.from_recipe("paper") == TrainConfig()
    assert recipe_fields("small-base")["lambda_kd"] == 8.0
    assert TrainConfig.from_recipe("demo", seed=3, lr=0.5).lr == 0.5
    with pytest.raises(ValueError, match="no recipe 'fast'; the recipes: paper, small-base"):
        get_recipe("fast")


def test_recipe_values_are_the_ones_published():
    """The README's replication recipe and the demo's settings (the demo's printed
    accuracies depend on them): a change here is a change of results."""
    from clipfit_core.config import auto_values
    from clipfit_core.recipes import DEMO, PAPER, SMALL_BASE

    assert dict(PAPER.values) == {"epochs": 10, "lr": 0.002, "batch_size": 32,
                                  "crop_min": 0.08, "alpha": 1.0, "lambda": 8.0}
    assert dict(SMALL_BASE.values) == {"epochs": 30, "lr": 0.1, "crop_min": 1.0, "alpha": 0.5,
                                       "lambda": 8.0}
    assert dict(DEMO.values) == {"epochs": 40, "lr": 0.03, "batch_size": 32, "crop_min": 0.5}
    small = auto_values(base_model="clipfit-mini", train_images=500)
    assert (small["epochs"], small["lr"]) == (SMALL_BASE.values["epochs"],
                                              SMALL_BASE.values["lr"])
    assert auto_values(base_model="ViT-B-16", train_images=500)["lr"] == PAPER.values["lr"]
