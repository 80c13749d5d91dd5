"""Create or resize the ``es_backfill`` pool and set connections, locally or on Amazon MWAA.

    python -m include.ops.airflow_admin pool --slots 4 TARGET
    python -m include.ops.airflow_admin connection --conn-id elasticsearch_default --file conn.json TARGET
    python -m include.ops.airflow_admin secret --conn-id elasticsearch_default --file conn.json [--region R]

TARGET is one of:

* ``--cli``: the local ``airflow`` command (``airflow pools set``, ``airflow connections add``);
  it needs the metadata database, so run it in the project's venv or inside the container.
* ``--api-url URL``: a running api-server's REST API v2 (``PATCH /api/v2/pools`` and
  ``/api/v2/connections``, bulk create with ``overwrite``, so create and update are one call).
  The JWT comes from ``AIRFLOW_API_TOKEN``, else from ``POST /auth/token`` (simple auth manager)
  with ``AIRFLOW_API_USERNAME`` and ``AIRFLOW_API_PASSWORD``.
* ``--mwaa-environment NAME [--region R]``: an MWAA environment, through ``InvokeRestApi``
  (boto3 ``mwaa.invoke_rest_api``: the same REST requests as ``--api-url``, signed with IAM,
  permission ``airflow:InvokeRestApi``, no CLI command allowlist). Only where that is
  unavailable (a boto3 without it, or the identity may not call it) it falls back to the CLI
  endpoint: ``CreateCliToken`` then ``POST https://{WebServerHostname}/aws_mwaa/cli`` with the
  same ``pools set`` / ``connections`` commands as ``--cli``.

``secret`` writes the connection to AWS Secrets Manager as ``{prefix}/{conn_id}`` (default prefix
``airflow/connections``), which MWAA's ``SecretsManagerBackend`` reads: the way to keep credentials
on MWAA out of the metadata database and out of CLI requests. It refuses a connection id that
:data:`CONNECTIONS_LOOKUP_PATTERN`, the backend's recommended ``connections_lookup_pattern``, does not
match: the backend would never look that secret up.

``--file`` (or ``-`` for stdin) holds one connection in Airflow's JSON form, the same for every
target and for the secret: ``{"conn_type": "elasticsearch", "host": "es.example.com", "port": 9243,
"schema": "https", "login": null, "password": null, "extra": {"api_key": "..."}}``.
Secrets are read from the file, never from the command line.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

POOL_NAME = "es_backfill"
POOL_DESCRIPTION = "windows reading Elasticsearch at once"
CONNECTIONS_PREFIX = "airflow/connections"  # SecretsManagerBackend's connections_prefix
# The naming rule of the connections the backfill reads from Secrets Manager: the cluster's (es_conn_id, by default
# elasticsearch_default) and the redaction key's (redaction_key_conn_id, e.g. backfill_hmac). The backend looks up
# only ids matching the pattern, so aws_default stays MWAA's own, the execution role; the IAM policies in
# include/ops/iam/ grant exactly these secret names.
SECRET_CONN_ID_PREFIXES = ("elasticsearch_", "backfill_")
CONNECTIONS_LOOKUP_PATTERN = f"^({'|'.join(SECRET_CONN_ID_PREFIXES)})"
CONNECTION_FIELDS = frozenset({"conn_type", "description", "host", "port", "schema", "login", "password", "extra"})
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
CLI_TIMEOUT_S = 300
REST_PREFIX = "/api/v2"  # InvokeRestApi paths start after it
_OUTPUT_LIMIT = 2000


class AdminError(RuntimeError):
    """A pool or connection could not be set; the message holds what Airflow answered."""


@dataclass(frozen=True)
class Pool:
    name: str = POOL_NAME
    slots: int = 4
    description: str = POOL_DESCRIPTION
    include_deferred: bool = False


@dataclass(frozen=True)
class CliResult:
    stdout: str
    stderr: str
    returncode: int | None = None  # the MWAA CLI endpoint reports none


class RestApiUnavailable(AdminError):
    """MWAA's ``InvokeRestApi`` cannot be used from here; the CLI endpoint may still be."""


@dataclass(frozen=True)
class RestRequest:
    method: str
    path: str  # from the api-server's root, e.g. /api/v2/pools
    body: dict[str, Any] | None = None


