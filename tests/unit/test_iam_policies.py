"""The IAM policies in ``include/ops/iam/`` against the AWS calls the code makes, both ways: every call is allowed
on the resources it is made on, and nothing else is (MWAA's own baseline aside, pinned to AWS's documentation).

The calls are found in the source: every call of an operation of a service the code makes a client of
(``.client("s3")``, ``client_type="sts"``, ``S3Hook(...).get_conn()``) and every paginator it asks for, in
``plugins/`` (the DAG: the MWAA execution role) and in the deploy tools (the deploying user). A new call fails
these tests until :func:`iam_requests` and the policy say what it needs. The connections read through Airflow
come from Secrets Manager on MWAA; the cluster's requests are those ``READ_ONLY_REQUESTS`` allows, which the
integration tests prove are the only ones a cluster sees. ``tests/integration/test_mwaa_deploy.py`` also checks
the deployer policy against the calls a deploy really makes.

The policies are evaluated here as IAM does for one identity policy (explicit deny, then allow; ``*`` and ``?``
wildcards; the condition operators the files use), with their placeholders filled as the README says.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import botocore.session
import pytest
from botocore import xform_name

from include.ops.airflow_admin import CONNECTIONS_LOOKUP_PATTERN, CONNECTIONS_PREFIX
from tests.integration.support import READ_ONLY_REQUESTS, not_read_only

ROOT = Path(__file__).resolve().parents[2]
IAM_DIR = ROOT / "include" / "ops" / "iam"
README = ROOT / "README.md"
DEFAULTS = json.loads((ROOT / "include" / "backfill_defaults.json").read_text())
DAG_CODE = sorted((ROOT / "plugins").rglob("*.py"))
DEPLOY_CODE = [ROOT / "include" / "ops" / "mwaa_deploy.py", ROOT / "include" / "ops" / "airflow_admin.py"]

# What the README tells the reader to put in place of each placeholder, with example values.
EXAMPLE = {
    "OUTPUT_BUCKET": "acme-backfill-exports",
    "PREFIX": "exports/es",
    "REGION": "eu-west-1",
    "ACCOUNT": "111122223333",
    "ENV": "acme-airflow",
    "DOMAIN": "logs",
    "KMS_KEY_ARN": "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "MWAA_BUCKET": "acme-airflow-dags",
    "EXECUTION_ROLE": "service-role/AmazonMWAA-acme-airflow-x1y2z3",
    "GLUE_DATABASE": "exports",
}
PLACEHOLDERS = {
    "execution-role.json": set(EXAMPLE) - {"EXECUTION_ROLE"},
    "deployer.json": {"REGION", "ACCOUNT", "ENV", "MWAA_BUCKET", "EXECUTION_ROLE"},
}
_PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9_]*[A-Z0-9]\b")

# MWAA's own needs, as AWS documents them for an environment on an AWS owned key ("Sample policy for an AWS owned
# key", https://docs.aws.amazon.com/mwaa/latest/userguide/mwaa-create-role.html): Sid -> (Effect, Action, Resource
# or NotResource, Condition). The backfill's statements are all the others.
MWAA_BASELINE = {
    "MwaaPublishMetrics": ("Allow", {"airflow:PublishMetrics"}, {"arn:aws:airflow:REGION:ACCOUNT:environment/ENV"},
                           {}),
    "MwaaDenyListAllMyBuckets": ("Deny", {"s3:ListAllMyBuckets"},
                                 {"arn:aws:s3:::MWAA_BUCKET", "arn:aws:s3:::MWAA_BUCKET/*"}, {}),
    "MwaaReadEnvironmentBucket": ("Allow", {"s3:GetObject*", "s3:GetBucket*", "s3:List*"},
                                  {"arn:aws:s3:::MWAA_BUCKET", "arn:aws:s3:::MWAA_BUCKET/*"}, {}),
    "MwaaLogs": ("Allow", {"logs:CreateLogStream", "logs:CreateLogGroup", "logs:PutLogEvents", "logs:GetLogEvents",
                           "logs:GetLogRecord", "logs:GetLogGroupFields", "logs:GetQueryResults"},
                 {"arn:aws:logs:REGION:ACCOUNT:log-group:airflow-ENV-*"}, {}),
    "MwaaDescribeLogGroups": ("Allow", {"logs:DescribeLogGroups"}, {"*"}, {}),
    "MwaaAccountPublicAccessBlock": ("Allow", {"s3:GetAccountPublicAccessBlock"}, {"*"}, {}),
    "MwaaMetrics": ("Allow", {"cloudwatch:PutMetricData"}, {"*"}, {}),
    "MwaaCeleryQueues": ("Allow", {"sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
                                   "sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:SendMessage"},
                         {"arn:aws:sqs:REGION:*:airflow-celery-*"}, {}),
    "MwaaCeleryQueuesKey": ("Allow", {"kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey*", "kms:Encrypt"},
                            {"arn:aws:kms:*:ACCOUNT:key/*"},
                            {"StringLike": {"kms:ViaService": ["sqs.REGION.amazonaws.com"]}}),
}  # fmt: skip
# S3 actions on the account, not on a bucket: their resource can only be "*".
ACCOUNT_LEVEL_S3_ACTIONS = {"s3:GetAccountPublicAccessBlock"}


# ---------------------------------------------------------------------------------------------------------------
# The calls in the code


# An Amazon provider hook may only hand out a client or a session: the calls on those are what the scan sees.
HOOK_HANDOUTS = {"get_conn", "get_session"}


def _aws_hook_names(tree: ast.Module) -> set[str]:
    """The hook classes imported from the Amazon provider (``S3Hook``, ``AwsBaseHook``; its other names, such as
    ``AwsConnectionWrapper``, which reads a connection's extra, make no AWS calls)."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("airflow.providers.amazon")
        for alias in node.names
        if alias.name.endswith("Hook")
    }


