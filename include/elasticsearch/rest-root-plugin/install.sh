#!/usr/bin/env bash
# Build the rest-root backfill plugin (if needed) and install it into an Elasticsearch home:
#   install.sh ES_HOME   ->   ES_HOME/plugins/rest-root/{rest-root-plugin.jar,plugin-descriptor.properties}
# The integ-test-zip distribution lacks the rest-root module, so GET / and HEAD / would answer 405.
set -euo pipefail

es_home=${1:?usage: install.sh ES_HOME}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
jar=$here/target/rest-root-plugin.jar
descriptor=$here/target/classes/plugin-descriptor.properties

# Rebuild unless the jar exists and is newer than every source file.
if [[ ! -f $jar || ! -f $descriptor || -n $(find "$here/pom.xml" "$here/src" -newer "$jar" -print -quit) ]]; then
    command -v mvn >/dev/null || { echo "install.sh: mvn not found (apt-get install maven)" >&2; exit 1; }
    JAVA_HOME=${REST_ROOT_JAVA_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64} \
        mvn -q -B -f "$here/pom.xml" package
fi

dest=$es_home/plugins/rest-root
mkdir -p "$dest"
cp "$jar" "$descriptor" "$dest/"
chmod 0755 "$dest"
chmod 0644 "$dest"/*
echo "installed rest-root plugin into $dest"
