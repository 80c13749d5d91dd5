"""The document fidelity corpus: awkward documents come out exactly as stored, on every read strategy.

Hand-picked and generated (Hypothesis) documents — dotted, nested and mixed keys; integers past 64 bits;
floats at the edges and in forms that are not the shortest; ``-0.0`` and ``-0``; lone surrogates, NUL and
control characters, right-to-left text, 4-byte emoji; empty objects and arrays; arrays of objects; nulls
at every depth; 100 levels of nesting; a 5 MB string; multi-valued join fields; objects mapped
``"enabled": false`` and ``"dynamic": false`` — are bulk-loaded as JSON text into Elasticsearch 9.5
(``_shard_doc``), OpenSearch 2.19 (``unique_sort``) and Elasticsearch 7.10 (scroll). The DAG runs in
every output format; each record must equal, token for token (every key in order, every string's code
points, every number's text), the record an oracle builds from the loaded text alone, never from what
the engine returned. Then a run with every redaction kind, on fields in every form, and a transform that
edits what it is given: no secret leaves in any form, ``verify --redaction`` proves it, and a related
``_source`` selection without the join field still joins documents to every message they name.
"""

from __future__ import annotations

import gzip
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from es_backfill.cli import main as cli
from include.dev.servers.elasticsearch import ES_VERSION, elasticsearch_connection_uri
from tests.integration.support import read_objects, utc
from tests.json_text import tokens, value_text

ENGINES = [
    pytest.param(("elasticsearch", ES_VERSION), id=f"elasticsearch-{ES_VERSION}"),
    pytest.param(("opensearch", "2.19.6"), id="opensearch-2.19.6"),
    pytest.param(("elasticsearch", "7.10.2"), id="elasticsearch-7.10.2"),
]
CONN = "fidelity_engine"
DEFAULTS = "backfill_defaults.json"
KEY = "fidelity-hmac-key"
MESSAGES, STATUS, AUDIT = "fid_messages", "fid_status", "fid_audit"
_KEYWORD = {"type": "keyword"}
MAPPINGS = {
    MESSAGES: {
        "properties": {
            "message_id": _KEYWORD,
            "@timestamp": {"type": "date"},
            "subject": {"type": "text", "fields": {"keyword": _KEYWORD}},
            "sender": {"properties": {"name": _KEYWORD, "email": _KEYWORD}},
            "payload": {"type": "object", "enabled": False},  # raw payloads: stored, not indexed
            "raw": {"type": "object", "dynamic": False, "properties": {"known": _KEYWORD}},
        }
    },
    STATUS: {"properties": {"message_id": _KEYWORD, "updated_at": {"type": "date"}, "status_id": _KEYWORD}},
    AUDIT: {"properties": {"message_id": _KEYWORD, "@timestamp": {"type": "date"}, "audit_id": _KEYWORD}},
}
DEEP = '{"d": ' * 100 + "1" + "}" * 100
# Message bodies as JSON text (after the id and timestamp): every secret is named "SECRET-" and lies where a
# redaction rule of the redacting run points, in one of the forms the engines map to that path.
HAND_PICKED = [
    '"sender": {"name": "Ann", "email": "SECRET-nested@example.com"}, "subject": "plain"',
    '"sender.email": "SECRET-dotted@example.com", "sender": {"name": "Bo"}',
    '"sender": [{"email": "SECRET-array@example.com"}, {"name": "Cy", "email": "SECRET-array2@example.com"}]',
    '"sender.email": ["SECRET-multi1@example.com", "SECRET-multi2@example.com"], "sender.name": "Di"',
    '"payload": {"iccid": 89014103211118510720, "neg": -89014103211118510720, "u64": 18446744073709551615,'
    ' "floats": [1.10, 1e5, 1E+5, -0.0, -0, 0, 5e-324, 1e308, 1.0, 0.1], "card": "SECRET-card-4111"}',
    r'"payload": {"lone": "see you \ud83d", "low": "\udc00", "nul": "a\u0000b", "ctl": "\u0001\u001f\u007f",'
    ' "rtl": "\u202eabc \u05e9\u05dc\u05d5\u05dd", "emoji": "\U0001f680\U0001f1e9\U0001f1ea"}',
    '"payload": {"empty": {}, "list": [], "none": null, "deep": {"x": [null, {"y": null}], "z": [[], [{}]]}}',
    '"payload": {"a.b": {"c": 1}, "a": {"b": {"d": 2}}, "objects": [{"k": 1}, {"k": [1, {"k": null}]}]}',
    '"payload": ' + DEEP,
    '"payload": {"big": "' + "x" * (5 * 2**20) + '"}',
    '"raw": {"known": "k", "secret": "SECRET-raw", "deep": {"pan": "SECRET-pan"}}, "subject": "raw payload"',
    '"sender": null, "payload": null, "subject": null',
]


