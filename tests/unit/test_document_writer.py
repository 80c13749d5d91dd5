"""One object per message: the check before each object is committed runs right before its upload, not when the
upload was queued (a fake store, a seam we own)."""

from __future__ import annotations

import threading

import pytest

from es_backfill.sink import DocumentWriter


class Superseded(RuntimeError):
    pass


class SlowStore:
    """Its first upload waits until released, so the writer queues the others behind it."""

    def __init__(self) -> None:
        self.uploading, self.release = threading.Event(), threading.Event()
        self.keys: list[str] = []

    def put(self, key: str, data: bytes, content_type: str) -> str:
        self.uploading.set()
        assert self.release.wait(10)
        self.keys.append(key)
        return '"etag"'


def test_uploads_queued_before_the_attempt_was_superseded_are_not_committed():
    store = SlowStore()
    superseded = threading.Event()

    def before_commit() -> None:
        if superseded.is_set():
            raise Superseded("a later attempt claimed the window")

    writer = DocumentWriter(store, "w", threads=1, before_commit=before_commit)  # type: ignore[arg-type]
    for n in range(10):
        writer.write(f"m{n}", b"{}")
    assert store.uploading.wait(10)  # the first upload passed its check; nine wait behind it
    superseded.set()
    store.release.set()
    with pytest.raises(Superseded):
        writer.close()
    assert store.keys == ["w/messages/m0.json"]