def _callee(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def aws_hook_uses(tree: ast.Module) -> list[tuple[str, str]]:
    """(hook, what is called on it) for each Amazon provider hook made: ``("S3Hook", "get_conn")``; a hook kept in
    a variable, whose methods may call AWS where this scan does not look, gives ``(hook, "")``."""
    hooks = _aws_hook_names(tree)
    used: dict[int, tuple[str, str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Call)
        ):
            inner = node.func.value
            if _callee(inner) in hooks:
                used[id(inner)] = (_callee(inner), node.func.attr)
    made = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and _callee(node) in hooks]
    return [used.get(id(node), (_callee(node), "")) for node in made]


HOOK_SERVICES = {"S3Hook": "s3", "GlueCatalogHook": "glue"}


def services_used(tree: ast.Module) -> set[str]:
    """The AWS services the code makes clients of: the literal service of any ``...client("s3", ...)`` call, the
    ``client_type`` given to a hook, S3 for ``S3Hook`` and Glue for ``GlueCatalogHook``."""
    services = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        callee = _callee(node)
        first = node.args[0] if node.args else None
        if callee.endswith("client") and isinstance(first, ast.Constant) and isinstance(first.value, str):
            services.add(first.value)
        services |= {
            kw.value.value for kw in node.keywords if kw.arg == "client_type" and isinstance(kw.value, ast.Constant)
        }
        services |= {HOOK_SERVICES[callee]} if callee in HOOK_SERVICES else set()
    return services


@functools.cache
def _operation_names(service: str) -> dict[str, str]:
    """botocore's name of each operation of ``service`` (``put_object`` -> ``PutObject``)."""
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(name): name for name in model.operation_names}


