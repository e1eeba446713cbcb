"""Schemathesis against the app's own OpenAPI schema, on the embedded configuration (SQLite
database and broker, no worker) with authentication on: every phase (the schema's examples,
coverage of edge values and unexpected methods, fuzzing, stateful sequences) and every check
(``schemathesis run --checks all``): no 5xx; status codes, content types, headers and bodies
as documented; schema-valid requests accepted and invalid ones refused; ``Allow`` listing
the path's methods; no route that answers without the key it requires. Bounded: a few
examples per operation and phase, derandomized, so that CI stays quick and repeatable."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from schemathesis import engine
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events

from registry.settings import Settings

EXAMPLES = 10  # per operation and phase: the CI budget (about 15 s of requests)

# Operations whose schema-valid requests may still be refused (422) because what decides is
# not expressible in a schema: positive_data_acceptance is off for them, every other check on.
REFUSED_VALID_DATA = {
    ("POST", "/v1/jobs"): "the images must decode, the zip must hold one folder per class or "
    "a manifest, images or a dataset must be given (a rule across fields), base_model must be "
    "one the operator allows",
    ("POST", "/v1/datasets"): "the images and the zip are read as for a job",
    ("POST", "/v1/adapters"): "the file must be a delta zip whose tensors fit an allowed base",
    ("POST", "/v1/classify"): "the images must decode; base_model must be one the operator "
    "allows (the example names clipfit-mini; this app allows clipfit-tiny)",
    ("POST", "/v1/predictions"): "the zip must hold decodable images, exactly one source must "
    "be given (a rule across fields), the adapter or dataset must exist",
    ("POST", "/v1/webhooks"): "the URL's host must be public (CLIPFIT_WEBHOOK_ALLOW_PRIVATE is "
    "off): http://0 or http://10.1.2.3 match any URL pattern",
}


@pytest.fixture(scope="module")
def app_and_key(tmp_path_factory):
    from api.app import create_app
    from registry import crud
    from registry.db import get_engine, session_scope
    from registry.migrate import upgrade

    config = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), base_models="clipfit-tiny",
                      device="cpu", rate_limit="")  # hundreds of requests a second here
    upgrade(config.sqlalchemy_url)
    with session_scope(get_engine(config.sqlalchemy_url)) as session:
        _, secret = crud.create_key(session, tenant_id="default", scopes=["admin"])
    return create_app(config), secret


def run_config(key: str) -> SchemathesisConfig:
    """What ``schemathesis run --checks all --max-examples EXAMPLES`` would use, with the
    exceptions above."""
    return SchemathesisConfig.from_dict({
        "headers": {"Authorization": f"Bearer {key}"},
        "seed": 20261202, "workers": 1, "suppress-health-check": ["all"],
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
        "checks": {"enabled": True},
        "operations": [{"include-method": method, "include-path": path,
                        "checks": {"positive_data_acceptance": {"enabled": False}}}
                       for method, path in REFUSED_VALID_DATA],
    })


def test_every_check_passes_on_every_operation(app_and_key):
    """Schemathesis's engine in-process (its pytest plugin does not load with this pytest)."""
    app, key = app_and_key
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=run_config(key))
    operations = {result.ok().label for result in schema.get_all_operations()}
    assert len(operations) >= 30
    assert {f"{m} {p}" for m, p in REFUSED_VALID_DATA} <= operations  # none stale
    answered: Counter = Counter()
    tested: set[str] = set()
    failures, errors, finished = [], [], None
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for case_id, interaction in event.recorder.interactions.items():
                if interaction.response is not None:
                    answered[interaction.response.status_code // 100] += 1
                    tested.add(event.recorder.cases[case_id].value.operation.label)
            for case_id, checks in event.recorder.checks.items():
                label = event.recorder.cases[case_id].value.operation.label
                failures += [f"{label}: {check.name}: {info.failure.title}\n"
                             f"{info.failure.message}\n  {info.code_sample}"
                             for check in checks if (info := check.failure_info) is not None]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(str(getattr(event, "info", None) or event.exception))
        elif isinstance(event, events.EngineFinished):
            finished = event
    print(f"\nschemathesis: {sum(answered.values())} requests over {len(tested)} operations in "
          f"{finished.running_time:.1f} s: {dict(sorted(answered.items()))} by status class")
    assert not errors, errors
    assert not failures, "\n\n".join(sorted(set(failures)))
    assert str(finished.stop_reason) == "completed"
    assert tested == operations
    assert answered[5] == 0 and sum(answered.values()) >= len(operations) * 20
