"""The docker compose stack, checked statically: no Docker engine runs here.

``docker-compose config`` (Debian's ``docker-compose`` package, Compose 1.29) parses and
interpolates the file with ``.env.example``; the rest reads the YAML, the Dockerfile and the init
script: pinned images, mounted paths that exist, secrets that .env.example defines, healthchecks,
and an init step that really creates the pool, the connections and the bucket and seeds data.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INIT_SCRIPT = ROOT / "include" / "ops" / "compose-init.sh"
DEFAULTS = ROOT / "include" / "backfill_defaults.json"

AIRFLOW_BASE_IMAGE = "apache/airflow:3.3.1-python3.12"
CONSTRAINTS = "constraints/airflow-3.3.1-py3.12.txt"
# Host directories the stack creates on first start (git ignores them); every other mounted path
# must be in the repository.
CREATED_AT_RUNTIME = {"logs", "config"}
LONG_RUNNING_AIRFLOW = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
MUST_HAVE_HEALTHCHECK = ("postgres", "elasticsearch", "minio", *LONG_RUNNING_AIRFLOW)
INSTALL_HINT = "apt-get update && apt-get install -y {package}"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ escapes a literal $.
_VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}")
_RELEASE_TAG = re.compile(r"^RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$")
_VERSION_TAG = re.compile(r"^v?\d+\.\d+(\.\d+)*([-._][A-Za-z0-9.]+)*$")


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"`{tool}` is not installed; this test needs Debian's {package} package: "
            + INSTALL_HINT.format(package=package)
        )
    return path


def _docker_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment: variables of the shell running the tests must not stand in for .env.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [_require("docker-compose", "docker-compose"), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            values[name.strip()] = value
    return values


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return _parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def init_script() -> str:
    return INIT_SCRIPT.read_text()


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {name: str(value) for name, value in env.items()}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts; named volumes are left out."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
            if volume.get("type") != "bind":
                continue
        else:
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        if source.startswith((".", "/", "~")):
            mounts.append((source, target))
    return mounts


def _airflow_services(services) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if "build" in s}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    instructions = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line and not line.startswith("#"):
            instruction, _, argument = line.partition(" ")
            instructions.append((instruction, argument.strip()))
    return instructions


def _docker_ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (the last matching rule wins)."""
    ignored = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            ignored = not negate
    return ignored


def test_docker_compose_accepts_the_file_with_the_example_env():
    result = _docker_compose("config", env_file=ENV_EXAMPLE)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    resolved = yaml.safe_load(result.stdout)
    leftover = [m[0] for m in _VARIABLE.finditer(result.stdout)]  # $${...} is an escaped literal, not a variable
    assert not leftover, f"left uninterpolated: {leftover}"
    assert set(resolved["services"]) >= {"postgres", "elasticsearch", "minio", "airflow-init", *LONG_RUNNING_AIRFLOW}


def test_docker_compose_refuses_to_start_without_the_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _docker_compose("config", env_file=empty)
    assert result.returncode != 0
    assert "in .env (copy .env.example)" in result.stderr, result.stderr


def test_stack_runs_airflow_with_local_executor_and_without_celery(services):
    assert not {"redis", "airflow-worker", "flower"} & set(services)
    for name, service in _airflow_services(services).items():
        env = _environment(service)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager"), name
        # Shared secrets, never generated per container: every component must verify the others' tokens.
        for secret in ("AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
            assert env[secret] == f"${{{secret}:?set {secret} in .env (copy .env.example)}}", (name, secret)


def test_every_image_is_pinned_to_a_concrete_version(services):
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} names no image"
        assert "$" not in image, f"{name}: the image must not come from a variable: {image}"
        repository, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{name}: {image} has no tag, which means `latest`"
        assert tag != "latest", f"{name}: {image}"
        assert _VERSION_TAG.match(tag) or _RELEASE_TAG.match(tag), f"{name}: {image} is not a concrete version"
        if repository.endswith("postgres"):
            assert re.match(r"^\d+\.\d+", tag), f"{name}: pin PostgreSQL's minor version too: {image}"


