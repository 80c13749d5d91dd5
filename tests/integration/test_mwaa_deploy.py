"""The MWAA deploy tool and the pool/connection script against a real S3 server (moto) and the MWAA API model.

moto has no MWAA backend, so the MWAA calls go through ``botocore.stub.Stubber`` on a real
``mwaa`` client, which checks every request and response against the service's API model.
S3 is the moto server from ``tests/conftest.py``, with a versioned bucket per test; so is Secrets Manager.
Every call a deploy makes is also checked against the deployer's IAM policy (``include/ops/iam/deployer.json``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest
from botocore import xform_name
from botocore.stub import Stubber

from include.ops import airflow_admin, mwaa_deploy
from include.ops.mwaa_deploy import CONSTRAINT_LINE, MWAA_PLUGINS_DIR, DeployError, build_plugins_zip, deploy
from tests.unit.test_iam_policies import (
    DEPLOY_CODE,
    EXAMPLE,
    allowed,
    filled_policy,
    iam_requests,
    operations_called,
    readme_backend_kwargs,
    readme_redaction_key_conn_ids,
)

ROOT = Path(__file__).resolve().parents[2]
ENV_NAME = "es-backfill-test"
REGION, ACCOUNT = "us-east-1", "123456789012"
ENV_ARN = f"arn:aws:airflow:{REGION}:{ACCOUNT}:environment/{ENV_NAME}"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


# ---------------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the files the deploy reads, free to modify."""
    root = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "dags", root / "dags", ignore=ignore)
    shutil.copytree(ROOT / "plugins", root / "plugins", ignore=ignore)
    (root / "include").mkdir()
    shutil.copy2(ROOT / "include" / "backfill_defaults.json", root / "include" / "backfill_defaults.json")
    shutil.copy2(ROOT / "requirements.txt", root / "requirements.txt")
    return root


@pytest.fixture
def s3(s3_server) -> Any:
    return boto3.client("s3", endpoint_url=s3_server.endpoint_url, **CREDENTIALS)


@pytest.fixture
def bucket(s3) -> str:
    """A new bucket with versioning enabled, as MWAA requires."""
    name = f"mwaa-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def mwaa() -> Iterator[tuple[Any, Stubber]]:
    """A real MWAA client whose calls are answered by a Stubber; every queued answer must be used."""
    client = boto3.client("mwaa", **CREDENTIALS)
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def environment(bucket: str, status: str = "AVAILABLE", **fields: str) -> dict[str, Any]:
    """A GetEnvironment answer; a new environment has a bucket and a DAG path, nothing else."""
    return {
        "Environment": {
            "Name": ENV_NAME,
            "Arn": ENV_ARN,
            "Status": status,
            "AirflowVersion": "3.3.1",
            "SourceBucketArn": f"arn:aws:s3:::{bucket}",
            "DagS3Path": "dags",
            **fields,
        }
    }


def in_use(result: mwaa_deploy.DeployResult) -> dict[str, str]:
    """The GetEnvironment fields of an environment updated by ``result``."""
    return {k: v for k, v in (result.update or {}).items() if k != "Name"}


class LatestVersionOf:
    """Equal to an object version id iff it is the current version of ``key`` when MWAA is called.

    The version ids are made by the S3 server during the deploy, so the expected UpdateEnvironment
    parameters cannot hold them literally; this compares against the bucket at call time.
    """

    def __init__(self, s3: Any, bucket: str, key: str) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.seen: str | None = None

    def __eq__(self, other: object) -> bool:
        self.seen = self.s3.head_object(Bucket=self.bucket, Key=self.key)["VersionId"]
        return other == self.seen

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<latest version of {self.key}: {self.seen}>"


def expect_get(stubber: Stubber, answer: dict[str, Any]) -> None:
    stubber.add_response("get_environment", answer, {"Name": ENV_NAME})


def expect_update(stubber: Stubber, params: dict[str, Any]) -> None:
    stubber.add_response("update_environment", {"Arn": ENV_ARN}, {"Name": ENV_NAME, **params})


def bucket_state(s3: Any, bucket: str) -> list[tuple[str, str, bool]]:
    """Every version and delete marker in the bucket."""
    answer = s3.list_object_versions(Bucket=bucket)
    versions = [(v["Key"], v["VersionId"], False) for v in answer.get("Versions", [])]
    markers = [(m["Key"], m["VersionId"], True) for m in answer.get("DeleteMarkers", [])]
    return sorted(versions + markers)


