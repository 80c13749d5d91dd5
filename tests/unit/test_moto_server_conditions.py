"""The local S3 server answers requests carrying a write condition one at a time, so a condition's check and
its write are one step as on S3; other requests still run side by side."""

from __future__ import annotations

import threading
import time

import pytest

from include.dev.servers.moto_server import conditions_run_alone


class _Overlap:
    """A WSGI app that takes a while to answer and records how many requests it answered at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = self.most = 0

    def __call__(self, environ, start_response):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.05)
        with self.lock:
            self.inside -= 1
        start_response("200 OK", [])
        return [environ["REQUEST_METHOD"].encode()]


def _serve_together(headers: dict[str, str], requests: int = 6) -> tuple[int, list[list[bytes]]]:
    app = _Overlap()
    served = conditions_run_alone(app)
    start = threading.Barrier(requests)
    answers: list[list[bytes]] = []

    def request() -> None:
        start.wait()
        answers.append(list(served({"REQUEST_METHOD": "PUT", **headers}, lambda *_: None)))

    threads = [threading.Thread(target=request) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return app.most, answers


@pytest.mark.parametrize("condition", [{"HTTP_IF_NONE_MATCH": "*"}, {"HTTP_IF_MATCH": '"etag"'}])
def test_requests_with_a_write_condition_are_answered_one_at_a_time(condition):
    most, answers = _serve_together(condition)
    assert most == 1
    assert answers == [[b"PUT"]] * 6


def test_requests_without_a_condition_still_run_side_by_side():
    most, answers = _serve_together({})
    assert most > 1
    assert answers == [[b"PUT"]] * 6