def load_connection(text: str) -> dict[str, Any]:
    """Parse and check one connection in Airflow's JSON form."""
    try:
        conn = json.loads(text)
    except json.JSONDecodeError as err:
        raise AdminError(f"the connection file is not JSON: {err}") from err
    if not isinstance(conn, dict) or not conn.get("conn_type"):
        raise AdminError('the connection must be a JSON object with at least "conn_type"')
    unknown = set(conn) - CONNECTION_FIELDS
    if unknown:
        raise AdminError(f"unknown connection fields {sorted(unknown)}; allowed: {sorted(CONNECTION_FIELDS)}")
    if conn.get("extra") is not None and not isinstance(conn["extra"], dict | str):
        raise AdminError("extra must be a JSON object")
    return conn


# ---------------------------------------------------------------------------------------------------------------
# The Airflow CLI (local, or MWAA's CLI endpoint): the same commands


def pool_commands(pool: Pool) -> list[tuple[list[str], str]]:
    """(CLI arguments, text its output must hold). ``pools set`` creates the pool or resizes it."""
    args = ["pools", "set", pool.name, str(pool.slots), pool.description]
    if pool.include_deferred:
        args.append("--include-deferred")
    return [(args, f"Pool {pool.name} created")]


def connection_commands(conn_id: str, conn: Mapping[str, Any]) -> list[tuple[list[str], str]]:
    """Delete (whether it exists or not) then add: the CLI has no 'create or update' for connections."""
    return [
        (["connections", "delete", conn_id], ""),
        (["connections", "add", conn_id, "--conn-json", json.dumps(dict(conn))], "Successfully added"),
    ]