def read(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def first_deploy(project: Path, s3: Any, bucket: str, mwaa: tuple[Any, Stubber], deploy_s3: Any = None, **kwargs: Any):
    """Deploy to a new environment (through ``deploy_s3``, default ``s3``); return the result and the environment's
    fields afterwards."""
    client, stubber = mwaa
    expect_get(stubber, environment(bucket))
    fields = {
        "PluginsS3Path": "plugins.zip",
        "PluginsS3ObjectVersion": LatestVersionOf(s3, bucket, "plugins.zip"),
        "RequirementsS3Path": "requirements.txt",
        "RequirementsS3ObjectVersion": LatestVersionOf(s3, bucket, "requirements.txt"),
    }
    if kwargs.get("startup_script"):
        fields |= {
            "StartupScriptS3Path": "startup.sh",
            "StartupScriptS3ObjectVersion": LatestVersionOf(s3, bucket, "startup.sh"),
        }
    expect_update(stubber, fields)
    result = deploy(mwaa=client, s3=deploy_s3 or s3, environment=ENV_NAME, root=project, out=io.StringIO(), **kwargs)
    return result, in_use(result)


def record_calls(*clients: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """Every API call the clients make from now on: (service, operation, parameters), stubbed calls included."""
    calls: list[tuple[str, str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.service_model.service_name, xform_name(model.name), dict(params)))

    for client in clients:
        client.meta.events.register("before-parameter-build", record)
    return calls


# ---------------------------------------------------------------------------------------------------------------
# Deploying


def test_first_deploy_uploads_everything_and_points_the_environment_at_the_new_versions(project, s3, bucket, mwaa):
    startup = project / "startup.sh"
    startup.write_text("#!/bin/sh\nexport ES_BACKFILL_EXAMPLE=1\n")
    client, stubber = mwaa
    expect_get(stubber, environment(bucket))
    expect_update(
        stubber,
        {
            "PluginsS3Path": "plugins.zip",
            "PluginsS3ObjectVersion": LatestVersionOf(s3, bucket, "plugins.zip"),
            "RequirementsS3Path": "requirements.txt",
            "RequirementsS3ObjectVersion": LatestVersionOf(s3, bucket, "requirements.txt"),
            "StartupScriptS3Path": "startup.sh",
            "StartupScriptS3ObjectVersion": LatestVersionOf(s3, bucket, "startup.sh"),
        },
    )
    out = io.StringIO()

    result = deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, startup_script=startup, out=out)

    keys = {key for key, _, _ in bucket_state(s3, bucket)}
    assert keys == {"dags/es_backfill.py", "plugins.zip", "requirements.txt", "startup.sh"}
    assert set(result.uploaded) == keys
    assert read(s3, bucket, "dags/es_backfill.py") == (project / "dags" / "es_backfill.py").read_bytes()
    assert read(s3, bucket, "startup.sh") == startup.read_bytes()
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["VersionId"] == result.uploaded[key]
        assert head["Metadata"]["sha256"] == mwaa_deploy.hashlib.sha256(read(s3, bucket, key)).hexdigest()
    assert "Environment update: PluginsS3Path=plugins.zip" in out.getvalue()


def test_second_deploy_without_changes_uploads_nothing_and_does_not_update_the_environment(project, s3, bucket, mwaa):
    _, fields = first_deploy(project, s3, bucket, mwaa)
    before = bucket_state(s3, bucket)
    client, stubber = mwaa
    expect_get(stubber, environment(bucket, **fields))  # no update_environment queued: calling it fails the test
    out = io.StringIO()

    result = deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, out=out)

    assert result.uploaded == {}
    assert result.update is None
    assert bucket_state(s3, bucket) == before
    assert {c.action for c in result.changes} == {"unchanged"}
    assert "Nothing to deploy" in out.getvalue()


def test_changing_only_a_dag_uploads_that_dag_and_does_not_update_the_environment(project, s3, bucket, mwaa):
    _, fields = first_deploy(project, s3, bucket, mwaa)
    dag = project / "dags" / "es_backfill.py"
    dag.write_text(dag.read_text() + "\n# changed\n")
    (project / "dags" / "extra_dag.py").write_text("# a second DAG file\n")
    client, stubber = mwaa
    expect_get(stubber, environment(bucket, **fields))

    result = deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, out=io.StringIO())

    assert set(result.uploaded) == {"dags/es_backfill.py", "dags/extra_dag.py"}
    actions = {c.key: c.action for c in result.changes}
    assert actions == {
        "dags/es_backfill.py": "change",
        "dags/extra_dag.py": "add",
        "plugins.zip": "unchanged",
        "requirements.txt": "unchanged",
    }
    assert read(s3, bucket, "dags/es_backfill.py") == dag.read_bytes()
    assert result.update is None


def test_changing_plugins_uploads_a_new_plugins_zip_and_updates_only_its_object_version(project, s3, bucket, mwaa):
    first, fields = first_deploy(project, s3, bucket, mwaa)
    module = project / "plugins" / "es_backfill" / "windows.py"
    module.write_text(module.read_text() + "\n# changed\n")
    client, stubber = mwaa
    expect_get(stubber, environment(bucket, **fields))
    expect_update(stubber, {"PluginsS3ObjectVersion": LatestVersionOf(s3, bucket, "plugins.zip")})

    result = deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, out=io.StringIO())

    assert set(result.uploaded) == {"plugins.zip"}
    assert result.uploaded["plugins.zip"] != first.uploaded["plugins.zip"]
    assert result.update == {"Name": ENV_NAME, "PluginsS3ObjectVersion": result.uploaded["plugins.zip"]}
    with zipfile.ZipFile(io.BytesIO(read(s3, bucket, "plugins.zip"))) as archive:
        assert archive.read("es_backfill/windows.py") == module.read_bytes()


def test_dry_run_prints_the_plan_and_writes_nothing(project, s3, bucket, mwaa):
    s3.put_object(Bucket=bucket, Key="dags/old_dag.py", Body=b"# gone from dags/\n")
    before = bucket_state(s3, bucket)
    client, stubber = mwaa
    expect_get(stubber, environment(bucket))
    out = io.StringIO()

    result = deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, dry_run=True, out=out)

    assert bucket_state(s3, bucket) == before
    assert result.uploaded == {}
    text = out.getvalue()
    assert "dags/es_backfill.py" in text and "plugins.zip" in text and "requirements.txt" in text
    assert re.search(r"dags/old_dag\.py +removed locally", text)
    assert "PluginsS3ObjectVersion=<new version>" in text
    assert "Dry run: nothing uploaded, environment not updated." in text


