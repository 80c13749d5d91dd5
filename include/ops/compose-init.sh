#!/usr/bin/env bash
# One-time setup of the local docker compose stack; the `airflow-init` service runs it.
#
# Runs in the Airflow image as root, through the image's entrypoint (which waits for the metadata
# database first), after PostgreSQL, Elasticsearch and MinIO report healthy. Every step is
# idempotent, because `docker compose up` runs this again each time the stack starts:
#
#   1. migrate the metadata database;
#   2. write the admin's password for Airflow's simple auth manager;
#   3. create the `es_backfill` pool;
#   4. create (or replace) the `elasticsearch_default` and `aws_default` connections;
#   5. create the output bucket in MinIO;
#   6. seed Elasticsearch with synthetic messages, unless the messages index exists already;
#   7. hand logs/ and config/ to the Airflow user (AIRFLOW_UID).
#
# Settings come from the environment (docker-compose.yaml passes them from .env); the defaults
# are the compose service names, so the same script also runs against other servers.
set -euo pipefail

# The repository root: /opt/airflow in the container, where include/ is mounted.
PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${PROJECT_DIR}"

ES_URL="${ES_URL:-http://elasticsearch:9200}"
S3_ENDPOINT_URL="${S3_ENDPOINT_URL:-http://minio:9000}"
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set: copy .env.example to .env}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set: copy .env.example to .env}"
S3_REGION="${S3_REGION:-us-east-1}"
BUCKET="${ES_BACKFILL_S3_BUCKET:-es-backfill}"
POOL="${ES_BACKFILL_POOL:-es_backfill}"
POOL_SLOTS="${ES_BACKFILL_POOL_SLOTS:-4}"
SEED_MESSAGES="${SEED_MESSAGES:-5000}"
SEED_START="${SEED_START:-2024-03-01}"
SEED_END="${SEED_END:-2024-03-08}"
SEED_FORCE="${SEED_FORCE:-false}"
# The messages index of include/backfill_defaults.json, which the generator fills.
MESSAGES_INDEX="messages"
WAIT_TIMEOUT_S="${WAIT_TIMEOUT_S:-120}"
# The Python snippets below read these.
export ES_URL S3_ENDPOINT_URL S3_REGION MINIO_ROOT_USER MINIO_ROOT_PASSWORD

step() { printf '\n==> %s\n' "$*"; }

# Poll a URL until it answers with an HTTP status below 500 (MinIO answers 403 to anonymous
# requests, which still proves it is up). docker compose waits for the healthchecks already;
# this only makes the script safe to run on its own.
wait_for() {
  local name="$1" url="$2" deadline=$((SECONDS + WAIT_TIMEOUT_S)) code
  until code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "${url}" 2>/dev/null)" \
    && [[ "${code}" =~ ^[1-4][0-9][0-9]$ ]]; do
    if ((SECONDS >= deadline)); then
      echo "ERROR: ${name} did not answer at ${url} within ${WAIT_TIMEOUT_S}s" >&2
      exit 1
    fi
    sleep 2
  done
  echo "${name} is up at ${url}"
}

# Replace a connection, so a changed .env takes effect on the next `docker compose up`
# (`airflow connections add` refuses to overwrite one that exists).
replace_connection() {
  local conn_id="$1" conn_json="$2"
  if airflow connections get "${conn_id}" >/dev/null 2>&1; then
    airflow connections delete "${conn_id}"
  fi
  airflow connections add "${conn_id}" --conn-json "${conn_json}"
}

wait_for "Elasticsearch" "${ES_URL}"
wait_for "MinIO" "${S3_ENDPOINT_URL}/minio/health/live"

step "Migrating the Airflow metadata database"
airflow db migrate

# Airflow 3's simple auth manager reads users from [core] simple_auth_manager_users and their
# passwords from a JSON file; without one it would invent a password and print it in the
# api-server's log. Writing the file here gives the admin the password from .env.
if [[ -n "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}" ]]; then
  step "Writing the password of Airflow user '${AIRFLOW_ADMIN_USERNAME:-admin}'"
  : "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is not set: copy .env.example to .env}"
  mkdir -p "$(dirname "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE}")"
  python - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
