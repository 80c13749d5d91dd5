"""``make airflow``: a local Airflow for README's Quickstart, without Docker, until Ctrl-C (or SIGTERM).

The same Airflow the scheduler tests run (:mod:`include.dev.servers.airflow_stack`): api-server, scheduler
and dag-processor with the LocalExecutor, which enforces pools, on a throwaway PostgreSQL (Debian's
``postgresql`` package), reading this repository's ``dags/`` and ``plugins/``. It waits until the DAG is parsed,
then prints the UI's address and the ``export`` line that points Airflow's CLI at it, for another shell. The
simple auth manager makes every user an admin: for this machine only. Everything it made is deleted on exit.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys


def main() -> None:
    from include.dev.servers.airflow_stack import running_airflow
    from include.dev.servers.postgres import running_postgres
    from include.dev.servers.signals import stop_on_signals

    stop_on_signals()  # SIGTERM (from a test, or kill) ends the run like Ctrl-C
    homes = []
    try:
        with running_postgres() as db, running_airflow(db) as airflow:
            homes.append(airflow.home)
            airflow.wait_for("the es_backfill DAG to be parsed", lambda: airflow.has_dag("es_backfill"))
            print(
                f"\nReady: Airflow at {airflow.url} (the UI; every user is an admin), the es_backfill DAG parsed.\n"
                "Paste into the shell you run the Quickstart's commands in (it points Airflow's CLI here):\n\n"
                f"export {_exports(airflow.env)}\n\nthen follow README's Quickstart from step 4. Ctrl-C stops "
                "Airflow.",
                flush=True,
            )
            signal.pause()
    except KeyboardInterrupt:
        print("Stopped Airflow", file=sys.stderr)
    finally:
        for home in homes:  # its logs and configuration, once its components have stopped
            shutil.rmtree(home, ignore_errors=True)


def _exports(env: dict[str, str]) -> str:
    """What Airflow's CLI needs to reach this Airflow (its home, database, folders), not the connections."""
    wanted = {
        name: value
        for name, value in env.items()
        if (name.startswith("AIRFLOW") or name == "PYTHONPATH")
        and not name.startswith("AIRFLOW_CONN_")
        and os.environ.get(name) != value
    }
    return " ".join(f"{name}={shlex.quote(value)}" for name, value in sorted(wanted.items()))


if __name__ == "__main__":
    main()
