#!/usr/bin/env bash
# Build the rest-root backfill plugin for one Elasticsearch version (if needed) and install it into that
# version's home:
#   install.sh ES_HOME VERSION   ->   ES_HOME/plugins/rest-root/{rest-root-plugin.jar,plugin-descriptor.properties}
# The integ-test-zip distribution of Elasticsearch 8.x and 9.x lacks the rest-root module, so GET / and
# HEAD / would answer 405. Each version builds into its own target/VERSION/ and is rebuilt only when a
# source file is newer than its jar. REST_ROOT_JAVA_HOME: the JDK to build with (17+ for 8.x, 21+ for 9.x).
set -euo pipefail

es_home=${1:?usage: install.sh ES_HOME VERSION}
version=${2:?usage: install.sh ES_HOME VERSION}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case ${version%%.*} in
    8) profile=es8 ;;
    9) profile=es9 ;;
    *) echo "install.sh: no rest-root plugin source for Elasticsearch $version (8.x and 9.x only)" >&2; exit 1 ;;
esac
out=$here/target/$version
jar=$out/rest-root-plugin.jar
descriptor=$out/classes/plugin-descriptor.properties

# Rebuild unless the jar exists and is newer than every source file.
if [[ ! -f $jar || ! -f $descriptor || -n $(find "$here/pom.xml" "$here/src" -newer "$jar" -print -quit) ]]; then
    command -v mvn >/dev/null || { echo "install.sh: mvn not found (apt-get install maven)" >&2; exit 1; }
    JAVA_HOME=${REST_ROOT_JAVA_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64} \
        mvn -q -B -f "$here/pom.xml" -P "$profile" -Delasticsearch.version="$version" package
fi

# Copy only what changed, through a rename: a node already running from this home keeps its open jar.
dest=$es_home/plugins/rest-root
mkdir -p "$dest"
chmod 0755 "$dest"
for file in "$jar" "$descriptor"; do
    target=$dest/$(basename "$file")
    if ! cmp -s "$file" "$target"; then
        tmp=$(mktemp "$dest/.$(basename "$file").XXXXXX")
        cp "$file" "$tmp"
        chmod 0644 "$tmp"
        mv -f "$tmp" "$target"
    fi
done
echo "installed rest-root plugin for Elasticsearch $version into $dest"
