"""The local engine starter's decisions, without starting a node: which archive, which Java, which settings,
where the JVM writes, and when Elasticsearch needs the rest-root plugin."""

from __future__ import annotations

import os
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from include.dev.servers import elasticsearch as devserver
from include.dev.servers.elasticsearch import (
    ElasticsearchStartError,
    RunningCluster,
    fetch_archive,
    find_java_home,
    running_elasticsearch,
    running_engine,
)


def test_running_cluster_defaults_to_elasticsearch():
    assert RunningCluster("http://x:1", "9.5.4", True).engine == "elasticsearch"
    assert RunningCluster(url="http://x:1", version="3.3.2", started_here=True, engine="opensearch").engine == (
        "opensearch"
    )


def test_es_url_is_used_when_no_version_is_asked_for(monkeypatch):
    monkeypatch.setenv("ES_URL", "http://127.0.0.1:9/")
    with running_elasticsearch() as cluster:
        assert cluster == RunningCluster(url="http://127.0.0.1:9", version="external", started_here=False)


def test_unknown_engine_is_refused_before_anything_is_fetched():
    with pytest.raises(ValueError, match="Unknown engine 'solr'"), running_engine("solr", "9.0.0"):
        pass


@pytest.mark.parametrize(
    ("engine", "version", "path"),
    [
        (
            "elasticsearch",
            "7.10.2",
            "org/elasticsearch/distribution/integ-test-zip/elasticsearch/7.10.2/elasticsearch-7.10.2.zip",
        ),
        ("opensearch", "3.3.2", "org/opensearch/distribution/integ-test-zip/opensearch/3.3.2/opensearch-3.3.2.zip"),
    ],
)
def test_a_cached_archive_is_taken_from_the_maven_repository(tmp_path, monkeypatch, engine, version, path):
    archive = tmp_path / path
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"zip")
    monkeypatch.setenv("MAVEN_REPO", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", pytest.fail)  # no mvn call
    assert fetch_archive(version, engine) == archive


def test_two_processes_wanting_one_archive_download_it_once(tmp_path, monkeypatch):
    """``make test``'s two pytest processes start engines side by side, on a machine with an empty ``~/.m2``."""
    archive = tmp_path / "m2" / "org/opensearch/distribution/integ-test-zip/opensearch/3.3.2/opensearch-3.3.2.zip"
    calls = tmp_path / "mvn-calls"
    fake_mvn = tmp_path / "bin" / "mvn"
    fake_mvn.parent.mkdir()
    fake_mvn.write_text(
        f"#!/bin/sh\necho call >> {calls}\nsleep 0.5\nmkdir -p {archive.parent}\n"
        f"printf zip > {archive}.part && mv {archive}.part {archive}\n"
    )
    fake_mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_mvn.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("MAVEN_REPO", str(tmp_path / "m2"))
    monkeypatch.setattr(devserver, "CACHE_DIR", tmp_path / "cache")
    with ThreadPoolExecutor(2) as pool:  # flock locks apart two opens of the lock file even in one process
        fetched = list(pool.map(lambda _: fetch_archive("3.3.2", "opensearch"), range(2)))
    assert fetched == [archive, archive]
    assert calls.read_text() == "call\n"


def _fake_jdk(root: Path, name: str, version: str) -> Path:
    home = root / name
    home.mkdir()
    (home / "release").write_text(f'IMPLEMENTOR="x"\nJAVA_VERSION="{version}"\n')
    return home


@pytest.fixture
def jvm_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(devserver, "JVM_ROOT", tmp_path)
    monkeypatch.delenv("ES_JAVA_HOME", raising=False)
    monkeypatch.delenv("OPENSEARCH_JAVA_HOME", raising=False)
    (tmp_path / "not-a-jdk").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("engine", "version", "expected"),
    [
        ("elasticsearch", "7.10.2", "jdk-21"),
        ("elasticsearch", "8.19.21", "jdk-21"),
        ("elasticsearch", "9.5.4", "jdk-25"),
        ("opensearch", "2.19.6", "jdk-21"),
        ("opensearch", "3.3.2", "jdk-25"),
    ],
)
def test_the_newest_supported_jdk_is_picked(jvm_root, engine, version, expected):
    for name, java in (("jdk-17", "17.0.15"), ("jdk-21", "21.0.2"), ("jdk-25", "25")):
        _fake_jdk(jvm_root, name, java)
    assert find_java_home(version, engine) == jvm_root / expected