def operations_called(paths: Iterable[Path]) -> set[tuple[str, str]]:
    """(service, operation) of every API call in ``paths``, paginators included (``list_objects_v2``); reading an
    Airflow connection counts as ``("secretsmanager", "get_secret_value")``, what MWAA's secrets backend does."""
    trees = {path: ast.parse(path.read_text()) for path in paths}
    services = set().union(*map(services_used, trees.values()))
    unknown = services - set(botocore.session.get_session().get_available_services())
    assert not unknown, f"clients of services botocore does not know: {unknown}"
    found = set()
    for path, tree in trees.items():
        hidden = [use for use in aws_hook_uses(tree) if use[1] not in HOOK_HANDOUTS]
        assert not hidden, f"{path}: {hidden}: call the hook's client (get_conn), whose calls this scan sees"
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "indices":
                continue  # the search engines' clients (client.indices.get_mapping), not AWS's
            if name in HOOK_HANDOUTS:
                continue  # a hook handing out a client or session (Glue also has a GetSession operation)
            if name == "get_connection":
                found.add(("secretsmanager", "get_secret_value"))
                continue
            if name == "get_paginator":
                (arg,) = node.args
                assert isinstance(arg, ast.Constant), f"{path}:{node.lineno}: name the paginator with a literal"
                name = arg.value
            owners = [service for service in sorted(services) if name in _operation_names(service)]
            assert len(owners) <= 1, f"{path}:{node.lineno}: {name} is an operation of {owners}; which is it?"
            found |= {(owner, name) for owner in owners}
    return found


# ---------------------------------------------------------------------------------------------------------------
# What IAM checks for each call


@dataclass(frozen=True)
class Request:
    """One IAM authorization: an action on a resource, with the request's condition keys."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)


S3_OBJECT_ACTIONS = {
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",  # s3:GetObjectVersion with a VersionId
    "delete_object": "s3:DeleteObject",
    "delete_objects": "s3:DeleteObject",  # for each key
}
S3_BUCKET_ACTIONS = {
    "head_bucket": "s3:ListBucket",
    "list_objects_v2": "s3:ListBucket",
    "list_multipart_uploads": "s3:ListBucketMultipartUploads",
    "get_bucket_versioning": "s3:GetBucketVersioning",
}
# With SSE-KMS, S3 uses the key on the caller's behalf: a data key to write, decryption to read back and to
# complete a multipart upload.
S3_KMS_ACTIONS = {
    "put_object": ("kms:GenerateDataKey",),
    "create_multipart_upload": ("kms:GenerateDataKey",),
    "get_object": ("kms:Decrypt",),
    "complete_multipart_upload": ("kms:Decrypt",),
}
MWAA_ACTIONS = {
    "get_environment": "airflow:GetEnvironment",
    "update_environment": "airflow:UpdateEnvironment",  # and passing the environment's execution role
    "create_cli_token": "airflow:CreateCliToken",
    "invoke_rest_api": "airflow:InvokeRestApi",  # on the Airflow role the call acts as
}
GLUE_ACTIONS = {"get_database": "glue:GetDatabase", "get_table": "glue:GetTable", "create_table": "glue:CreateTable",
                "update_table": "glue:UpdateTable"}  # fmt: skip
SECRETS_ACTIONS = {
    "get_secret_value": "secretsmanager:GetSecretValue",
    "create_secret": "secretsmanager:CreateSecret",
    "put_secret_value": "secretsmanager:PutSecretValue",
}


def iam_requests(
    service: str,
    operation: str,
    params: Mapping[str, Any],
    *,
    region: str,
    account: str,
    execution_role: str = "",
    kms_key: str = "",
) -> list[Request]:
    """The authorizations IAM makes for one call with ``params`` (its botocore parameters); ``kms_key``: the
    objects are written with SSE-KMS under that key."""
    if service == "s3" and operation in S3_OBJECT_ACTIONS:
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        if operation == "delete_objects":
            return [Request("s3:DeleteObject", f"{bucket}/{o['Key']}") for o in params["Delete"]["Objects"]]
        versioned = operation == "head_object" and params.get("VersionId")
        action = "s3:GetObjectVersion" if versioned else S3_OBJECT_ACTIONS[operation]
        requests = [Request(action, f"{bucket}/{params['Key']}")]
        via_s3 = {"kms:ViaService": f"s3.{region}.amazonaws.com"}
        return requests + [Request(use, kms_key, via_s3) for use in S3_KMS_ACTIONS.get(operation, ()) if kms_key]
    if service == "s3" and operation in S3_BUCKET_ACTIONS:
        context = {"s3:prefix": params["Prefix"]} if "Prefix" in params else {}
        return [Request(S3_BUCKET_ACTIONS[operation], f"arn:aws:s3:::{params['Bucket']}", context)]
    if service == "mwaa" and operation in MWAA_ACTIONS:
        name = params["Name"]
        if operation == "invoke_rest_api":
            return [Request(MWAA_ACTIONS[operation], f"arn:aws:airflow:{region}:{account}:role/{name}/Admin")]
        requests = [Request(MWAA_ACTIONS[operation], f"arn:aws:airflow:{region}:{account}:environment/{name}")]
        if operation == "update_environment":
            passed = {"iam:PassedToService": "airflow.amazonaws.com"}
            requests.append(Request("iam:PassRole", f"arn:aws:iam::{account}:role/{execution_role}", passed))
        return requests
    if service == "glue" and operation in GLUE_ACTIONS:
        # Glue checks the catalog, the database and (for a table) the table, each by its ARN.
        glue = f"arn:aws:glue:{region}:{account}"
        database = params.get("DatabaseName") or params["Name"]
        resources = [f"{glue}:catalog", f"{glue}:database/{database}"]
        if operation != "get_database":
            table = params["TableInput"]["Name"] if "TableInput" in params else params["Name"]
            resources.append(f"{glue}:table/{database}/{table}")
        return [Request(GLUE_ACTIONS[operation], resource) for resource in resources]
    if service == "secretsmanager" and operation in SECRETS_ACTIONS:
        name = params.get("Name") or params["SecretId"]  # a secret's ARN ends in - and six random characters
        return [Request(SECRETS_ACTIONS[operation], f"arn:aws:secretsmanager:{region}:{account}:secret:{name}-AbC123")]
    pytest.fail(f"{service}.{operation}: say in iam_requests what IAM checks for it, and grant it in the policy")


def example_params(service: str, operation: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters of ``operation`` as the code passes them: those of its input ``values`` has."""
    model = botocore.session.get_session().get_service_model(service)
    members = model.operation_model(_operation_names(service)[operation]).input_shape.members
    return {name: value for name, value in values.items() if name in members}


