#!/usr/bin/env bash
# Installs the Debian packages the tests use, if missing:
#   maven          fetches Elasticsearch's server archive and builds its root-endpoint plugin
#   postgresql     Airflow's metadata database in the scheduler-level test
#   chromium       the headless browser of the UI test
#   docker-compose validates docker-compose.yaml statically (no Docker engine needed)
#   (and ShellCheck, which lints the shell scripts)
set -euo pipefail

declare -A wanted=(
    [mvn]=maven
    [/usr/lib/postgresql]=postgresql
    [chromium]=chromium
    [docker-compose]=docker-compose
    [shellcheck]=shellcheck
)
missing=()
for probe in "${!wanted[@]}"; do
    if [[ $probe == /* ]]; then [[ -e $probe ]] || missing+=("${wanted[$probe]}")
    else command -v "$probe" >/dev/null || missing+=("${wanted[$probe]}"); fi
done
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) -ne 0 ]]; then
    echo "Missing Debian packages: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
apt-get update -qq
# Without recommends: docker-compose would otherwise pull in docker.io. Chromium still gets its fonts.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-liberation >/dev/null
