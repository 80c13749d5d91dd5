"""The plugins folder as Airflow's plugin manager sees it: our package is importable, never loaded as plugins.

Airflow imports every ``.py`` file under ``plugins/`` as a top-level module named after the file, in the
api-server, scheduler, dag-processor, triggerer and every task process. ``plugins/.airflowignore`` keeps it
off ``es_backfill``, whose modules would otherwise load a second time as ``config``, ``source``, ``plan``...
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

# Runs both plugin managers (the core one of the api-server and scheduler, the Task SDK one of task
# processes), then prints the modules loaded from the plugins folder under a name outside our package.
PROBE = """
import json, sys
from airflow import plugins_manager
from airflow.sdk import plugins_manager as sdk_plugins_manager

plugins_manager.ensure_plugins_loaded()
sdk_plugins_manager._get_plugins()
import es_backfill.config  # the DAG's imports still work

folder = sys.argv[1]
print(json.dumps(sorted(
    name for name, module in list(sys.modules.items())
    if (getattr(module, "__file__", None) or "").startswith(folder) and not name.startswith("es_backfill")
)))
"""


def _modules_loaded_outside_the_package(plugins: Path, tmp_path: Path) -> list[str]:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "PYTHONPATH": str(plugins),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(plugins)], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_plugin_managers_load_no_module_of_ours_under_a_top_level_name(tmp_path):
    assert _modules_loaded_outside_the_package(PLUGINS, tmp_path) == []


def test_without_the_ignore_file_the_plugin_manager_would_load_our_modules_twice(tmp_path):
    bare = tmp_path / "plugins"
    shutil.copytree(PLUGINS, bare, ignore=shutil.ignore_patterns(".airflowignore", "__pycache__"))
    loaded = _modules_loaded_outside_the_package(bare, tmp_path)
    assert {"config", "source", "plan", "cli"} <= set(loaded)
