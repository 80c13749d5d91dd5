"""A real OpenSearch node with the security plugin on: TLS, users, roles, on this machine without Docker.

The plain engines of :mod:`include.dev.servers.elasticsearch` have no security at all, so nothing there
can show that the reader works with the least privilege the README names, over HTTPS with a private CA.
This one can. It takes the same integ-test archive from Maven Central and the security plugin
(``org.opensearch.plugin:opensearch-security:<version>.0:zip``), installs the plugin once into its own
cached copy of the distribution (``/var/tmp/es-backfill/opensearch-<version>-security``), and starts a
node through :func:`~include.dev.servers.elasticsearch.run_node` (free ports, ``nobody``, a temporary
directory), with:

* a throwaway root CA, made with ``openssl`` at start time in a temporary directory that lives as long
  as the node (its config directory gets copies), a node certificate for ``127.0.0.1``/``localhost``
  (HTTP and transport) and an admin certificate (``plugins.security.authcz.admin_dn``, for
  ``securityadmin`` or client-certificate checks);
* two internal users with random passwords: ``admin`` (``all_access``) for seeding and checks, and
  ``backfill_reader``, whose only role is ``backfill_read``: by default ``cluster:monitor/main`` and,
  on the index patterns the caller names, :data:`READER_INDEX_ACTIONS`. Both the start and
  :meth:`SecuredCluster.set_reader_role` (the security REST API, no restart) take other permissions,
  so a test can take one away at a time.

The security index is created from these files on the first start
(``plugins.security.allow_default_init_securityindex``); until then the node answers 503, which the
health check waits out.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch

from include.dev.servers.elasticsearch import (
    CACHE_DIR,
    ElasticsearchStartError,
    _install_lock,
    _make_world_readable,
    elasticsearch_connection_uri,
    fetch_archive,
    fetch_maven_zip,
    find_java_home,
    install,
    run_node,
)

log = logging.getLogger(__name__)

# The security plugin's newest 2.x on Maven Central: there is no 2.19.6.0, so not ENGINES' 2.19.6.
SECURED_OPENSEARCH_VERSION = "2.19.4"
SECURITY_PLUGIN_GROUP = "org.opensearch.plugin"
SECURITY_PLUGIN = "opensearch-security"

ADMIN_USER = "admin"
READER_USER = "backfill_reader"
READER_ROLE = "backfill_read"
# What the reader needs (README, "Least privilege"): GET / ...
READER_CLUSTER_PERMISSIONS: tuple[str, ...] = ("cluster:monitor/main",)
# ... and, on its indices: searches and counts (a count is a search), opening and closing a point in time,
# field mappings (the plan's checks) and an index's mappings (GET /<index>/_mapping, for a field in no
# field mapping).
READER_INDEX_ACTIONS: tuple[str, ...] = (
    "indices:data/read/search",
    "indices:data/read/point_in_time/create",
    "indices:data/read/point_in_time/delete",
    "indices:admin/mappings/fields/get*",
    "indices:admin/mappings/get",
)

NODE_DN = "CN=es-backfill-node,O=es-backfill"
ADMIN_DN = "CN=es-backfill-admin,O=es-backfill"
_CERT_DAYS = 7
_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[node]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[admin]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
# What the node's config directory gets of them: its certificate and key, and the CA.
_NODE_FILES = ("root-ca.pem", "node.pem", "node-key.pem")
REQUEST_TIMEOUT_S = 30


class SecuredClusterStartError(ElasticsearchStartError):
    """The secured OpenSearch node could not be installed, configured or started."""


@dataclass(frozen=True)
class Credentials:
    """An internal user of the node; the password stays out of ``repr``."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ReaderRole:
    """The permissions of ``backfill_read``, the reader's only role."""

    index_patterns: tuple[str, ...]
    cluster_permissions: tuple[str, ...] = READER_CLUSTER_PERMISSIONS
    index_actions: tuple[str, ...] = READER_INDEX_ACTIONS

    def body(self) -> dict[str, Any]:
        """The role as roles.yml and the security REST API spell it."""
        return {
            "cluster_permissions": list(self.cluster_permissions),
            "index_permissions": [
                {"index_patterns": list(self.index_patterns), "allowed_actions": list(self.index_actions)}
            ],
        }


