"""Message ids: a window whose messages lack an id or share one fails naming them, in every output format;
a complete window's manifest proves which ids it holds."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import orjson
import pytest

from es_backfill.config import from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.manifest import window_manifest_key
from es_backfill.records import MessageIdError
from es_backfill.sink import ObjectStore
from es_backfill.windows import Window
from tests.integration.support import read_objects, reader_at, s3_client, source_override, utc

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
WINDOW = Window(utc(2024, 3, 1), utc(2024, 3, 2))


@pytest.fixture
def clients(es_cluster, s3_server, s3_bucket):
    with reader_at(es_cluster.url, max_retries=2, backoff_s=0.05) as reader:
        yield reader, ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket)


def _config(names, bucket, output_format):
    params = {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": bucket, "s3_prefix": "ids",
              "page_size": 100, "output_format": output_format, "source": source_override(names)}  # fmt: skip
    return from_params(params, DEFAULTS)


def _message(doc_id: str, message_id: str | None, ts: str) -> tuple[str, str, dict]:
    source = {"@timestamp": ts, "channel": "email", "body": f"document {doc_id}"}
    return "messages", doc_id, source if message_id is None else source | {"message_id": message_id}


# Five documents, three ids: "dup-a" twice at different times, "dup-b" twice at the same instant.
DUPLICATES = [
    _message("d1", "dup-a", "2024-03-01T01:00:00.000Z"),
    _message("d2", "dup-a", "2024-03-01T05:00:00.000Z"),
    _message("d3", "dup-b", "2024-03-01T03:00:00.000Z"),
    _message("d4", "dup-b", "2024-03-01T03:00:00.000Z"),
    _message("d6", "fine", "2024-03-01T06:00:00.000Z"),
]


@pytest.mark.parametrize("output_format", ["json", "jsonl.gz"])
def test_duplicate_ids_fail_the_window_naming_them_and_write_no_manifest(seeded, clients, s3_bucket, output_format):
    names, _ = seeded({"messages": 0, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)}, DUPLICATES)
    reader, store = clients
    config = _config(names, s3_bucket, output_format)
    with pytest.raises(MessageIdError) as raised:
        run_window(config, WINDOW, reader, store)
    text = str(raised.value)
    assert "2 messages repeat an earlier id (e.g. dup-b, dup-a)" in text
    assert window_manifest_key(config, WINDOW) not in read_objects(s3_bucket, "ids/")


@pytest.mark.parametrize("id_type", ["keyword", "long"])
def test_messages_without_an_id_fail_the_window_before_it_is_read_naming_them(es_client, clients, s3_bucket, id_type):
    # A numeric id field sorts a missing value as the largest long: only asking for it finds the gap.
    index = f"ids_{id_type}_{uuid.uuid4().hex[:8]}"
    es_client.indices.create(index=index, mappings={"properties": {"num": {"type": id_type}, "ts": {"type": "date"}}})
    for doc_id, source in [("n1", {"num": 1}), ("n2", {"num": 2}), ("nid", {}), ("n3", {"num": 3})]:
        es_client.index(index=index, id=doc_id, document=source | {"ts": "2024-03-01T01:00:00Z"})
    es_client.indices.refresh(index=index)
    reader, store = clients
    messages = {"index": index, "id_field": "num", "timestamp_field": "ts"}
    params = {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": s3_bucket, "s3_prefix": "ids",
              "source": {"messages": messages, "related": []}}  # fmt: skip
    with pytest.raises(MessageIdError, match=r"Window .*: 1 messages have no 'num' \(e.g. nid\)"):
        run_window(from_params(params, DEFAULTS), WINDOW, reader, store)
    assert read_objects(s3_bucket, "ids/") == {}


def test_manifest_proves_the_ids_of_a_complete_json_window(seeded, clients, s3_bucket):
    names, _ = seeded({"messages": 150, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    reader, store = clients
    config = _config(names, s3_bucket, "json")
    result = run_window(config, WINDOW, reader, store)
    objects = read_objects(s3_bucket, "ids/")
    manifest = orjson.loads(objects[window_manifest_key(config, WINDOW)])
    folder = window_manifest_key(config, WINDOW).rsplit("/", 1)[0]
    ids = [orjson.loads(objects[f"{folder}/{o['key']}"])["message_id"] for o in manifest["objects"]]
    assert result.messages == manifest["messages"] == manifest["message_ids"]["distinct"] == len(set(ids)) == 150
    assert manifest["message_ids"]["sha256"] == hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()
    assert len([k for k in objects if "/messages/" in k]) == 150
