"""The lease on a backfill's output, against the real S3 server's conditional writes: one holder at a time,
renewed by its holder, taken over only once expired or forced, released by its holder only."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from es_backfill.config import from_params, load_defaults
from es_backfill.lease import Holder, LeaseHeld, hold, release
from es_backfill.manifest import lease_key
from es_backfill.sink import ObjectStore
from tests.integration.support import s3_client

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
FIRST = Holder("manual__2026-11-29T10:00:00+00:00", "2026-11-29T10:00:01Z")
SECOND = Holder("manual__2026-11-29T10:00:05+00:00", "2026-11-29T10:00:06Z")


@pytest.fixture
def store(s3_server, s3_bucket):
    return ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket)


def _config(bucket: str, name: str = "lease-test"):
    return from_params({"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": bucket, "backfill_name": name,
                        "s3_prefix": "leases"}, DEFAULTS)  # fmt: skip


def test_a_second_run_is_refused_naming_the_holder_and_the_holder_renews_it(store, s3_bucket):
    config = _config(s3_bucket)
    taken = hold(store, config, FIRST)
    with pytest.raises(LeaseHeld) as refused:
        hold(store, config, SECOND)
    message = str(refused.value)
    assert f"run {FIRST.run_id!r}, started {FIRST.run_started}" in message
    assert '"force_lease": true' in message and "another backfill_name" in message
    renewed = hold(store, config, FIRST)  # a cleared task of the holding run
    assert renewed["run_id"] == FIRST.run_id and renewed["expires"] >= taken["expires"]
    # Another backfill has its own lease.
    assert hold(store, _config(s3_bucket, "other-backfill"), SECOND)["run_id"] == SECOND.run_id


def test_an_expired_lease_is_taken_over_and_force_takes_a_live_one(store, s3_bucket):
    config = _config(s3_bucket)
    hold(store, config, FIRST)
    body, etag = store.get_with_etag(lease_key(config))
    expired = orjson.loads(body) | {"expires": "2026-01-01T00:00:00Z"}  # its holder died long ago
    store.put_conditional(lease_key(config), orjson.dumps(expired), if_match=etag)
    assert hold(store, config, SECOND)["run_id"] == SECOND.run_id
    with pytest.raises(LeaseHeld):
        hold(store, config, FIRST)
    assert hold(store, config, FIRST, force=True)["run_id"] == FIRST.run_id


def test_only_the_holder_releases_it(store, s3_bucket):
    config = _config(s3_bucket)
    hold(store, config, FIRST)
    assert release(store, config, SECOND) is False
    assert store.get(lease_key(config)) is not None
    assert release(store, config, FIRST) is True
    assert store.get(lease_key(config)) is None
    assert hold(store, config, SECOND)["run_id"] == SECOND.run_id


def test_of_many_runs_racing_for_a_free_lease_exactly_one_gets_it(store, s3_bucket):
    config = _config(s3_bucket)
    holders = [Holder(f"run-{i}", "2026-11-29T10:00:00Z") for i in range(8)]
    outcomes: dict[str, str] = {}
    start = threading.Barrier(len(holders))

    def race(holder: Holder) -> None:
        start.wait()
        try:
            hold(store, config, holder)
            outcomes[holder.run_id] = "held"
        except LeaseHeld:
            outcomes[holder.run_id] = "refused"

    threads = [threading.Thread(target=race, args=(h,)) for h in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes.values()) == ["held"] + ["refused"] * 7
    winner = next(run for run, outcome in outcomes.items() if outcome == "held")
    assert orjson.loads(store.get(lease_key(config)))["run_id"] == winner


def test_many_tasks_of_the_holding_run_renewing_at_once_all_keep_it(store, s3_bucket):
    config = _config(s3_bucket)
    hold(store, config, FIRST)
    body, etag = store.get_with_etag(lease_key(config))
    stale = orjson.loads(body) | {"expires": "2026-01-01T00:00:00Z"}  # due for renewal by every task at once
    store.put_conditional(lease_key(config), orjson.dumps(stale), if_match=etag)
    failures: list[Exception] = []
    start = threading.Barrier(8)

    def renew() -> None:
        start.wait()
        try:
            hold(store, config, FIRST)
        except LeaseHeld as err:
            failures.append(err)

    threads = [threading.Thread(target=renew) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    renewed = datetime.fromisoformat(orjson.loads(store.get(lease_key(config)))["expires"])
    assert renewed > datetime.now(UTC)


def test_a_run_that_lost_the_lease_commits_no_further_object_and_writes_no_manifest_over_changed_bytes(
    store, s3_bucket
):
    from es_backfill.extract import _require_own_bytes
    from es_backfill.lease import Heartbeat
    from es_backfill.sink import PartWriter
    from es_backfill.windows import Window

    config = _config(s3_bucket)
    hold(store, config, FIRST)
    heartbeat = Heartbeat(store, config, FIRST)
    writer = PartWriter(store, "leases/w", "jsonl", max_records=1, max_bytes=10**9, before_commit=heartbeat.confirm)
    writer.write("m1", b'{"a":1}\n')  # committed while the lease is FIRST's
    hold(store, config, SECOND, force=True)  # taken over with force_lease
    heartbeat._confirmed = float("-inf")  # a second later
    with pytest.raises(LeaseHeld):
        writer.write("m2", b'{"a":2}\n')  # the part is complete but not committed
    writer.abort()
    assert [o["Key"] for o in store.list("leases/w/")] == ["leases/w/part-00000.jsonl"]
    # The new holder overwrites that part: the old holder's ETag no longer matches, so it writes no manifest.
    store.put("leases/w/part-00000.jsonl", b'{"a":"new"}\n')
    window = Window(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC))
    with pytest.raises(LeaseHeld, match="objects changed after this attempt uploaded them"):
        _require_own_bytes(window, list(store.list("leases/w/")), writer.etags)


def test_plan_refuses_an_s3_that_ignores_conditional_writes(store, s3_bucket, monkeypatch):
    from es_backfill.config import ConfigError
    from es_backfill.lease import require_conditional_writes

    config = _config(s3_bucket)
    require_conditional_writes(store, config)  # the test server honours If-None-Match
    monkeypatch.setattr(store, "put_conditional", lambda key, data, **condition: store.put(key, data))
    with pytest.raises(ConfigError, match="accepted a second If-None-Match"):
        require_conditional_writes(store, config)
    assert list(store.list("leases/")) == []  # the probe is gone


def test_an_attempt_whose_window_a_later_try_claimed_commits_nothing_more(store, s3_bucket):
    from es_backfill.lease import AttemptSuperseded, Heartbeat
    from es_backfill.sink import PartWriter

    config = _config(s3_bucket)
    claim_key = "leases/w/_attempt.json"
    first_try, second_try = (Holder(FIRST.run_id, FIRST.run_started, try_number) for try_number in (1, 2))
    paused = Heartbeat(store, config, first_try, claim_key)
    paused.claim()
    paused.now()
    writer = PartWriter(store, "leases/w", "jsonl", max_records=1, max_bytes=10**9, before_commit=paused.confirm)
    writer.write("m1", b'{"a":1}\n')  # committed while the window is the first try's
    retry = Heartbeat(store, config, second_try, claim_key)  # Airflow gave the first try up: the retry starts
    retry.claim()
    retry.now()
    paused._confirmed = float("-inf")  # the paused worker wakes up, a while later
    with pytest.raises(
        AttemptSuperseded, match=re.escape(f"try 1 stops writing, because try 2 of run '{FIRST.run_id}'")
    ):
        writer.write("m2", b'{"a":2}\n')
    writer.abort()
    assert sorted(o["Key"] for o in store.list("leases/w/")) == ["leases/w/_attempt.json", "leases/w/part-00000.jsonl"]
    retry.finish()  # the retry's manifest comes next: its claim is gone, and the first try still may not write
    assert [o["Key"] for o in store.list("leases/w/")] == ["leases/w/part-00000.jsonl"]
    with pytest.raises(AttemptSuperseded, match="its claim is gone"):
        paused.finish()


def test_an_attempt_given_up_before_it_claimed_its_window_neither_claims_it_nor_takes_the_lease(store, s3_bucket):
    from es_backfill.lease import AttemptSuperseded, Heartbeat

    config = _config(s3_bucket)
    claim_key = "leases/w/_attempt.json"
    retry = Heartbeat(store, config, Holder(FIRST.run_id, FIRST.run_started, 2), claim_key)
    retry.claim()
    claimed = store.get(claim_key)
    paused = Heartbeat(store, config, Holder(FIRST.run_id, FIRST.run_started, 1), claim_key)
    with pytest.raises(
        AttemptSuperseded, match=re.escape(f"try 1 stops writing, because try 2 of run '{FIRST.run_id}'")
    ):
        paused.claim()
    assert store.get(claim_key) == claimed and store.get(lease_key(config)) is None
    # A cleared task's next try, or another run, claims the window over an earlier claim.
    Heartbeat(store, config, Holder(FIRST.run_id, FIRST.run_started, 3), claim_key).claim()
    Heartbeat(store, config, SECOND, claim_key).claim()
    assert orjson.loads(store.get(claim_key))["run_id"] == SECOND.run_id


class ClaimedInTheGap(ObjectStore):
    """A store on which a later attempt claims the window between an attempt's last check and its removing the claim."""

    def __init__(self, store: ObjectStore, later) -> None:
        super().__init__(store.client, store.bucket)
        self.later = later

    def delete_conditional(self, key: str, *, if_match: str) -> None:
        if key.endswith("/_attempt.json"):
            self.later.claim()
        super().delete_conditional(key, if_match=if_match)


def test_an_attempt_finishing_as_a_later_one_claims_the_window_leaves_that_claim_and_stops(store, s3_bucket):
    from es_backfill.lease import AttemptSuperseded, Heartbeat

    config = _config(s3_bucket)
    claim_key = "leases/w/_attempt.json"
    retry = Heartbeat(store, config, Holder(FIRST.run_id, FIRST.run_started, 2), claim_key)
    paused = Heartbeat(ClaimedInTheGap(store, retry), config, Holder(FIRST.run_id, FIRST.run_started, 1), claim_key)
    paused.claim()
    with pytest.raises(AttemptSuperseded, match="because try 2 of run"):
        paused.finish()
    assert orjson.loads(store.get(claim_key))["try_number"] == 2
