"""Property-based API tests: schemathesis reads the app's own OpenAPI document
(/api/v1/openapi.json, served by the real HTTP server) and sends generated
requests, valid and invalid, to every operation.

Each answer must not be a 5xx (`not_a_server_error`) and, when its status is
documented, its body and headers must match the document
(`response_schema_conformance`). Examples are bounded (15 per operation and
generation mode: valid, then invalid requests) so the whole run stays well under a minute and a half. No
consumer runs: jobs just stay queued.

One pytest item per operation (listed from openapi.document(loader.loaded_apps()) at collection);
each item loads the schema from the served URL and drives Hypothesis itself,
so the function-scoped `api_key` and `fresh_storage` fixtures work as usual.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

import jobs
import loader
import openapi

CHECKS = [not_a_server_error, response_schema_conformance]
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
OPERATIONS = [
    (method.upper(), path)
    for path, item in openapi.document(loader.loaded_apps())["paths"].items()
    for method in item
    if method in METHODS
]
# Each public function also has its own POST /api/v1/functions/<name>/jobs: the invoke
# operation above with that function's arguments as the body schema, served by the same
# handler. Fuzzing each again took about 30 s per function for no new code path; they are
# checked to be served, and test_bad_input.py covers argument validation.
# Operations with no parameters and no body have no invalid request to generate.
HAS_INPUT = {
    (method.upper(), path)
    for path, item in openapi.document(loader.loaded_apps())["paths"].items()
    for method, op in item.items()
    if method in METHODS and (op.get("parameters") or item.get("parameters") or op.get("requestBody"))
}


@pytest.fixture(autouse=True)
def sandboxes_here(monkeypatch, server_url):
    """The sandboxes (the knowledge search's embedder among them) are served by the test server."""
    import settings as litejobs_settings

    monkeypatch.setattr(litejobs_settings, "BASE_URL", server_url)


@pytest.fixture(scope="module")
def api_schema(server_url):
    """The document as the app serves it, loaded by schemathesis."""
    return schemathesis.openapi.from_url(f"{server_url}/api/v1/openapi.json", timeout=30)


def test_every_served_operation_is_tested(api_schema):
    served = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    # Loaded from its URL, schemathesis leaves out the operation serving the document itself.
    # The functions registered now: other test modules add their own.
    functions = {("POST", f"/api/v1/functions/{function.name}/jobs") for function in jobs.public_functions()}
    assert served | {("GET", "/api/v1/openapi.json")} == set(OPERATIONS) | functions


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_answers_conform_to_the_document(api_schema, server_url, api_key, method, path):
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {api_key}"}
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if (method, path) in HAS_INPUT else [])
    for mode in modes:

        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(mode))
        def check(case):
            case.call_and_validate(base_url=server_url, headers=headers, checks=CHECKS, timeout=30)

        check()
