"""A window that fails part-way and is run again ends exactly like a clean run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from es_backfill.config import from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.manifest import window_manifest_key
from es_backfill.sink import ObjectStore
from es_backfill.windows import Window
from tests.integration.support import (
    open_uploads,
    read_objects,
    reader_at,
    s3_client,
    source_override,
    utc,
    window_objects,
)

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
WINDOW = Window(utc(2024, 3, 1), utc(2024, 3, 2))


class InjectedFault(RuntimeError):
    pass


class FlakyClient:
    """A boto3 S3 client that raises on the ``after``-th call of ``method`` (a seam we own)."""

    def __init__(self, client, method: str, after: int) -> None:
        self._client, self._method, self._after, self.calls = client, method, after, 0

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name != self._method:
            return attr

        def call(**kwargs):
            self.calls += 1
            if self.calls >= self._after:
                raise InjectedFault(f"injected failure on {name} call {self.calls}")
            return attr(**kwargs)

        return call


@pytest.fixture
def clients(es_cluster, s3_server, s3_bucket):
    s3 = s3_client(s3_server.endpoint_url)
    with reader_at(es_cluster.url, max_retries=2, backoff_s=0.05) as reader:
        yield reader, s3


def _config(names, bucket, prefix, **source):
    params = {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": bucket, "s3_prefix": prefix, "page_size": 100}
    return from_params(params | {"source": source_override(names) | source}, DEFAULTS)


def test_rerun_of_window_failed_mid_write_matches_a_clean_run_byte_for_byte(seeded, clients, s3_bucket):
    names, _ = seeded({"messages": 330, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    reader, s3 = clients
    clean = _config(names, s3_bucket, "clean", part_max_records=100)
    run_window(clean, WINDOW, reader, ObjectStore(s3, s3_bucket))

    # First attempt cuts small parts and dies after uploading three of them.
    failing = _config(names, s3_bucket, "rerun", part_max_records=40)
    flaky = FlakyClient(s3, "put_object", after=4)
    with pytest.raises(InjectedFault):
        run_window(failing, WINDOW, reader, ObjectStore(flaky, s3_bucket))
    leftovers = read_objects(s3_bucket, "rerun/")
    assert len(leftovers) == 3 and not any(k.endswith("_manifest.json") for k in leftovers)

    # The cleared task runs again (here with the clean run's part size, so the part count changes).
    rerun = _config(names, s3_bucket, "rerun", part_max_records=100)
    result = run_window(rerun, WINDOW, reader, ObjectStore(s3, s3_bucket))
    assert result.status == "written" and result.messages == 330
    assert window_objects(s3_bucket, "rerun/") == window_objects(s3_bucket, "clean/")
    assert len(window_objects(s3_bucket, "clean/")) == 5  # four parts and the manifest
    assert open_uploads(s3_bucket) == []


def test_failed_multipart_upload_is_aborted_and_the_rerun_completes(seeded, clients, s3_bucket):
    big = "x" * 1_500_000  # incompressible enough in jsonl: 8 MiB pieces after ~6 messages
    extra = [("messages", f"big-{i}", {"message_id": f"big-{i}", "@timestamp": f"2024-03-01T0{i}:00:00.000Z",
                                         "body": big + str(i)}) for i in range(9)]  # fmt: skip
    names, _ = seeded({"messages": 5, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)}, extra)
    reader, s3 = clients
    config = from_params(
        {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": s3_bucket, "s3_prefix": "mpu", "page_size": 100,
         "output_format": "jsonl", "source": source_override(names)},
        DEFAULTS,
    )  # fmt: skip
    flaky = FlakyClient(s3, "complete_multipart_upload", after=1)
    with pytest.raises(InjectedFault):
        run_window(config, WINDOW, reader, ObjectStore(flaky, s3_bucket))
    assert flaky.calls == 1  # the part went up in pieces, then completing it failed
    assert open_uploads(s3_bucket) == []
    assert read_objects(s3_bucket, "mpu/") == {}

    result = run_window(config, WINDOW, reader, ObjectStore(s3, s3_bucket))
    assert result.messages == 14
    objects = read_objects(s3_bucket, "mpu/")
    (part,) = [v for k, v in objects.items() if k.endswith(".jsonl")]
    assert len(part.splitlines()) == 14
    assert objects[window_manifest_key(config, WINDOW)]


def test_complete_window_is_skipped_without_reading_elasticsearch(seeded, clients, s3_bucket):
    names, _ = seeded({"messages": 50, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    reader, s3 = clients
    config = _config(names, s3_bucket, "skip")
    first = run_window(config, WINDOW, reader, ObjectStore(s3, s3_bucket))
    before = reader.total_requests
    again = run_window(config, WINDOW, reader, ObjectStore(s3, s3_bucket))
    assert (first.status, again.status) == ("written", "skipped")
    assert reader.total_requests == before
    assert again.messages == first.messages == 50
    forced = run_window(replace(config, force=True), WINDOW, reader, ObjectStore(s3, s3_bucket))
    assert forced.status == "written" and reader.total_requests > before


class WokenLate(ObjectStore):
    """The store of an attempt Airflow gave up on while it was paused between its checks and its claim: when it
    wakes (its first claim read), ``meanwhile`` has already run."""

    def __init__(self, client, bucket: str, meanwhile) -> None:
        super().__init__(client, bucket)
        self.meanwhile = meanwhile

    def get_with_etag(self, key: str):
        if key.endswith("/_attempt.json") and self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return super().get_with_etag(key)


def test_an_attempt_woken_after_its_retry_finished_the_window_writes_nothing_and_takes_no_lease(
    seeded, clients, s3_bucket
):
    from es_backfill.lease import Holder, release

    names, _ = seeded({"messages": 120, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    reader, s3 = clients
    store = ObjectStore(s3, s3_bucket)
    config = _config(names, s3_bucket, "woken")
    run, started = "manual__2026-11-30T10:00:00+00:00", "2026-11-30T10:00:01Z"
    retry, first_try = (Holder(run, started, try_number) for try_number in (2, 1))
    finished: dict[str, bytes] = {}

    def retry_finishes_and_the_run_ends() -> None:
        assert run_window(config, WINDOW, reader, store, retry).status == "written"
        assert release(store, config, retry)  # summarise
        finished.update(read_objects(s3_bucket, "woken/"))

    woken = WokenLate(s3, s3_bucket, retry_finishes_and_the_run_ends)
    result = run_window(config, WINDOW, reader, woken, first_try)
    assert woken.meanwhile is None and finished  # the retry ran while the first try was paused
    assert result.status == "skipped" and result.messages == 120
    after = read_objects(s3_bucket, "woken/")
    assert after == finished  # the retry's output, untouched
    assert not any(k.endswith(("/_lease.json", "/_attempt.json")) for k in after)  # no lease taken again
