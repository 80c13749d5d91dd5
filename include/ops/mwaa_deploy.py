"""Deploy this project to an Amazon MWAA environment: DAGs, plugins.zip, requirements.txt, startup script.

    python -m include.ops.mwaa_deploy --environment NAME [--region R] [--dry-run] [--pool-slots N]
                                  [--private-network] [--startup-script PATH] [--delete-removed]
                                  [--project-root DIR]
    python -m include.ops.mwaa_deploy --build-only DIR [--private-network] [--startup-script PATH]
                                  [--project-root DIR]

The tool reads the environment (``GetEnvironment``) for its bucket and S3 paths, builds the
artifacts deterministically (an unchanged tree gives byte-identical objects), compares them
by SHA-256 with what the bucket holds and with the object versions the environment uses,
prints the plan, and, unless ``--dry-run``, uploads what changed and points the environment
at the new object versions (``UpdateEnvironment``). DAG files alone need no environment
update: MWAA syncs ``DagS3Path`` by itself.

* ``plugins.zip``: ``plugins/`` (no ``__pycache__``/``*.pyc``, sorted entries, fixed timestamps)
  plus ``include/backfill_defaults.json`` as ``es_backfill/backfill_defaults.json``, where
  :func:`es_backfill.config.defaults_path` finds it on MWAA.
* ``requirements.txt``: ours with Airflow's constraint line for MWAA's Airflow and Python first.
* Objects are uploaded with the metadata ``x-amz-meta-sha256``; objects without it (uploaded
  by hand) are compared by ETag, which is the MD5 of a single-part upload.
* ``--private-network``: for an environment without internet, every wheel the requirements need
  (downloaded for Linux x86_64 and CPython 3.12 with Airflow's 3.3.1 constraints) goes into
  plugins.zip under ``wheels/``, and requirements.txt sends pip there with ``--no-index``.
* Then, through MWAA's ``InvokeRestApi`` (Airflow's REST API with IAM): the ``es_backfill`` pool is
  created or resized to ``--pool-slots`` (or reported missing), and the connections the defaults
  file names are checked; where ``InvokeRestApi`` is unavailable, the pool goes through the CLI
  endpoint instead.
* ``--build-only DIR``: build the same artifacts and write them into ``DIR`` (new or empty) at the keys a
  new environment gives them (``dags/...``, ``plugins.zip``, ``requirements.txt``, ``startup.sh``), for
  inspection; no AWS API is called, so it needs neither ``--environment`` nor credentials.

The bucket must have versioning enabled (MWAA requires it). Credentials and region come from
the usual AWS chain (``AWS_PROFILE``, ``AWS_REGION``...). Exit status: 0 done (or nothing to do),
1 an AWS error (credentials, network, permissions), 2 the deploy was refused (:class:`DeployError`,
nothing written).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import re
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from include.ops import airflow_admin

log = logging.getLogger(__name__)

AIRFLOW_VERSION = "3.3.1"
PYTHON_VERSION = "3.12"
CONSTRAINT_URL = (
    f"https://raw.githubusercontent.com/apache/airflow/constraints-{AIRFLOW_VERSION}/constraints-{PYTHON_VERSION}.txt"
)
CONSTRAINT_LINE = f'--constraint "{CONSTRAINT_URL}"'
SHA256_METADATA = "sha256"  # stored as x-amz-meta-sha256
DEFAULTS_SOURCE = PurePosixPath("include/backfill_defaults.json")
DEFAULTS_IN_ZIP = "es_backfill/backfill_defaults.json"
CONSTRAINTS_SOURCE = PurePosixPath(f"constraints/airflow-{AIRFLOW_VERSION}-py{PYTHON_VERSION}.txt")
MWAA_PLUGINS_DIR = "/usr/local/airflow/plugins"  # where MWAA unpacks plugins.zip
WHEELS_IN_ZIP = "wheels"
# MWAA runs Amazon Linux 2023 (glibc 2.34) on x86_64: manylinux wheels up to 2_34 fit.
MWAA_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
DOWNLOAD_TIMEOUT_S = 1800
DEFAULT_DAG_PATH = "dags"  # an environment's DagS3Path when it names none, and where --build-only puts the DAGs
DEFAULT_KEYS = {"plugins": "plugins.zip", "requirements": "requirements.txt", "startup": "startup.sh"}
# The UpdateEnvironment parameters of each environment-level artifact.
ENV_FIELDS = {
    "plugins": ("PluginsS3Path", "PluginsS3ObjectVersion"),
    "requirements": ("RequirementsS3Path", "RequirementsS3ObjectVersion"),
    "startup": ("StartupScriptS3Path", "StartupScriptS3ObjectVersion"),
}
# MWAA accepts UpdateEnvironment only in these states.
UPDATABLE_STATUSES = frozenset({"AVAILABLE", "UPDATE_FAILED"})
NEW_VERSION = "<new version>"  # in the printed plan, a version that the upload will create
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can hold
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 120
_SKIPPED_NAMES = frozenset({"__pycache__", ".DS_Store"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")
_CONSTRAINT = re.compile(r"^\s*(-c|--constraint)(\s|=)")

ROOT = Path(__file__).resolve().parents[2]


class DeployError(RuntimeError):
    """The deploy cannot go ahead; the message says why and what to do. Nothing was written."""


@dataclass(frozen=True)
class Environment:
    """What the deploy needs from ``GetEnvironment``."""

    name: str
    status: str
    airflow_version: str | None
    bucket: str
    dag_path: str
    paths: Mapping[str, str | None]  # kind -> S3 key the environment uses, None when unset
    versions: Mapping[str, str | None]  # kind -> object version the environment uses

    def key(self, kind: str) -> str:
        return self.paths[kind] or DEFAULT_KEYS[kind]


@dataclass(frozen=True)
class Artifact:
    kind: str  # "dag", "plugins", "requirements", "startup"
    key: str
    body: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Remote:
    """One S3 object version as seen by ``HeadObject``."""

    version_id: str | None
    sha256: str | None
    etag: str | None

    def same_content(self, artifact: Artifact) -> bool:
        if self.sha256:
            return self.sha256 == artifact.sha256
        if self.etag and "-" not in self.etag:  # a multipart ETag is not an MD5
            return self.etag.strip('"') == hashlib.md5(artifact.body, usedforsecurity=False).hexdigest()
        return False


@dataclass(frozen=True)
class Change:
    kind: str
    key: str
    action: str  # "add", "change", "unchanged", "repoint", "remove"
    artifact: Artifact | None = None
    version_id: str | None = None  # for "repoint": the existing version the environment should use

    @property
    def uploads(self) -> bool:
        return self.action in {"add", "change"}


@dataclass
class DeployResult:
    changes: list[Change]
    uploaded: dict[str, str | None] = field(default_factory=dict)  # key -> new VersionId
    deleted: list[str] = field(default_factory=list)
    update: dict[str, str] | None = None  # the UpdateEnvironment request, if one was sent (or would be)


# ---------------------------------------------------------------------------------------------------------------
# The environment and the bucket


def get_environment(mwaa: Any, name: str) -> Environment:
    """Read the environment's bucket, S3 paths and object versions; :class:`DeployError` if it does not exist."""
    from botocore.exceptions import ClientError

    try:
        env = mwaa.get_environment(Name=name)["Environment"]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise DeployError(
                f"MWAA environment {name!r} not found in {mwaa.meta.region_name}; check --environment and --region"
            ) from err
        raise
    arn = env.get("SourceBucketArn") or ""
    if not arn.startswith("arn:aws") or ":s3:::" not in arn:
        raise DeployError(f"MWAA environment {name!r} has no usable SourceBucketArn ({arn!r})")
    return Environment(
        name=name,
        status=env.get("Status", "UNKNOWN"),
        airflow_version=env.get("AirflowVersion"),
        bucket=arn.split(":::", 1)[1],
        dag_path=(env.get("DagS3Path") or DEFAULT_DAG_PATH).strip("/"),
        paths={kind: env.get(path) for kind, (path, _) in ENV_FIELDS.items()},
        versions={kind: env.get(version) for kind, (_, version) in ENV_FIELDS.items()},
    )


