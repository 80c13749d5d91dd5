import gzip

import orjson
import pytest

from es_backfill.config import RelatedIndex
from es_backfill.enrich import _order_key
from es_backfill.records import build_record, dumps_line, related_counts
from es_backfill.sink import PartWriter, safe_id

RELATED = (
    RelatedIndex("history", "history", "message_id", ("@timestamp",), "many"),
    RelatedIndex("status", "status", "message_id", ("updated_at",), "one"),
)


def test_record_carries_lists_for_many_and_the_last_document_for_one():
    docs = {"history": {"m1": [{"e": 1}, {"e": 2}]}, "status": {"m1": [{"s": "old"}, {"s": "current"}]}}
    record = build_record("m1", "W", {"body": "x"}, RELATED, docs)
    assert record == {"message_id": "m1", "window": "W", "message": {"body": "x"},
                      "history": [{"e": 1}, {"e": 2}], "status": {"s": "current"}}  # fmt: skip
    assert related_counts(record, RELATED) == {"history": 2, "status": 1}


def test_record_without_related_documents_has_empty_list_and_null():
    record = build_record("m2", "W", {}, RELATED, {})
    assert record["history"] == [] and record["status"] is None
    assert related_counts(record, RELATED) == {"history": 0, "status": 0}


def test_lines_are_utf8_json_with_a_newline():
    line = dumps_line({"text": "日本語 🚀"})
    assert line.endswith(b"\n") and "日本語 🚀".encode() in line
    assert orjson.loads(line) == {"text": "日本語 🚀"}


def test_related_order_ignores_shard_doc_and_breaks_ties_by_index_and_id():
    a = {"sort": ["m1", 5, 999], "_index": "h", "_id": "b"}
    b = {"sort": ["m1", 5, 1], "_index": "h", "_id": "a"}
    c = {"sort": ["m1", None, 0], "_index": "h", "_id": "c"}
    assert sorted([a, c, b], key=lambda h: _order_key(h, 2)) == [b, a, c]


def test_safe_ids_keep_plain_ids_and_make_others_harmless_and_distinct():
    assert safe_id("msg-000001") == "msg-000001"
    odd = ["a/b", "../../etc/passwd", "..", ".", "with space", "ünï", "a_b", "a b", "x" * 500]
    keys = [safe_id(i) for i in odd]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert "/" not in key and not key.startswith(".") and key.isascii() and " " not in key and len(key) < 120


class _MemoryStore:
    def __init__(self):
        self.objects = {}

    def put(self, key, data, content_type="application/json"):
        self.objects[key] = data


def test_parts_are_cut_by_record_count_and_are_reproducible():
    def write():
        store = _MemoryStore()
        writer = PartWriter(store, "p", "jsonl.gz", max_records=3, max_bytes=10**9)
        for i in range(7):
            writer.write(str(i), dumps_line({"i": i}))
        return store.objects, writer.close()

    objects, infos = write()
    assert [i.key for i in infos] == ["p/part-00000.jsonl.gz", "p/part-00001.jsonl.gz", "p/part-00002.jsonl.gz"]
    assert [i.records for i in infos] == [3, 3, 1]
    assert gzip.decompress(objects["p/part-00002.jsonl.gz"]) == b'{"i":6}\n'
    assert write()[0] == objects  # byte-identical on a second run


def test_batched_compression_writes_the_bytes_of_compressing_line_by_line(monkeypatch):
    import zlib

    from es_backfill import sink

    lines = [dumps_line({"i": i, "text": f"message {i} " * (i % 17)}) for i in range(3000)]
    per_line = zlib.compressobj(6, zlib.DEFLATED, 31)
    expected = b"".join(per_line.compress(line) for line in lines) + per_line.flush()
    for batch in (1, 1000, sink.COMPRESS_BATCH):
        monkeypatch.setattr(sink, "COMPRESS_BATCH", batch)
        store = _MemoryStore()
        writer = PartWriter(store, "p", "jsonl.gz", max_records=10**6, max_bytes=10**9)
        for i, line in enumerate(lines):
            writer.write(str(i), line)
        (info,) = writer.close()
        assert store.objects[info.key] == expected, batch


def test_related_documents_keep_the_engines_order_only_when_it_is_final():
    from es_backfill.enrich import _ordered

    def hit(ts, doc_id):
        return {"sort": ["m1", ts, 0], "_index": "h", "_id": doc_id, "_source": {"id": doc_id}}

    increasing = [hit(1, "z"), hit(2, "a"), hit(3, "m")]
    assert [d["id"] for d in _ordered(increasing, 2)] == ["z", "a", "m"]  # no ties: the engine's order
    tied = [hit(1, "z"), hit(2, "b"), hit(2, "a")]
    assert [d["id"] for d in _ordered(tied, 2)] == ["z", "a", "b"]  # a tie: by index and id
    missing = [hit(None, "b"), hit(1, "a")]
    assert [d["id"] for d in _ordered(missing, 2)] == ["a", "b"]  # a missing value sorts last


class _FailingUploads:
    """An S3 client whose every UploadPart fails, counting what is asked of it."""

    def __init__(self):
        self.calls = []

    def create_multipart_upload(self, **kwargs):
        self.calls.append("create")
        return {"UploadId": "u1"}

    def upload_part(self, **kwargs):
        self.calls.append("upload_part")
        raise ConnectionError("S3 is down")

    def abort_multipart_upload(self, **kwargs):
        self.calls.append("abort")


def test_a_failed_piece_stops_the_part_and_abort_leaves_no_upload_behind(monkeypatch):
    from es_backfill import sink

    monkeypatch.setattr(sink, "MULTIPART_CHUNK", 1000)  # a piece every few batches
    monkeypatch.setattr(sink, "COMPRESS_BATCH", 500)
    client = _FailingUploads()
    store = sink.ObjectStore(client, "b")
    writer = PartWriter(store, "p", "jsonl", max_records=10**6, max_bytes=10**9)
    with pytest.raises(ConnectionError, match="S3 is down"):
        for i in range(10_000):  # far more batches than MAX_QUEUED: the error surfaces while writing
            writer.write(str(i), dumps_line({"i": i, "pad": "x" * 100}))
    writer.abort()
    # One piece was tried; the batches queued behind it did nothing, and the upload was aborted last.
    assert client.calls == ["create", "upload_part", "abort"]
