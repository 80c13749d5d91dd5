"""Deploying to an MWAA environment without internet: every wheel travels in plugins.zip.

The wheels are downloaded for real (PyPI, as the deploy tool does), then installed from the unpacked
plugins.zip into a clean Python 3.12 virtualenv (MWAA's Python) with every network route to an index
closed, and the DAG's modules are imported there.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from include.ops.mwaa_deploy import (
    AIRFLOW_VERSION,
    MWAA_PLUGINS_DIR,
    PYTHON_VERSION,
    build_plugins_zip,
    build_requirements,
    download_wheels,
)

ROOT = Path(__file__).resolve().parents[2]


def _python_312() -> str:
    """MWAA's Python: one installed by pyenv, or python3.12 on PATH (pyenv's shim is skipped if it cannot run)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = [*sorted(map(str, pyenv.glob("versions/3.12*/bin/python3.12"))), shutil.which(f"python{PYTHON_VERSION}")]
    for python in filter(None, found):
        probe = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                               text=True, timeout=60, check=False)  # fmt: skip
        if probe.stdout.strip() == "(3, 12)":
            return python
    pytest.fail(f"no Python {PYTHON_VERSION} (MWAA's) found: install one, e.g. pyenv install {PYTHON_VERSION}")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> list[Path]:
    return download_wheels(ROOT, tmp_path_factory.mktemp("wheels"))


def test_requirements_for_a_private_network_send_pip_to_the_wheels_in_plugins_zip_only():
    lines = build_requirements(ROOT, private_network=True).decode().splitlines()
    assert lines[:3] == [
        f"--find-links {MWAA_PLUGINS_DIR}/wheels",
        "--no-index",
        f'--constraint "{MWAA_PLUGINS_DIR}/wheels/airflow-{AIRFLOW_VERSION}-py{PYTHON_VERSION}.txt"',
    ]
    assert not [line for line in lines if "://" in line]
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert [line for line in lines[3:] if line and line[0] != "#"] == pins


def test_plugins_zip_with_the_wheels_installs_into_a_clean_python_312_without_any_index(wheels, tmp_path):
    names = {wheel.name.split("-")[0].lower() for wheel in wheels}
    assert {"apache_airflow", "apache_airflow_providers_amazon", "elasticsearch", "orjson"} <= names
    assert not [w.name for w in wheels if "macosx" in w.name or "win" in w.name.rsplit("-", 1)[-1]]

    plugins = tmp_path / "usr" / "local" / "airflow" / "plugins"  # as MWAA unpacks it
    with zipfile.ZipFile(io.BytesIO(build_plugins_zip(ROOT, wheels))) as archive:
        archive.extractall(plugins)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        build_requirements(ROOT, private_network=True).decode().replace(MWAA_PLUGINS_DIR, str(plugins))
    )

    venv = tmp_path / "venv"
    subprocess.run([_python_312(), "-m", "venv", str(venv)], check=True, timeout=300)
    offline = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        # Any attempt to reach an index fails: none is allowed, and every proxy is a closed port.
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir", "-r", str(requirements)],
        env=offline, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    check = (
        "import airflow, elasticsearch, orjson; import es_backfill.extract, es_backfill.plan, es_backfill.hooks; "
        "from airflow.providers.amazon.aws.hooks.s3 import S3Hook; "
        "print(airflow.__version__, elasticsearch.__versionstr__, orjson.__version__)"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check], env={**offline, "PYTHONPATH": str(plugins),
        "AIRFLOW_HOME": str(tmp_path / "airflow")}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    assert done.stdout.split() == [AIRFLOW_VERSION, pins["elasticsearch"], pins["orjson"]]