def test_only_java_17_serves_the_older_engines_and_the_newer_ones_fail_clearly(jvm_root):
    jdk17 = _fake_jdk(jvm_root, "jdk-17", "17.0.15")
    assert find_java_home("7.17.29", "elasticsearch") == jdk17
    assert find_java_home("2.19.6", "opensearch") == jdk17
    with pytest.raises(ElasticsearchStartError, match=r"OpenSearch 3\.3\.2 needs Java 21\.\.99.*OPENSEARCH_JAVA_HOME"):
        find_java_home("3.3.2", "opensearch")


def test_each_engine_has_its_own_java_home_override(jvm_root, monkeypatch):
    monkeypatch.setenv("OPENSEARCH_JAVA_HOME", "/opt/os-jdk")
    monkeypatch.setenv("ES_JAVA_HOME", "/opt/es-jdk")
    assert find_java_home("3.3.2", "opensearch") == Path("/opt/os-jdk")
    assert find_java_home("9.5.4", "elasticsearch") == Path("/opt/es-jdk")


def _home_with_server_jar(root: Path, version: str, *classes: str) -> Path:
    home = root / f"elasticsearch-{version}"
    (home / "lib").mkdir(parents=True)
    (home / "modules").mkdir()
    with zipfile.ZipFile(home / "lib" / f"elasticsearch-{version}.jar", "w") as jar:
        for name in ("org/elasticsearch/Build.class", *classes):
            jar.writestr(name, b"")
    return home


def test_rest_root_plugin_only_where_the_server_lacks_the_root_endpoint(tmp_path):
    es7 = _home_with_server_jar(tmp_path, "7.17.29", "org/elasticsearch/rest/action/RestMainAction.class")
    es8 = _home_with_server_jar(tmp_path, "8.19.21")
    assert not devserver._needs_rest_root_plugin(es7, "elasticsearch", "7.17.29")
    assert devserver._needs_rest_root_plugin(es8, "elasticsearch", "8.19.21")
    (es8 / "modules" / "rest-root").mkdir()  # a full distribution has the module
    assert not devserver._needs_rest_root_plugin(es8, "elasticsearch", "8.19.21")
    assert not devserver._needs_rest_root_plugin(tmp_path / "opensearch-3.3.2", "opensearch", "3.3.2")


def test_security_is_switched_off_only_where_the_module_exists(tmp_path):
    home = tmp_path / "home"
    (home / "modules").mkdir(parents=True)
    settings = devserver._node_settings(home, tmp_path / "node", 9200, 9300)
    assert settings["http.port"] == "9200" and settings["transport.port"] == "9300"
    assert settings["path.data"] == str(tmp_path / "node" / "data")
    assert settings["cluster.routing.allocation.disk.threshold_enabled"] == "false"
    assert "xpack.security.enabled" not in settings  # 7.10 and OpenSearch refuse an unknown setting
    (home / "modules" / "x-pack-security").mkdir()
    assert devserver._node_settings(home, tmp_path / "node", 9200, 9300)["xpack.security.enabled"] == "false"


def test_jvm_options_write_into_the_nodes_own_directory(tmp_path):
    es7_and_opensearch = (
        "-Xms1g\n"
        "-XX:HeapDumpPath=data\n"
        "-XX:ErrorFile=logs/hs_err_pid%p.log\n"
        "9-:-Xlog:gc*,gc+age=trace,safepoint:file=logs/gc.log:utctime,pid,tags:filecount=32,filesize=64m\n"
        "21-:-javaagent:agent/opensearch-agent.jar\n"
    )
    assert devserver._rewrite_jvm_options(es7_and_opensearch, tmp_path) == (
        "-Xms1g\n"
        f"-XX:HeapDumpPath={tmp_path}/data\n"
        f"-XX:ErrorFile={tmp_path}/logs/hs_err_pid%p.log\n"
        f"9-:-Xlog:gc*,gc+age=trace,safepoint:file={tmp_path}/logs/gc.log:utctime,pid,tags:filecount=32,filesize=64m\n"
        "21-:-javaagent:agent/opensearch-agent.jar\n"
    )
    es8 = "-XX:ErrorFile=hs_err_pid%p.log\n-Xlog:gc*:file=gc.log:utctime\n"
    assert devserver._rewrite_jvm_options(es8, tmp_path) == es8  # Elasticsearch 8+ resolves these in path.logs


def test_rest_root_install_script_refuses_a_major_it_has_no_source_for(tmp_path):
    result = subprocess.run(
        ["bash", str(devserver.REST_ROOT_PLUGIN / "install.sh"), str(tmp_path), "7.17.29"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "8.x and 9.x only" in result.stderr