def test_requirements_in_the_bucket_start_with_the_constraint_line_and_hold_our_pins(project, s3, bucket, mwaa):
    first_deploy(project, s3, bucket, mwaa)

    lines = read(s3, bucket, "requirements.txt").decode().splitlines()

    assert lines[0] == CONSTRAINT_LINE
    assert CONSTRAINT_LINE == (
        '--constraint "https://raw.githubusercontent.com/apache/airflow/constraints-3.3.1/constraints-3.12.txt"'
    )
    pins = [line for line in (project / "requirements.txt").read_text().splitlines() if "==" in line]
    assert pins and all(pin in lines for pin in pins)
    assert sum(line.startswith("--constraint") for line in lines) == 1


def test_plugins_zip_holds_the_package_and_its_defaults_and_is_byte_identical_across_builds(project):
    first = build_plugins_zip(project)
    # What must not change the zip: file times, and the caches Python leaves behind.
    for path in (project / "plugins").rglob("*.py"):
        path.touch()
    cache = project / "plugins" / "es_backfill" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "config.cpython-312.pyc").write_bytes(b"\0cache")

    second = build_plugins_zip(project)

    assert first == second
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        package = project / "plugins" / "es_backfill"
        modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
        assert "engines/opensearch.py" in modules
        assert {n.removeprefix("es_backfill/") for n in names if n.endswith(".py")} == modules
        assert "es_backfill/backfill_defaults.json" in names
        assert archive.read(".airflowignore") == (project / "plugins" / ".airflowignore").read_bytes()
        assert (
            archive.read("es_backfill/backfill_defaults.json")
            == (project / "include" / "backfill_defaults.json").read_bytes()
        )
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_unpacked_plugins_zip_finds_its_defaults_file_as_on_mwaa(project, tmp_path):
    plugins = tmp_path / "usr" / "local" / "airflow" / "plugins"
    with zipfile.ZipFile(io.BytesIO(build_plugins_zip(project))) as archive:
        archive.extractall(plugins)
    code = (
        "from es_backfill.config import defaults_path, load_defaults; p = defaults_path(); load_defaults(p); print(p)"
    )

    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(plugins), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert Path(done.stdout.strip()) == plugins / "es_backfill" / "backfill_defaults.json"


def test_bucket_without_versioning_is_refused_with_a_clear_error_and_nothing_written(project, s3, mwaa):
    name = f"mwaa-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    client, stubber = mwaa
    expect_get(stubber, environment(name))

    with pytest.raises(
        DeployError, match=r"versioning never enabled; MWAA requires it: aws s3api put-bucket-versioning"
    ):
        deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, out=io.StringIO())

    assert s3.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0


def test_unknown_environment_is_a_deploy_error_naming_it(project, s3, mwaa):
    client, stubber = mwaa
    stubber.add_client_error(
        "get_environment",
        service_error_code="ResourceNotFoundException",
        service_message="Environment not found",
        http_status_code=404,
        expected_params={"Name": ENV_NAME},
    )

    with pytest.raises(DeployError, match=f"MWAA environment '{ENV_NAME}' not found in us-east-1"):
        deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, out=io.StringIO())


def test_environment_that_is_updating_is_refused_before_anything_is_uploaded(project, s3, bucket, mwaa):
    client, stubber = mwaa
    expect_get(stubber, environment(bucket, status="UPDATING"))

    with pytest.raises(DeployError, match="is UPDATING; it can be updated only when AVAILABLE or UPDATE_FAILED"):
        deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, out=io.StringIO())

    assert bucket_state(s3, bucket) == []


def test_environment_on_another_airflow_version_is_refused(project, s3, bucket, mwaa):
    client, stubber = mwaa
    answer = environment(bucket)
    answer["Environment"]["AirflowVersion"] = "2.10.3"
    expect_get(stubber, answer)

    with pytest.raises(
        DeployError, match=r"runs Airflow 2\.10\.3, but this project and its requirements are for 3\.3\.1"
    ):
        deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, out=io.StringIO())


def test_uploaded_but_unused_plugins_zip_is_not_uploaded_again_the_environment_is_pointed_at_it(
    project, s3, bucket, mwaa
):
    """A deploy interrupted between the upload and UpdateEnvironment: the next one finishes the job."""
    _, fields = first_deploy(project, s3, bucket, mwaa)
    module = project / "plugins" / "es_backfill" / "windows.py"
    module.write_text(module.read_text() + "\n# changed\n")
    interrupted = mwaa_deploy.upload(
        s3, bucket, mwaa_deploy.Artifact("plugins", "plugins.zip", build_plugins_zip(project))
    )
    before = bucket_state(s3, bucket)
    client, stubber = mwaa
    expect_get(stubber, environment(bucket, **fields))  # still on the previous plugins.zip
    expect_update(stubber, {"PluginsS3ObjectVersion": interrupted})

    result = deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, out=io.StringIO())

    assert result.uploaded == {}
    assert bucket_state(s3, bucket) == before
    assert {c.key: c.action for c in result.changes}["plugins.zip"] == "repoint"


