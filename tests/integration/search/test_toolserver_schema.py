"""Schemathesis against the running tool-server's ``/openapi.json``: generated (valid and invalid)
inputs never get a 5xx, and answers match the documented schemas (error bodies included).

Schemathesis's pytest plugin does not load under pytest 9 here, so each operation's Hypothesis
strategy is driven directly (``operation.as_strategy()``), with the same checks.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

EXAMPLES = 30


def _operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_inputs_never_get_a_server_error(toolserver, mode):
    operations = _operations(toolserver.url)
    assert {op.path for op in operations} >= {"/v1/text_search", "/v1/image_search", "/readyz"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and (operation.method.upper() == "GET"
                                                or operation.path == "/admin/reload"):
            continue  # no parameters or body to break

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            case.call_and_validate(base_url=toolserver.url, headers=toolserver.headers,
                                   checks=[not_a_server_error, response_schema_conformance])

        run()
