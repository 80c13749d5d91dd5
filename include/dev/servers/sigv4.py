"""AWS SigV4 checks for the fault proxy: prove that a client really signs its requests.

Amazon OpenSearch Service refuses any request that is not signed with AWS
Signature Version 4 by a current key. :class:`SigV4Verifier` does the same as a
:class:`~include.dev.servers.faultproxy.FaultProxy` gate in front of a local
OpenSearch node: it recomputes each request's signature with botocore, from the
request exactly as it arrived, and refuses (403, ``{"message": reason}``) what
the service would refuse. Keys live in a :class:`KeyRing`, a JSON file that
other processes may add keys to, such as the ``credential_process`` this
module provides, which mints a new short-lived session key on every call.

Usage::

    ring = KeyRing(tmp_path / "ring.json")
    with FaultProxy(opensearch_url, gate=SigV4Verifier(ring, region="eu-west-1")) as proxy:
        config = write_aws_config(
            tmp_path / "aws-config",
            profile="sigv4",
            credential_process=credential_process_command(ring.path, ttl_s=5),
            region="eu-west-1",
        )
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
        monkeypatch.setenv("AIRFLOW_CONN_OPENSEARCH_AWS", airflow_connection_json("sigv4", "eu-west-1"))
        ...  # run the code under test against proxy.url
        assert not [r.refused for r in proxy.requests if r.refused]

What a request must carry to pass (otherwise the reason names what failed):

* an ``Authorization: AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request,
  SignedHeaders=..., Signature=...`` header, scoped to the verifier's region and
  service and to the date of its ``X-Amz-Date``;
* an ``X-Amz-Date`` at most ``max_skew_s`` (5 minutes, as AWS) from the proxy's clock;
* a key the ring knows, not expired: a key with an expiry is refused once
  ``expires_at + expiry_grace_s`` has passed. The grace (1 s by default) covers
  the moment between botocore taking a key and the request reaching the proxy;
  botocore itself never signs with a key that has expired;
* the key's session token in ``X-Amz-Security-Token`` if the key has one (and
  none if it has not);
* ``host`` and ``x-amz-date`` among the signed headers, every signed header
  present, an ``X-Amz-Content-SHA256`` (when sent) that is the body's SHA-256
  or ``UNSIGNED-PAYLOAD``;
* the signature botocore's ``SigV4Auth`` computes with the key's secret over the
  method, the path and query as sent, the signed headers with the values sent
  (``Host`` as the client sent it, port included) and the body's hash.

The check follows botocore's canonicalisation of the request as received (the
path quoted once more, the query's pairs sorted as they are). That is what
botocore-based signers such as opensearch-py's produce for the requests a
backfill makes. The service canonicalises on its own and has been seen to
disagree with botocore on percent-escapes in a path (a document id with ``!``
or ``@``: opensearch-py issue #833), which this check cannot notice.

Reasons name access key ids, never secrets or tokens.

Key-ring file: ``{"keys": {ACCESS_KEY: {"secret_key": ..., "token": ... | null,
"expires_at": epoch seconds | null}}}``, rewritten atomically under a lock file
(``FILE.lock``); readers re-read it when its inode, mtime or size change, and
before calling a key unknown. Keys
that expired more than :data:`PRUNE_AFTER_S` ago are dropped when a key is
added, so a ring fed on every request stays small; such a key then counts as
unknown rather than expired.

Credential process::

    python -m include.dev.servers.sigv4 issue --ring FILE --ttl-s SECONDS

mints a random session key that expires ``SECONDS`` from now, records it in
the ring and prints it as botocore's ``credential_process`` JSON. Its import
path holds nothing but the standard library (botocore is imported only to
verify), so each call costs a bare interpreter start;
:func:`credential_process_command` builds the command line, runnable from any
working directory.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import shlex
import string
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.dev.servers.faultproxy import ProxyRequest

log = logging.getLogger(__name__)

__all__ = [
    "EXPIRY_GRACE_S",
    "MAX_SKEW_S",
    "PRUNE_AFTER_S",
    "KeyRing",
    "SigV4Verifier",
    "SigningKey",
    "airflow_connection_json",
    "credential_process_command",
    "main",
    "write_aws_config",
]

MAX_SKEW_S = 300.0  # AWS refuses a request whose X-Amz-Date is more than 5 minutes off
EXPIRY_GRACE_S = 1.0  # a key still passes this long after its expiry (in flight when it expired)
PRUNE_AFTER_S = 600.0  # keys expired longer ago than this leave the ring when a key is added

_ALGORITHM = "AWS4-HMAC-SHA256"
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_KEY_ID_ALPHABET = string.ascii_uppercase + string.digits


# --------------------------------------------------------------------------- the key ring


@dataclass(frozen=True)
class SigningKey:
    """An access key: its secret, its session token (``None`` for a long-term key), its expiry (epoch s)."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    expires_at: float | None = None