@dataclass(frozen=True)
class SecuredCluster:
    """A running secured node: ``url`` is ``https://127.0.0.1:PORT``, its certificate signed by ``ca_path``."""

    url: str
    version: str
    ca_path: Path
    admin: Credentials
    reader: Credentials
    reader_role: ReaderRole  # the role the node started with; set_reader_role's defaults
    admin_cert_path: Path
    admin_key_path: Path
    pid: int
    engine: str = "opensearch"

    def client(self, credentials: Credentials | None, *, ca_certs: Path | None = None, **kwargs: Any) -> OpenSearch:
        """An opensearch-py client verifying the node's certificate against ``ca_certs`` (default: our CA)."""
        return OpenSearch(
            [self.url],
            http_auth=(credentials.username, credentials.password) if credentials else None,
            verify_certs=True,
            ca_certs=str(ca_certs or self.ca_path),
            timeout=REQUEST_TIMEOUT_S,
            **kwargs,
        )

    def admin_client(self) -> OpenSearch:
        return self.client(self.admin)

    def reader_client(self) -> OpenSearch:
        return self.client(self.reader)

    def set_reader_role(
        self,
        cluster_permissions: Sequence[str] | None = None,
        index_actions: Sequence[str] | None = None,
        index_patterns: Sequence[str] | None = None,
    ) -> ReaderRole:
        """Replace ``backfill_read`` on the running node (the security REST API, as admin; effective at
        once); what is not given is what the node started with, so no arguments restore it."""
        role = ReaderRole(
            index_patterns=tuple(self.reader_role.index_patterns if index_patterns is None else index_patterns),
            cluster_permissions=tuple(
                self.reader_role.cluster_permissions if cluster_permissions is None else cluster_permissions
            ),
            index_actions=tuple(self.reader_role.index_actions if index_actions is None else index_actions),
        )
        with self.admin_client() as client:
            client.security.create_role(role=READER_ROLE, body=role.body())
        log.info("Role %s on %s is now %s", READER_ROLE, self.url, role)
        return role

    @contextlib.contextmanager
    def reader_role_changed(
        self,
        cluster_permissions: Sequence[str] | None = None,
        index_actions: Sequence[str] | None = None,
        index_patterns: Sequence[str] | None = None,
    ) -> Iterator[ReaderRole]:
        """:meth:`set_reader_role` for the ``with`` block; the node's own role again afterwards."""
        role = self.set_reader_role(cluster_permissions, index_actions, index_patterns)
        try:
            yield role
        finally:
            self.set_reader_role()

    def connection_json(self, user: Credentials | None = None) -> str:
        """The Airflow connection (JSON) for ``user`` (default the reader): basic auth over HTTPS with our CA."""
        user = user or self.reader
        return elasticsearch_connection_uri(
            self.url, login=user.username, password=user.password, ca_certs=str(self.ca_path), verify_certs=True
        )


def install_secured(version: str = SECURED_OPENSEARCH_VERSION) -> Path:
    """The OpenSearch ``version`` distribution with the security plugin, in its own cached copy (made once)."""
    base = install(fetch_archive(version, "opensearch"), version, "opensearch")
    plugin_zip = fetch_maven_zip(SECURITY_PLUGIN_GROUP, SECURITY_PLUGIN, f"{version}.0", "OpenSearch security plugin")
    name = f"opensearch-{version}-security"
    home = CACHE_DIR / name
    with _install_lock(name):
        if (home / "plugins" / SECURITY_PLUGIN / "plugin-descriptor.properties").is_file():
            return home
        staging = Path(tempfile.mkdtemp(dir=CACHE_DIR))
        try:
            shutil.copytree(base, staging / name, symlinks=True)
            java_home = str(find_java_home(version, "opensearch"))
            _run(
                [str(staging / name / "bin" / "opensearch-plugin"), "install", "--batch", plugin_zip.as_uri()],
                f"Installing {plugin_zip.name} into OpenSearch {version}",
                env={**os.environ, "OPENSEARCH_JAVA_HOME": java_home, "JAVA_HOME": java_home},
                timeout_s=600,
            )
            if home.exists():  # a partial copy from an interrupted run
                shutil.rmtree(home)
            (staging / name).rename(home)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _make_world_readable(home)
        log.info("Installed the security plugin %s into %s", plugin_zip.name, home)
    return home