_SENDER_FORMS = [
    '"sender": {{"email": "SECRET-g{i}@example.com"}}',
    '"sender.email": "SECRET-g{i}@example.com"',
    '"sender": [{{"name": "n{i}"}}, {{"email": "SECRET-g{i}@example.com"}}]',
]
GENERATED: list[str] = []


@settings(max_examples=1, derandomize=True, database=None, phases=[Phase.generate], deadline=None)
@given(
    st.lists(st.tuples(value_text(max_leaves=10), st.integers(0, len(_SENDER_FORMS) - 1)), min_size=140, max_size=140)
)
def _generate(drawn: list[tuple[str, int]]) -> None:
    GENERATED[:] = [
        f'"payload": {{"gen": {value}}}, ' + _SENDER_FORMS[form].format(i=i) for i, (value, form) in enumerate(drawn)
    ]


_generate()
BODIES = HAND_PICKED + GENERATED  # 152 messages: more than one page of 100


def _documents() -> list[tuple[str, str, str]]:
    """(index, _id, JSON text) of every document loaded: messages over two days, their status changes and audit
    records; some audit records name two messages (a multi-valued join field)."""
    docs = []
    start = utc(2024, 3, 1)
    ids = [f"m{i:03d}" for i in range(len(BODIES))]
    for i, (message_id, body) in enumerate(zip(ids, BODIES, strict=True)):
        at = (start + timedelta(minutes=17 * i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        docs.append((MESSAGES, message_id, f'{{"message_id": "{message_id}", "@timestamp": "{at}", {body}}}'))
        for n in range(i % 3):  # 0-2 status changes; the last (updated_at, status_id) is the current one
            status = (f'{{"message_id": "{message_id}", "updated_at": "2024-03-0{n + 3}T00:00:00Z", '
                      f'"status_id": "s{i}-{n}", "status": "state-{n}", "note": 1.50}}')  # fmt: skip
            docs.append((STATUS, f"s{i}-{n}", status))
        joined = f'["{message_id}", "{ids[(i + 1) % len(ids)]}"]' if i % 4 == 0 else f'"{message_id}"'
        audit = (f'{{"message_id": {joined}, "@timestamp": "2024-03-05T00:00:0{i % 10}Z", "audit_id": "a{i:03d}", '
                 f'"action": "view", "ip": "SECRET-ip-{i}", "n": -0}}')  # fmt: skip
        docs.append((AUDIT, f"a{i}", audit))
    return docs


# -- the oracle: computed from the loaded text alone ------------------------------------------------------------


def _get(document: Any, key: str) -> Any:
    return dict(document[1]).get(key)


def expected_records(docs: list[tuple[str, str, str]]) -> dict[str, list[tuple[str, Any]]]:
    """message id → the record's (key, value) pairs but ``window``, as tokens."""
    messages = {doc_id: tokens(text) for index, doc_id, text in docs if index == MESSAGES}
    related: dict[str, dict[str, list[Any]]] = {STATUS: {}, AUDIT: {}}
    for index, _, text in docs:
        if index != MESSAGES:
            document = tokens(text)
            joined = _get(document, "message_id")
            for message_id in joined if isinstance(joined, list) else [joined]:
                related[index].setdefault(message_id, []).append(document)
    records = {}
    for message_id, message in messages.items():
        statuses = sorted(
            related[STATUS].get(message_id, []), key=lambda d: (_get(d, "updated_at"), _get(d, "status_id"))
        )
        audits = sorted(related[AUDIT].get(message_id, []), key=lambda d: (_get(d, "@timestamp"), _get(d, "audit_id")))
        records[message_id] = [("message_id", message_id), ("message", message),
                               ("status", statuses[-1] if statuses else None), ("audit", audits)]  # fmt: skip
    return records


# -- loading and running -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(engine) -> Any:
    """The corpus loaded as text into ``engine``, reached through the connection ``fidelity_engine``."""
    for index, mapping in MAPPINGS.items():
        requests.delete(f"{engine.url}/{index}", timeout=60)
        requests.put(f"{engine.url}/{index}", json={"mappings": mapping}, timeout=60).raise_for_status()
    docs = _documents()
    lines = []
    for index, doc_id, text in docs:
        lines += [json.dumps({"index": {"_index": index, "_id": doc_id}}), text]
    response = requests.post(f"{engine.url}/_bulk?refresh=true", data=("\n".join(lines) + "\n").encode(),
                             headers={"content-type": "application/x-ndjson"}, timeout=300)  # fmt: skip
    response.raise_for_status()
    assert not response.json()["errors"], [i for i in response.json()["items"] if "error" in i["index"]][:3]
    os.environ["AIRFLOW_CONN_FIDELITY_ENGINE"] = elasticsearch_connection_uri(engine.url)
    os.environ["AIRFLOW_CONN_FIDELITY_HMAC"] = json.dumps({"conn_type": "generic", "password": KEY})
    yield docs
    os.environ.pop("AIRFLOW_CONN_FIDELITY_ENGINE", None)


def _conf(bucket: str, output_format: str = "jsonl.gz", **source: Any) -> dict[str, Any]:
    related = [
        {"name": "status", "index": STATUS, "join_field": "message_id", "sort": ["updated_at", "status_id"],
         "cardinality": "one"},
        {"name": "audit", "index": AUDIT, "join_field": "message_id", "sort": ["@timestamp", "audit_id"],
         "cardinality": "many"},
    ]  # fmt: skip
    return {"start": "2024-03-01", "end": "2024-03-03", "window": "1d", "s3_bucket": bucket, "s3_prefix": "fid",
            "backfill_name": "corpus", "page_size": 100, "output_format": output_format,
            "source": {"es_conn_id": CONN, "related_page_size": 3,
                       "messages": {"index": MESSAGES, "id_field": "message_id", "timestamp_field": "@timestamp"},
                       "related": related, **source}}  # fmt: skip


def _records(bucket: str) -> list[bytes]:
    """Each record's bytes, as written, from the data objects (manifests and plan aside)."""
    out = []
    for key, data in sorted(read_objects(bucket, "fid/").items()):
        if key.rsplit("/", 1)[-1].startswith("_"):
            continue
        if key.endswith(".gz"):
            data = gzip.decompress(data)
        out += data.splitlines() if key.endswith((".jsonl", ".jsonl.gz")) else [data]
    return out


def _verify(conf: dict[str, Any], *extra: str) -> int:
    return cli(["verify", "--conf", json.dumps(conf), *extra])


# Every output format on the reference engine; the default one on each other read strategy (the formats only
# differ after the records are built, which the engine does not reach).
FORMATS = [
    *(pytest.param(ENGINES[0].values[0], f, id=f"{ENGINES[0].id}-{f}") for f in ("jsonl.gz", "jsonl", "json")),
    *(pytest.param(e.values[0], "jsonl.gz", id=f"{e.id}-jsonl.gz") for e in ENGINES[1:]),
]


@pytest.mark.parametrize(("engine", "output_format"), FORMATS, indirect=["engine"])
def test_every_record_equals_the_oracle_token_for_token(corpus, run_backfill, s3_bucket, output_format):
    conf = _conf(s3_bucket, output_format)
    assert run_backfill(conf).state == "success"
    expected = expected_records(corpus)
    written = _records(s3_bucket)
    assert len(written) == len(expected) == len(BODIES)
    for line in written:
        line.decode("utf-8")  # valid UTF-8, lone surrogates escaped
        record = tokens(line)
        pairs = [pair for pair in record[1] if pair[0] != "window"]
        assert pairs == expected[_get(record, "message_id")], _get(record, "message_id")
    assert b"89014103211118510720" in b"".join(written) and rb"see you \ud83d" in b"".join(written)
    assert _verify(conf) == 0


def tag_and_edit(record: dict[str, Any]) -> dict[str, Any]:
    """A transform that edits what it is given in place: the related documents it gets are its own."""
    for document in record["audit"]:
        document["seen_by"] = document.get("seen_by", 0) + 1
    record["message"]["tagged"] = True
    return record


REDACT = [
    {"field": "message.sender.email", "action": "drop"},
    {"field": "message.payload.card", "action": "mask", "keep_start": 1},
    {"field": "message.raw.secret", "action": "hash"},
    {"field": "message.raw.deep.pan", "action": "drop"},
    {"field": "audit.ip", "action": "mask", "keep_start": 2, "keep_end": 1},
]


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_redaction_leaves_no_secret_in_any_form_and_verify_redaction_proves_it(corpus, run_backfill, s3_bucket):
    # The audit selection leaves out the join field: documents naming two messages must still join both.
    status, audit = _conf(s3_bucket)["source"]["related"]
    source = {"redact": REDACT, "redaction_key_conn_id": "fidelity_hmac",
              "transform": "tests.integration.test_fidelity.tag_and_edit",
              "related": [status, {**audit, "source_fields": ["action", "ip", "@timestamp"]}]}  # fmt: skip
    conf = _conf(s3_bucket, "jsonl.gz", **source)
    assert run_backfill(conf).state == "success"
    written = _records(s3_bucket)
    assert len(written) == len(BODIES)
    assert b"SECRET-" not in b"".join(written)  # nested, dotted, mixed, in arrays, in related documents
    expected = expected_records(corpus)
    for line in written:
        record = json.loads(line)
        want = dict(expected[record["message_id"]])
        assert record["message"]["tagged"] is True
        assert len(record["audit"]) == len(want["audit"])  # joined to every message it names
        assert all(doc["seen_by"] == 1 and doc["ip"].startswith("SE") for doc in record["audit"])
        assert "message_id" not in json.dumps(record["audit"])  # read for the join, not selected
    assert _verify(conf, "--redaction") == 0


@pytest.mark.parametrize("engine", ENGINES[:1], indirect=True)
def test_verify_redaction_fails_on_output_that_holds_a_named_field(corpus, run_backfill, s3_bucket, capsys):
    conf = _conf(s3_bucket, "jsonl")
    assert run_backfill(conf).state == "success"  # nothing redacted, as main wrote dotted keys
    conf["source"]["redact"] = REDACT[:1]
    assert _verify(conf, "--redaction") == 1
    assert "records break the drop rule on 'message.sender.email'" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ENGINES[:1], indirect=True)
def test_a_transform_sees_the_same_records_whatever_the_page_size(corpus, run_backfill, s3_bucket):
    conf = _conf(s3_bucket, "jsonl", transform="tests.integration.test_fidelity.tag_and_edit")
    assert run_backfill(conf).state == "success"
    first = _records(s3_bucket)
    assert run_backfill(conf | {"page_size": 1000, "force": True}).state == "success"
    assert _records(s3_bucket) == first


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_plan_accepts_fields_stored_but_not_mapped_and_refuses_multi_fields_and_typos(corpus, engine, s3_bucket):
    from es_backfill.config import ConfigError, from_params, load_defaults
    from es_backfill.plan import check_cluster
    from tests.integration.support import reader_at

    def problems(rules: list[dict[str, Any]], **messages: Any) -> list[str]:
        conf = _conf(s3_bucket, redact=rules)
        conf["source"]["messages"] |= messages
        config = from_params(conf, load_defaults(Path(__file__).resolve().parents[2] / "include" / DEFAULTS))
        with reader_at(engine.url) as reader:
            try:
                check_cluster(config, reader)
            except ConfigError as err:
                return err.problems
        return []

    stored = [{"field": f"message.{path}", "action": "drop"}
              for path in ("payload.card", "raw.secret", "raw.deep.pan", "raw.known", "sender")]  # fmt: skip
    assert problems(stored, source_fields=["message_id", "@timestamp", "payload.iccid", "raw.deep"]) == []
    assert problems([{"field": "message.payload", "action": "drop"}]) == []  # the object mapped enabled: false
    assert problems([{"field": "message.subject.keyword", "action": "drop"}]) == [
        f"field 'subject.keyword' (in _source selection or a redaction rule) of index {MESSAGES!r} is a multi-field "
        "of 'subject', which _source does not hold: name 'subject' instead"
    ]
    typo = problems([{"field": "message.paylod.card", "action": "drop"}], source_excludes=["sendr"])
    assert len(typo) == 2 and all("is not mapped in index" in p and "nor inside an object mapped" in p for p in typo)


@pytest.mark.parametrize("engine", ENGINES[1:2], indirect=True)
def test_a_task_keeps_its_connections_and_refuses_a_cluster_other_than_the_planned_one(
    corpus, engine, s3_server, s3_bucket, caplog
):
    from es_backfill.config import ConfigError, from_params, load_defaults
    from es_backfill.extract import run_window
    from es_backfill.sink import ObjectStore
    from es_backfill.windows import Window
    from tests.integration.support import reader_at, s3_client

    config = from_params(_conf(s3_bucket), load_defaults(Path(__file__).resolve().parents[2] / "include" / DEFAULTS))
    store = ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket)
    window = Window(utc(2024, 3, 1), utc(2024, 3, 2))
    with reader_at(engine.url, max_in_flight=3) as reader:
        with pytest.raises(ConfigError, match="was planned on cluster 'another-cluster'"):
            run_window(config.with_cluster("another-cluster"), window, reader, store)
        assert list(store.list("fid/")) == []  # nothing written
        with caplog.at_level("WARNING", logger="urllib3.connectionpool"):
            result = run_window(config.with_cluster(reader.cluster.cluster_uuid), window, reader, store)
    assert result.messages > 50 and reader.peak_in_flight > 1  # lookups overlapped
    assert not [r for r in caplog.records if "Connection pool is full" in r.getMessage()]
