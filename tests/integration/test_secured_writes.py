"""The reader's least privilege on a real secured node: it can write nothing, and the backfill asks for nothing more.

``secured_cluster`` (tests/integration/conftest.py) is OpenSearch 2.19.4 with its security plugin, over HTTPS with
this run's own CA; ``backfill_reader``'s only role, ``backfill_read``, grants ``GET /`` and, on ``eng_*`` and
``lp_*``, searches, points in time and mappings. Two claims are checked against it, not against a mock:

* Writes are refused, for real. As admin we create ``lp_writes_<tag>`` (a mapping, a few documents); then the
  reader, over HTTPS with the CA verified, tries every kind of write: documents (index, update, delete, bulk),
  indices (create one inside its own patterns, delete, put mapping, put settings, close), an index template, an
  alias, and the security REST API (read or change its own role, its own user, a role mapping). Each answer must
  be the node's 403 naming the refused action (the security API's own 403 names no action but the user).
  ``_delete_by_query``, ``_update_by_query`` and ``_reindex`` live in the ``reindex`` module, which the
  integ-test distribution the node runs does not ship: the node has no handler for them, for anyone, so they
  never reach the security layer; a test pins that down (and fails, to move them to the 403 list, the day the
  module is there). Afterwards, as admin, nothing has changed: the documents (sources, versions, sequence
  numbers), the mapping, the settings, the index still open, no index, alias, template or role of ours created,
  the reader's role, user and mappings as they were.
* The DAG only reads. A full run and ``verify`` (a resume and a dry run run in test_engines.py), with the reader's
  credentials, through the
  fault proxy (plain HTTP in front, HTTPS to the node, verified against our CA: without the CA the proxy cannot
  reach the node at all): every request the node sees is one ``READ_ONLY_REQUESTS`` allows, and the reader's
  role was enough for all of them (no 403).

What the node answers is not always a bare 403: ``_bulk`` is refused whole (403 on ``indices:data/write/bulk``,
a cluster-level permission the reader lacks); a reader that had it would get 200 with a 403 per item instead, so
the admin's "nothing changed" check, not the status, is what proves a write did not happen.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opensearchpy.exceptions import TransportError

from include.dev.datagen import DatasetSpec, IndexNames, load
from include.dev.servers.elasticsearch import elasticsearch_connection_uri
from include.dev.servers.faultproxy import FaultProxy
from include.dev.servers.secured import READER_ROLE, SecuredCluster
from tests.integration.support import decode_records, not_read_only, read_objects, source_override, utc

TAG = uuid.uuid4().hex[:8]
INDEX = f"lp_writes_{TAG}"
NEW_INDEX = f"lp_new_{TAG}"  # inside the reader's patterns: only the missing permission stops it
ALIAS = f"lp_alias_{TAG}"
TEMPLATE = f"lp_tpl_{TAG}"
COPY = f"lp_copy_{TAG}"
ROLE = f"lp_writes_{TAG}"
MAPPING = {
    "properties": {
        "id": {"type": "keyword"},
        "n": {"type": "integer"},
        "sent_at": {"type": "date"},
        "body": {"type": "text"},
    }
}
DOCS = {
    f"d{i}": {"id": f"d{i}", "n": i, "sent_at": f"2024-03-0{i + 1}T10:00:00Z", "body": f"text {i}"} for i in range(4)
}
EVERYTHING = {"cluster_permissions": ["*"], "index_permissions": [{"index_patterns": ["*"], "allowed_actions": ["*"]}]}
SECURITY_REFUSAL = "No permission to access REST API: User backfill_reader"


def _ndjson(*lines: dict[str, Any]) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines)


BULK = _ndjson(
    {"index": {"_index": INDEX, "_id": "bulk-new"}}, {"id": "bulk-new", "n": 100},
    {"update": {"_index": INDEX, "_id": "d1"}}, {"doc": {"n": 101}},
    {"delete": {"_index": INDEX, "_id": "d2"}},
    {"create": {"_index": NEW_INDEX, "_id": "c"}}, {"id": "c", "n": 102},
)  # fmt: skip

# (name, method, path, body, what the 403 must name): the action for the index and cluster layer, the user's
# refusal for the security REST API.
REFUSED: list[tuple[str, str, str, Any, str]] = [
    ("index a document", "PUT", f"/{INDEX}/_doc/new", {"id": "new", "n": 9}, "indices:data/write/index"),
    ("index a document with a generated id", "POST", f"/{INDEX}/_doc", {"id": "auto"}, "indices:data/write/index"),
    ("create a document", "PUT", f"/{INDEX}/_create/created", {"id": "created"}, "indices:data/write/index"),
    ("update a document", "POST", f"/{INDEX}/_update/d0", {"doc": {"n": 50}}, "indices:data/write/update"),
    ("delete a document", "DELETE", f"/{INDEX}/_doc/d0", None, "indices:data/write/delete"),
    ("bulk", "POST", "/_bulk", BULK, "indices:data/write/bulk"),
    ("bulk on the index", "POST", f"/{INDEX}/_bulk", BULK, "indices:data/write/bulk"),
    ("create an index in the reader's patterns", "PUT", f"/{NEW_INDEX}", {"mappings": MAPPING},
     "indices:admin/create"),
    ("delete the index", "DELETE", f"/{INDEX}", None, "indices:admin/delete"),
    ("put a mapping", "PUT", f"/{INDEX}/_mapping", {"properties": {"extra": {"type": "keyword"}}},
     "indices:admin/mapping/put"),
    ("put settings", "PUT", f"/{INDEX}/_settings", {"index": {"number_of_replicas": 0, "refresh_interval": "7s"}},
     "indices:admin/settings/update"),
    ("close the index", "POST", f"/{INDEX}/_close", None, "indices:admin/close"),
    ("put an index template", "PUT", f"/_index_template/{TEMPLATE}",
     {"index_patterns": [f"{TEMPLATE}*"], "template": {"settings": {"number_of_shards": 1}}},
     "indices:admin/index_template/put"),
    ("put a legacy template", "PUT", f"/_template/{TEMPLATE}", {"index_patterns": [f"{TEMPLATE}*"]},
     "indices:admin/template/put"),
    ("add an alias", "PUT", f"/{INDEX}/_alias/{ALIAS}", None, "indices:admin/aliases"),
    ("add an alias through _aliases", "POST", "/_aliases",
     {"actions": [{"add": {"index": INDEX, "alias": ALIAS}}]}, "indices:admin/aliases"),
    ("read its own role", "GET", f"/_plugins/_security/api/roles/{READER_ROLE}", None, SECURITY_REFUSAL),
    ("grant its own role everything", "PUT", f"/_plugins/_security/api/roles/{READER_ROLE}", EVERYTHING,
     SECURITY_REFUSAL),
    ("create a role", "PUT", f"/_plugins/_security/api/roles/{ROLE}", EVERYTHING, SECURITY_REFUSAL),
    ("give its own user the admin backend role", "PUT", "/_plugins/_security/api/internalusers/backfill_reader",
     {"password": "an-other-password-1A!", "backend_roles": ["admin"]}, SECURITY_REFUSAL),
    ("map itself to all_access", "PUT", "/_plugins/_security/api/rolesmapping/all_access",
     {"users": ["admin", "backfill_reader"]}, SECURITY_REFUSAL),
]  # fmt: skip

# Served by the reindex module, which the node's integ-test distribution lacks: (name, method, path, body, status,
# the start of the node's own error). Without the module, /_reindex falls to the /{index} routes (GET, HEAD, PUT,
# DELETE, in no fixed order), hence a 405.
UNSERVED: list[tuple[str, str, str, Any, int, str]] = [
    ("delete by query", "POST", f"/{INDEX}/_delete_by_query", {"query": {"match_all": {}}}, 400,
     f"no handler found for uri [/{INDEX}/_delete_by_query] and method [POST]"),
    ("update by query", "POST", f"/{INDEX}/_update_by_query", {"query": {"match_all": {}}}, 400,
     f"no handler found for uri [/{INDEX}/_update_by_query] and method [POST]"),
    ("reindex", "POST", "/_reindex", {"source": {"index": INDEX}, "dest": {"index": COPY}}, 405,
     "Incorrect HTTP method for uri [/_reindex] and method [POST]"),
]  # fmt: skip


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any


@dataclass(frozen=True)
class Attempts:
    """The admin's view of everything a write could touch, taken before the reader tried, and its answers."""

    before: dict[str, Any]
    answers: dict[str, Answer]


