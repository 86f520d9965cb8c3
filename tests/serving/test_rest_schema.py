"""schemathesis against the REST API's own OpenAPI document (FastAPI's /openapi.json): whatever it sends to
each operation, the answer is never a 5xx (but 501, for what is not built) and always matches the status
codes, content types and schema documented for it.

In process over the real domain (tests/serving/test_rest_openai.py's `Server`); no stages run. Through
schemathesis' Python API (its pytest plugin does not load under this pytest).
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serving.test_rest_openai import Server  # noqa: E402

CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_5xx_and_every_answer_matches_its_schema(tmp_path):
    server = Server(tmp_path, {"rest": {"fetch": {"enabled": False}}})
    done = server.client.videos.create(prompt="a boat", seconds="4")
    server.complete(done.id)  # one completed video, so content and remix have something to find
    schema = schemathesis.openapi.from_asgi("/openapi.json", server.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 11  # GET /v1/loras among them
    seen: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            if "video_id" in (case.path_parameters or {}) and hash(str(case.path_parameters)) % 3 == 0:
                case.path_parameters["video_id"] = done.id  # sometimes a real one, not only 404s
            response = case.call()
            seen.setdefault(case.operation.label, set()).add(response.status_code)
            if response.status_code != 501:
                case.validate_response(response, checks=[not_a_server_error])
            case.validate_response(response, checks=CONFORMANCE)

        run()
    assert seen["GET /v1/videos/{video_id}"] >= {200, 404}, seen