# ---------------------------------------------------------------------------------------------------------------
# Evaluating a policy


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _like(pattern: str, value: str, ignore_case: bool = False) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, str]) -> bool:
    if key not in context:
        return operator.endswith("IfExists")
    test = operator.removesuffix("IfExists")
    if test == "StringEquals":
        return context[key] in _list(expected)
    if test == "StringLike":
        return any(_like(pattern, context[key]) for pattern in _list(expected))
    raise AssertionError(f"condition operator {operator} is not modelled by this test")


def applies(statement: Mapping[str, Any], request: Request) -> bool:
    """Whether ``statement`` speaks of ``request``: its action, its resource, its conditions."""
    if not any(_like(pattern, request.action, ignore_case=True) for pattern in _list(statement["Action"])):
        return False
    if "Resource" in statement:
        if not any(_like(pattern, request.resource) for pattern in _list(statement["Resource"])):
            return False
    elif any(_like(pattern, request.resource) for pattern in _list(statement["NotResource"])):
        return False
    conditions = statement.get("Condition", {})
    return all(
        _condition_holds(operator, key, expected, request.context)
        for operator, block in conditions.items()
        for key, expected in block.items()
    )


def allowed(policy: Mapping[str, Any], request: Request) -> bool:
    matching = [s for s in policy["Statement"] if applies(s, request)]
    return any(s["Effect"] == "Allow" for s in matching) and not any(s["Effect"] == "Deny" for s in matching)


def policy_text(name: str) -> str:
    return (IAM_DIR / name).read_text()


def filled_policy(name: str, values: Mapping[str, str] = EXAMPLE) -> dict[str, Any]:
    """The policy with its placeholders replaced as the README's ``sed`` does: plain text, in any order."""
    text = policy_text(name)
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return json.loads(text)