def _state(admin: Any) -> dict[str, Any]:
    """What a write by the reader could have changed, as admin sees it."""
    hits = admin.search(
        index=INDEX,
        body={"query": {"match_all": {}}, "sort": [{"id": "asc"}], "size": 100, "version": True,
              "seq_no_primary_term": True},
    )["hits"]["hits"]  # fmt: skip
    security = "/_plugins/_security/api"
    return {
        "count": admin.count(index=INDEX)["count"],
        "documents": [(h["_id"], h["_version"], h["_seq_no"], h["_primary_term"], h["_source"]) for h in hits],
        "mapping": admin.indices.get_mapping(index=INDEX),
        "settings": admin.indices.get_settings(index=INDEX),
        "status": [(i["index"], i["status"]) for i in admin.cat.indices(index=f"*{TAG}*", format="json")],
        "aliases": admin.indices.get_alias(index=INDEX),
        "index templates": [
            t["name"] for t in admin.transport.perform_request("GET", "/_index_template")["index_templates"]
        ],
        "legacy templates": sorted(admin.transport.perform_request("GET", "/_template")),
        "reader role": admin.transport.perform_request("GET", f"{security}/roles/{READER_ROLE}"),
        "roles": sorted(admin.transport.perform_request("GET", f"{security}/roles")),
        "reader user": admin.transport.perform_request("GET", f"{security}/internalusers/backfill_reader"),
        "role mappings": admin.transport.perform_request("GET", f"{security}/rolesmapping"),
    }