def _run(
    cmd: Sequence[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout_s: int = 120
) -> None:
    result = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise SecuredClusterStartError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )


def _make_certificates(directory: Path) -> None:
    """Into ``directory``: a throwaway root CA (root-ca.pem, ca-key.pem), node.pem/node-key.pem and
    admin.pem/admin-key.pem signed by it; keys unencrypted PKCS#8 (what ``genpkey`` writes)."""
    (directory / "openssl.cnf").write_text(_OPENSSL_CONFIG)

    def openssl(*args: str) -> None:
        _run(["openssl", *args], f"openssl {args[0]}", cwd=directory)

    def key(name: str) -> None:
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", name)

    key("ca-key.pem")
    openssl(
        "req", "-new", "-x509", "-config", "openssl.cnf", "-extensions", "ca", "-key", "ca-key.pem",
        "-subj", "/O=es-backfill/CN=es-backfill throwaway test CA", "-days", str(_CERT_DAYS), "-out", "root-ca.pem",
    )  # fmt: skip
    for name, dn in (("node", NODE_DN), ("admin", ADMIN_DN)):
        subject = "/" + "/".join(reversed(dn.split(",")))  # RFC 2253 lists the most specific part first
        key(f"{name}-key.pem")
        openssl(
            "req", "-new", "-config", "openssl.cnf", "-key", f"{name}-key.pem", "-subj", subject, "-out", f"{name}.csr"
        )
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "root-ca.pem", "-CAkey", "ca-key.pem",
            "-set_serial", str(secrets.randbits(63)), "-days", str(_CERT_DAYS),
            "-extfile", "openssl.cnf", "-extensions", name, "-out", f"{name}.pem",
        )  # fmt: skip


def _security_settings() -> dict[str, str]:
    """The plugin's settings in opensearch.yml: TLS on both layers with our certificates (paths relative to the
    config directory), who is a node and who is admin, and the security index made from our files."""
    settings = {
        f"plugins.security.ssl.{layer}.{name}": path
        for layer in ("transport", "http")
        for name, path in (
            ("pemcert_filepath", "node.pem"),
            ("pemkey_filepath", "node-key.pem"),
            ("pemtrustedcas_filepath", "root-ca.pem"),
        )
    }
    return {
        **settings,
        "plugins.security.ssl.transport.enforce_hostname_verification": "false",
        "plugins.security.ssl.http.enabled": "true",
        "plugins.security.authcz.admin_dn": json.dumps([ADMIN_DN]),
        "plugins.security.nodes_dn": json.dumps([NODE_DN]),
        "plugins.security.allow_default_init_securityindex": "true",
        "plugins.security.restapi.roles_enabled": json.dumps(["all_access"]),
        "plugins.security.audit.type": "noop",  # no audit sink; unset, the plugin logs an error at start
    }


