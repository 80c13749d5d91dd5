"""Airflow connections to clients: the only module that needs Airflow's hook classes.

:class:`SearchReaderHook` turns an Airflow connection of the ``elasticsearch`` type (the one
the Elasticsearch provider registers; default ``elasticsearch_default``) into the reader for
whatever engine it points at. The connection holds host, port, schema (``http``/``https``)
and login/password (basic auth); its extra may hold:

* ``auth``: ``basic`` (the default with a login), ``api_key`` (with ``api_key``), ``bearer``
  (with ``token``), or ``aws_sigv4`` (with ``aws_conn_id``, default ``aws_default``, and
  ``region``, default the AWS connection's region; ``service`` ``es``) for Amazon OpenSearch
  Service, signed with the AWS connection's refreshing credentials;
* TLS: ``verify_certs`` (default true), ``ca_certs``, ``client_cert``, ``client_key``.

S3 comes from the Amazon provider's ``S3Hook`` (Glue from ``GlueCatalogHook``) with explicit timeouts and
standard-mode retries (5xx and SlowDown back off with jitter); what the AWS connection's extra sets in
``config_kwargs`` overrides them. Secrets never reach logs or errors.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from es_backfill.catalog import GLUE_CLIENT_CONFIG, GlueCatalog
from es_backfill.config import BackfillConfig, ConfigError, SourceConfig
from es_backfill.engines import AwsAuth, ConnectionSettings, UnsupportedEngine, connect
from es_backfill.sink import S3_CLIENT_CONFIG, ObjectStore
from es_backfill.source import AccessDenied, Reader, RequestRejected, SourceError, TlsRefused

if TYPE_CHECKING:
    from botocore.config import Config

log = logging.getLogger(__name__)

AUTH_KINDS = ("basic", "api_key", "bearer", "aws_sigv4")
SIGV4_SERVICES = ("es",)  # OpenSearch Serverless ("aoss") has neither point in time nor scroll


class SearchReaderHook(BaseHook):
    """A reader (:class:`~es_backfill.source.Reader`) for the cluster of an ``elasticsearch`` connection:
    Elasticsearch 7.10-9 or OpenSearch 1-3, engine and read strategy detected by ``GET /``.

    :param es_conn_id: the Airflow connection
    :param request_timeout_s: timeout of one request
    :param max_retries: retries of a transiently failing request (429, 5xx, timeouts), with backoff
    :param max_in_flight: the most requests the reader has in flight at once, whatever threads ask
    """

    conn_name_attr = "es_conn_id"
    default_conn_name = "elasticsearch_default"
    conn_type = "elasticsearch"
    hook_name = "Elasticsearch / OpenSearch (es-backfill reader)"

    def __init__(
        self,
        es_conn_id: str = default_conn_name,
        *,
        request_timeout_s: float = 60.0,
        max_retries: int = 6,
        max_in_flight: int = 1,
    ) -> None:
        super().__init__()
        self.es_conn_id = es_conn_id
        self.request_timeout_s = request_timeout_s
        self.limits = {"max_retries": max_retries, "max_in_flight": max_in_flight}

    def connection_settings(self) -> ConnectionSettings:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.es_conn_id)
        except AirflowNotFoundException as err:
            raise ConfigError(
                [f"connection {self.es_conn_id!r} is not defined: create it (Admin > Connections, "
                 f"AIRFLOW_CONN_{self.es_conn_id.upper()}, or a Secrets Manager secret airflow/connections/"
                 f"{self.es_conn_id}), or name another one in source.es_conn_id"]
            ) from err  # fmt: skip
        return settings_from_connection(
            self.es_conn_id,
            host=conn.host,
            port=conn.port,
            schema=conn.schema,
            login=conn.login,
            password=conn.password,
            extra=conn.extra_dejson,
            request_timeout_s=self.request_timeout_s,
        )

    def get_conn(self) -> Reader:
        """The reader, after one ``GET /``; a ConfigError (saying what to set) if it cannot work."""
        return open_reader(self.connection_settings(), f"connection {self.es_conn_id}", **self.limits)


class ClusterUnreachable(SourceError):
    """``GET /`` got no answer after every retry: a cluster down or out of reach (a task may retry later)."""


def open_reader(settings: ConnectionSettings, name: str, **limits: Any) -> Reader:
    """:func:`~es_backfill.engines.connect`, with a refused ``GET /`` or an engine it cannot read turned into
    a ConfigError that says what to set, and no answer at all into :class:`ClusterUnreachable` naming the URL;
    ``name`` says where the settings came from."""
    try:
        return connect(settings, **limits)
    except AccessDenied as err:
        hint = (
            "check the AWS credentials and region, and that the domain's access policy allows the role es:ESHttpGet"
            if settings.aws is not None
            else "check the credentials and grant the cluster privilege cluster:monitor/main"
        )
        raise ConfigError(
            [f"{name}: {settings.url} refused GET /, which identifies the cluster a backfill reads ({err.reason}); "
             f"{hint}"]
        ) from err  # fmt: skip
    except UnsupportedEngine as err:
        raise ConfigError([f"{name}: {err}"]) from err
    except TlsRefused as err:
        raise ConfigError(
            [f"{name}: {settings.url}: {err}; set the connection's extra ca_certs to the file of the CA that signed "
             "the cluster's certificate (or check the host name and that the port speaks HTTPS)"]
        ) from err  # fmt: skip
    except SourceError as err:
        if isinstance(err, RequestRejected):
            raise  # an answer, which names itself
        # No answer after every retry: unreachable, or refusing connections.
        raise ClusterUnreachable(
            f"{name}: {settings.url} did not answer GET / ({err}); check the URL and port, that the cluster runs "
            "and that this machine can reach it (VPC, security group, proxy)"
        ) from err


def settings_from_connection(
    conn_id: str,
    *,
    host: str | None,
    port: int | None,
    schema: str | None,
    login: str | None,
    password: str | None,
    extra: dict[str, Any],
    request_timeout_s: float,
) -> ConnectionSettings:
    """The settings of an ``elasticsearch`` connection's fields; a ConfigError naming what is wrong."""
    if not host:
        raise ConfigError([f"connection {conn_id} has no host"])
    scheme = schema or extra.get("scheme") or "http"
    auth = extra.get("auth") or ("api_key" if extra.get("api_key") else "basic")
    if auth not in AUTH_KINDS:
        raise ConfigError([f"connection {conn_id}: extra auth must be one of {', '.join(AUTH_KINDS)}, not {auth!r}"])
    verify = extra.get("verify_certs", True)
    if not isinstance(verify, bool):
        raise ConfigError([f"connection {conn_id}: extra verify_certs must be true or false"])
    kwargs: dict[str, Any] = {
        "url": f"{scheme}://{host}:{port or (443 if scheme == 'https' else 9200)}",
        "request_timeout_s": request_timeout_s,
        "verify_certs": verify,
        **{name: extra[name] for name in ("ca_certs", "client_cert", "client_key") if extra.get(name)},
    }
    if auth == "api_key":
        if not extra.get("api_key"):
            raise ConfigError([f"connection {conn_id}: auth api_key needs the key in extra api_key"])
        kwargs["api_key"] = extra["api_key"]
    elif auth == "bearer":
        if not extra.get("token"):
            raise ConfigError([f"connection {conn_id}: auth bearer needs the token in extra token"])
        kwargs["bearer_token"] = extra["token"]
    elif auth == "aws_sigv4":
        kwargs["aws"] = _aws_auth(conn_id, extra)
    elif login:
        kwargs["basic_auth"] = (login, password or "")
    return ConnectionSettings(**kwargs)


