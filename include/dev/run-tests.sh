#!/usr/bin/env bash
# `make test`'s pytest, in two processes side by side, each with its own servers: the tests on a whole Airflow
# (scheduler, machine faults, Quickstart) mostly wait on it, so they run beside the others instead of after them.
# Their log is kept in artifacts/airflow-tests.log and printed after the other tests' log. Arguments go to both.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit

airflow_tests=(
  tests/integration/test_worker_faults.py
  tests/integration/test_scheduler.py
  tests/integration/test_quickstart.py
)
ignore=()
for path in "${airflow_tests[@]}"; do ignore+=("--ignore=$path"); done

mkdir -p artifacts
log=artifacts/airflow-tests.log
.venv/bin/pytest "$@" "${airflow_tests[@]}" >"$log" 2>&1 &
airflow_pid=$!
trap 'kill "$airflow_pid" 2>/dev/null' INT TERM

.venv/bin/pytest "$@" "${ignore[@]}"
others=$?
wait "$airflow_pid"
airflow=$?

echo
echo "=== the tests on a whole Airflow (${airflow_tests[*]}), from $log ==="
cat "$log"
echo "=== pytest exit codes: the others $others, on a whole Airflow $airflow ==="
[[ $others -eq 0 && $airflow -eq 0 ]]