def test_object_uploaded_by_hand_without_hash_metadata_is_compared_by_etag(project, s3, bucket, mwaa):
    _, fields = first_deploy(project, s3, bucket, mwaa)
    dag = project / "dags" / "es_backfill.py"
    s3.put_object(Bucket=bucket, Key="dags/es_backfill.py", Body=dag.read_bytes())  # as `aws s3 cp` would
    client, stubber = mwaa
    expect_get(stubber, environment(bucket, **fields))

    result = deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, out=io.StringIO())

    assert result.uploaded == {}


def test_dag_removed_locally_is_kept_unless_delete_removed_is_given(project, s3, bucket, mwaa):
    _, fields = first_deploy(project, s3, bucket, mwaa)
    s3.put_object(Bucket=bucket, Key="dags/old_dag.py", Body=b"# gone from dags/\n")
    client, stubber = mwaa
    expect_get(stubber, environment(bucket, **fields))
    kept = deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, out=io.StringIO())
    assert kept.deleted == []
    assert s3.head_object(Bucket=bucket, Key="dags/old_dag.py")
    expect_get(stubber, environment(bucket, **fields))

    deleted = deploy(mwaa=client, s3=s3, environment=ENV_NAME, root=project, delete_removed=True, out=io.StringIO())

    assert deleted.deleted == ["dags/old_dag.py"]
    assert "dags/old_dag.py" not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert deleted.update is None


def test_command_line_dry_run_exits_0_and_a_refused_deploy_exits_2(project, s3, bucket, mwaa, monkeypatch, capsys):
    client, stubber = mwaa
    monkeypatch.setattr(mwaa_deploy, "clients", lambda region: (client, s3))
    expect_get(stubber, environment(bucket))
    expect_rest(stubber, "GET", "/pools/es_backfill", {"name": "es_backfill", "slots": 4})
    expect_rest(stubber, "GET", "/connections/elasticsearch_default", {"connection_id": "elasticsearch_default"})
    expect_rest(stubber, "GET", "/connections/aws_default", {"connection_id": "aws_default"})
    args = ["--environment", ENV_NAME, "--project-root", str(project), "--dry-run"]

    assert mwaa_deploy.main(args) == 0
    out = capsys.readouterr().out
    assert "Dry run" in out and "pool es_backfill: 4 slots" in out and "connection elasticsearch_default: found" in out

    expect_get(stubber, environment(bucket, status="CREATING"))
    assert mwaa_deploy.main(args[:-1]) == 2
    assert "Deploy refused: environment 'es-backfill-test' is CREATING" in capsys.readouterr().err
    assert bucket_state(s3, bucket) == []


# ---------------------------------------------------------------------------------------------------------------
# Building without deploying


def test_build_only_writes_the_bytes_a_deploy_uploads_without_credentials_or_any_aws_call(
    project, s3, bucket, mwaa, tmp_path, monkeypatch, capsys
):
    startup = project / "startup.sh"
    startup.write_text("#!/bin/sh\nexport ES_BACKFILL_EXAMPLE=1\n")
    build = tmp_path / "build"

    def no_aws_call(client: Any, operation: str, params: Any) -> None:
        pytest.fail(f"--build-only called AWS: {operation}")

    with monkeypatch.context() as offline:  # no credentials, no configuration, no instance metadata, no API
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
            offline.delenv(name, raising=False)
        offline.delenv("AWS_DEFAULT_REGION", raising=False)
        for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            offline.setenv(name, str(tmp_path / "no-such-file"))
        offline.setenv("AWS_EC2_METADATA_DISABLED", "true")
        offline.setattr(botocore.client.BaseClient, "_make_api_call", no_aws_call)
        args = ["--build-only", str(build), "--project-root", str(project), "--startup-script", str(startup)]

        code = mwaa_deploy.main(args)

    assert code == 0
    files = {path.relative_to(build).as_posix(): path.read_bytes() for path in build.rglob("*") if path.is_file()}
    assert set(files) == {"dags/es_backfill.py", "plugins.zip", "requirements.txt", "startup.sh"}
    assert files["plugins.zip"] == build_plugins_zip(project)
    assert files["requirements.txt"].decode().splitlines()[0] == CONSTRAINT_LINE
    listing = capsys.readouterr().out
    assert all(f"sha256 {hashlib.sha256(body).hexdigest()}" in listing for body in files.values())
    first_deploy(project, s3, bucket, mwaa, startup_script=startup)
    assert {key: read(s3, bucket, key) for key in files} == files  # what a deploy uploads, byte for byte


def test_build_only_for_a_private_network_packs_the_wheels_and_sends_pip_to_them(project, tmp_path, monkeypatch):
    (project / "constraints").mkdir()
    shutil.copy2(ROOT / mwaa_deploy.CONSTRAINTS_SOURCE, project / mwaa_deploy.CONSTRAINTS_SOURCE)
    wheel = tmp_path / "example-1.0-py3-none-any.whl"
    wheel.write_bytes(b"a wheel's bytes")

    def download_wheels(root: Path, dest: Path) -> list[Path]:  # as pip download would, without PyPI
        assert root == project
        return [Path(shutil.copy2(wheel, dest))]

    monkeypatch.setattr(mwaa_deploy, "download_wheels", download_wheels)
    build = tmp_path / "build"

    assert mwaa_deploy.main(["--build-only", str(build), "--project-root", str(project), "--private-network"]) == 0

    assert (build / "plugins.zip").read_bytes() == build_plugins_zip(project, [wheel])
    with zipfile.ZipFile(build / "plugins.zip") as archive:
        assert "wheels/example-1.0-py3-none-any.whl" in archive.namelist()
    requirements = (build / "requirements.txt").read_text().splitlines()
    assert requirements[:2] == [f"--find-links {MWAA_PLUGINS_DIR}/wheels", "--no-index"]