class KeyRing:
    """The keys the verifier accepts, in a JSON file that several processes share (see the module docs)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, SigningKey] = {}

    def __repr__(self) -> str:
        return f"<KeyRing {self.path}>"

    def add(
        self, access_key: str, secret_key: str, token: str | None = None, expires_at: float | None = None
    ) -> SigningKey:
        """Record a key (replacing any key with the same id); ``expires_at`` in epoch seconds, ``None``: never."""
        key = SigningKey(access_key, secret_key, token, expires_at)
        self._update(key)
        return key

    def issue(self, ttl_s: float) -> SigningKey:
        """Mint, record and return a random session key (``ASIA...`` with a token) that expires in ``ttl_s``."""
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        return self.add(
            access_key="ASIA" + "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(16)),
            secret_key=base64.b64encode(secrets.token_bytes(30)).decode(),
            token=base64.b64encode(secrets.token_bytes(120)).decode(),
            expires_at=round(time.time() + ttl_s, 3),  # milliseconds, as the Expiration printed for botocore
        )

    def get(self, access_key: str) -> SigningKey | None:
        key = self._current().get(access_key)
        if key is None:  # two writes within the file system's timestamp tick can leave the stamp unchanged
            key = self._current(reload=True).get(access_key)
        return key

    def keys(self) -> dict[str, SigningKey]:
        """A snapshot of the ring: access key id -> key."""
        return dict(self._current())

    def _current(self, *, reload: bool = False) -> dict[str, SigningKey]:
        """The ring as the file holds it now; re-read only when the file changed (or on ``reload``)."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            if reload or stamp != self._stamp:
                self._keys = _read_ring(self.path) if stamp is not None else {}
                self._stamp = stamp
            return self._keys

    def _update(self, key: SigningKey) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
            keys = _read_ring(self.path)
            keys[key.access_key] = key
            horizon = time.time() - PRUNE_AFTER_S
            entries = {
                k.access_key: {"secret_key": k.secret_key, "token": k.token, "expires_at": k.expires_at}
                for k in keys.values()
                if k.expires_at is None or k.expires_at >= horizon
            }
            with tempfile.NamedTemporaryFile(
                "w", dir=self.path.parent, prefix=f".{self.path.name}.", delete=False
            ) as tmp:
                json.dump({"keys": entries}, tmp)
            os.replace(tmp.name, self.path)


def _read_ring(path: Path) -> dict[str, SigningKey]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {
        access_key: SigningKey(access_key, entry["secret_key"], entry.get("token"), entry.get("expires_at"))
        for access_key, entry in data["keys"].items()
    }


# --------------------------------------------------------------------------- the verifier