def readme_mwaa_section() -> str:
    text = README.read_text()
    return text.split("## Deploying to Amazon MWAA", 1)[1].split("\n## ", 1)[0]


def readme_backend_kwargs() -> dict[str, Any]:
    """The ``secrets.backend_kwargs`` the README gives for MWAA."""
    (value,) = re.findall(r"^ +secrets\.backend_kwargs +(\{.+\})$", readme_mwaa_section(), re.MULTILINE)
    return json.loads(value)


def readme_redaction_key_conn_ids() -> set[str]:
    return set(re.findall(r'"redaction_key_conn_id": "([^"]+)"', README.read_text()))


def assert_least_privilege(policy: Mapping[str, Any], requests: list[Request], skip_sids: Iterable[str] = ()) -> None:
    """Every request allowed; every action and every resource each statement grants needed by some request."""
    refused = [r for r in requests if not allowed(policy, r)]
    assert refused == []
    for statement in policy["Statement"]:
        if statement["Sid"] in skip_sids:
            continue
        used = [r for r in requests if applies(statement, r)]
        unused_actions = [a for a in _list(statement["Action"]) if not any(_like(a, r.action, True) for r in used)]
        unused_resources = [p for p in _list(statement["Resource"]) if not any(_like(p, r.resource) for r in used)]
        assert (statement["Sid"], unused_actions, unused_resources) == (statement["Sid"], [], [])


# ---------------------------------------------------------------------------------------------------------------
# The requests of the DAG and of the deploy tools


def dag_requests(values: Mapping[str, str] = EXAMPLE) -> list[Request]:
    """What the DAG's tasks ask of AWS, on an example backfill under the output prefix."""
    region, account = values["REGION"], values["ACCOUNT"]
    root = f"{values['PREFIX']}/backfill-2024-03"  # {s3_prefix}/{backfill_name}
    key = f"{root}/dt=2024-03-01/20240301T000000-20240302T000000/part-00000.jsonl.gz"
    s3 = {"Bucket": values["OUTPUT_BUCKET"], "Key": key, "Prefix": f"{root}/", "Delete": {"Objects": [{"Key": key}]}}
    table = {
        "DatabaseName": values["GLUE_DATABASE"],
        "Name": "backfill_2024_03",
        "TableInput": {"Name": "backfill_2024_03"},
    }
    secrets = [
        f"{CONNECTIONS_PREFIX}/{conn_id}" for conn_id in (DEFAULTS["es_conn_id"], *readme_redaction_key_conn_ids())
    ]
    requests = []
    for service, operation in sorted(operations_called(DAG_CODE)):
        if service == "secretsmanager":
            for name in secrets:
                requests += iam_requests(service, operation, {"SecretId": name}, region=region, account=account)
        else:
            given = (
                s3 if service != "glue" else {"Name": values["GLUE_DATABASE"]} if operation == "get_database" else table
            )
            params = example_params(service, operation, given)
            kms_key = values["KMS_KEY_ARN"]
            requests += iam_requests(service, operation, params, region=region, account=account, kms_key=kms_key)
    return requests + es_requests(values)


# Elasticsearch's point in time (/_pit): SigV4 only reaches Amazon OpenSearch Service domains, whose engines
# (OpenSearch, Elasticsearch up to 7.10) have none; the reader uses _search/point_in_time or a scroll there.
NOT_ON_AMAZON = {r"/[^/_][^/]*/_pit", r"/_pit"}
# One request of each kind READ_ONLY_REQUESTS allows ("INDEX": each index the defaults file reads).
ES_EXAMPLES = [
    ("GET", "/"),
    ("GET", "/INDEX/_search"), ("POST", "/INDEX/_search"), ("GET", "/INDEX/_count"), ("POST", "/INDEX/_count"),
    ("GET", "/_search"), ("POST", "/_search"),
    ("GET", "/_search/scroll"), ("POST", "/_search/scroll"), ("DELETE", "/_search/scroll"),
    ("POST", "/INDEX/_search/point_in_time"), ("DELETE", "/_search/point_in_time"),
    ("GET", "/INDEX/_mapping/field/sender,subject"), ("GET", "/INDEX/_mapping"),
]  # fmt: skip


