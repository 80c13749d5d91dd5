"""Paging through snapshots that are lost, against a fake at the reader seam.

The fake numbers its documents (the ``_shard_doc`` tiebreaker) afresh for every point in time, in a
different order each time, as merges do; the real-cluster tests live in
``tests/integration/test_lost_point_in_time.py`` and ``test_engines.py``. Here: tie groups, page
boundaries and loss counts, for each read strategy.
"""

from __future__ import annotations

import pytest

from es_backfill.source import MAX_PIT_REOPENS, SCROLL, UNIQUE_SORT, SnapshotLost, SourceError
from tests.unit.fake_reader import FakeReader

SORT = [{"ts": "asc"}, {"id": "asc"}]


def _pages(reader: FakeReader, size: int) -> list[list[str]]:
    with reader.snapshot("messages", "1m") as snapshot:
        return [[hit["_id"] for hit in page] for page in snapshot.pages(query={}, sort=SORT, size=size)]


def _read(reader: FakeReader, size: int) -> list[str]:
    return [name for page in _pages(reader, size) for name in page]


def test_unique_keys_resume_exactly_after_a_loss_whatever_the_new_numbering():
    docs = [(t // 3, f"m{t:02d}", f"m{t:02d}") for t in range(20)]
    for strategy in ("point_in_time+_shard_doc", UNIQUE_SORT):
        for lost_search in range(2, 8):
            reader = FakeReader(docs, lose_on={lost_search}, strategy=strategy)
            assert _read(reader, size=3) == [name for _, _, name in docs], (strategy, lost_search)
            assert reader.requests["open_point_in_time"] == 2


def test_a_tie_group_split_by_a_page_boundary_keeps_its_size_after_a_loss():
    # Three documents share (ts, id); the first page ends after two of them, then the point in time goes.
    # The new point in time orders the group differently, so which member comes third is not known (the
    # related lookups fetch such a batch again; message ids may not tie at all), but none is added or lost.
    docs = [(1, "a", "a"), (2, "t", "t1"), (2, "t", "t2"), (2, "t", "t3"), (3, "z", "z")]
    names = _read(FakeReader(docs, lose_on={2}), size=3)
    assert names[0] == "a" and names[-1] == "z" and len(names) == 5
    assert len([n for n in names if n.startswith("t")]) == 3


def test_without_a_tiebreaker_a_page_never_ends_inside_a_tie_group():
    docs = [(1, "a", "a"), (2, "t", "t1"), (2, "t", "t2"), (2, "t", "t3"), (3, "y", "y"), (4, "z", "z")]
    pages = _pages(FakeReader(docs, lose_on=set(), strategy=UNIQUE_SORT), size=3)
    assert pages == [["a"], ["t1", "t2", "t3"], ["y", "z"]] or pages == [["a"], ["t3", "t2", "t1"], ["y", "z"]]


def test_without_a_tiebreaker_a_tie_group_larger_than_a_page_is_read_whole_in_a_larger_page():
    docs = [(1, "a", "a"), *((2, "t", f"t{i}") for i in range(7)), (3, "z", "z")]
    reader = FakeReader(docs, lose_on={3}, strategy=UNIQUE_SORT)  # and the point in time is lost meanwhile
    pages = _pages(reader, size=2)
    assert pages[0] == ["a"] and sorted(pages[1][:7]) == [f"t{i}" for i in range(7)] and pages[-1][-1] == "z"
    assert sum(map(len, pages)) == 9


def test_only_consecutive_losses_count_against_the_limit():
    docs = [(t, f"m{t:02d}", f"m{t:02d}") for t in range(30)]
    every_other = {2 * i for i in range(1, 12)}  # far more losses than the limit, never two in a row
    assert len(_read(FakeReader(docs, lose_on=every_other), size=3)) == 30
    in_a_row = set(range(2, 3 + MAX_PIT_REOPENS))
    with pytest.raises(SnapshotLost):
        _read(FakeReader(docs, lose_on=in_a_row), size=3)


def test_a_lost_scroll_fails_the_read_naming_the_restart_and_is_cleared_otherwise():
    docs = [(t, f"m{t:02d}", f"m{t:02d}") for t in range(10)]
    reader = FakeReader(docs, lose_on=set(), strategy=SCROLL)
    assert _read(reader, size=3) == [name for _, _, name in docs]
    assert reader.cleared == ["scroll-1"] and reader.requests["open_point_in_time"] == 0

    lost = FakeReader(docs, lose_on={3}, strategy=SCROLL)
    with pytest.raises(SnapshotLost, match=r"after 6 hits.*read again from its start"):
        _read(lost, size=3)
    assert lost.cleared == []  # a lost scroll is gone already


@pytest.mark.parametrize("strategy", ["point_in_time+_shard_doc", UNIQUE_SORT, SCROLL])
def test_a_related_batch_lost_on_every_read_fails_instead_of_looping(strategy: str):
    from es_backfill.config import RelatedIndex
    from es_backfill.enrich import RelatedLookup

    # Four related documents for message "m", two per request: every read of the batch loses its snapshot.
    docs = [(i, "m", f"h{i}") for i in range(4)]
    reader = FakeReader(
        docs, lose_on=set(range(3, 200, 3)) if strategy != SCROLL else set(range(2, 200)), strategy=strategy
    )
    spec = RelatedIndex("history", "history", "message_id", ("ts",), "many")
    with RelatedLookup(reader, [spec], "1m", page_size=2) as lookup, pytest.raises(SourceError, match="keep_alive"):
        lookup.fetch(["m"])
    assert reader.searches < 60


def test_a_tie_group_larger_than_a_page_that_loses_its_point_in_time_on_every_reread_fails_instead_of_looping():
    docs = [(1, "t", f"t{i}") for i in range(10)]  # one tie group, four pages long
    reader = FakeReader(docs, lose_on=set(range(3, 500, 2)))  # every second search from the third
    with pytest.raises(SnapshotLost):
        _read(reader, size=3)
    assert reader.searches < 30


def test_without_a_tiebreaker_the_largest_page_still_fits_one_request():
    docs = [(t, f"m{t:05d}", f"m{t:05d}") for t in range(10_001)]
    reader = FakeReader(docs, lose_on=set(), strategy=UNIQUE_SORT)
    sizes = []
    search = reader._search

    def recording(index, body, **rest):
        sizes.append(body["size"])
        return search(index, body, **rest)

    reader._search = recording  # type: ignore[method-assign]
    assert [len(page) for page in _pages(reader, size=10_000)] == [9_999, 2]
    assert max(sizes) == 10_000  # index.max_result_window


def test_two_batches_on_one_point_in_time_are_read_one_at_a_time_and_both_whole_after_losses():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    class Recording(FakeReader):
        """Notes how many searches run at once: a reopen in one batch must not meet a search of the other."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.active = self.most = 0
            self.guard = threading.Lock()

        def _search(self, index, body, scroll):
            with self.guard:
                self.active += 1
                self.most = max(self.most, self.active)
            try:
                time.sleep(0.002)
                return super()._search(index, body, scroll)
            finally:
                with self.guard:
                    self.active -= 1

    docs = [(i, f"id{i:02d}", f"d{i}") for i in range(30)]
    reader = Recording(docs, lose_on={3, 7, 12})
    reader.max_in_flight = 4
    reader._slots = threading.BoundedSemaphore(4)  # the reader would let both through: the snapshot must not
    with reader.snapshot("related", "1m") as snapshot, ThreadPoolExecutor(2) as pool:
        batches = list(pool.map(lambda _: snapshot.collect({}, SORT, 4), range(2)))
    assert reader.most == 1
    assert [sorted(hit["_id"] for hit in batch) for batch in batches] == [sorted(n for *_, n in docs)] * 2