def test_airflow_image_is_airflow_3_3_1_on_python_3_12(services):
    airflow = _airflow_services(services)
    assert set(airflow) >= {"airflow-init", *LONG_RUNNING_AIRFLOW}
    for name, service in airflow.items():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context).resolve() == ROOT, name
        assert "3.3.1-python3.12" in service["image"], name
    base = [arg for instruction, arg in _dockerfile_instructions() if instruction.upper() == "FROM"]
    assert base == [AIRFLOW_BASE_IMAGE]


def test_runtime_requirements_are_installed_with_airflow_constraints_like_mwaa():
    instructions = _dockerfile_instructions()
    copied = [arg.split() for instruction, arg in instructions if instruction.upper() == "COPY"]
    sources = {source for *sources, _ in copied for source in sources if not source.startswith("--")}
    assert sources == {"requirements.txt", CONSTRAINTS}
    for source in sources:
        assert (ROOT / source).is_file(), source
        assert not _docker_ignored(source), f".dockerignore keeps {source} out of the build"
    assert _docker_ignored(".venv"), "the build context must leave out .venv"
    installs = [arg for instruction, arg in instructions if instruction.upper() == "RUN" and "pip install" in arg]
    assert len(installs) == 1
    assert re.search(r"-r \S*requirements\.txt", installs[0])
    assert re.search(rf"-c \S*{re.escape(Path(CONSTRAINTS).name)}", installs[0])
    assert '"apache-airflow==3.3.1"' in installs[0], "pin Airflow so the install cannot change it"


def test_bind_mounted_host_paths_exist_or_are_created_at_runtime(services):
    mounted = set()
    for name, service in services.items():
        for source, target in _bind_mounts(service):
            relative = Path(os.path.normpath(source)).as_posix()
            mounted.add(relative)
            if relative in CREATED_AT_RUNTIME:
                assert not (ROOT / relative).is_file(), f"{name}: {relative} must be a directory"
            else:
                assert (ROOT / relative).exists(), (
                    f"{name}: mounts {source} -> {target}, which is not in the repository"
                )
    assert {"dags", "plugins", "include", *CREATED_AT_RUNTIME} <= mounted


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.get("source", "") if isinstance(volume, dict) else volume.partition(":")[0]
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_files_the_containers_run_exist_in_the_repository(services):
    # A container path under a bind mount maps back to the repository: /opt/airflow/include/x -> include/x.
    for name, service in services.items():
        command = service.get("command") or []
        words = command.split() if isinstance(command, str) else command
        for word in words:
            for source, target in _bind_mounts(service):
                if word.startswith(target.rstrip("/") + "/"):
                    host = ROOT / os.path.normpath(source) / word[len(target.rstrip("/")) + 1 :]
                    assert host.is_file(), f"{name} runs {word}, but {host.relative_to(ROOT)} does not exist"
    assert "/opt/airflow/include/ops/compose-init.sh" in services["airflow-init"]["command"]


def test_every_variable_without_a_default_is_defined_in_env_example(env_example):
    text = COMPOSE_FILE.read_text()
    required = {m["name"] for m in _VARIABLE.finditer(text) if m["op"] in (None, "?", ":?")}
    assert required, "the secrets are expected to come from .env"
    missing = sorted(name for name in required if not env_example.get(name))
    assert not missing, f".env.example lacks {missing}"


def test_env_example_defines_only_variables_the_stack_uses(env_example):
    used = {m["name"] for m in _VARIABLE.finditer(COMPOSE_FILE.read_text())}
    assert set(env_example) <= used, f"unused in docker-compose.yaml: {sorted(set(env_example) - used)}"