def indices() -> list[str]:
    return [DEFAULTS["messages"]["index"], *(related["index"] for related in DEFAULTS["related"])]


def es_requests(values: Mapping[str, str] = EXAMPLE) -> list[Request]:
    """The cluster's requests as IAM sees them on an Amazon OpenSearch Service domain."""
    domain = f"arn:aws:es:{values['REGION']}:{values['ACCOUNT']}:domain/{values['DOMAIN']}"
    paths = {(method, path.replace("INDEX", index)) for method, path in ES_EXAMPLES for index in indices()}
    return [Request(f"es:ESHttp{method.capitalize()}", f"{domain}{path}") for method, path in sorted(paths)]


def deploy_requests(values: Mapping[str, str] = EXAMPLE) -> list[Request]:
    """What the deploy tools ask of AWS: deploying, the pool and connections, the connection secrets."""
    region, account = values["REGION"], values["ACCOUNT"]
    params = {"Name": values["ENV"], "Bucket": values["MWAA_BUCKET"], "Key": "dags/es_backfill.py", "Prefix": "dags/"}
    requests = []
    for service, operation in sorted(operations_called(DEPLOY_CODE)):
        if service == "secretsmanager":
            for conn_id in ("elasticsearch_default", *readme_redaction_key_conn_ids()):
                name = f"{CONNECTIONS_PREFIX}/{conn_id}"
                call = {"Name": name, "SecretId": name}
                requests += iam_requests(service, operation, call, region=region, account=account)
            continue
        variants = [{}, {"VersionId": "3sL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY"}] if operation == "head_object" else [{}]
        for extra in variants:
            call = {**example_params(service, operation, params), **extra}
            requests += iam_requests(
                service, operation, call, region=region, account=account, execution_role=values["EXECUTION_ROLE"]
            )
    return requests


# ---------------------------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("name", sorted(PLACEHOLDERS))
def test_policy_is_an_iam_policy_document(name):
    policy = json.loads(policy_text(name))

    assert set(policy) == {"Version", "Statement"} and policy["Version"] == "2012-10-17"
    sids = [statement["Sid"] for statement in policy["Statement"]]
    assert len(set(sids)) == len(sids) and all(re.fullmatch(r"[A-Za-z0-9]+", sid) for sid in sids)
    for statement in policy["Statement"]:
        assert statement["Effect"] in {"Allow", "Deny"}
        assert set(statement) - {"Condition"} in (
            {"Sid", "Effect", "Action", "Resource"},
            {"Sid", "Effect", "Action", "NotResource"},
        )
        assert all(re.fullmatch(r"[a-z0-9-]+:[A-Za-z*]+", action) for action in _list(statement["Action"]))
        assert all(isinstance(block, dict) for block in statement.get("Condition", {}).values())
    for statement in filled_policy(name)["Statement"]:
        resources = _list(statement.get("Resource", statement.get("NotResource")))
        assert all(resource == "*" or resource.startswith("arn:aws:") for resource in resources)


@pytest.mark.parametrize("name", sorted(PLACEHOLDERS))
def test_policy_uses_only_the_placeholders_the_readme_explains(name):
    text = policy_text(name)

    assert set(_PLACEHOLDER.findall(text)) == PLACEHOLDERS[name]
    section = readme_mwaa_section()
    assert [p for p in sorted(PLACEHOLDERS[name]) if f"`{p}`" not in section] == []
    # Replacing them one by one, in any order, cannot touch another: none is part of another.
    assert [(a, b) for a in EXAMPLE for b in EXAMPLE if a != b and a in b] == []
    assert _PLACEHOLDER.findall(json.dumps(filled_policy(name))) == []


def test_execution_role_allows_every_call_of_the_dag_and_nothing_it_does_not_make():
    policy = filled_policy("execution-role.json")
    backfill = [s for s in policy["Statement"] if s["Sid"] not in MWAA_BASELINE]

    assert_least_privilege(policy, dag_requests(), skip_sids=MWAA_BASELINE)
    granted = {action for statement in backfill for action in _list(statement["Action"])}
    assert granted == {request.action for request in dag_requests()}


