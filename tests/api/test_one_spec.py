"""One default per hyperparameter: the CLI's flags, the API's job form (and the schema it
publishes) and the worker all take theirs from clipfit_core.config.TrainConfig."""

import dataclasses

import pytest

from api.schemas import JobCreateForm
from clipfit.cli import build_parser
from clipfit_core.config import AUTO_FIELDS, TrainConfig, input_name
from registry.settings import Settings

EXPOSED = TrainConfig.exposed_fields()


def train_defaults() -> dict:
    """The parsed defaults of ``clipfit train``, by spec field name."""
    args = build_parser(Settings()).parse_args(
        ["train", "data", "--out", "out", "--model", "clipfit-tiny"])
    return {f.name: getattr(args, f.name) for f in EXPOSED + TrainConfig.runtime_fields()}


def test_cli_defaults_are_the_specs():
    spec = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    cli = train_defaults()
    assert cli == {name: spec[name] for name in cli}
    assert TrainConfig(**cli) == TrainConfig()


def test_api_form_defaults_are_the_specs():
    form = JobCreateForm()
    assert {f.name: getattr(form, f.name) for f in EXPOSED} == \
        {f.name: f.default for f in EXPOSED}
    assert form.train_config() == TrainConfig()


def test_api_schema_publishes_the_specs_defaults_bounds_and_help():
    schema = JobCreateForm.model_json_schema(by_alias=True)["properties"]
    names = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
    for f in EXPOSED:
        prop = schema[input_name(f)]
        auto = "; or auto (see README)" if f.name in AUTO_FIELDS else ""  # int | "auto"
        assert prop["default"] == f.default
        assert prop["description"] == f.metadata["help"] + auto
        for kind, bound in f.metadata["bounds"].items():
            assert prop[names[kind]] == bound, (f.name, kind)
    assert "lambda" in schema and "template" in schema  # the public names


@pytest.mark.parametrize("flag, value, field, expected", [
    ("--lambda", "3", "lambda_kd", 3.0), ("--template", "imagenet", "templates", "imagenet"),
    ("--crop-min", "0.5", "crop_min", 0.5), ("--val-fraction", "0", "val_fraction", 0.0),
    ("--workers", "2", "num_workers", 2),
])
def test_cli_flags_carry_the_public_names(flag, value, field, expected):
    args = build_parser(Settings()).parse_args(
        ["train", "d", "--out", "o", "--model", "m", flag, value])
    assert getattr(args, field) == expected