def _send(client: Any, method: str, path: str, body: Any) -> Answer:
    headers = {"content-type": "application/x-ndjson"} if isinstance(body, str) else None
    try:
        return Answer(200, client.transport.perform_request(method, path, body=body, headers=headers))
    except TransportError as err:
        return Answer(int(err.status_code), err.info)


@pytest.fixture(scope="module")
def attempts(secured_cluster: SecuredCluster) -> Iterator[Attempts]:
    """``INDEX`` made and filled by the admin, then every write of ``REFUSED`` and ``UNSERVED`` tried by the
    reader, once, in one place: whichever order the tests run in, the admin's check comes after all of them."""
    with secured_cluster.admin_client() as admin:
        admin.indices.create(index=INDEX, body={"mappings": MAPPING, "settings": {"number_of_shards": 1}})
        for doc_id, source in DOCS.items():
            admin.index(index=INDEX, id=doc_id, body=source)
        admin.indices.refresh(index=INDEX)
        before = _state(admin)
    with secured_cluster.reader_client() as reader:
        assert reader.count(index=INDEX)["count"] == len(DOCS)  # the reader does reach the index
        answers = {name: _send(reader, method, path, body) for name, method, path, body, *_ in REFUSED + UNSERVED}
    yield Attempts(before, answers)
    with secured_cluster.admin_client() as admin:
        admin.indices.delete(index=f"*{TAG}*", expand_wildcards="all", ignore_unavailable=True)


