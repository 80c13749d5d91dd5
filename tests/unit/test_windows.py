import itertools
from datetime import timedelta

import pytest

from es_backfill.windows import (
    Window,
    WindowError,
    balance,
    format_duration,
    parse_duration,
    parse_instant,
    split,
)
from tests.integration.support import utc


def test_split_covers_the_half_open_range_with_a_shorter_last_window():
    windows = split(utc(2024, 3, 1), utc(2024, 3, 3, 12), timedelta(days=1), max_windows=1024)
    assert [(w.start, w.end) for w in windows] == [
        (utc(2024, 3, 1), utc(2024, 3, 2)),
        (utc(2024, 3, 2), utc(2024, 3, 3)),
        (utc(2024, 3, 3), utc(2024, 3, 3, 12)),
    ]


def test_split_refuses_more_windows_than_the_mapping_limit_and_suggests_a_size():
    with pytest.raises(WindowError, match=r"2880 windows, more than the mapping limit of 1024.*at least 3m"):
        split(utc(2024, 3, 1), utc(2024, 3, 3), timedelta(minutes=1), max_windows=1024)


def test_split_refuses_an_empty_or_reversed_range():
    with pytest.raises(WindowError, match="must be after start"):
        split(utc(2024, 3, 2), utc(2024, 3, 1), timedelta(days=1), max_windows=10)


@pytest.mark.parametrize(("text", "seconds"), [("1d", 86400), ("6h", 21600), ("15m", 900), ("30s", 30)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0h", "1w", "h", "-1d", "1.5h"])
def test_parse_duration_rejects_bad_sizes(text):
    with pytest.raises(WindowError):
        parse_duration(text)


def test_parse_instant_reads_dates_and_offsets_as_utc():
    assert parse_instant("2024-03-01") == utc(2024, 3, 1)
    assert parse_instant("2024-03-01T06:00:00Z") == utc(2024, 3, 1, 6)
    assert parse_instant("2024-03-01T08:00:00+02:00") == utc(2024, 3, 1, 6)
    with pytest.raises(WindowError, match="not a date"):
        parse_instant("2024-02-30")


def test_window_names_are_stable_and_path_safe():
    window = Window(utc(2024, 3, 1), utc(2024, 3, 2))
    assert window.key == "20240301T000000Z_20240302T000000Z"
    assert window.label == "2024-03-01 00:00 → 2024-03-02 00:00"
    assert Window.from_dict(window.to_dict()) == window


def test_format_duration_rounds_up_to_a_readable_unit():
    assert [format_duration(s) for s in (45, 90, 5000, 90000)] == ["45s", "2m", "2h", "2d"]


def test_balance_cuts_where_the_documents_are():
    # 90 documents on day one, 10 spread over the next 9 days: three balanced windows cut inside day one.
    buckets = [(utc(2024, 3, 1, h), 30) for h in (0, 1, 2)] + [(utc(2024, 3, d), 1) for d in range(2, 12)]
    windows = balance(buckets, utc(2024, 3, 1), utc(2024, 3, 12), 3)
    assert windows[0].start == utc(2024, 3, 1) and windows[-1].end == utc(2024, 3, 12)
    assert [w.end for w in windows[:-1]] == [utc(2024, 3, 1, 2), utc(2024, 3, 2)]
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
