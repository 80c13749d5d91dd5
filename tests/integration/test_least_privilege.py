"""Least privilege on a real secured cluster: OpenSearch 2.19.4 with its security plugin, over HTTPS with this run's
own CA, read by ``backfill_reader``, whose only role is the one README documents (include/dev/servers/secured.py).

- The role is minimal, measured: with it the dry run passes; without any one of its permissions the plan stops
  and names that permission. So does the exact action ``indices:admin/mappings/fields/get`` without its wildcard,
  which the node answers with 404 ``{}`` instead of 403: the plan does not read that as a missing index.
- The mistakes a user meets stop in the plan task once (no retries), name what to fix and write nothing: a wrong
  password, no credentials, a CA that did not sign the node's certificate, a role without point-in-time
  permissions, a role that cannot see one of the related indices.
- The scroll strategy (forced here, as the node has points in time) needs two cluster permissions more, named by
  the plan.

Full runs, a resume, a dry run, ``verify`` and the CLI with this user, byte-identical to Elasticsearch 9.5, are in
test_engines.py; writes refused and the read-only allowlist on this node in test_secured_writes.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import uuid

import pytest

from es_backfill.cli import main as cli
from es_backfill.config import ConfigError, defaults_path, from_params, load_defaults
from es_backfill.engines import ConnectionSettings
from es_backfill.hooks import open_reader
from es_backfill.plan import check_cluster
from es_backfill.source import SCROLL
from include.dev.datagen import MAPPINGS_DIR, DatasetSpec, IndexNames, load
from include.dev.servers.elasticsearch import elasticsearch_connection_uri
from include.dev.servers.secured import READER_CLUSTER_PERMISSIONS, READER_INDEX_ACTIONS, Credentials
from tests.integration.support import read_objects, source_override, utc

SCROLL_PERMISSIONS = ("indices:data/read/scroll", "indices:data/read/scroll/clear")


@pytest.fixture(scope="module")
def lp(secured_cluster, tmp_path_factory):
    """Indices the reader's role covers (``lp_*``), a messages field inside an object mapped ``enabled: false``
    (so the plan reads the index mappings), an audit index outside the role (``hidden_*``), and a CA of nobody's."""
    tag = uuid.uuid4().hex[:8]
    names = IndexNames(*(f"lp_{tag}_{role}" for role in ("messages", "history", "status", "audit")))
    hidden = f"hidden_{tag}_audit"
    with secured_cluster.admin_client() as admin:
        load(admin, DatasetSpec(messages=40, start=utc(2024, 3, 1), end=utc(2024, 3, 3), indices=names))
        admin.indices.put_mapping(index=names.messages, body={"properties": {"raw": {"type": "object",
                                                                                   "enabled": False}}})  # fmt: skip
        admin.indices.create(index=hidden, body=json.loads((MAPPINGS_DIR / "audit.json").read_text()))
    other_ca = tmp_path_factory.mktemp("other-ca")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=somebody-else",
         "-keyout", str(other_ca / "key.pem"), "-out", str(other_ca / "ca.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    reader, url = secured_cluster.reader, secured_cluster.url
    connections = {
        "lp_reader": secured_cluster.connection_json(),
        "lp_wrong_password": secured_cluster.connection_json(Credentials(reader.username, "not-the-password")),
        "lp_no_credentials": elasticsearch_connection_uri(url, ca_certs=str(secured_cluster.ca_path)),
        "lp_other_ca": elasticsearch_connection_uri(url, login=reader.username, password=reader.password,
                                                    ca_certs=str(other_ca / "ca.pem"), verify_certs=True),
    }  # fmt: skip
    for conn_id, uri in connections.items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = uri
    yield names, hidden
    for conn_id in connections:
        os.environ.pop(f"AIRFLOW_CONN_{conn_id.upper()}", None)


def _conf(lp, bucket: str, conn_id: str = "lp_reader", hide_audit: bool = False) -> dict:
    names, hidden = lp
    source = source_override(names) | {"es_conn_id": conn_id, "max_retries": 1}
    source["messages"] = source["messages"] | {"source_excludes": ["raw.secret"]}  # read from the index mappings
    if hide_audit:
        source["related"] = [s | {"index": hidden} if s["name"] == "audit" else s for s in source["related"]]
    return {"start": "2024-03-01", "end": "2024-03-03", "s3_bucket": bucket, "s3_prefix": "lp", "source": source}


def _plan(capsys, conf: dict) -> tuple[int, str]:
    code = cli(["plan", "--conf", json.dumps(conf)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_the_documented_role_passes_the_dry_run(lp, s3_bucket, capsys):
    code, err = _plan(capsys, _conf(lp, s3_bucket))
    assert code == 0, err
    assert read_objects(s3_bucket, "") == {}


@pytest.mark.parametrize(
    "permission", [*(("cluster", p) for p in READER_CLUSTER_PERMISSIONS), *(("index", p) for p in READER_INDEX_ACTIONS)]
)
def test_without_any_one_permission_of_the_role_the_plan_stops_naming_it(secured_cluster, lp, s3_bucket, capsys,
                                                                         permission):  # fmt: skip
    level, name = permission
    role = secured_cluster.reader_role
    kept = {
        "cluster_permissions": [p for p in role.cluster_permissions if (level, p) != permission],
        "index_actions": [a for a in role.index_actions if (level, a) != permission],
    }
    with secured_cluster.reader_role_changed(**kept):
        code, err = _plan(capsys, _conf(lp, s3_bucket))
    assert code == 2 and name.rstrip("*") in err, err
    assert read_objects(s3_bucket, "") == {}


def test_the_exact_field_mappings_action_without_its_wildcard_is_named_not_taken_for_a_missing_index(
    secured_cluster, lp, s3_bucket, capsys
):
    exact = [a.rstrip("*") for a in secured_cluster.reader_role.index_actions]
    with secured_cluster.reader_role_changed(index_actions=exact):
        code, err = _plan(capsys, _conf(lp, s3_bucket))
    assert code == 2 and "grant indices:admin/mappings/fields/get*" in err and "does not exist" not in err


UNAUTHORIZED = ["refused GET /", "(Unauthorized)", "check the credentials"]
REFUSALS = {
    "a wrong password": ({"conn_id": "lp_wrong_password"}, UNAUTHORIZED),
    "no credentials": ({"conn_id": "lp_no_credentials"}, UNAUTHORIZED),
    "a CA that did not sign the node's certificate": (
        {"conn_id": "lp_other_ca"}, ["failed in TLS", "certificate verify failed", "extra ca_certs to the file of"]
    ),
    "a role without point-in-time permissions": (
        {"index_actions": [a for a in READER_INDEX_ACTIONS if "point_in_time" not in a]},
        ["may not open, search or release a point in time", "indices:data/read/point_in_time/create"],
    ),
    "a role that cannot see a related index": (
        {"hide_audit": True}, ["may not read the mappings of index 'hidden_", "no permissions for"]
    ),
}  # fmt: skip


@pytest.mark.parametrize("mistake", REFUSALS)
def test_a_refusal_stops_the_plan_task_once_naming_what_to_fix_with_nothing_written(
    secured_cluster, lp, s3_bucket, run_backfill, capsys, mistake
):
    setting, words = REFUSALS[mistake]
    conf = _conf(lp, s3_bucket, setting.get("conn_id", "lp_reader"), setting.get("hide_audit", False))
    with secured_cluster.reader_role_changed(index_actions=setting.get("index_actions")):
        code, err = _plan(capsys, conf)
        run = run_backfill(conf)
    assert code == 2 and all(word in err for word in words), err
    assert run.state == "failed"
    states = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
    assert states["plan"] == ("failed", 1)  # once: AirflowFailException, no retry
    assert states["extract"][0] == "upstream_failed"
    assert read_objects(s3_bucket, "") == {}


def test_the_scroll_strategy_needs_the_cluster_scroll_permissions_which_the_plan_names(secured_cluster, lp, s3_bucket):
    config = from_params(_conf(lp, s3_bucket), load_defaults(defaults_path()))
    reader_settings = ConnectionSettings(
        secured_cluster.url, basic_auth=(secured_cluster.reader.username, secured_cluster.reader.password),
        ca_certs=str(secured_cluster.ca_path),
    )  # fmt: skip
    with open_reader(reader_settings, "lp_reader", max_retries=0) as reader:
        reader.cluster = dataclasses.replace(reader.cluster, strategy=SCROLL)
        with pytest.raises(ConfigError, match=r"cluster permissions indices:data/read/scroll and \S+/scroll/clear"):
            check_cluster(config, reader)
        scrolling = [*READER_CLUSTER_PERMISSIONS, *SCROLL_PERMISSIONS]
        with secured_cluster.reader_role_changed(cluster_permissions=scrolling):
            check_cluster(config, reader)
            with reader.snapshot(config.source.messages_index, "1m") as snapshot:
                hits = [hit for page in snapshot.pages({"match_all": {}}, ["@timestamp"], 7) for hit in page]
    assert len(hits) == 40 and reader.requests["clear_scroll"] >= 2
