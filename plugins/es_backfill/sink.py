"""Writing a window's records to S3: deterministic keys, bounded parts, multipart uploads.

Keys depend only on the backfill and the window::

    {prefix}/{backfill_name}/dt=YYYY-MM-DD/{window key}/part-00000.jsonl.gz
    {prefix}/{backfill_name}/dt=YYYY-MM-DD/{window key}/messages/{safe id}.json   (output_format=json)
    {prefix}/{backfill_name}/dt=YYYY-MM-DD/{window key}/part-00000.parquet        (output_format=parquet)
    {prefix}/{backfill_name}/dt=YYYY-MM-DD/{window key}/_manifest.json

Parts are cut at ``part_max_records`` records or ``part_max_bytes`` uncompressed bytes.
A part is compressed as it is written (gzip without a timestamp, so the same records
give the same bytes) and sent as a multipart upload in 8 MiB pieces once it outgrows
one piece, so memory stays bounded whatever the window holds. The S3 client comes
from the Amazon provider's ``S3Hook``; its retries (standard mode) cover 5xx and SlowDown.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from botocore.config import Config

log = logging.getLogger(__name__)

# Explicit timeouts, and standard-mode retries: 5xx and SlowDown back off with jitter.
S3_CLIENT_CONFIG = Config(
    connect_timeout=10,
    read_timeout=120,
    retries={"max_attempts": 8, "mode": "standard"},
    max_pool_connections=16,
)

MULTIPART_CHUNK = 8 * 2**20  # S3 needs >= 5 MiB for every piece but the last
# Lines are compressed in batches of this size: one zlib call (and one release of the GIL) per batch instead of
# per line. The compressed bytes are the same however the input is split.
COMPRESS_BATCH = 2**18
MANIFEST_NAME = "_manifest.json"
_PLAIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
CONTENT_TYPES = {
    "jsonl.gz": "application/gzip",
    "jsonl": "application/x-ndjson",
    "json": "application/json",
    "parquet": "application/vnd.apache.parquet",
}


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    records: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_prefix(root_prefix: str, day: str, window_key: str) -> str:
    return f"{root_prefix}/dt={day}/{window_key}"


def safe_id(message_id: str) -> str:
    """A key component for any message id: plain ids stay as they are; others become
    ``{readable part}.{hash}``, which cannot contain ``/``, ``..`` or odd characters and
    cannot collide with a plain id (plain ids have no ``.``)."""
    if _PLAIN_ID.match(message_id):
        return message_id
    readable = _UNSAFE.sub("_", message_id).strip("_")[:80] or "id"
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}.{digest}"


@dataclass(frozen=True)
class Encryption:
    """Server-side encryption asked for every object written: ``AES256`` (SSE-S3) or ``aws:kms`` (SSE-KMS, with
    ``kms_key_id`` or else the account's AWS managed key)."""

    sse: str
    kms_key_id: str | None = None

    def request_args(self) -> dict[str, str]:
        """What PutObject and CreateMultipartUpload take (UploadPart needs nothing: the upload carries it)."""
        args = {"ServerSideEncryption": self.sse}
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PreconditionFailed(RuntimeError):
    """A conditional write lost: the object exists (``If-None-Match: *``) or changed (``If-Match``)."""


class ObjectStore:
    """The S3 calls a window makes, on one bucket, through a boto3 client from ``S3Hook``; every object it
    writes is encrypted as ``encryption`` says (``None``: as the bucket's default encryption does)."""

    def __init__(self, client: Any, bucket: str, encryption: Encryption | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.encryption = encryption
        self.write_args = encryption.request_args() if encryption else {}

    def bucket_problem(self) -> str | None:
        """Why this store cannot be used (no such bucket, no access, no credentials), or None: one request."""
        from botocore.exceptions import ClientError, NoCredentialsError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            return (
                "no AWS credentials were found: set the aws_default connection (or source.aws_conn_id), or for the "
                "command line AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return f"bucket {self.bucket!r} does not exist: create it, or fix s3_bucket"
            if status in (301, 400, 403):
                return (
                    f"bucket {self.bucket!r} cannot be used with these credentials (HTTP {status}: "
                    f"{err.response.get('Error', {}).get('Code')}): check the bucket name, its region and the "
                    "role's s3:ListBucket, s3:GetObject and s3:PutObject on it"
                )
            raise
        return None

    def put(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        """Write ``key``; return its ETag."""
        response = self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, **self.write_args
        )
        return response["ETag"]

    def put_conditional(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """Write ``key`` only if it does not exist yet (``if_none_match``) or still has the ETag ``if_match``;
        return the new ETag, or raise :class:`PreconditionFailed`."""
        condition = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/json", **condition, **self.write_args
            )
        except self.client.exceptions.ClientError as err:
            if _lost_condition(err):
                raise PreconditionFailed(f"s3://{self.bucket}/{key} changed: {err}") from err
            raise
        return response["ETag"]

    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None if it does not exist."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return response["Body"].read(), response["ETag"]

    def delete_conditional(self, key: str, *, if_match: str) -> None:
        """Delete ``key`` only if it still has the ETag ``if_match``, else raise :class:`PreconditionFailed`."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=if_match)
        except self.client.exceptions.ClientError as err:
            if _lost_condition(err):
                raise PreconditionFailed(f"s3://{self.bucket}/{key} changed: {err}") from err
            raise

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes] | None:
        """The object's bytes in chunks, or None if it does not exist."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        return body.iter_chunks(chunk_size)

    def list(self, prefix: str) -> Iterator[dict[str, Any]]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        """What lies directly under ``prefix`` (ending in ``/``): its folders (``prefix/name/``) and its keys."""
        folders: list[str] = []
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            folders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            keys += [o["Key"] for o in page.get("Contents", [])]
        return folders, keys

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def abort_uploads(self, prefix: str, keep: Callable[[str], bool] = lambda key: False) -> int:
        """Abort unfinished multipart uploads under ``prefix`` (left by a failed attempt), but those whose
        key ``keep`` accepts."""
        aborted = 0
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                if keep(upload["Key"]):
                    continue
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
        return aborted


def _lost_condition(err: Any) -> bool:
    """412 Precondition Failed, 409 ConditionalRequestConflict (S3's answer to a concurrent conditional write
    on the same key), or 404 (an ``If-Match`` on a key deleted meanwhile)."""
    code = err.response.get("Error", {}).get("Code")
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"} or status in {404, 409, 412}


class PartUpload:
    """One object being written: compressed on the fly, uploaded in pieces once large.

    Lines (or other bytes) are gathered in batches; compressing and uploading a batch runs on the writer's one
    worker thread, in order, while the caller builds the next lines (zlib and the uploads release the GIL). At most
    ``MAX_QUEUED`` batches wait for it."""

    MAX_QUEUED = 16

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        gzip: bool,
        content_type: str,
        worker: ThreadPoolExecutor,
        before_commit: Callable[[], None],
    ) -> None:
        self.store = store
        self.key = key
        self.before_commit = before_commit
        self.etag = ""
        self.content_type = content_type
        # wbits=31: a gzip stream whose header has no timestamp or file name, so bytes are reproducible.
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        self._worker = worker
        self._queued: deque[Future[None]] = deque()
        self._failed = False
        self._pending = bytearray()  # lines not yet handed to the worker
        self._buffer = bytearray()
        self._sha = hashlib.sha256()
        self._size = 0
        self.records = 0
        self.raw_bytes = 0
        self._upload_id: str | None = None
        self._pieces: list[dict[str, Any]] = []

    def write(self, line: bytes, records: int = 1) -> None:
        """Add ``line``, which holds ``records`` records (e.g. 0 for a piece of a Parquet file)."""
        self.records += records
        self.raw_bytes += len(line)
        self._pending += line
        if len(self._pending) >= COMPRESS_BATCH:
            self._hand_over(final=False)

    def _hand_over(self, final: bool) -> None:
        self._queued.append(self._worker.submit(self._consume, bytes(self._pending), final))
        self._pending.clear()
        while len(self._queued) > self.MAX_QUEUED:
            self._queued.popleft().result()  # re-raises the worker's error here

    def _consume(self, data: bytes, final: bool) -> None:
        """On the worker thread: compress ``data``, and send a piece once one is full. After a batch failed,
        the ones queued behind it do nothing: the part is lost, and the caller sees the first error."""
        if self._failed:
            return
        try:
            self._consume_batch(data, final)
        except BaseException:
            self._failed = True
            raise

    def _consume_batch(self, data: bytes, final: bool) -> None:
        if self._compressor is not None:
            data = self._compressor.compress(data) + (self._compressor.flush() if final else b"")
        self._buffer += data
        self._sha.update(data)
        self._size += len(data)
        if len(self._buffer) >= MULTIPART_CHUNK:
            self._send_piece()

    def _send_piece(self) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self._upload_id is None:
            self._upload_id = client.create_multipart_upload(
                Bucket=bucket, Key=self.key, ContentType=self.content_type, **self.store.write_args
            )["UploadId"]
        number = len(self._pieces) + 1
        # The buffer itself, not a copy of it: the call has returned before the buffer is reused.
        response = client.upload_part(
            Bucket=bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=self._buffer
        )
        self._pieces.append({"PartNumber": number, "ETag": response["ETag"]})
        self._buffer = bytearray()

    def finish(self) -> ObjectInfo:
        self._hand_over(final=True)
        while self._queued:
            self._queued.popleft().result()
        if self._upload_id is not None and self._buffer:
            self._send_piece()
        self.before_commit()  # e.g. the lease is still ours: nothing becomes visible otherwise
        if self._upload_id is None:
            self.etag = self.store.put(self.key, bytes(self._buffer), self.content_type)
        else:
            self.etag = self.store.client.complete_multipart_upload(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._pieces},
            )["ETag"]
        return ObjectInfo(self.key, self.records, self._size, self._sha.hexdigest())

    def abort(self) -> None:
        """Drop the part; the writer's worker has stopped (see :meth:`PartWriter.abort`), so nothing can start
        an upload after this."""
        self._queued.clear()
        if self._upload_id is not None:
            self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id)
            self._upload_id = None


