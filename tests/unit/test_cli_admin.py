"""The admin commands (accounts create, dead-letters): the answer on stdout, an error on
stderr in one line, and a non-zero exit; never a `null` or a traceback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from actors.cli import main


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBLINE_ADMIN_TOKEN", "t" * 32)


def serve(status: int, body: bytes) -> Iterator[str]:
    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_gateway_prints_only_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Field case: `accounts create --url http://127.0.0.1:1` printed `null` on stdout too.
    for argv in (
        ["accounts", "create", "--name", "a", "--url", "http://127.0.0.1:1"],
        ["dead-letters", "list", "--url", "http://127.0.0.1:1"],
    ):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert out == ""
        (line,) = err.strip().splitlines()
        assert line.startswith("jobline: cannot reach http://127.0.0.1:1/v1/")


def test_a_refusal_is_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    error = {"error": {"code": "forbidden", "message": "needs the admin token"}}
    for url in serve(403, json.dumps(error).encode()):
        assert main(["accounts", "create", "--name", "a", "--url", url]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == "jobline: 403 forbidden: needs the admin token"
    for url in serve(502, b"<html>bad gateway</html>"):
        assert main(["dead-letters", "list", "--url", url]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "502" in err and "Traceback" not in err


def test_an_answer_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    for url in serve(201, json.dumps({"id": "acct_1", "api_key": "jl_x"}).encode()):
        assert main(["accounts", "create", "--name", "a", "--url", url]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"id": "acct_1", "api_key": "jl_x"} and err == ""
