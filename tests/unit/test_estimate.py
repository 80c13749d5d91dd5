"""The dry run's run-time estimate: windows scheduled on the pool's slots as the scheduler fills them, and the
smallest pool that meets a target."""

from __future__ import annotations

import pytest

from es_backfill.plan import schedule_seconds, suggest_pool_slots
from es_backfill.summary import format_seconds


def test_windows_fill_the_first_free_slot_in_order():
    assert schedule_seconds([10, 10, 10, 10], 1) == 40
    assert schedule_seconds([10, 10, 10, 10], 2) == 20
    assert schedule_seconds([30, 10, 10, 10], 2) == 30  # the long window holds one slot, the others share
    assert schedule_seconds([10, 10], 8) == 10  # more slots than windows help no more
    assert schedule_seconds([], 4) == 0


@pytest.mark.parametrize(
    ("durations", "target", "slots"),
    [([10] * 8, 80, 1), ([10] * 8, 40, 2), ([10] * 8, 39, 3), ([10] * 8, 10, 8), ([10] * 8, 9, None),
     ([60, 5, 5, 5], 60, 2), ([], 10, None)],
)  # fmt: skip
def test_the_suggested_pool_is_the_smallest_that_meets_the_target(durations, target, slots):
    assert suggest_pool_slots(durations, target) == slots
    if slots:
        assert schedule_seconds(durations, slots) <= target
        assert slots == 1 or schedule_seconds(durations, slots - 1) > target


def test_durations_read_as_people_write_them():
    assert [format_seconds(s) for s in (0.4, 59, 61, 3599, 3600, 93784)] == ["0s", "59s", "1m 01s", "59m 59s",
                                                                              "1h 00m", "26h 03m"]  # fmt: skip