def test_build_only_refuses_options_that_need_aws_and_a_directory_that_is_not_empty(project, tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        mwaa_deploy.main(["--build-only", str(tmp_path / "b"), "--environment", ENV_NAME, "--pool-slots", "4"])
    assert usage.value.code == 2
    assert "--build-only calls no AWS API, so --environment, --pool-slots would do nothing" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine\n")

    assert mwaa_deploy.main(["--build-only", str(used), "--project-root", str(project)]) == 2

    assert f"{used} is not an empty directory" in capsys.readouterr().err
    assert [path.name for path in used.iterdir()] == ["notes.txt"]


def test_deploy_needs_an_environment_unless_it_only_builds(capsys):
    with pytest.raises(SystemExit) as usage:
        mwaa_deploy.main(["--dry-run"])
    assert usage.value.code == 2
    assert "--environment is required (or --build-only DIR, which calls no AWS API)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Pools and connections


def expect_rest(stubber: Stubber, method: str, path: str, answer: dict[str, Any] | None = None, status: int = 200,
                body: dict[str, Any] | None = None) -> None:  # fmt: skip
    """One InvokeRestApi call; a status of 400 or more comes back as MWAA's modeled error."""
    params: dict[str, Any] = {"Name": ENV_NAME, "Path": path, "Method": method}
    if body is not None:
        params["Body"] = body
    if status < 400:
        stubber.add_response("invoke_rest_api", {"RestApiStatusCode": status, "RestApiResponse": answer or {}}, params)
    else:
        stubber.add_client_error(
            "invoke_rest_api", service_error_code="RestApiClientException", http_status_code=400,
            modeled_fields={"RestApiStatusCode": status, "RestApiResponse": answer or {}}, expected_params=params,
        )  # fmt: skip


def prepare(mwaa, project: Path, http: Any = None, **kwargs: Any) -> tuple[list[str], str]:
    out = io.StringIO()
    problems = mwaa_deploy.prepare_airflow(
        mwaa=mwaa[0], environment=ENV_NAME, root=project, out=out, http=http, **kwargs
    )
    return problems, out.getvalue()


POOL_BULK = airflow_admin.pool_request(airflow_admin.Pool(slots=4)).body  # its shape is tested below


def test_deploy_creates_the_missing_pool_and_finds_the_connections_through_invoke_rest_api(project, mwaa):
    stubber = mwaa[1]
    expect_rest(stubber, "GET", "/pools/es_backfill", {"detail": "Pool not found"}, status=404)
    expect_rest(stubber, "PATCH", "/pools", {"create": {"success": ["es_backfill"], "errors": []}}, body=POOL_BULK)
    expect_rest(stubber, "GET", "/connections/elasticsearch_default", {"connection_id": "elasticsearch_default"})
    expect_rest(stubber, "GET", "/connections/aws_default", {"detail": "not found"}, status=404)

    problems, out = prepare(mwaa, project, pool_slots=4, dry_run=False)

    assert problems == []
    assert "pool es_backfill: missing -> 4 slots" in out
    assert "connection aws_default: not set, so S3 is reached with the execution role" in out


def test_deploy_resizes_the_pool_but_not_in_a_dry_run(project, mwaa):
    stubber = mwaa[1]
    for dry_run in (True, False):
        expect_rest(stubber, "GET", "/pools/es_backfill", {"name": "es_backfill", "slots": 2})
        if not dry_run:
            expect_rest(stubber, "PATCH", "/pools", {"create": {"success": ["es_backfill"], "errors": []}},
                        body=POOL_BULK)  # fmt: skip
        for conn_id in ("elasticsearch_default", "aws_default"):
            expect_rest(stubber, "GET", f"/connections/{conn_id}", {"connection_id": conn_id})
        problems, out = prepare(mwaa, project, pool_slots=4, dry_run=dry_run)
        assert problems == [] and "pool es_backfill: 2 -> 4 slots" in out


def test_deploy_warns_of_a_missing_pool_and_a_missing_elasticsearch_connection(project, mwaa):
    stubber = mwaa[1]
    expect_rest(stubber, "GET", "/pools/es_backfill", {"detail": "Pool not found"}, status=404)
    expect_rest(stubber, "GET", "/connections/elasticsearch_default", {"detail": "not found"}, status=404)
    expect_rest(stubber, "GET", "/connections/aws_default", {"connection_id": "aws_default"})

    problems, out = prepare(mwaa, project, pool_slots=None, dry_run=False)

    assert len(problems) == 2
    assert "WARNING: pool es_backfill does not exist: extract tasks would wait in 'scheduled' for ever" in out
    assert "--pool-slots N" in out
    assert "WARNING: connection elasticsearch_default is not among Airflow's connections" in out


def test_without_invoke_rest_api_the_pool_is_set_through_the_cli_endpoint(project, mwaa):
    import httpx

    stubber = mwaa[1]
    stubber.add_client_error("invoke_rest_api", service_error_code="AccessDeniedException", http_status_code=403,
                             service_message="not authorized to perform airflow:InvokeRestApi")  # fmt: skip
    stubber.add_response(
        "create_cli_token", {"CliToken": "t0k", "WebServerHostname": "mwaa.example"}, {"Name": ENV_NAME}
    )
    posted = []

    def web_server(request: httpx.Request) -> httpx.Response:  # MWAA's /aws_mwaa/cli, which answers in base64
        posted.append((str(request.url), request.headers["Authorization"], request.content.decode()))
        stdout = base64.b64encode(b"Pool es_backfill created").decode()
        return httpx.Response(200, json={"stdout": stdout, "stderr": ""})

    with httpx.Client(transport=httpx.MockTransport(web_server)) as http:
        problems, out = prepare(mwaa, project, http=http, pool_slots=4, dry_run=False)

    assert posted == [("https://mwaa.example/aws_mwaa/cli", "Bearer t0k",
                       f"pools set es_backfill 4 '{airflow_admin.POOL_DESCRIPTION}'")]  # fmt: skip
    assert "InvokeRestApi unavailable" in out and "set to 4 slots through the CLI endpoint" in out
    assert problems and "airflow:InvokeRestApi" in problems[0]


def test_a_rest_error_from_airflow_is_an_admin_error_naming_the_status(mwaa):
    stubber = mwaa[1]
    expect_rest(stubber, "PATCH", "/pools", {"detail": "slots must be >= -1"}, status=422, body=POOL_BULK)
    with pytest.raises(airflow_admin.AdminError, match="PATCH /pools answered 422"):
        airflow_admin.invoke_mwaa_rest(mwaa[0], ENV_NAME, airflow_admin.pool_request(airflow_admin.Pool(slots=4)))


class FakeMwaaWebServer:
    """Stands in for the MWAA web server's ``/aws_mwaa/cli``: records requests, answers like MWAA."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str] | str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, answer = fake.answers.pop(0)
                payload = json.dumps(answer).encode() if isinstance(answer, dict) else answer.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.hostname = f"127.0.0.1:{self.server.server_address[1]}"

    def answer(self, stdout: str, stderr: str = "", status: int = 200) -> None:
        encoded = {
            "stdout": base64.b64encode(stdout.encode()).decode(),
            "stderr": base64.b64encode(stderr.encode()).decode(),
        }
        self.answers.append((status, encoded))


@pytest.fixture
def web_server() -> Iterator[FakeMwaaWebServer]:
    fake = FakeMwaaWebServer()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def mwaa_cli(mwaa, web_server):
    """Run CLI commands on the stubbed environment; each one first needs a CLI token."""
    import httpx

    client, stubber = mwaa

    def token(value: str) -> None:
        answer = {"CliToken": value, "WebServerHostname": web_server.hostname}
        stubber.add_response("create_cli_token", answer, {"Name": ENV_NAME})

    with httpx.Client(timeout=httpx.Timeout(10, connect=5)) as http:
        yield token, lambda args: airflow_admin.run_mwaa_cli(client, ENV_NAME, args, http, scheme="http")


def test_pool_on_mwaa_posts_pools_set_with_a_fresh_cli_token(mwaa_cli, web_server):
    token, run = mwaa_cli
    token("token-1")
    web_server.answer("Pool es_backfill created\n", "some warning\n")

    results = airflow_admin.apply_cli(run, airflow_admin.pool_commands(airflow_admin.Pool(slots=6)))

    (request,) = web_server.requests
    assert request["path"] == "/aws_mwaa/cli"
    assert request["headers"]["Authorization"] == "Bearer token-1"
    assert request["headers"]["Content-Type"] == "text/plain"
    assert request["body"] == "pools set es_backfill 6 'windows reading Elasticsearch at once'"
    assert results[0].stdout == "Pool es_backfill created\n"
    assert results[0].stderr == "some warning\n"


def test_connection_on_mwaa_is_deleted_then_added_each_command_with_its_own_token(mwaa_cli, web_server):
    token, run = mwaa_cli
    conn = airflow_admin.load_connection(
        '{"conn_type": "elasticsearch", "host": "es.example.com", "port": 9243, "schema": "https",'
        ' "extra": {"api_key": "it\'s secret"}}'
    )
    token("token-1")
    web_server.answer("", "Did not find a connection with `conn_id`=elasticsearch_default\n")
    token("token-2")
    web_server.answer(
        "Successfully added `conn_id`=elasticsearch_default : elasticsearch://:@es.example.com:9243/https\n"
    )

    airflow_admin.apply_cli(run, airflow_admin.connection_commands("elasticsearch_default", conn))

    delete, add = web_server.requests
    assert delete["body"] == "connections delete elasticsearch_default"
    assert add["headers"]["Authorization"] == "Bearer token-2"
    import shlex

    args = shlex.split(add["body"])
    assert args[:4] == ["connections", "add", "elasticsearch_default", "--conn-json"]
    assert json.loads(args[4]) == conn


def test_mwaa_cli_command_without_its_success_message_raises_with_airflow_output(mwaa_cli, web_server):
    token, run = mwaa_cli
    token("token-1")
    web_server.answer("", "airflow.exceptions.AirflowBadRequest: Invalid value for `slots`\n")

    with pytest.raises(
        airflow_admin.AdminError, match=r"airflow pools set failed:\nairflow\.exceptions\.AirflowBadRequest"
    ):
        airflow_admin.apply_cli(run, airflow_admin.pool_commands(airflow_admin.Pool(slots=6)))


def test_mwaa_cli_endpoint_refusing_the_token_raises_with_its_status(mwaa_cli, web_server):
    token, run = mwaa_cli
    token("expired")
    web_server.answers.append((403, "Forbidden"))

    with pytest.raises(airflow_admin.AdminError, match="MWAA CLI endpoint answered 403: Forbidden"):
        run(["pools", "list"])


def test_rest_requests_are_bulk_creates_that_overwrite_and_match_airflows_api_models():
    from airflow.api_fastapi.core_api.datamodels.common import BulkBody
    from airflow.api_fastapi.core_api.datamodels.connections import ConnectionBody
    from airflow.api_fastapi.core_api.datamodels.pools import PoolBody

    pool = airflow_admin.pool_request(airflow_admin.Pool(slots=8))
    conn = airflow_admin.connection_request(
        "elasticsearch_default",
        {"conn_type": "elasticsearch", "host": "es", "port": 9200, "schema": "http", "extra": {"verify_certs": False}},
    )

    assert (pool.method, pool.path) == ("PATCH", "/api/v2/pools")
    assert (conn.method, conn.path) == ("PATCH", "/api/v2/connections")
    pools = BulkBody[PoolBody].model_validate(pool.body)
    (action,) = pools.actions
    assert action.action_on_existence.value == "overwrite"
    assert action.entities[0].pool == "es_backfill" and action.entities[0].slots == 8
    connections = BulkBody[ConnectionBody].model_validate(conn.body)
    entity = connections.actions[0].entities[0]
    assert entity.connection_id == "elasticsearch_default"
    assert json.loads(entity.extra) == {"verify_certs": False}


def test_connection_file_with_unknown_fields_is_refused():
    with pytest.raises(airflow_admin.AdminError, match=r"unknown connection fields \['hostname'\]"):
        airflow_admin.load_connection('{"conn_type": "elasticsearch", "hostname": "es"}')


def test_connection_secret_is_read_back_by_the_secrets_manager_backend(s3_server, monkeypatch):
    from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    secrets = boto3.client("secretsmanager", endpoint_url=s3_server.endpoint_url, **CREDENTIALS)
    prefix = f"airflow/connections-{uuid.uuid4().hex[:8]}"
    conn = {
        "conn_type": "elasticsearch",
        "host": "es.example.com",
        "port": 9243,
        "schema": "https",
        "extra": {"api_key": "abc", "verify_certs": True},
    }
    airflow_admin.put_connection_secret(secrets, "elasticsearch_default", {**conn, "host": "old"}, prefix)
    name = airflow_admin.put_connection_secret(secrets, "elasticsearch_default", conn, prefix)  # a new value

    backend = SecretsManagerBackend(
        connections_prefix=prefix, endpoint_url=s3_server.endpoint_url, region_name="us-east-1"
    )
    found = backend.get_connection("elasticsearch_default")

    assert name == f"{prefix}/elasticsearch_default"
    assert (found.conn_type, found.host, found.port, found.schema) == ("elasticsearch", "es.example.com", 9243, "https")
    assert found.extra_dejson == {"api_key": "abc", "verify_certs": True}


def test_secrets_manager_backend_set_up_as_the_readme_says_reads_the_backfills_connections_and_skips_aws_default(
    s3_server, monkeypatch
):
    from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    secrets = boto3.client("secretsmanager", endpoint_url=s3_server.endpoint_url, **CREDENTIALS)
    kwargs = readme_backend_kwargs()
    prefix = f"{kwargs['connections_prefix']}-{uuid.uuid4().hex[:8]}"
    (key_conn_id,) = readme_redaction_key_conn_ids()
    stored = {
        "elasticsearch_default": {"conn_type": "elasticsearch", "host": "es.example.com", "port": 9243},
        key_conn_id: {"conn_type": "generic", "password": "example-key"},
        "aws_default": {"conn_type": "aws", "login": "AKIAEXAMPLE", "password": "not-the-execution-role"},
    }
    for conn_id, conn in stored.items():  # all three exist: only the pattern keeps aws_default out
        secrets.create_secret(Name=f"{prefix}/{conn_id}", SecretString=json.dumps(conn))
    backend = SecretsManagerBackend(
        **{**kwargs, "connections_prefix": prefix}, endpoint_url=s3_server.endpoint_url, region_name=REGION
    )
    asked = record_calls(backend.client)

    assert backend.get_connection("elasticsearch_default").host == "es.example.com"
    assert backend.get_connection(key_conn_id).password == "example-key"
    assert backend.get_connection("aws_default") is None
    assert [params["SecretId"] for _, _, params in asked] == [
        f"{prefix}/elasticsearch_default",
        f"{prefix}/{key_conn_id}",
    ]


def test_secret_command_writes_only_connections_the_lookup_pattern_reads(s3_server, tmp_path, monkeypatch, capsys):
    secrets = boto3.client("secretsmanager", endpoint_url=s3_server.endpoint_url, **CREDENTIALS)
    monkeypatch.setattr(airflow_admin, "_boto_client", lambda service, region: secrets)
    conn = tmp_path / "conn.json"
    conn.write_text('{"conn_type": "generic", "password": "example-key"}')
    prefix = f"airflow/connections-{uuid.uuid4().hex[:8]}"
    command = ["secret", "--file", str(conn), "--prefix", prefix, "--conn-id"]

    assert airflow_admin.main([*command, "aws_default"]) == 1
    assert airflow_admin.main([*command, "Backfill_hmac"]) == 1  # the policies' secret names are lower case
    assert airflow_admin.main([*command, "backfill_hmac"]) == 0

    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "Failed: connection id 'aws_default' does not match connections_lookup_pattern '^(elasticsearch_|backfill_)', "
        "so MWAA would never read this secret; name the connection elasticsearch_... or backfill_...",
        "Failed: connection id 'Backfill_hmac' does not match connections_lookup_pattern "
        "'^(elasticsearch_|backfill_)', so MWAA would never read this secret; name the connection "
        "elasticsearch_... or backfill_...",
    ]
    names = [s["Name"] for s in secrets.list_secrets()["SecretList"] if s["Name"].startswith(f"{prefix}/")]
    assert names == [f"{prefix}/backfill_hmac"]


def test_local_cli_creates_then_resizes_the_pool_and_replaces_a_connection(airflow_db):
    """The same commands MWAA's CLI endpoint runs, run by the real ``airflow`` CLI on the test database."""
    run = airflow_admin.run_local_cli
    suffix = uuid.uuid4().hex[:8]
    pool_name, conn_id = f"es_backfill_{suffix}", f"es_{suffix}"  # not the real names: the database is shared
    for slots, host in ((2, "old.example.com"), (5, "es.example.com")):
        airflow_admin.apply_cli(run, airflow_admin.pool_commands(airflow_admin.Pool(name=pool_name, slots=slots)))
        conn = {"conn_type": "elasticsearch", "host": host, "port": 9243, "schema": "https", "extra": {"api_key": "k"}}
        airflow_admin.apply_cli(run, airflow_admin.connection_commands(conn_id, conn))

    pool = run(["pools", "get", pool_name, "-o", "json"])
    found = run(["connections", "get", conn_id, "-o", "json"])

    assert [(p["pool"], int(p["slots"])) for p in json.loads(pool.stdout)] == [(pool_name, 5)]
    (connection,) = json.loads(found.stdout)
    assert (connection["host"], int(connection["port"])) == ("es.example.com", 9243)
    assert connection["extra_dejson"] == {"api_key": "k"}


# ---------------------------------------------------------------------------------------------------------------
# The deployer's IAM policy


def test_every_aws_call_of_the_deploy_tools_is_allowed_by_the_deployer_policy(project, s3, bucket, mwaa, s3_server):
    """A first deploy, a deploy that finishes an interrupted one and deletes a removed DAG, the pool through
    InvokeRestApi and through the CLI endpoint, and a connection secret created then updated: each call they make
    is checked against ``include/ops/iam/deployer.json``, filled in for this environment."""
    import httpx

    client, stubber = mwaa
    deploy_s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, **CREDENTIALS)
    secrets = boto3.client("secretsmanager", endpoint_url=s3_server.endpoint_url, **CREDENTIALS)
    calls = record_calls(client, deploy_s3, secrets)
    startup = project / "startup.sh"
    startup.write_text("#!/bin/sh\n")
    _, fields = first_deploy(project, s3, bucket, mwaa, deploy_s3=deploy_s3, startup_script=startup)
    module = project / "plugins" / "es_backfill" / "windows.py"
    module.write_text(module.read_text() + "\n# changed\n")
    interrupted = mwaa_deploy.upload(
        s3, bucket, mwaa_deploy.Artifact("plugins", "plugins.zip", build_plugins_zip(project))
    )
    s3.put_object(Bucket=bucket, Key="dags/old_dag.py", Body=b"# gone from dags/\n")
    expect_get(stubber, environment(bucket, **fields))
    expect_update(stubber, {"PluginsS3ObjectVersion": interrupted})
    deploy(
        mwaa=client,
        s3=deploy_s3,
        environment=ENV_NAME,
        root=project,
        startup_script=startup,
        delete_removed=True,
        out=io.StringIO(),
    )
    expect_rest(stubber, "GET", "/pools/es_backfill", {"detail": "Pool not found"}, status=404)
    expect_rest(stubber, "PATCH", "/pools", {"create": {"success": ["es_backfill"], "errors": []}}, body=POOL_BULK)
    for conn_id in ("elasticsearch_default", "aws_default"):
        expect_rest(stubber, "GET", f"/connections/{conn_id}", {"connection_id": conn_id})
    prepare(mwaa, project, pool_slots=4, dry_run=False)
    stubber.add_client_error("invoke_rest_api", service_error_code="AccessDeniedException", http_status_code=403)
    token = {"CliToken": "t0k", "WebServerHostname": "mwaa.example"}
    stubber.add_response("create_cli_token", token, {"Name": ENV_NAME})
    created = {"stdout": base64.b64encode(b"Pool es_backfill created").decode(), "stderr": ""}
    with httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=created))) as http:
        prepare(mwaa, project, http=http, pool_slots=4, dry_run=False)
    conn_id = f"backfill_hmac_{uuid.uuid4().hex[:8]}"
    for key in ("first-key", "second-key"):  # CreateSecret, then PutSecretValue
        airflow_admin.put_connection_secret(secrets, conn_id, {"conn_type": "generic", "password": key})

    names = {**EXAMPLE, "REGION": REGION, "ACCOUNT": ACCOUNT, "ENV": ENV_NAME, "MWAA_BUCKET": bucket}
    policy = filled_policy("deployer.json", names)
    requests = [
        request
        for service, operation, params in calls
        for request in iam_requests(
            service, operation, params, region=REGION, account=ACCOUNT, execution_role=names["EXECUTION_ROLE"]
        )
    ]
    assert [r for r in requests if not allowed(policy, r)] == []
    assert {(service, operation) for service, operation, _ in calls} == operations_called(DEPLOY_CODE)
    assert {r.action for r in requests} >= {"s3:GetObjectVersion", "s3:DeleteObject", "airflow:CreateCliToken"}
