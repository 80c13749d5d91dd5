"""Planning against the real cluster: balanced windows and per-window counts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from es_backfill.cli import main as cli
from es_backfill.config import from_params, load_defaults
from es_backfill.plan import plan_windows, window_counts
from include.dev.servers.faultproxy import FaultProxy, es_error
from tests.integration.support import read_objects, reader_at, source_override, utc

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")


def test_balanced_windows_hold_similar_counts_of_skewed_data(seeded, es_cluster):
    # 540 extra messages on the first day over ~20 a day: fixed 1-day windows would be about 560/20/20/20/20/20.
    busy = [
        (
            "messages",
            f"busy-{i}",
            {"message_id": f"busy-{i}", "@timestamp": f"2024-03-01T{i % 24:02d}:{i % 60:02d}:00Z"},
        )
        for i in range(540)
    ]
    names, _ = seeded({"messages": 120, "start": utc(2024, 3, 1), "end": utc(2024, 3, 7)}, busy)
    params = {"start": "2024-03-01", "end": "2024-03-07", "window": "1d", "s3_bucket": "unused",
              "balance_windows": True, "source": source_override(names)}  # fmt: skip
    config = from_params(params, DEFAULTS)
    with reader_at(es_cluster.url) as reader:
        windows = plan_windows(config, reader, max_windows=1024)
        counts = window_counts(config, reader, windows)
        assert reader.requests == {"info": 1, "search": 2}  # GET /, one date_histogram, one range aggregation
    assert windows[0].start == utc(2024, 3, 1) and windows[-1].end == utc(2024, 3, 7)
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert sum(counts) == 660
    assert len(windows) == 6
    assert max(counts) < 2.5 * (660 / 6), counts  # fixed windows would put 540+ in the first


@pytest.mark.parametrize(
    ("request_pattern", "refused"),
    [(r"^GET /[^/]+/_mapping/field/", "may not read the mappings of"), (r"^POST /[^/]+/_count", "may not search")],
)
def test_a_missing_index_privilege_is_refused_in_plan_naming_the_privilege(
    seeded_small, es_cluster, s3_server, s3_bucket, capsys, request_pattern, refused, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # what --s3-endpoint-url reads, as a user sets it
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    denied = es_error(
        403, "security_exception", "action [indices:data/read/search] is unauthorized for user [backfill]"
    )
    conf = {"start": "2024-03-01", "end": "2024-03-04", "s3_bucket": s3_bucket, "source": source_override(seeded_small)}
    with FaultProxy(es_cluster.url) as proxy:
        proxy.add_fault(request_pattern, denied, times=None)
        code = cli(["plan", "--conf", json.dumps(conf), "--es-url", proxy.url, "--s3-endpoint-url",
                    s3_server.endpoint_url])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"{refused} index {seeded_small.messages!r}" in err and "is unauthorized for user [backfill]" in err
    assert "grant the index privileges read and view_index_metadata" in err
    assert read_objects(s3_bucket, "") == {}
