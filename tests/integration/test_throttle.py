"""``max_messages_per_second`` caps one task's read rate, measured on a real cluster over several seconds."""

from __future__ import annotations

import time
from pathlib import Path

from es_backfill.config import from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.sink import ObjectStore
from es_backfill.windows import Window
from tests.integration.support import reader_at, s3_client, source_override, utc

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
WINDOW = Window(utc(2024, 3, 1), utc(2024, 3, 2))
PAGE = 100


def _timed_run(names, es_url: str, store: ObjectStore, prefix: str, **source) -> tuple[int, float, list[float]]:
    params = {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": store.bucket, "s3_prefix": prefix,
              "page_size": PAGE, "source": {**source_override(names), **source}}  # fmt: skip
    pages: list[float] = []
    with reader_at(es_url, max_in_flight=3) as reader:
        search = reader._search

        def recording(index, body, **rest):  # when each page of messages is asked for
            if "pit" in body:
                pages.append(time.monotonic())
            return search(index, body, **rest)

        reader._search = recording  # type: ignore[method-assign]
        started = time.monotonic()
        result = run_window(from_params(params, DEFAULTS), WINDOW, reader, store)
        elapsed = time.monotonic() - started
    assert result.messages == result.es_count
    return result.messages, elapsed, [at - started for at in pages]


def test_the_read_rate_stays_under_max_messages_per_second(seeded, es_cluster, s3_server, s3_bucket):
    names, _ = seeded({"messages": 1400, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2), "no_related_ratio": 0.5})
    store = ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket)
    limit = 250.0
    free, free_s, _ = _timed_run(names, es_cluster.url, store, "free")
    # Unthrottled, this window reads faster than the cap below (by a margin only: the other half of the suite
    # shares the 2 cores), so the cap is what paces the capped run.
    assert free / free_s > 1.25 * limit

    messages, elapsed, page_times = _timed_run(names, es_cluster.url, store, "capped", max_messages_per_second=limit)
    assert messages == free and elapsed > 4  # several seconds
    # By any moment, at most limit * t messages plus one page have been asked for: each page request comes
    # only once the pages before it are due.
    assert len(page_times) == messages // PAGE + 1
    for k, at in enumerate(page_times):
        assert k * PAGE <= limit * at, (k, at)
    assert messages / elapsed <= limit * 1.05 + PAGE / elapsed