def test_execution_role_cannot_touch_s3_outside_the_output_prefix_or_read_other_secrets_and_indices():
    policy = filled_policy("execution-role.json")
    bucket = f"arn:aws:s3:::{EXAMPLE['OUTPUT_BUCKET']}"
    domain = f"arn:aws:es:{EXAMPLE['REGION']}:{EXAMPLE['ACCOUNT']}:domain/{EXAMPLE['DOMAIN']}"
    secret = (
        f"arn:aws:secretsmanager:{EXAMPLE['REGION']}:{EXAMPLE['ACCOUNT']}:secret:airflow/connections/aws_default-AbC123"
    )
    refused = [
        Request("s3:PutObject", f"{bucket}/elsewhere/x.json"),
        Request("s3:GetObject", f"{bucket}/exports/x.json"),  # the prefix itself, not a folder below it
        Request("s3:DeleteObject", f"{bucket}/exports/es-other/x.json"),
        Request("s3:ListBucket", bucket, {"s3:prefix": "elsewhere/"}),
        Request("s3:ListBucket", bucket, {"s3:prefix": ""}),
        Request("s3:PutObject", f"arn:aws:s3:::{EXAMPLE['MWAA_BUCKET']}/dags/evil.py"),
        Request("secretsmanager:GetSecretValue", secret),
        Request("kms:Decrypt", EXAMPLE["KMS_KEY_ARN"]),  # only through S3
        Request("es:ESHttpPost", f"{domain}/payroll/_search"),
        Request("es:ESHttpPut", f"{domain}/messages/_doc/1"),
        Request("es:ESHttpDelete", f"{domain}/messages"),
        *(Request("es:ESHttpPost", f"{domain}/{index}-archive/_search") for index in indices()),  # not read
    ]

    assert [r for r in refused if allowed(policy, r)] == []
    assert allowed(policy, Request("s3:ListBucket", bucket))  # HeadBucket: no s3:prefix, the plan task's check


def test_execution_role_can_only_read_the_cluster():
    es = [s for s in json.loads(policy_text("execution-role.json"))["Statement"] if "es:" in json.dumps(s["Action"])]

    assert {action for s in es for action in _list(s["Action"])} == {"es:ESHttpGet", "es:ESHttpPost", "es:ESHttpDelete"}
    deletes = {resource for s in es if "es:ESHttpDelete" in _list(s["Action"]) for resource in _list(s["Resource"])}
    assert deletes == {"arn:aws:es:REGION:ACCOUNT:domain/DOMAIN/_search*"}  # releasing a point in time or scroll
    # The examples are the cluster requests the integration tests allow, and cover every kind on Amazon's engines.
    assert not_read_only([SimpleNamespace(method=m, path=p) for m, p in ES_EXAMPLES]) == []
    kinds = {(m, path) for methods, path in READ_ONLY_REQUESTS for m in methods.split("|") if path not in NOT_ON_AMAZON}
    assert {(m, p) for m, p in kinds if not any(m == em and re.fullmatch(p, ep) for em, ep in ES_EXAMPLES)} == set()


def test_execution_role_holds_mwaas_baseline_as_aws_documents_it():
    statements = {s["Sid"]: s for s in json.loads(policy_text("execution-role.json"))["Statement"]}

    def summary(s: Mapping[str, Any]) -> tuple[str, set[str], set[str], dict[str, Any]]:
        resources = s.get("Resource", s.get("NotResource"))
        return s["Effect"], set(_list(s["Action"])), set(_list(resources)), s.get("Condition", {})

    found = {sid: summary(s) for sid, s in statements.items() if sid.startswith("Mwaa")}
    assert found == MWAA_BASELINE
    assert "NotResource" in statements["MwaaCeleryQueuesKey"]  # other accounts' keys: MWAA's queues