def test_env_example_values_work_as_they_are(env_example):
    from cryptography.fernet import Fernet

    Fernet(env_example["AIRFLOW__CORE__FERNET_KEY"].encode())  # raises on a malformed key
    assert env_example["AIRFLOW_UID"].isdigit()
    assert len(env_example["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses passwords shorter than 8 characters"
    # Written into the database URL as it is.
    assert re.fullmatch(r"[A-Za-z0-9_-]+", env_example["POSTGRES_PASSWORD"])
    assert re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", env_example["ES_BACKFILL_S3_BUCKET"])


def test_healthchecks_guard_the_servers_and_airflow_components(services):
    for name in MUST_HAVE_HEALTHCHECK:
        test = (services[name].get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name} has no healthcheck"


def test_services_start_in_order(services):
    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("airflow-init") == {
        "postgres": "service_healthy",
        "elasticsearch": "service_healthy",
        "minio": "service_healthy",
    }
    for name in LONG_RUNNING_AIRFLOW:
        assert conditions(name)["postgres"] == "service_healthy", name
        assert conditions(name)["airflow-init"] == "service_completed_successfully", name
    # With LocalExecutor the tasks run in the scheduler and report to the api-server.
    assert conditions("airflow-scheduler")["airflow-apiserver"] == "service_healthy"


def test_published_ports_listen_on_localhost_only(services):
    for name, service in services.items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_mounted_dirs_match_what_airflow_and_the_dag_expect(services):
    # plugins/es_backfill/config.py finds include/backfill_defaults.json two levels above itself.
    for name, service in _airflow_services(services).items():
        targets = {Path(os.path.normpath(s)).as_posix(): t for s, t in _bind_mounts(service)}
        assert targets["dags"] == "/opt/airflow/dags", name
        assert targets["plugins"] == "/opt/airflow/plugins", name
        assert targets["include"] == "/opt/airflow/include", name
        assert targets["logs"] == "/opt/airflow/logs", name
        password_file = _environment(service)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
        assert password_file.startswith(targets["config"] + "/"), "the api-server must see the file init writes"


def test_init_script_is_strict_bash_and_passes_shellcheck(init_script):
    assert init_script.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in init_script
    result = subprocess.run(
        [_require("shellcheck", "shellcheck"), str(INIT_SCRIPT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_init_script_migrates_and_creates_pool_connections_and_bucket(init_script):
    assert re.search(r"^airflow db migrate$", init_script, re.M)
    assert re.search(r'^airflow pools set "\$\{POOL\}" "\$\{POOL_SLOTS\}"', init_script, re.M)
    assert 'POOL="${ES_BACKFILL_POOL:-es_backfill}"' in init_script  # the DAG's default pool
    assert 'airflow connections add "${conn_id}" --conn-json' in init_script
    defaults = yaml.safe_load(DEFAULTS.read_text())  # JSON is YAML
    for conn_id in (defaults["es_conn_id"], defaults["aws_conn_id"]):
        assert re.search(rf"^replace_connection {conn_id} ", init_script, re.M), conn_id
    assert '"endpoint_url": os.environ["S3_ENDPOINT_URL"]' in init_script
    assert 'S3Hook(aws_conn_id="aws_default")' in init_script
    assert "hook.create_bucket(bucket_name=bucket)" in init_script


def test_init_script_seeds_demo_data_with_the_generator(init_script):
    assert re.search(r"python -m include\.dev\.datagen --es-url \"\$\{ES_URL\}\" --messages", init_script)
    assert (ROOT / "include" / "dev" / "datagen.py").is_file()


def test_init_service_points_the_script_at_the_compose_servers(services):
    env = _environment(services["airflow-init"])
    for variable, service, port in (("ES_URL", "elasticsearch", 9200), ("S3_ENDPOINT_URL", "minio", 9000)):
        url = urlsplit(env[variable])
        assert (url.hostname, url.port) == (service, port), variable
        assert service in services


def test_init_service_passes_every_setting_the_script_requires(services, init_script):
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", init_script))
    assert required >= {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "AIRFLOW_ADMIN_PASSWORD"}
    missing = required - set(_environment(services["airflow-init"]))
    assert not missing, f"airflow-init does not pass {sorted(missing)}"