def _aws_auth(conn_id: str, extra: dict[str, Any]) -> AwsAuth:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    service = extra.get("service", "es")
    if service not in SIGV4_SERVICES:
        raise ConfigError(
            [f"connection {conn_id}: service {service!r} is not supported: OpenSearch Serverless collections "
             "(aoss) offer neither point in time nor scroll, so a window cannot be read consistently; "
             "use an Amazon OpenSearch Service domain (service es)"]
        )  # fmt: skip
    aws_conn_id = extra.get("aws_conn_id", "aws_default")
    session = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="sts").get_session()
    region = extra.get("region") or session.region_name
    if not region:
        raise ConfigError(
            [f"connection {conn_id}: AWS SigV4 needs the domain's region: set \"region\" in its extra "
             f"(e.g. \"eu-west-1\") or region_name in AWS connection {aws_conn_id}"]
        )  # fmt: skip
    # The session's credentials object, not a frozen copy: a role session that expires mid-window refreshes.
    credentials = session.get_credentials()
    if credentials is None:
        raise ConfigError([f"connection {conn_id}: AWS connection {aws_conn_id} yields no credentials"])
    return AwsAuth(credentials=credentials, region=region, service=service)


def search_reader(source: SourceConfig) -> Reader:
    """The reader for a run's ``source`` settings (:class:`~es_backfill.config.SourceConfig`)."""
    hook = SearchReaderHook(
        source.es_conn_id,
        request_timeout_s=source.request_timeout_s,
        max_retries=source.max_retries,
        max_in_flight=source.max_in_flight,
    )
    return hook.get_conn()


