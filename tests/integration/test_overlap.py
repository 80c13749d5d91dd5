"""Reading overlaps writing, and the related indices are asked at once, yet a task never has more than
``max_in_flight`` requests in flight and the output bytes do not change."""

from __future__ import annotations

from pathlib import Path

import pytest

from es_backfill.config import from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.sink import ObjectStore
from es_backfill.windows import Window
from include.dev.servers.faultproxy import FaultProxy, delay
from tests.integration.support import read_objects, reader_at, s3_client, source_override, utc

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
WINDOW = Window(utc(2024, 3, 1), utc(2024, 3, 2))


@pytest.mark.parametrize("max_in_flight", [1, 2, 4])
def test_requests_in_flight_stay_within_the_bound_and_the_bytes_do_not_change(
    seeded, es_cluster, s3_server, s3_bucket, max_in_flight
):
    names, _ = seeded({"messages": 600, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2), "seed": 5})
    store = ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket)
    outputs = {}
    for bound in (1, max_in_flight):
        params = {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": s3_bucket, "s3_prefix": f"b{bound}",
                  "page_size": 100, "source": {**source_override(names), "related_page_size": 40}}  # fmt: skip
        # Every request takes 30 ms longer, as on a remote cluster, so concurrent requests do overlap.
        with FaultProxy(es_cluster.url) as proxy, reader_at(proxy.url, max_in_flight=bound) as reader:
            proxy.add_fault(".*", delay(0.03), times=None)
            result = run_window(from_params(params, DEFAULTS), WINDOW, reader, store)
            assert result.messages == result.es_count == 600
            assert reader.peak_in_flight <= bound
            if bound > 1:
                assert reader.peak_in_flight > 1  # the related lookups and the next page did overlap
        objects = read_objects(s3_bucket, f"b{bound}/")
        outputs[bound] = {k.split("/", 1)[1]: v for k, v in objects.items() if "/part-" in k}
    assert outputs[1] and outputs[1] == outputs[max_in_flight]
