#!/usr/bin/env bash
# `make test`'s pytest, in two processes side by side, each with its own servers: the end-to-end tests (a whole
# Airflow with its scheduler and the machine faults, the Quickstart, the demo, MWAA's packaging) mostly wait on
# other processes, so they run beside the others instead of after them. Their log is kept in
# artifacts/end-to-end-tests.log and printed after the other tests' log. Arguments go to both.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit

end_to_end=(
  tests/integration/test_worker_faults.py
  tests/integration/test_scheduler.py
  tests/integration/test_quickstart.py
  tests/integration/test_demo.py
  tests/integration/test_mwaa_deploy.py
  tests/integration/test_mwaa_private_network.py
)
ignore=()
for path in "${end_to_end[@]}"; do ignore+=("--ignore=$path"); done

mkdir -p artifacts
log=artifacts/end-to-end-tests.log
.venv/bin/pytest "$@" "${end_to_end[@]}" >"$log" 2>&1 &
end_to_end_pid=$!
trap 'kill "$end_to_end_pid" 2>/dev/null' INT TERM

.venv/bin/pytest "$@" "${ignore[@]}"
others=$?
wait "$end_to_end_pid"
ended=$?

echo
echo "=== the end-to-end tests (${end_to_end[*]}), from $log ==="
cat "$log"
echo "=== pytest exit codes: the others $others, the end-to-end tests $ended ==="
[[ $others -eq 0 && $ended -eq 0 ]]