def _password_hashes(home: Path, java_home: Path, passwords: Sequence[str]) -> list[str]:
    """bcrypt hashes of ``passwords`` by the plugin's own tool (each from an environment variable, so no
    password shows in a process list); the hashing JVMs run side by side."""
    hasher = home / "plugins" / SECURITY_PLUGIN / "tools" / "hash.sh"
    procs = [
        subprocess.Popen(
            ["bash", str(hasher), "-env", "ES_BACKFILL_PASSWORD"],
            env={**os.environ, "OPENSEARCH_JAVA_HOME": str(java_home), "ES_BACKFILL_PASSWORD": password},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for password in passwords
    ]
    try:
        results = [(proc, *proc.communicate(timeout=120)) for proc in procs]
    except subprocess.TimeoutExpired:
        raise SecuredClusterStartError(f"{hasher} did not finish in 120s") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    hashes = []
    for proc, out, err in results:
        lines = out.strip().splitlines()
        if proc.returncode != 0 or not lines or not lines[-1].startswith("$2"):
            raise SecuredClusterStartError(f"{hasher} failed (exit {proc.returncode}): {out[-1000:]}{err[-1000:]}")
        hashes.append(lines[-1])
    return hashes


def _write_security_config(directory: Path, users: dict[str, tuple[str, str]], role: ReaderRole) -> None:
    """Our users, roles and mappings over the plugin's defaults (its demo users and its mapping of every user
    to ``own_index`` go). ``users``: name -> (bcrypt hash, role). JSON is YAML, so the files are JSON."""

    def write(name: str, kind: str, entries: dict[str, Any]) -> None:
        (directory / name).write_text(json.dumps({"_meta": {"type": kind, "config_version": 2}, **entries}, indent=2))

    write("internal_users.yml", "internalusers", {user: {"hash": hashed} for user, (hashed, _) in users.items()})
    write("roles.yml", "roles", {READER_ROLE: role.body()})
    mapping: dict[str, list[str]] = {}
    for user, (_, mapped_role) in users.items():
        mapping.setdefault(mapped_role, []).append(user)
    write("roles_mapping.yml", "rolesmapping", {name: {"users": names} for name, names in mapping.items()})


def _owner_only(config: Path) -> None:
    """What the plugin asks of its config directory (0700 directories, 0600 files; it warns about every one
    that is not); the node's user becomes the owner when :func:`run_node` hands the directory over."""
    for directory, _, files in os.walk(config):
        Path(directory).chmod(0o700)
        for name in files:
            (Path(directory) / name).chmod(0o600)


def _opener(ca_path: Path, credentials: Credentials) -> urllib.request.OpenerDirector:
    """urllib requests over TLS verified against ``ca_path``, with basic auth (the startup health checks)."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(ca_path)))
    )
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    opener.addheaders = [("Authorization", f"Basic {token}")]
    return opener


@contextlib.contextmanager
def running_secured_opensearch(
    reader_index_patterns: Sequence[str],
    version: str = SECURED_OPENSEARCH_VERSION,
    *,
    reader_cluster_permissions: Sequence[str] = READER_CLUSTER_PERMISSIONS,
    reader_index_actions: Sequence[str] = READER_INDEX_ACTIONS,
) -> Iterator[SecuredCluster]:
    """Start a single OpenSearch ``version`` node with the security plugin, TLS on HTTP and transport, and the
    users ``admin`` and ``backfill_reader`` (role ``backfill_read``: ``reader_cluster_permissions`` and
    ``reader_index_actions`` on ``reader_index_patterns``); yield it once the security index is initialised
    and the cluster is healthy; stop it and remove its directory (certificates included) on exit."""
    if not reader_index_patterns or isinstance(reader_index_patterns, str):
        raise ValueError("reader_index_patterns must be a non-empty list of index patterns, e.g. ['messages*']")
    role = ReaderRole(
        index_patterns=tuple(reader_index_patterns),
        cluster_permissions=tuple(reader_cluster_permissions),
        index_actions=tuple(reader_index_actions),
    )
    home = install_secured(version)
    java_home = find_java_home(version, "opensearch")
    admin = Credentials(ADMIN_USER, secrets.token_urlsafe(18))
    reader = Credentials(READER_USER, secrets.token_urlsafe(18))
    admin_hash, reader_hash = _password_hashes(home, java_home, [admin.password, reader.password])
    users = {ADMIN_USER: (admin_hash, "all_access"), READER_USER: (reader_hash, READER_ROLE)}
    # The certificates live as long as the node (the tests trust the CA); the node gets copies in its config.
    with tempfile.TemporaryDirectory(prefix="es-backfill-secured-certs-") as certs_dir:
        certs = Path(certs_dir)
        _make_certificates(certs)
        certs.chmod(0o755)  # the CA is for everyone; the keys stay the owner's (genpkey writes them 0600)

        def prepare(config: Path) -> None:
            for pem in _NODE_FILES:
                shutil.copy(certs / pem, config / pem)
            _write_security_config(config / "opensearch-security", users, role)
            _owner_only(config)

        with run_node(
            "opensearch",
            version,
            home,
            settings=_security_settings(),
            prepare_config=prepare,
            scheme="https",
            opener=_opener(certs / "root-ca.pem", admin),
            description=" (security, TLS)",
        ) as node:
            yield SecuredCluster(
                url=node.url,
                version=node.version,
                ca_path=certs / "root-ca.pem",
                admin=admin,
                reader=reader,
                reader_role=role,
                admin_cert_path=certs / "admin.pem",
                admin_key_path=certs / "admin-key.pem",
                pid=node.pid,
            )