@pytest.mark.parametrize("name", sorted(PLACEHOLDERS))
def test_s3_is_granted_only_on_the_buckets_and_the_output_prefix(name):
    for statement in json.loads(policy_text(name))["Statement"]:
        s3_actions = {a for a in _list(statement["Action"]) if a.startswith("s3:")}
        if not s3_actions or s3_actions <= ACCOUNT_LEVEL_S3_ACTIONS:
            continue
        resources = set(_list(statement["Resource"]))
        assert "*" not in resources
        assert all(re.fullmatch(r"arn:aws:s3:::(OUTPUT_BUCKET|MWAA_BUCKET)(/PREFIX)?(/\*)?", r) for r in resources)
        if any(r.startswith("arn:aws:s3:::OUTPUT_BUCKET/") for r in resources):
            assert resources == {"arn:aws:s3:::OUTPUT_BUCKET/PREFIX/*"}


def test_deployer_policy_allows_every_call_of_the_deploy_tools_and_nothing_else():
    policy = filled_policy("deployer.json")

    assert_least_privilege(policy, deploy_requests())
    granted = {action for statement in policy["Statement"] for action in _list(statement["Action"])}
    assert granted == {request.action for request in deploy_requests()}
    region, account = EXAMPLE["REGION"], EXAMPLE["ACCOUNT"]
    to_mwaa = {"iam:PassedToService": "airflow.amazonaws.com"}
    elsewhere = [
        Request(
            "iam:PassRole",
            f"arn:aws:iam::{account}:role/{EXAMPLE['EXECUTION_ROLE']}",
            {"iam:PassedToService": "ec2.amazonaws.com"},
        ),
        Request("iam:PassRole", f"arn:aws:iam::{account}:role/admin", to_mwaa),
        Request("airflow:UpdateEnvironment", f"arn:aws:airflow:{region}:{account}:environment/other"),
        Request("s3:PutObject", f"arn:aws:s3:::{EXAMPLE['OUTPUT_BUCKET']}/{EXAMPLE['PREFIX']}/x"),
        Request(
            "secretsmanager:PutSecretValue",
            f"arn:aws:secretsmanager:{region}:{account}:secret:airflow/connections/aws_default-AbC123",
        ),
    ]
    assert [r for r in elsewhere if allowed(policy, r)] == []


def test_the_code_scan_finds_the_aws_calls_and_the_hooks_that_hand_out_clients():
    dag, deploy = operations_called(DAG_CODE), operations_called(DEPLOY_CODE)

    assert {("s3", "upload_part"), ("s3", "list_multipart_uploads"), ("s3", "head_bucket")} <= dag
    assert ("secretsmanager", "get_secret_value") in dag  # the connections, through MWAA's secrets backend
    assert {("mwaa", "invoke_rest_api"), ("s3", "list_objects_v2"), ("secretsmanager", "put_secret_value")} <= deploy
    uses = {use for path in DAG_CODE for use in aws_hook_uses(ast.parse(path.read_text()))}
    assert uses == {("S3Hook", "get_conn"), ("GlueCatalogHook", "get_conn"), ("AwsBaseHook", "get_session")}


def test_lookup_pattern_matches_every_connection_the_backfill_reads_from_secrets_manager_and_not_aws_default():
    from es_backfill.hooks import SearchReaderHook

    kwargs = readme_backend_kwargs()
    read = {DEFAULTS["es_conn_id"], SearchReaderHook.default_conn_name, *readme_redaction_key_conn_ids()}

    assert kwargs["connections_lookup_pattern"] == CONNECTIONS_LOOKUP_PATTERN
    assert kwargs["connections_prefix"] == CONNECTIONS_PREFIX
    assert "backfill_hmac" in read
    assert [conn_id for conn_id in read if not re.match(CONNECTIONS_LOOKUP_PATTERN, conn_id)] == []
    assert DEFAULTS["aws_conn_id"] == "aws_default"
    assert not re.match(CONNECTIONS_LOOKUP_PATTERN, DEFAULTS["aws_conn_id"], re.IGNORECASE)  # as the backend matches