class SigV4Verifier:
    """A :class:`~include.dev.servers.faultproxy.FaultProxy` gate that accepts only valid SigV4 signatures.

    Call it with a request: ``None`` means accepted, otherwise the reason for
    refusing it. ``clock`` (epoch seconds) judges ``X-Amz-Date`` and key
    expiry. :attr:`accepted_keys` lists the access key of every accepted
    request, in order. Safe to call from several threads.
    """

    def __init__(
        self,
        keys: KeyRing,
        *,
        region: str = "eu-west-1",
        service: str = "es",
        max_skew_s: float = MAX_SKEW_S,
        expiry_grace_s: float = EXPIRY_GRACE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.region = region
        self.service = service
        self.max_skew_s = max_skew_s
        self.expiry_grace_s = expiry_grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._accepted: list[str] = []

    def __repr__(self) -> str:
        return f"<SigV4Verifier {self.region}/{self.service} {self.keys!r}>"

    @property
    def accepted_keys(self) -> list[str]:
        with self._lock:
            return list(self._accepted)

    def __call__(self, request: ProxyRequest) -> str | None:
        authorization = request.header("Authorization")
        if authorization is None:
            return "missing Authorization header: the request is not signed"
        parsed = _parse_authorization(authorization)
        if parsed is None:
            return f"malformed Authorization header, expected: {_ALGORITHM} Credential=, SignedHeaders=, Signature="
        scope, signed_headers, signature = parsed
        access_key, scope_date, scope_region, scope_service = scope
        if (scope_region, scope_service) != (self.region, self.service):
            return (
                f"credential scope {scope_date}/{scope_region}/{scope_service}/aws4_request is not for "
                f"region {self.region} and service {self.service}"
            )

        amz_date = request.header("X-Amz-Date")
        if amz_date is None:
            return "missing X-Amz-Date header"
        try:
            signed_at = dt.datetime.strptime(amz_date, _AMZ_DATE_FORMAT).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            return f"malformed X-Amz-Date {amz_date!r}: expected YYYYMMDDTHHMMSSZ"
        if scope_date != amz_date[:8]:
            return f"credential scope date {scope_date} is not the date of X-Amz-Date {amz_date}"
        now = self._clock()
        if abs(now - signed_at) > self.max_skew_s:
            return (
                f"stale request: X-Amz-Date {amz_date} is {abs(now - signed_at):.0f} s from the proxy's clock "
                f"(at most {self.max_skew_s:.0f} s allowed)"
            )

        key = self.keys.get(access_key)
        if key is None:
            return f"unknown access key {access_key}"
        if key.expires_at is not None and now > key.expires_at + self.expiry_grace_s:
            return (
                f"expired access key {access_key}: expired {now - key.expires_at:.1f} s ago "
                f"(grace {self.expiry_grace_s:g} s)"
            )
        token = request.header("X-Amz-Security-Token")
        if key.token is None:
            if token is not None:
                return f"X-Amz-Security-Token sent with long-term key {access_key}, which has no session token"
        elif token is None:
            return f"missing X-Amz-Security-Token for session key {access_key}"
        elif not hmac.compare_digest(token.encode(), key.token.encode()):
            return f"wrong X-Amz-Security-Token for session key {access_key}"

        if not {"host", "x-amz-date"} <= set(signed_headers):
            return f"host and x-amz-date must be signed, SignedHeaders is {';'.join(signed_headers)}"
        sent = {name.lower() for name, _ in request.headers}
        missing = [name for name in signed_headers if name not in sent]
        if missing:
            return f"signed headers missing from the request: {', '.join(missing)}"
        content_sha256 = request.header("X-Amz-Content-SHA256")
        if content_sha256 not in (None, _UNSIGNED_PAYLOAD, hashlib.sha256(request.body).hexdigest()):
            return "X-Amz-Content-SHA256 is not the SHA-256 of the body"

        expected_headers, expected = self._signature(request, key, signed_headers, amz_date)
        if expected_headers != signed_headers:
            return (
                f"SignedHeaders {';'.join(signed_headers)} cannot be reproduced: "
                f"botocore signs {';'.join(expected_headers)} of them"
            )
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return (
                f"signature mismatch for access key {access_key}: wrong secret key, or the request "
                f"changed after signing (signed headers {';'.join(signed_headers)})"
            )
        with self._lock:
            self._accepted.append(access_key)
        log.debug("SigV4 accepted %s %s signed by %s", request.method, request.target, access_key)
        return None

    def _signature(
        self, request: ProxyRequest, key: SigningKey, signed_headers: list[str], amz_date: str
    ) -> tuple[list[str], str]:
        """The headers botocore signs of ``signed_headers``, and its signature of the request as received."""
        # Imported here: the credential process shares this module and should start without botocore.
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        url = f"http://{request.header('Host')}{request.target}"
        aws_request = AWSRequest(method=request.method, url=url, data=request.body)
        for name, value in request.headers:
            if name.lower() in signed_headers:
                aws_request.headers[name] = value  # appends: a repeated header keeps all its values
        aws_request.context["timestamp"] = amz_date
        auth = SigV4Auth(Credentials(key.access_key, key.secret_key, key.token), self.service, self.region)
        string_to_sign = auth.string_to_sign(aws_request, auth.canonical_request(aws_request))
        headers = auth.signed_headers(auth.headers_to_sign(aws_request)).split(";")
        return headers, auth.signature(string_to_sign, aws_request)


def _parse_authorization(value: str) -> tuple[tuple[str, str, str, str], list[str], str] | None:
    """``((access_key, date, region, service), signed_headers, signature)``, or ``None`` if malformed."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != _ALGORITHM:
        return None
    fields = dict(part.strip().partition("=")[::2] for part in rest.split(","))
    scope = fields.get("Credential", "").split("/")
    signed_headers = fields.get("SignedHeaders", "")
    signature = fields.get("Signature", "")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope) or not signed_headers or not signature:
        return None
    return (scope[0], scope[1], scope[2], scope[3]), signed_headers.split(";"), signature


# --------------------------------------------------------------------------- wiring clients to the ring


def credential_process_command(ring_path: str | os.PathLike[str], ttl_s: float) -> str:
    """A ``credential_process`` line that mints a key into the ring on every call.

    It runs this file with this interpreter and ``-P`` (no script directory on
    ``sys.path``), so it works from any working directory.
    """
    script = str(Path(__file__).resolve())
    return shlex.join(
        [sys.executable, "-P", script, "issue", "--ring", str(Path(ring_path).resolve()), "--ttl-s", f"{ttl_s:g}"]
    )


def write_aws_config(
    path: str | os.PathLike[str], *, profile: str, credential_process: str, region: str = "eu-west-1"
) -> Path:
    """Write an AWS config file (for ``AWS_CONFIG_FILE``) whose ``[profile NAME]`` gets keys from the process."""
    target = Path(path)
    target.write_text(f"[profile {profile}]\ncredential_process = {credential_process}\nregion = {region}\n")
    return target


def airflow_connection_json(profile: str, region: str = "eu-west-1") -> str:
    """An Airflow AWS connection (the value of ``AIRFLOW_CONN_<ID>``) that uses the AWS config ``profile``."""
    return json.dumps({"conn_type": "aws", "extra": {"profile_name": profile, "region_name": region}})


# --------------------------------------------------------------------------- the credential process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.dev.servers.sigv4",
        description="Key ring for the SigV4-verifying proxy.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser(
        "issue",
        help="mint a session key into the ring and print it as botocore credential_process JSON",
    )
    issue.add_argument("--ring", required=True, type=Path, help="the key-ring JSON file (created if missing)")
    issue.add_argument("--ttl-s", required=True, type=float, help="seconds until the key expires")
    args = parser.parse_args(argv)
    key = KeyRing(args.ring).issue(args.ttl_s)
    assert key.expires_at is not None
    expiration = dt.datetime.fromtimestamp(key.expires_at, dt.UTC).isoformat(timespec="milliseconds")
    output: dict[str, Any] = {
        "Version": 1,
        "AccessKeyId": key.access_key,
        "SecretAccessKey": key.secret_key,
        "SessionToken": key.token,
        "Expiration": expiration.replace("+00:00", "Z"),
    }
    print(json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