@pytest.mark.parametrize(("name", "method", "path", "body", "refusal"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_reader_is_refused_every_write(attempts, name, method, path, body, refusal):
    answer = attempts.answers[name]
    assert answer.status == 403, f"{method} {path} answered {answer.status}: {answer.body}"
    if refusal == SECURITY_REFUSAL:
        assert answer.body["status"] == "FORBIDDEN"
        assert answer.body["message"].startswith(SECURITY_REFUSAL)
    else:
        error = answer.body["error"]
        assert error["type"] == "security_exception"
        assert error["reason"].startswith(f"no permissions for [{refusal}] and User [name=backfill_reader,")


@pytest.mark.parametrize(("name", "method", "path", "body", "status", "error"), UNSERVED, ids=[u[0] for u in UNSERVED])
def test_delete_by_query_and_reindex_are_not_served_by_this_node(secured_cluster, attempts, name, method, path, body,
                                                                 status, error):  # fmt: skip
    answer = attempts.answers[name]
    assert answer.status == status and answer.body["error"].startswith(error), answer
    with secured_cluster.admin_client() as admin:
        nodes = admin.transport.perform_request("GET", "/_nodes/_local/plugins")["nodes"].values()
    # Should the node ever run a distribution with the reindex module, these belong in REFUSED.
    assert [sorted(m["name"] for m in node["modules"]) for node in nodes] == [["transport-netty4"]]


def test_nothing_the_reader_tried_changed_anything(secured_cluster, attempts):
    with secured_cluster.admin_client() as admin:
        after = _state(admin)
        assert not admin.indices.exists(index=NEW_INDEX) and not admin.indices.exists(index=COPY)
        assert not admin.indices.exists_alias(name=ALIAS)
    assert after == attempts.before
    # And the state compared is the one the admin made, not some other one.
    assert after["count"] == len(DOCS)
    assert [(doc_id, version, source) for doc_id, version, _, _, source in after["documents"]] == [
        (doc_id, 1, source) for doc_id, source in DOCS.items()
    ]
    assert after["mapping"][INDEX]["mappings"] == MAPPING
    index_settings = after["settings"][INDEX]["settings"]["index"]
    assert "blocks" not in index_settings and "refresh_interval" not in index_settings
    assert index_settings["number_of_replicas"] == "1"
    assert after["status"] == [(INDEX, "open")]
    assert after["aliases"] == {INDEX: {"aliases": {}}}
    assert TEMPLATE not in after["index templates"] and TEMPLATE not in after["legacy templates"]
    assert ROLE not in after["roles"]
    reader_role = after["reader role"][READER_ROLE]
    assert reader_role["cluster_permissions"] == list(secured_cluster.reader_role.cluster_permissions)
    assert [(p["index_patterns"], p["allowed_actions"]) for p in reader_role["index_permissions"]] == [
        (list(secured_cluster.reader_role.index_patterns), list(secured_cluster.reader_role.index_actions))
    ]
    assert after["reader user"]["backfill_reader"]["backend_roles"] == []
    assert "backfill_reader" not in after["role mappings"]["all_access"]["users"]
    with secured_cluster.reader_client() as reader:  # its password and its one role, as they were
        auth = reader.transport.perform_request("GET", "/_plugins/_security/authinfo")
    assert (auth["user_name"], auth["roles"], auth["backend_roles"]) == ("backfill_reader", [READER_ROLE], [])


# --------------------------------------------------------------------------- the DAG only reads

CONN_ID = "lp_secured_reader"


@pytest.fixture(scope="module")
def read_only_indices(secured_cluster: SecuredCluster) -> Iterator[IndexNames]:
    prefix = f"lp_ro_{uuid.uuid4().hex[:8]}"  # not TAG: the write tests look at every index named with it
    names = IndexNames(
        messages=f"{prefix}_messages", history=f"{prefix}_history", status=f"{prefix}_status", audit=f"{prefix}_audit"
    )
    with secured_cluster.admin_client() as admin:
        load(admin, DatasetSpec(messages=60, start=utc(2024, 3, 1), end=utc(2024, 3, 3), seed=11, indices=names))
    yield names
    with secured_cluster.admin_client() as admin:
        admin.indices.delete(index=f"{prefix}_*", ignore_unavailable=True)


def test_the_proxy_reaches_the_https_node_only_with_our_ca(secured_cluster):
    import requests

    auth = (secured_cluster.reader.username, secured_cluster.reader.password)
    with FaultProxy(secured_cluster.url) as proxy:  # http.client's default context: the system's CAs only
        refused = requests.get(proxy.url, auth=auth, timeout=30)
        assert [r.status for r in proxy.requests] == [502]
    assert refused.status_code == 502 and "CERTIFICATE_VERIFY_FAILED" in refused.text
    node_tls = ssl.create_default_context(cafile=str(secured_cluster.ca_path))
    with FaultProxy(secured_cluster.url, upstream_ssl_context=node_tls) as proxy:
        answer = requests.get(proxy.url, auth=auth, timeout=30)
    assert answer.status_code == 200 and answer.json()["version"]["number"] == secured_cluster.version
    with pytest.raises(ValueError, match="for an https upstream"):
        FaultProxy("http://127.0.0.1:9200", upstream_ssl_context=node_tls)


def test_the_dag_sends_the_secured_node_only_reads_with_the_readers_credentials(
    secured_cluster, read_only_indices, run_backfill, s3_bucket, monkeypatch
):
    from es_backfill.cli import main as cli

    conf = {
        "start": "2024-03-01", "end": "2024-03-03", "window": "1d", "s3_bucket": s3_bucket, "s3_prefix": "out",
        "backfill_name": "secured", "page_size": 100,
        "source": {**source_override(read_only_indices), "es_conn_id": CONN_ID, "related_page_size": 2},
    }  # fmt: skip
    node_tls = ssl.create_default_context(cafile=str(secured_cluster.ca_path))
    with FaultProxy(secured_cluster.url, upstream_ssl_context=node_tls) as proxy:
        reader = secured_cluster.reader
        connection = elasticsearch_connection_uri(proxy.url, login=reader.username, password=reader.password)
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", connection)
        assert run_backfill(conf).state == "success"
        first_run = list(proxy.requests)
        # (A resume and a dry run with this role, straight over HTTPS: test_engines.py.)
        assert cli(["verify", "--conf", json.dumps(conf)]) == 0
        sent = list(proxy.requests)

    assert not_read_only(sent) == []
    assert [f"{r.method} {r.path} {r.status}" for r in sent if not 200 <= (r.status or 0) < 300] == []
    assert {r.path for r in sent} >= {
        "/",
        f"/{read_only_indices.messages}/_count",
        f"/{read_only_indices.messages}/_search/point_in_time",
        "/_search",
        "/_search/point_in_time",
    }  # the reads did go through the proxy, on OpenSearch's point in time
    assert len(sent) > len(first_run)  # verify asked the node too
    records = decode_records(read_objects(s3_bucket, "out/"))
    assert len(records) == 60 and len({r["message_id"] for r in records}) == 60
