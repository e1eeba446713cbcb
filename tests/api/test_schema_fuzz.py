"""Schemathesis against the app's own OpenAPI schema, on the embedded configuration (SQLite
database and broker, no worker) with authentication on: no 5xx, and every response as the
schema describes it (status codes, content types, bodies). Bounded: a few examples per
operation, so that CI stays quick."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from registry.settings import Settings

# no 5xx; status codes, content types, headers and bodies as documented; a route that
# answers without the key it requires. (Not positive_data_acceptance: some rules, such as
# "images or a dataset", span fields and are not expressible in the schema.)
EXAMPLES = 12  # per operation and mode: the CI budget (about half a minute)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, ignored_auth]


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


def test_no_server_errors_and_responses_match_the_schema(app_and_key):
    """Every operation (schemathesis's pytest plugin does not load with this pytest, so the
    operations are driven with Hypothesis directly)."""
    app, key = app_and_key
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    answered: Counter = Counter()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                response = case.call_and_validate(headers=headers, checks=CHECKS)
                answered[response.status_code // 100] += 1

            try:
                check()
            except Unsatisfiable:  # nothing in this operation can be made invalid
                assert mode is GenerationMode.NEGATIVE, operation.label
    print(f"\nschemathesis: {sum(answered.values())} requests over {len(operations)} "
          f"operations: {dict(sorted(answered.items()))} by status class")
    assert answered[5] == 0 and sum(answered.values()) >= len(operations) * 5