def require_versioning(s3: Any, bucket: str) -> None:
    """MWAA points at object versions, so a bucket without versioning cannot be deployed to."""
    status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    if status != "Enabled":
        raise DeployError(
            f"bucket {bucket!r} has versioning {status or 'never enabled'}; MWAA requires it: "
            f"aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled"
        )


def head(s3: Any, bucket: str, key: str, version_id: str | None = None) -> Remote | None:
    """The object (or one version of it), or None if there is none."""
    from botocore.exceptions import ClientError

    kwargs = {"VersionId": version_id} if version_id else {}
    missing = {"404", "NoSuchKey", "NoSuchVersion"} | ({"400"} if version_id else set())  # 400: a malformed id
    try:
        response = s3.head_object(Bucket=bucket, Key=key, **kwargs)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in missing:
            return None
        raise
    return Remote(
        version_id=response.get("VersionId"),
        sha256=(response.get("Metadata") or {}).get(SHA256_METADATA),
        etag=response.get("ETag"),
    )


def list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


# ---------------------------------------------------------------------------------------------------------------
# Building the artifacts


def _files(directory: Path) -> Iterator[tuple[str, Path]]:
    """(posix relative path, path) of every file below ``directory`` that belongs in a deploy, sorted."""
    found = []
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if not path.is_file() or _SKIPPED_NAMES.intersection(relative.parts) or path.name.endswith(_SKIPPED_SUFFIXES):
            continue
        found.append((relative.as_posix(), path))
    yield from sorted(found)