def run_local_cli(args: list[str]) -> CliResult:
    """``airflow ARGS`` on this machine, with this Python's Airflow (the venv's, or the container's)."""
    done = subprocess.run(
        [sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )
    return CliResult(done.stdout, done.stderr, done.returncode)


def run_mwaa_cli(mwaa: Any, environment: str, args: list[str], http: Any, scheme: str = "https") -> CliResult:
    """Run one Airflow CLI command on MWAA: a fresh CLI token (valid 60 s), then POST the command line."""
    token = mwaa.create_cli_token(Name=environment)
    url = f"{scheme}://{token['WebServerHostname']}/aws_mwaa/cli"
    log.info("MWAA %s: airflow %s", environment, args[:2])
    response = http.post(
        url,
        content=shlex.join(args).encode(),
        headers={"Authorization": f"Bearer {token['CliToken']}", "Content-Type": "text/plain"},
    )
    if response.status_code != 200:
        raise AdminError(f"MWAA CLI endpoint answered {response.status_code}: {response.text[:_OUTPUT_LIMIT]}")
    try:
        payload = response.json()
        return CliResult(_b64(payload.get("stdout")), _b64(payload.get("stderr")))
    except (ValueError, AttributeError) as err:
        raise AdminError(f"unexpected answer from the MWAA CLI endpoint: {response.text[:_OUTPUT_LIMIT]}") from err


def _b64(value: str | None) -> str:
    return base64.b64decode(value or "").decode("utf-8", errors="replace")


def apply_cli(run: Callable[[list[str]], CliResult], commands: list[tuple[list[str], str]]) -> list[CliResult]:
    """Run the commands in order; a command with an expected text must print it (and exit 0 where known)."""
    results = []
    for args, expect in commands:
        result = run(args)
        results.append(result)
        if expect and (expect not in result.stdout or result.returncode not in (None, 0)):
            output = result.stdout[-_OUTPUT_LIMIT:] + result.stderr[-_OUTPUT_LIMIT:]
            raise AdminError(f"airflow {' '.join(args[:2])} failed:\n{output}")
        last_line = ((result.stdout or result.stderr).strip().splitlines() or [""])[-1]
        log.info("airflow %s: %s", " ".join(args[:2]), last_line)
    return results


# ---------------------------------------------------------------------------------------------------------------
# The REST API v2 of a local api-server


def pool_request(pool: Pool) -> RestRequest:
    entity = {
        "name": pool.name,
        "slots": pool.slots,
        "description": pool.description,
        "include_deferred": pool.include_deferred,
    }
    return RestRequest("PATCH", f"{REST_PREFIX}/pools", _bulk_overwrite(entity))


def connection_request(conn_id: str, conn: Mapping[str, Any]) -> RestRequest:
    entity: dict[str, Any] = {"connection_id": conn_id, **{k: v for k, v in conn.items() if k != "extra"}}
    extra = conn.get("extra")
    if extra is not None:
        entity["extra"] = extra if isinstance(extra, str) else json.dumps(extra)
    return RestRequest("PATCH", f"{REST_PREFIX}/connections", _bulk_overwrite(entity))


def _bulk_overwrite(entity: dict[str, Any]) -> dict[str, Any]:
    return {"actions": [{"action": "create", "entities": [entity], "action_on_existence": "overwrite"}]}


def rest_token(http: Any, base_url: str, username: str, password: str) -> str:
    """A JWT from the simple auth manager's ``POST /auth/token``."""
    response = http.post(f"{base_url}/auth/token", json={"username": username, "password": password})
    if response.status_code not in (200, 201):
        raise AdminError(f"POST /auth/token answered {response.status_code}: {response.text[:_OUTPUT_LIMIT]}")
    return response.json()["access_token"]


def send_rest(http: Any, base_url: str, token: str, request: RestRequest) -> dict[str, Any]:
    response = http.request(
        request.method, f"{base_url}{request.path}", json=request.body, headers={"Authorization": f"Bearer {token}"}
    )
    if response.status_code != 200:
        raise AdminError(
            f"{request.method} {request.path} answered {response.status_code}: {response.text[:_OUTPUT_LIMIT]}"
        )
    return _bulk_result(request, response.json())


def _bulk_result(request: RestRequest, answer: dict[str, Any]) -> dict[str, Any]:
    """``answer`` to a bulk request, once it is known to hold no per-entity error."""
    errors = (answer.get("create") or {}).get("errors") or []
    if errors:
        raise AdminError(f"{request.method} {request.path} failed: {errors}")
    log.info("%s %s: %s", request.method, request.path, (answer.get("create") or {}).get("success"))
    return answer


# ---------------------------------------------------------------------------------------------------------------
# MWAA's InvokeRestApi: Airflow's REST API with IAM


def pool_lookup(name: str = POOL_NAME) -> RestRequest:
    return RestRequest("GET", f"{REST_PREFIX}/pools/{name}")


def connection_lookup(conn_id: str) -> RestRequest:
    return RestRequest("GET", f"{REST_PREFIX}/connections/{conn_id}")


def invoke_mwaa_rest(mwaa: Any, environment: str, request: RestRequest) -> dict[str, Any] | None:
    """``request`` through ``InvokeRestApi``: its JSON answer, or None for a 404 (no such pool or connection).

    Raises :class:`RestApiUnavailable` if this client or identity cannot use ``InvokeRestApi``, and
    :class:`AdminError` for any other error Airflow answers."""
    if not hasattr(mwaa, "invoke_rest_api"):
        raise RestApiUnavailable("this boto3 has no MWAA InvokeRestApi, a newer boto3 has")
    path = request.path.removeprefix(REST_PREFIX)
    kwargs: dict[str, Any] = {"Name": environment, "Path": path, "Method": request.method}
    if request.body is not None:
        kwargs["Body"] = request.body
    try:
        response = mwaa.invoke_rest_api(**kwargs)
    except (mwaa.exceptions.RestApiClientException, mwaa.exceptions.RestApiServerException) as err:
        status = err.response.get("RestApiStatusCode")
        if status == 404 and request.method == "GET":
            return None
        raise AdminError(
            f"MWAA {environment}: {request.method} {path} answered {status}: {err.response.get('RestApiResponse')}"
        ) from err
    except (mwaa.exceptions.AccessDeniedException, mwaa.exceptions.ValidationException) as err:
        raise RestApiUnavailable(
            f"MWAA {environment} refused InvokeRestApi ({err}); the calling identity needs airflow:InvokeRestApi"
        ) from err
    answer = response.get("RestApiResponse") or {}
    return _bulk_result(request, answer) if request.method == "PATCH" else answer


def apply_on_mwaa(
    mwaa: Any, environment: str, request: RestRequest, commands: list[tuple[list[str], str]], http: Any
) -> None:
    """Send ``request`` with ``InvokeRestApi``; where that is unavailable, run ``commands`` on the CLI endpoint."""
    try:
        invoke_mwaa_rest(mwaa, environment, request)
    except RestApiUnavailable as err:
        log.warning("%s; falling back to the MWAA CLI endpoint (airflow:CreateCliToken)", err)
        apply_cli(lambda cli_args: run_mwaa_cli(mwaa, environment, cli_args, http), commands)


# ---------------------------------------------------------------------------------------------------------------
# AWS Secrets Manager (what MWAA's SecretsManagerBackend reads)


def check_secret_conn_id(conn_id: str) -> None:
    """Refuse a connection id that :data:`CONNECTIONS_LOOKUP_PATTERN` does not match: its secret would never be
    read. Case-sensitive, as the IAM policies' secret names are (the backend itself ignores case)."""
    if not re.match(CONNECTIONS_LOOKUP_PATTERN, conn_id):
        names = " or ".join(f"{prefix}..." for prefix in SECRET_CONN_ID_PREFIXES)
        raise AdminError(
            f"connection id {conn_id!r} does not match connections_lookup_pattern {CONNECTIONS_LOOKUP_PATTERN!r}, "
            f"so MWAA would never read this secret; name the connection {names}"
        )


def secret_value(conn: Mapping[str, Any]) -> str:
    """The secret's JSON: the connection's fields, ``extra`` as an object."""
    value = {k: v for k, v in conn.items() if v is not None}
    if isinstance(value.get("extra"), str):
        value["extra"] = json.loads(value["extra"])
    return json.dumps(value, sort_keys=True)


def put_connection_secret(
    secretsmanager: Any, conn_id: str, conn: Mapping[str, Any], prefix: str = CONNECTIONS_PREFIX
) -> str:
    """Create the secret ``{prefix}/{conn_id}`` or store a new value in it; return its name."""
    from botocore.exceptions import ClientError

    name = f"{prefix.rstrip('/')}/{conn_id}"
    try:
        secretsmanager.create_secret(Name=name, SecretString=secret_value(conn))
        log.info("Created secret %s", name)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "ResourceExistsException":
            raise
        secretsmanager.put_secret_value(SecretId=name, SecretString=secret_value(conn))
        log.info("Stored a new value in secret %s", name)
    return name


# ---------------------------------------------------------------------------------------------------------------
# Command line


def http_client() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))


