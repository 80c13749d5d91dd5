"""Writing a window's records to S3: deterministic keys, bounded parts, multipart uploads.

Keys depend only on the backfill and the window::

    {prefix}/{backfill_name}/dt=YYYY-MM-DD/{window key}/part-00000.jsonl.gz
    {prefix}/{backfill_name}/dt=YYYY-MM-DD/{window key}/messages/{safe id}.json   (output_format=json)
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
CONTENT_TYPES = {"jsonl.gz": "application/gzip", "jsonl": "application/x-ndjson", "json": "application/json"}


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
    return f"{readable}.{hashlib.sha256(message_id.encode()).hexdigest()[:16]}"


class ObjectStore:
    """The S3 calls a window makes, on one bucket, through a boto3 client from ``S3Hook``."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def put(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

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


class _Part:
    """One object being written: compressed on the fly, uploaded in pieces once large."""

    def __init__(self, store: ObjectStore, key: str, gzip: bool, content_type: str) -> None:
        self.store = store
        self.key = key
        self.content_type = content_type
        # wbits=31: a gzip stream whose header has no timestamp or file name, so bytes are reproducible.
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        self._pending = bytearray()  # lines not yet compressed
        self._buffer = bytearray()
        self._sha = hashlib.sha256()
        self._size = 0
        self.records = 0
        self.raw_bytes = 0
        self._upload_id: str | None = None
        self._pieces: list[dict[str, Any]] = []

    def write(self, line: bytes) -> None:
        self.records += 1
        self.raw_bytes += len(line)
        if self._compressor is None:
            self._append(line)
        else:
            self._pending += line
            if len(self._pending) >= COMPRESS_BATCH:
                self._append(self._compressor.compress(self._pending))
                self._pending.clear()
        if len(self._buffer) >= MULTIPART_CHUNK:
            self._send_piece()

    def _append(self, data: bytes) -> None:
        self._buffer += data
        self._sha.update(data)
        self._size += len(data)

    def _send_piece(self) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self._upload_id is None:
            self._upload_id = client.create_multipart_upload(
                Bucket=bucket, Key=self.key, ContentType=self.content_type
            )["UploadId"]
        number = len(self._pieces) + 1
        response = client.upload_part(
            Bucket=bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=bytes(self._buffer)
        )
        self._pieces.append({"PartNumber": number, "ETag": response["ETag"]})
        self._buffer.clear()

    def finish(self) -> ObjectInfo:
        if self._compressor:
            self._append(self._compressor.compress(self._pending) + self._compressor.flush())
        if self._upload_id is None:
            self.store.put(self.key, bytes(self._buffer), self.content_type)
        else:
            if self._buffer:
                self._send_piece()
            self.store.client.complete_multipart_upload(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._pieces},
            )
        return ObjectInfo(self.key, self.records, self._size, self._sha.hexdigest())

    def abort(self) -> None:
        if self._upload_id is not None:
            self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id)
            self._upload_id = None


class PartWriter:
    """JSON Lines records into ``part-NNNNN.jsonl[.gz]`` objects of bounded size."""

    def __init__(self, store: ObjectStore, prefix: str, output_format: str, max_records: int, max_bytes: int) -> None:
        self.store = store
        self.prefix = prefix
        self.gzip = output_format == "jsonl.gz"
        self.suffix = output_format
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.objects: list[ObjectInfo] = []
        self._part: _Part | None = None

    def write(self, record_id: str, line: bytes) -> None:
        if self._part is None:
            key = f"{self.prefix}/part-{len(self.objects):05d}.{self.suffix}"
            self._part = _Part(self.store, key, self.gzip, CONTENT_TYPES[self.suffix])
        self._part.write(line)
        if self._part.records >= self.max_records or self._part.raw_bytes >= self.max_bytes:
            self._finish_part()

    def _finish_part(self) -> None:
        if self._part is not None:
            self.objects.append(self._part.finish())  # on failure, abort() still sees the part
            self._part = None

    def close(self) -> list[ObjectInfo]:
        self._finish_part()
        return self.objects

    def abort(self) -> None:
        if self._part is not None:
            self._part.abort()
            self._part = None


class DocumentWriter:
    """One JSON object per message (``output_format=json``), uploaded by a few threads."""

    MAX_IN_FLIGHT = 64

    def __init__(self, store: ObjectStore, prefix: str, threads: int = 8) -> None:
        self.store = store
        self.prefix = f"{prefix}/messages"
        self.objects: list[ObjectInfo] = []
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3-put")
        self._in_flight: list[Future[None]] = []

    def write(self, record_id: str, data: bytes) -> None:
        key = f"{self.prefix}/{safe_id(record_id)}.json"
        self.objects.append(ObjectInfo(key, 1, len(data), hashlib.sha256(data).hexdigest()))
        self._in_flight.append(self._pool.submit(self.store.put, key, data, CONTENT_TYPES["json"]))
        if len(self._in_flight) >= self.MAX_IN_FLIGHT:
            self._drain()

    def _drain(self) -> None:
        in_flight, self._in_flight = self._in_flight, []
        for future in in_flight:
            future.result()  # re-raises an upload's error here

    def close(self) -> list[ObjectInfo]:
        try:
            self._drain()
        finally:
            self._pool.shutdown(wait=True)
        return self.objects

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