def download_wheels(root: Path, dest: Path) -> list[Path]:
    """Every wheel ``requirements.txt`` needs on MWAA, Airflow and its dependencies included, into ``dest``.

    ``pip download`` of binary wheels for MWAA's platform (Linux x86_64, CPython 3.12) resolved with
    Airflow's 3.3.1 constraints, so it works from any machine and picks the versions MWAA installs.
    """
    command = [
        sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--only-binary=:all:",
        *(f"--platform={platform}" for platform in MWAA_PLATFORMS), f"--python-version={PYTHON_VERSION}",
        "--implementation=cp", "-r", str(root / "requirements.txt"), "-c", str(root / CONSTRAINTS_SOURCE),
        f"apache-airflow=={AIRFLOW_VERSION}", "--dest", str(dest),
    ]  # fmt: skip
    log.info("Downloading the wheels for MWAA (Python %s, Linux x86_64) into %s", PYTHON_VERSION, dest)
    done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise DeployError(f"pip download of the wheels for MWAA failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return sorted(dest.glob("*.whl"))


def build_plugins_zip(root: Path, wheels: list[Path] | None = None) -> bytes:
    """``plugins/`` as MWAA's plugins.zip plus the defaults file beside the package, and ``wheels`` (with the
    constraints they were resolved with) under ``wheels/`` for a private network; same files, same bytes."""
    entries = {name: path.read_bytes() for name, path in _files(root / "plugins")}
    defaults = root / DEFAULTS_SOURCE
    if not defaults.is_file():
        raise DeployError(f"{defaults} is missing; the DAG cannot run on MWAA without its defaults file")
    entries[DEFAULTS_IN_ZIP] = defaults.read_bytes()
    if wheels:
        entries |= {f"{WHEELS_IN_ZIP}/{wheel.name}": wheel.read_bytes() for wheel in wheels}
        entries[f"{WHEELS_IN_ZIP}/{CONSTRAINTS_SOURCE.name}"] = (root / CONSTRAINTS_SOURCE).read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
            # Wheels are zips already: stored as they are.
            info.compress_type = zipfile.ZIP_STORED if name.endswith(".whl") else zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.create_system = 3  # unix, whatever machine builds it
            archive.writestr(info, entries[name], compresslevel=9)
    return buffer.getvalue()


def build_requirements(root: Path, private_network: bool = False) -> bytes:
    """Our requirements.txt behind Airflow's constraints for MWAA's Airflow and Python: the public
    constraints URL, or, for a private network, pip pointed at the wheels in plugins.zip and nothing else
    (``--find-links`` to their folder on MWAA, ``--no-index``, the constraints file beside them)."""
    lines = (root / "requirements.txt").read_text().splitlines()
    own = [line for line in lines if _CONSTRAINT.match(line)]
    if any(line.strip() != CONSTRAINT_LINE for line in own):
        raise DeployError(f"requirements.txt has its own constraint line {own}; remove it, the deploy adds it")
    wheels = f"{MWAA_PLUGINS_DIR}/{WHEELS_IN_ZIP}"
    head = (
        [f"--find-links {wheels}", "--no-index", f'--constraint "{wheels}/{CONSTRAINTS_SOURCE.name}"']
        if private_network
        else [CONSTRAINT_LINE]
    )
    body = [*head, *(line for line in lines if not _CONSTRAINT.match(line))]
    return ("\n".join(body) + "\n").encode()


def build_artifacts(
    root: Path, env: Environment | None, startup_script: Path | None = None, wheels: list[Path] | None = None
) -> list[Artifact]:
    """What a deploy uploads, at the keys ``env`` uses (None: those of a new environment, which names no paths);
    with ``wheels`` (see :func:`download_wheels`), for an environment without internet."""
    dag_path = env.dag_path if env else DEFAULT_DAG_PATH
    key = env.key if env else DEFAULT_KEYS.__getitem__
    dags = [Artifact("dag", f"{dag_path}/{name}", path.read_bytes()) for name, path in _files(root / "dags")]
    if not dags:
        raise DeployError(f"no DAG files under {root / 'dags'}")
    artifacts = [
        *dags,
        Artifact("plugins", key("plugins"), build_plugins_zip(root, wheels)),
        Artifact("requirements", key("requirements"), build_requirements(root, private_network=bool(wheels))),
    ]
    if startup_script is not None:
        if not startup_script.is_file():
            raise DeployError(f"startup script {startup_script} does not exist")
        artifacts.append(Artifact("startup", key("startup"), startup_script.read_bytes()))
    return artifacts


def write_build(
    root: Path,
    dest: Path,
    startup_script: Path | None = None,
    wheels: list[Path] | None = None,
    out: TextIO | None = None,
) -> list[Artifact]:
    """Write what a deploy uploads into ``dest``, each artifact at the key a new environment gives it, and list
    them (to ``out``, default stdout) with their SHA-256, which a deploy stores as ``x-amz-meta-sha256``.

    The bytes are those a deploy uploads; no AWS API is called. ``dest`` must be new or empty, so that nothing
    in it is left over from another build.
    """
    out = out or sys.stdout
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DeployError(f"{dest} is not an empty directory; --build-only writes into a new or empty one")
    artifacts = build_artifacts(root, None, startup_script, wheels)
    for artifact in artifacts:
        path = dest / artifact.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(artifact.body)
    print(f"Built into {dest} (what a deploy uploads; nothing sent to AWS):", file=out)
    width = max(len(a.key) for a in artifacts)
    for artifact in artifacts:
        print(f"  {artifact.key:<{width}}  {len(artifact.body):>10} bytes  sha256 {artifact.sha256}", file=out)
    return artifacts


# ---------------------------------------------------------------------------------------------------------------
# Planning and applying


def plan(s3: Any, env: Environment, artifacts: list[Artifact]) -> list[Change]:
    """Compare every artifact with the bucket; environment-level ones with the version the environment uses."""
    changes: list[Change] = []
    for artifact in artifacts:
        latest = head(s3, env.bucket, artifact.key)
        if artifact.kind == "dag":
            action = "add" if latest is None else "unchanged" if latest.same_content(artifact) else "change"
            changes.append(Change(artifact.kind, artifact.key, action, artifact))
            continue
        in_use_version = env.versions[artifact.kind] if env.paths[artifact.kind] else None
        in_use = None
        if in_use_version:
            same = latest is not None and latest.version_id == in_use_version
            in_use = latest if same else head(s3, env.bucket, artifact.key, in_use_version)
        if in_use is not None and in_use.same_content(artifact):
            changes.append(Change(artifact.kind, artifact.key, "unchanged", artifact, in_use_version))
        elif latest is not None and latest.same_content(artifact):
            # Uploaded before (an interrupted deploy, or by hand) but not in use: no upload, just point at it.
            changes.append(Change(artifact.kind, artifact.key, "repoint", artifact, latest.version_id))
        else:
            changes.append(Change(artifact.kind, artifact.key, "add" if latest is None else "change", artifact))
    local = {a.key for a in artifacts}
    for key in list_keys(s3, env.bucket, f"{env.dag_path}/"):
        if key not in local and not key.endswith("/"):
            changes.append(Change("dag", key, "remove"))
    return changes


def environment_update(env: Environment, changes: list[Change], versions: Mapping[str, str | None]) -> dict[str, str]:
    """The UpdateEnvironment request for the changed environment-level artifacts ({} when there are none)."""
    request: dict[str, str] = {}
    for change in changes:
        if change.kind == "dag" or change.action == "unchanged":
            continue
        path_field, version_field = ENV_FIELDS[change.kind]
        version = versions.get(change.key) if change.uploads else change.version_id
        if not version:
            raise DeployError(f"s3://{env.bucket}/{change.key} has no version id; is versioning enabled?")
        if not env.paths[change.kind]:
            request[path_field] = change.key
        request[version_field] = version
    return {"Name": env.name, **request} if request else {}


def print_plan(env: Environment, changes: list[Change], update: dict[str, str], out: TextIO) -> None:
    labels = {
        "add": "add",
        "change": "change",
        "unchanged": "unchanged",
        "repoint": "in bucket, not in use: point the environment at it",
        "remove": "removed locally",
    }
    print(f"MWAA environment {env.name} ({env.status}), bucket s3://{env.bucket}:", file=out)
    width = max(len(c.key) for c in changes)
    for change in changes:
        detail = f"  sha256 {change.artifact.sha256[:12]}" if change.artifact and change.action != "unchanged" else ""
        print(f"  {change.key:<{width}}  {labels[change.action]}{detail}", file=out)
    if update:
        fields = ", ".join(f"{k}={v}" for k, v in update.items() if k != "Name")
        print(f"Environment update: {fields}", file=out)
    else:
        print("Environment update: none needed", file=out)


def deploy(
    *,
    mwaa: Any,
    s3: Any,
    environment: str,
    root: Path = ROOT,
    startup_script: Path | None = None,
    dry_run: bool = False,
    delete_removed: bool = False,
    wheels: list[Path] | None = None,
    out: TextIO | None = None,
) -> DeployResult:
    """Plan, print (to ``out``, default stdout), and unless ``dry_run`` upload the changes and update the environment.

    ``mwaa`` and ``s3`` are boto3 clients.
    """
    out = out or sys.stdout
    env = get_environment(mwaa, environment)
    if env.airflow_version and env.airflow_version != AIRFLOW_VERSION:
        raise DeployError(
            f"environment {env.name!r} runs Airflow {env.airflow_version}, but this project and its "
            f"requirements are for {AIRFLOW_VERSION}"
        )
    require_versioning(s3, env.bucket)
    artifacts = build_artifacts(root, env, startup_script, wheels)
    changes = plan(s3, env, artifacts)
    planned_update = environment_update(env, changes, {c.key: NEW_VERSION for c in changes if c.uploads})
    print_plan(env, changes, planned_update, out)
    result = DeployResult(changes=changes, update=planned_update or None)
    removed = [c.key for c in changes if c.action == "remove"]
    if removed and not delete_removed:
        print(f"{len(removed)} object(s) removed locally are kept; --delete-removed deletes them", file=out)
    if dry_run:
        print("Dry run: nothing uploaded, environment not updated.", file=out)
        return result
    if planned_update and env.status not in UPDATABLE_STATUSES:
        raise DeployError(
            f"environment {env.name!r} is {env.status}; it can be updated only when "
            f"{' or '.join(sorted(UPDATABLE_STATUSES))}. Nothing was uploaded; deploy again when it is."
        )
    for change in changes:
        if change.uploads and change.artifact is not None:
            result.uploaded[change.key] = upload(s3, env.bucket, change.artifact)
    if delete_removed:
        for key in removed:
            s3.delete_object(Bucket=env.bucket, Key=key)
            log.info("Deleted s3://%s/%s (a delete marker; earlier versions stay)", env.bucket, key)
            result.deleted.append(key)
    request = environment_update(env, changes, result.uploaded)
    result.update = request or None
    if request:
        mwaa.update_environment(**request)
        log.info("Updating environment %s: %s", env.name, request)
        print(
            f"Environment {env.name} is updating (usually 10-30 minutes); watch it with "
            f"aws mwaa get-environment --name {env.name} --query Environment.Status",
            file=out,
        )
    if not result.uploaded and not result.deleted and not request:
        print("Nothing to deploy: the bucket and the environment are up to date.", file=out)
    return result


# ---------------------------------------------------------------------------------------------------------------
# The pool and connections the DAG needs, through InvokeRestApi


def prepare_airflow(
    *, mwaa: Any, environment: str, root: Path = ROOT, pool_slots: int | None, dry_run: bool, out: TextIO, http: Any
) -> list[str]:
    """Create or resize the ``es_backfill`` pool (``pool_slots``; not in a dry run) and check that the
    connections the defaults file names exist. Returns the problems found, each also printed to ``out``.

    Without the pool, extract tasks stay "scheduled" for ever with no error; without the Elasticsearch
    connection, every task fails. ``InvokeRestApi`` does both; where it is unavailable, the pool is set
    through the CLI endpoint and the connections are not checked.
    """
    pool = airflow_admin.Pool(slots=pool_slots) if pool_slots else airflow_admin.Pool()
    try:
        current = airflow_admin.invoke_mwaa_rest(mwaa, environment, airflow_admin.pool_lookup(pool.name))
    except airflow_admin.RestApiUnavailable as err:
        print(f"InvokeRestApi unavailable ({err}): pool and connections not checked", file=out)
        if pool_slots and not dry_run:

            def run(args: list[str]) -> airflow_admin.CliResult:
                return airflow_admin.run_mwaa_cli(mwaa, environment, args, http)

            airflow_admin.apply_cli(run, airflow_admin.pool_commands(pool))
            print(f"pool {pool.name}: set to {pool_slots} slots through the CLI endpoint", file=out)
        return [f"pool and connections not checked: {err}"]
    problems = []
    slots = current.get("slots") if current else None
    if pool_slots is not None and slots != pool_slots:
        print(f"pool {pool.name}: {slots if current else 'missing'} -> {pool_slots} slots", file=out)
        if not dry_run:
            airflow_admin.invoke_mwaa_rest(mwaa, environment, airflow_admin.pool_request(pool))
    elif current is None:
        problems.append(
            f"pool {pool.name} does not exist: extract tasks would wait in 'scheduled' for ever; "
            "deploy again with --pool-slots N (N = windows reading Elasticsearch at once)"
        )
    else:
        print(f"pool {pool.name}: {slots} slots", file=out)
    defaults = json.loads((root / DEFAULTS_SOURCE).read_text())
    for conn_id, needed in ((defaults["es_conn_id"], True), (defaults["aws_conn_id"], False)):
        if airflow_admin.invoke_mwaa_rest(mwaa, environment, airflow_admin.connection_lookup(conn_id)) is not None:
            print(f"connection {conn_id}: found", file=out)
        elif needed:
            problems.append(
                f"connection {conn_id} is not among Airflow's connections: create it (python -m "
                f"include.ops.airflow_admin connection|secret --conn-id {conn_id} ...), unless a secrets backend "
                "such as Secrets Manager holds it"
            )
        else:
            print(f"connection {conn_id}: not set, so S3 is reached with the execution role", file=out)
    for problem in problems:
        print(f"WARNING: {problem}", file=out)
    return problems


def upload(s3: Any, bucket: str, artifact: Artifact) -> str | None:
    """Put one object with its SHA-256 as metadata; return the new version id."""
    response = s3.put_object(
        Bucket=bucket,
        Key=artifact.key,
        Body=artifact.body,
        Metadata={SHA256_METADATA: artifact.sha256},
    )
    version = response.get("VersionId")
    log.info("Uploaded s3://%s/%s (%s bytes) version %s", bucket, artifact.key, len(artifact.body), version)
    return version


# ---------------------------------------------------------------------------------------------------------------
# Command line


def clients(region: str | None) -> tuple[Any, Any]:
    """boto3 MWAA and S3 clients with explicit timeouts and standard retries."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": 5, "mode": "standard"},
    )
    session = boto3.session.Session(region_name=region)
    return session.client("mwaa", config=config), session.client("s3", config=config)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a number of slots (1 or more)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.ops.mwaa_deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--environment", help="the MWAA environment's name (required, but with --build-only)")
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; upload and update nothing")
    parser.add_argument("--startup-script", type=Path, help="a shell script MWAA runs before Airflow starts")
    parser.add_argument("--delete-removed", action="store_true", help="delete DAG objects no longer in dags/")
    parser.add_argument("--project-root", type=Path, default=ROOT, help="the directory holding dags/ and plugins/")
    parser.add_argument(
        "--pool-slots", type=_positive, help="create or resize the es_backfill pool to this many slots (>= 1)"
    )
    parser.add_argument(
        "--private-network",
        action="store_true",
        help="for an environment without internet: pack every wheel into plugins.zip and install from there",
    )
    parser.add_argument(
        "--build-only",
        type=Path,
        metavar="DIR",
        help="write the artifacts a deploy uploads into DIR (new or empty) and stop: no AWS call, no credentials",
    )
    args = parser.parse_args(argv)
    if args.build_only is None and not args.environment:
        parser.error("--environment is required (or --build-only DIR, which calls no AWS API)")
    if args.build_only is not None:
        given = {
            "--environment": args.environment,
            "--region": args.region,
            "--dry-run": args.dry_run,
            "--delete-removed": args.delete_removed,
            "--pool-slots": args.pool_slots,
        }
        pointless = [option for option, value in given.items() if value]
        if pointless:
            parser.error(f"--build-only calls no AWS API, so {', '.join(pointless)} would do nothing")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        with tempfile.TemporaryDirectory(prefix="mwaa-wheels-") as folder:
            wheels = download_wheels(args.project_root, Path(folder)) if args.private_network else None
            if args.build_only is not None:
                write_build(args.project_root, args.build_only, args.startup_script, wheels)
                return 0
            mwaa, s3 = clients(args.region)
            deploy(
                mwaa=mwaa,
                s3=s3,
                environment=args.environment,
                root=args.project_root,
                startup_script=args.startup_script,
                dry_run=args.dry_run,
                delete_removed=args.delete_removed,
                wheels=wheels,
            )
        with airflow_admin.http_client() as http:
            prepare_airflow(
                mwaa=mwaa,
                environment=args.environment,
                root=args.project_root,
                pool_slots=args.pool_slots,
                dry_run=args.dry_run,
                out=sys.stdout,
                http=http,
            )
    except DeployError as err:
        print(f"Deploy refused: {err}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError, airflow_admin.AdminError) as err:  # the AWS or Airflow error says why
        print(f"Deploy failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