def object_store(config: BackfillConfig) -> ObjectStore:
    """The run's bucket through ``S3Hook`` on its ``aws_conn_id``, writing with the run's encryption."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    conn_id = config.source.aws_conn_id
    client = S3Hook(aws_conn_id=conn_id, config=_client_config(conn_id, S3_CLIENT_CONFIG)).get_conn()
    return ObjectStore(client, config.s3_bucket, config.encryption)


def glue_catalog(config: BackfillConfig) -> GlueCatalog | None:
    """The run's ``glue_database`` through ``GlueCatalogHook`` on its ``aws_conn_id``; None without one."""
    from airflow.providers.amazon.aws.hooks.glue_catalog import GlueCatalogHook

    if not config.glue_database:
        return None
    conn_id = config.source.aws_conn_id
    client = GlueCatalogHook(aws_conn_id=conn_id, config=_client_config(conn_id, GLUE_CLIENT_CONFIG)).get_conn()
    return GlueCatalog(client, config.glue_database)


def _client_config(conn_id: str, defaults: Config) -> Config:
    """Our timeouts and retries (``defaults``) under what the AWS connection ``conn_id`` sets in its extra's
    ``config_kwargs`` (a proxy, a retry budget), whose values win, ``retries`` key by key (``max_attempts``
    alone keeps standard mode): a hook given a config ignores the connection's, so the two are merged here."""
    from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper
    from airflow.sdk.exceptions import AirflowNotFoundException
    from botocore.config import Config

    try:
        own = AwsConnectionWrapper(conn=BaseHook.get_connection(conn_id)).botocore_config
    except AirflowNotFoundException:
        log.warning("No connection %s to take botocore settings (config_kwargs) from: using ours", conn_id)
        return defaults  # the hook goes on without it (boto3's own credentials), as it would without us
    if own is None:
        return defaults
    if own.retries and defaults.retries:
        retries = dict(defaults.retries)
        if {"max_attempts", "total_max_attempts"} & set(own.retries):
            # botocore rewrites a client's max_attempts as total_max_attempts in place: drop ours in either form
            retries.pop("max_attempts", None)
            retries.pop("total_max_attempts", None)
        own = own.merge(Config(retries={**retries, **own.retries}))
    return defaults.merge(own)


def redaction_key(source: SourceConfig) -> bytes | None:
    """The HMAC key of the ``hash`` redaction rules: the password of ``source.redaction_key_conn_id`` (an
    Airflow connection, or a Secrets Manager secret behind one); never from the conf. None without such rules."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    if not any(rule.action == "hash" for rule in source.redact):
        return None
    conn_id = source.redaction_key_conn_id
    try:
        password = BaseHook.get_connection(conn_id).password
    except AirflowNotFoundException as err:
        raise ConfigError([f"source.redaction_key_conn_id: no connection {conn_id!r} holds the HMAC key"]) from err
    if not password:
        raise ConfigError([f"source.redaction_key_conn_id: connection {conn_id!r} has no password (the HMAC key)"])
    return password.encode()
