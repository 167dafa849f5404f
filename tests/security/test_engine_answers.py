"""Fuzzing the supervisor's Engine client with broken answers: whatever comes back on the socket
(a bad status line, a Content-Length that is no number or lies, a chunk size that is no hex,
a body cut short, JSON that is not JSON), a call ends in a value or in an EngineError that says
what was wrong, never in another exception (the runtime reports EngineErrors as a failed step
and goes on; anything else would be a supervisor bug) and never hangs.

The answers come from a real HTTP server on a Unix socket (tests/gateway/test_engine_api.py);
`-s` prints how many were tried and how they ended.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.runtime.engine_api import EngineError
from tests.gateway.test_engine_api import engine, response

pytestmark = pytest.mark.security

BODY = json.dumps({"ID": "engine", "Runtimes": {"runc": {}}}).encode()
PIECES = [
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 200 OK\r\n", b"HTTP/2 200\r\n", b"HTTP/1.1 404 Not Found\r\n",
    b"HTTP/1.1 abc\r\n", b"Content-Length: 5\r\n", b"Content-Length: -3\r\n", b"Content-Length: x\r\n",
    b"Content-Length: 99999\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
    b"\r\n", b"5\r\n", b"zz\r\n", b"0\r\n\r\n", b"-1\r\n", b'{"message": "no"}', b"{", b"\xff\xfe", BODY,
]
answers = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=8).map(b"".join),
    st.builds(lambda cut: response(200, chunks=[BODY[:9], BODY[9:]])[:cut], st.integers(0, 200)),
    st.builds(lambda cut: response(200, BODY)[:cut], st.integers(0, 200)),
    st.binary(max_size=64),
)


def test_any_answer_ends_in_a_value_or_an_engine_error(tmp_path: Path) -> None:
    outcomes: Counter[str] = Counter()
    current = [b""]

    with engine(tmp_path, lambda method, target, body: current[0], timeout=5.0, close_after=True) as (_, client):
        client.api._version = "1.41"  # negotiated already: every request gets the fuzzed answer

        @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(answers)
        def one(raw: bytes) -> None:
            current[0] = raw
            try:
                client.api.call("GET", "/info")
            except EngineError as exc:
                assert str(exc)
                outcomes[type(exc).__name__] += 1
            else:
                outcomes["value"] += 1

        one()
    print(f"\nbroken answers: {sum(outcomes.values())} tried, {dict(outcomes)}")
    assert outcomes["value"] and outcomes["EngineUnreachable"] and outcomes["APIError"] + outcomes["NotFound"]