def _nothing() -> None:
    """No check before an object is committed."""


class PartWriter:
    """JSON Lines records into ``part-NNNNN.jsonl[.gz]`` objects of bounded size. ``before_commit`` runs before
    each object becomes visible (it may raise to stop that); ``etags`` has the ETag of each object written."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        output_format: str,
        max_records: int,
        max_bytes: int,
        before_commit: Callable[[], None] = _nothing,
    ) -> None:
        self.store = store
        self.before_commit = before_commit
        self.etags: dict[str, str] = {}
        self.prefix = prefix
        self.gzip = output_format == "jsonl.gz"
        self.suffix = output_format
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.objects: list[ObjectInfo] = []
        self._part: PartUpload | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="part-writer")

    def write(self, record_id: str, line: bytes) -> None:
        if self._part is None:
            key = f"{self.prefix}/part-{len(self.objects):05d}.{self.suffix}"
            self._part = PartUpload(
                self.store, key, self.gzip, CONTENT_TYPES[self.suffix], self._worker, self.before_commit
            )
        self._part.write(line)
        if self._part.records >= self.max_records or self._part.raw_bytes >= self.max_bytes:
            self._finish_part()

    def _finish_part(self) -> None:
        if self._part is not None:
            self.objects.append(self._part.finish())  # on failure, abort() still sees the part
            self.etags[self._part.key] = self._part.etag
            self._part = None

    def close(self) -> list[ObjectInfo]:
        self._finish_part()
        self._worker.shutdown()
        return self.objects

    def abort(self) -> None:
        # First stop the worker, queued batches cancelled: no upload may start after the part is aborted.
        self._worker.shutdown(wait=True, cancel_futures=True)
        if self._part is not None:
            part, self._part = self._part, None
            part.abort()


class DocumentWriter:
    """One JSON object per message (``output_format=json``), uploaded by a few threads; ``before_commit`` and
    ``etags`` as for :class:`PartWriter`."""

    MAX_IN_FLIGHT = 64

    def __init__(
        self, store: ObjectStore, prefix: str, threads: int = 8, before_commit: Callable[[], None] = _nothing
    ) -> None:
        self.store = store
        self.prefix = f"{prefix}/messages"
        self.before_commit = before_commit
        self.objects: list[ObjectInfo] = []
        self.etags: dict[str, str] = {}
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3-put")
        self._in_flight: list[tuple[str, Future[str]]] = []

    def write(self, record_id: str, data: bytes) -> None:
        key = f"{self.prefix}/{safe_id(record_id)}.json"
        self.objects.append(ObjectInfo(key, 1, len(data), hashlib.sha256(data).hexdigest()))
        self._in_flight.append((key, self._pool.submit(self._put, key, data)))
        if len(self._in_flight) >= self.MAX_IN_FLIGHT:
            self._drain()

    def _put(self, key: str, data: bytes) -> str:
        """On an uploading thread: the check right before the object is committed, not when it was queued."""
        self.before_commit()
        return self.store.put(key, data, CONTENT_TYPES["json"])

    def _drain(self) -> None:
        in_flight, self._in_flight = self._in_flight, []
        for key, future in in_flight:
            self.etags[key] = future.result()  # re-raises an upload's error here

    def close(self) -> list[ObjectInfo]:
        try:
            self._drain()
        finally:
            self._pool.shutdown(wait=True)
        return self.objects

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
