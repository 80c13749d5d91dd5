"""The secured OpenSearch node (include/dev/servers/secured.py) is what it claims: TLS with its own CA, basic auth
against internal users, and a reader whose role grants exactly the reads the backfill needs, changeable on the
running node. One node serves the module; a node that cannot start fails every test here."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opensearchpy import OpenSearch
from opensearchpy.exceptions import AuthenticationException, AuthorizationException
from opensearchpy.exceptions import SSLError as OpenSearchSSLError

from include.dev.servers.secured import (
    READER_CLUSTER_PERMISSIONS,
    READER_INDEX_ACTIONS,
    READER_ROLE,
    Credentials,
    SecuredCluster,
    running_secured_opensearch,
)

INDEX = "eng_secured"
PRIVATE_INDEX = "private_notes"  # matches none of the reader's patterns
DOCS = 5


@pytest.fixture(scope="module")
def secured(pytestconfig: pytest.Config) -> Iterator[SecuredCluster]:
    from tests.conftest import _announce

    with running_secured_opensearch(["messages*", "history*", "status*", "audit*", "eng_*"]) as cluster:
        _announce(pytestconfig, f"OpenSearch {cluster.version} (security, TLS) at {cluster.url}")
        with cluster.admin_client() as admin:
            admin.indices.create(
                index=INDEX, body={"mappings": {"properties": {"sent_at": {"type": "date"}, "id": {"type": "keyword"}}}}
            )
            for i in range(DOCS):
                admin.index(index=INDEX, id=f"m{i}", body={"sent_at": f"2024-03-0{i + 1}", "id": f"m{i}"})
            admin.index(index=PRIVATE_INDEX, id="p1", body={"note": "not for the reader"})
            admin.indices.refresh(index=f"{INDEX},{PRIVATE_INDEX}")
        yield cluster


@pytest.fixture(scope="module")
def reader(secured: SecuredCluster) -> Iterator[OpenSearch]:
    with secured.reader_client() as client:
        yield client


def _security_reason(exc_info: pytest.ExceptionInfo[Any]) -> str:
    return exc_info.value.info["error"]["reason"]


def test_the_node_serves_https_with_users_and_roles(secured):
    assert secured.url.startswith("https://127.0.0.1:")
    assert secured.version == "2.19.4"
    with secured.admin_client() as admin:
        assert admin.info()["version"]["distribution"] == "opensearch"
        assert admin.count(index=INDEX)["count"] == DOCS  # the admin created and wrote it
        assert admin.transport.perform_request("GET", "/_plugins/_security/authinfo")["roles"] == ["all_access"]
    with secured.reader_client() as client:
        auth = client.transport.perform_request("GET", "/_plugins/_security/authinfo")
    assert (auth["user_name"], auth["roles"], auth["backend_roles"]) == ("backfill_reader", [READER_ROLE], [])


def test_the_reader_reads_over_https_with_the_ca(reader):
    assert reader.info()["version"]["number"] == "2.19.4"
    hits = reader.search(index=INDEX, body={"sort": [{"sent_at": "asc"}], "size": 10})["hits"]["hits"]
    assert [h["_id"] for h in hits] == [f"m{i}" for i in range(DOCS)]
    assert reader.count(index=INDEX)["count"] == DOCS
    fields = reader.transport.perform_request("GET", f"/{INDEX}/_mapping/field/*")
    assert fields[INDEX]["mappings"]["sent_at"]["mapping"]["sent_at"]["type"] == "date"
    mapping = reader.transport.perform_request("GET", f"/{INDEX}/_mapping")
    assert mapping[INDEX]["mappings"]["properties"]["id"] == {"type": "keyword"}

    pit = reader.transport.perform_request("POST", f"/{INDEX}/_search/point_in_time", params={"keep_alive": "1m"})
    page = reader.transport.perform_request(
        "POST",
        "/_search",
        body={"pit": {"id": pit["pit_id"], "keep_alive": "1m"}, "sort": [{"sent_at": "asc"}], "size": 2},
    )
    assert [h["_id"] for h in page["hits"]["hits"]] == ["m0", "m1"]
    closed = reader.transport.perform_request("DELETE", "/_search/point_in_time", body={"pit_id": [pit["pit_id"]]})
    assert closed["pits"] == [{"successful": True, "pit_id": pit["pit_id"]}]


def test_the_reader_cannot_write_nor_read_other_indices(reader, secured):
    with pytest.raises(AuthorizationException) as denied:
        reader.index(index=INDEX, id="new", body={"id": "new"})
    assert "no permissions for [indices:data/write/index]" in _security_reason(denied)
    with pytest.raises(AuthorizationException) as denied:
        reader.search(index=PRIVATE_INDEX)
    assert "no permissions for [indices:data/read/search]" in _security_reason(denied)
    with secured.admin_client() as admin:
        assert admin.count(index=INDEX)["count"] == DOCS


def test_a_wrong_password_is_refused(secured):
    wrong = Credentials(secured.reader.username, "not-the-password")
    with secured.client(wrong, max_retries=0) as client, pytest.raises(AuthenticationException) as refused:
        client.info()
    assert refused.value.status_code == 401
    with secured.client(None, max_retries=0) as anonymous, pytest.raises(AuthenticationException):
        anonymous.info()


def test_a_client_without_the_ca_fails_tls_verification(secured):
    # opensearch-py's default trust store (certifi) does not know our throwaway CA.
    admin = (secured.admin.username, secured.admin.password)
    client = OpenSearch([secured.url], http_auth=admin, verify_certs=True, timeout=10, max_retries=0)
    with client, pytest.raises(OpenSearchSSLError, match="CERTIFICATE_VERIFY_FAILED"):
        client.info()
    with pytest.raises(urllib.error.URLError) as failed:
        urllib.request.urlopen(secured.url, timeout=10, context=ssl.create_default_context())  # noqa: S310
    assert isinstance(failed.value.reason, ssl.SSLCertVerificationError)


def test_the_admin_certificate_is_the_security_admin(secured):
    # Only a client certificate named in plugins.security.authcz.admin_dn sees the security index's documents.
    context = ssl.create_default_context(cafile=str(secured.ca_path))
    context.load_cert_chain(str(secured.admin_cert_path), str(secured.admin_key_path))
    with urllib.request.urlopen(f"{secured.url}/.opendistro_security/_count", timeout=10, context=context) as resp:  # noqa: S310
        assert json.load(resp)["count"] > 0
    with secured.admin_client() as admin:
        assert admin.transport.perform_request("GET", "/.opendistro_security/_count")["count"] == 0


def _root(c: OpenSearch) -> Any:
    return c.info()


def _search(c: OpenSearch) -> Any:
    return c.search(index=INDEX)


def _open_pit(c: OpenSearch) -> Any:
    return c.transport.perform_request("POST", f"/{INDEX}/_search/point_in_time", params={"keep_alive": "1m"})


def _field_mapping(c: OpenSearch) -> Any:
    return c.transport.perform_request("GET", f"/{INDEX}/_mapping/field/sent_at")


def _mapping(c: OpenSearch) -> Any:
    return c.transport.perform_request("GET", f"/{INDEX}/_mapping")


# Each permission of the reader's role, and a request only it allows.
GUARDED: list[tuple[str, Callable[[OpenSearch], Any], str]] = [
    ("cluster:monitor/main", _root, "cluster:monitor/main"),
    ("indices:data/read/search", _search, "indices:data/read/search"),
    ("indices:data/read/point_in_time/create", _open_pit, "indices:data/read/point_in_time/create"),
    ("indices:admin/mappings/fields/get*", _field_mapping, "indices:admin/mappings/fields/get"),
    ("indices:admin/mappings/get", _mapping, "indices:admin/mappings/get"),
]


@pytest.mark.parametrize(("permission", "request_", "action"), GUARDED, ids=[g[0] for g in GUARDED])
def test_a_permission_taken_away_on_the_running_node(secured, reader, permission, request_, action):
    cluster_permissions = [p for p in READER_CLUSTER_PERMISSIONS if p != permission]
    index_actions = [a for a in READER_INDEX_ACTIONS if a != permission]
    with secured.reader_role_changed(cluster_permissions=cluster_permissions, index_actions=index_actions):
        with pytest.raises(AuthorizationException) as denied:
            request_(reader)
        assert f"no permissions for [{action}]" in _security_reason(denied)
    request_(reader)  # the node's own role again


def test_closing_a_point_in_time_needs_its_own_permission(secured, reader):
    pit = _open_pit(reader)["pit_id"]
    body = {"pit_id": [pit]}
    index_actions = [a for a in READER_INDEX_ACTIONS if a != "indices:data/read/point_in_time/delete"]
    with secured.reader_role_changed(index_actions=index_actions):
        with pytest.raises(AuthorizationException) as denied:
            reader.transport.perform_request("DELETE", "/_search/point_in_time", body=body)
        assert "no permissions for [indices:data/read/point_in_time/delete]" in _security_reason(denied)
    assert reader.transport.perform_request("DELETE", "/_search/point_in_time", body=body)["pits"][0]["successful"]


def test_the_connection_json_reads_through_the_hook(secured, monkeypatch):
    from es_backfill.hooks import SearchReaderHook
    from es_backfill.source import UNIQUE_SORT, AccessDenied

    monkeypatch.setenv("AIRFLOW_CONN_SECURED_READER", secured.connection_json())
    with SearchReaderHook("secured_reader", max_retries=0).get_conn() as source:
        assert (source.cluster.product, source.cluster.version, source.cluster.strategy) == (
            "opensearch",
            "2.19.4",
            UNIQUE_SORT,
        )
        assert source.count(INDEX, {"match_all": {}}) == DOCS
        assert source.field_mappings(INDEX, ["sent_at"])["sent_at"]["type"] == "date"
        source.close_pit(source.open_pit(INDEX, "1m"))
        index_actions = [a for a in READER_INDEX_ACTIONS if a != "indices:admin/mappings/fields/get*"]
        with secured.reader_role_changed(index_actions=index_actions), pytest.raises(AccessDenied) as denied:
            source.field_mappings(INDEX, ["sent_at"])
        assert denied.value.status == 403 and "indices:admin/mappings/fields/get" in denied.value.reason