def _boto_client(service: str, region: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S, retries={"mode": "standard"})
    return boto3.session.Session(region_name=region).client(service, config=config)


def _api_token(http: Any, base_url: str) -> str:
    if os.environ.get("AIRFLOW_API_TOKEN"):
        return os.environ["AIRFLOW_API_TOKEN"]
    username, password = os.environ.get("AIRFLOW_API_USERNAME"), os.environ.get("AIRFLOW_API_PASSWORD")
    if not (username and password):
        raise AdminError("set AIRFLOW_API_TOKEN, or AIRFLOW_API_USERNAME and AIRFLOW_API_PASSWORD")
    return rest_token(http, base_url, username, password)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.ops.airflow_admin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pool_parser = sub.add_parser("pool", help="create or resize the pool")
    pool_parser.add_argument("--name", default=POOL_NAME)
    pool_parser.add_argument("--slots", type=int, required=True, help="windows reading Elasticsearch at once")
    pool_parser.add_argument("--description", default=POOL_DESCRIPTION)
    conn_parser = sub.add_parser("connection", help="create or replace a connection")
    secret_parser = sub.add_parser("secret", help="write a connection to AWS Secrets Manager (MWAA)")
    for each in (conn_parser, secret_parser):
        each.add_argument("--conn-id", required=True)
        each.add_argument("--file", required=True, help="the connection's JSON, or - for stdin")
    secret_parser.add_argument("--prefix", default=CONNECTIONS_PREFIX, help="the backend's connections_prefix")
    for each in (pool_parser, conn_parser):
        target = each.add_mutually_exclusive_group(required=True)
        target.add_argument("--cli", action="store_true", help="the local airflow command")
        target.add_argument("--api-url", help="a local api-server, e.g. http://localhost:8080")
        target.add_argument("--mwaa-environment", help="an MWAA environment's name")
    for each in (pool_parser, conn_parser, secret_parser):
        each.add_argument("--region", help="AWS region for MWAA / Secrets Manager")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "secret":
            check_secret_conn_id(args.conn_id)
            conn = load_connection(sys.stdin.read() if args.file == "-" else Path(args.file).read_text())
            put_connection_secret(_boto_client("secretsmanager", args.region), args.conn_id, conn, args.prefix)
            return 0
        if args.command == "pool":
            pool = Pool(args.name, args.slots, args.description)
            commands, request = pool_commands(pool), pool_request(pool)
        else:
            conn = load_connection(sys.stdin.read() if args.file == "-" else Path(args.file).read_text())
            commands, request = connection_commands(args.conn_id, conn), connection_request(args.conn_id, conn)
        if args.cli:
            apply_cli(run_local_cli, commands)
        elif args.api_url:
            base_url = args.api_url.rstrip("/")
            with http_client() as http:
                send_rest(http, base_url, _api_token(http, base_url), request)
        else:
            with http_client() as http:
                apply_on_mwaa(_boto_client("mwaa", args.region), args.mwaa_environment, request, commands, http)
    except (AdminError, OSError, httpx.HTTPError) as err:
        print(f"Failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