user = os.environ.get("AIRFLOW_ADMIN_USERNAME") or "admin"
with open(path, "w") as file:
    file.write(json.dumps({user: os.environ["AIRFLOW_ADMIN_PASSWORD"]}) + "\n")
os.chmod(path, 0o600)
PY
fi

step "Creating pool '${POOL}' with ${POOL_SLOTS} slots"
airflow pools set "${POOL}" "${POOL_SLOTS}" "es_backfill windows reading Elasticsearch at once"

step "Creating connections elasticsearch_default and aws_default"
# JSON is built by Python so that any character in a password is quoted correctly.
es_conn="$(python -c '
import json, os
from urllib.parse import urlsplit
url = urlsplit(os.environ["ES_URL"])
print(json.dumps({"conn_type": "elasticsearch", "host": url.hostname, "port": url.port or 9200,
                  "schema": url.scheme or "http"}))
')"
aws_conn="$(python -c '
import json, os
print(json.dumps({"conn_type": "aws", "login": os.environ["MINIO_ROOT_USER"],
                  "password": os.environ["MINIO_ROOT_PASSWORD"],
                  "extra": {"endpoint_url": os.environ["S3_ENDPOINT_URL"],
                            "region_name": os.environ["S3_REGION"]}}))
')"
replace_connection elasticsearch_default "${es_conn}"
replace_connection aws_default "${aws_conn}"

step "Creating bucket '${BUCKET}' through aws_default"
# The Amazon provider's S3Hook with the connection just stored, so this also proves that the
# connection the DAG uses works. Outside a task, Airflow 3 hooks do not read connections from
# the metadata database, so the same JSON is handed over as AIRFLOW_CONN_AWS_DEFAULT.
AIRFLOW_CONN_AWS_DEFAULT="${aws_conn}" BUCKET="${BUCKET}" python - <<'PY'
import os

from airflow.providers.amazon.aws.hooks.s3 import S3Hook

bucket = os.environ["BUCKET"]
hook = S3Hook(aws_conn_id="aws_default")
if hook.check_for_bucket(bucket):
    print(f"Bucket {bucket} exists")
else:
    hook.create_bucket(bucket_name=bucket)
    print(f"Created bucket {bucket}")
PY

step "Seeding Elasticsearch with demo data"
index_status="$(curl -sS -o /dev/null -w '%{http_code}' "${ES_URL}/${MESSAGES_INDEX}")"
if [[ "${index_status}" == "200" && "${SEED_FORCE}" != "true" ]]; then
  # The generator only creates indices (it never touches one that exists): keep what a previous start loaded.
  echo "Index '${MESSAGES_INDEX}' exists: not seeding again (set SEED_FORCE=true to reload it)"
else
  if [[ "${index_status}" == "200" ]]; then
    # SEED_FORCE=true on this stack's own Elasticsearch: drop the demo indices, then load them afresh.
    curl -sS -X DELETE "${ES_URL}/messages,history,status,audit?ignore_unavailable=true" >/dev/null
  fi
  python -m include.dev.datagen --es-url "${ES_URL}" --messages "${SEED_MESSAGES}" \
    --start "${SEED_START}" --end "${SEED_END}"
fi

# The Airflow services run as AIRFLOW_UID (group 0): give them the directories this root
# process may have created or written to, as Airflow's own compose file does.
if [[ "$(id -u)" == "0" && -n "${AIRFLOW_UID:-}" ]]; then
  step "Handing logs/ and config/ to user ${AIRFLOW_UID}:0"
  mkdir -p "${AIRFLOW_HOME:-/opt/airflow}/logs" "${AIRFLOW_HOME:-/opt/airflow}/config"
  chown -R "${AIRFLOW_UID}:0" "${AIRFLOW_HOME:-/opt/airflow}/logs" "${AIRFLOW_HOME:-/opt/airflow}/config"
fi

step "Ready: open http://localhost:${AIRFLOW_PORT:-8080} and trigger es_backfill"
