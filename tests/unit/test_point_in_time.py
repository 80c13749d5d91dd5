"""Paging through a point in time that is lost and reopened, against a fake at the reader seam.

The fake numbers its documents (the ``_shard_doc`` tiebreaker) afresh for every point in time, in a
different order each time, as merges do; the real-cluster test lives in
``tests/integration/test_lost_point_in_time.py``. Here: tie groups, page boundaries and loss counts.
"""

from __future__ import annotations

import pytest
from elasticsearch import NotFoundError

from es_backfill.source import MAX_PIT_REOPENS, PointInTime
from tests.unit.fake_reader import FakeReader

SORT = [{"ts": "asc"}, {"id": "asc"}, "_shard_doc"]


def _read(reader: FakeReader, size: int) -> list[str]:
    with PointInTime(reader, "messages", "1m") as pit:  # type: ignore[arg-type]
        return [hit["_id"] for page in pit.pages(query={}, sort=SORT, size=size) for hit in page]


def test_unique_keys_resume_exactly_after_a_loss_whatever_the_new_numbering():
    docs = [(t // 3, f"m{t:02d}", f"m{t:02d}") for t in range(20)]
    for lost_search in range(2, 8):
        reader = FakeReader(docs, lose_on={lost_search})
        assert _read(reader, size=3) == [name for _, _, name in docs], lost_search


def test_a_tie_group_split_by_a_page_boundary_keeps_its_size_after_a_loss():
    # Three documents share (ts, id); the first page ends after two of them, then the point in time goes.
    # The new point in time orders the group differently, so which member comes third is not known (the
    # related lookups fetch such a batch again; message ids may not tie at all), but none is added or lost.
    docs = [(1, "a", "a"), (2, "t", "t1"), (2, "t", "t2"), (2, "t", "t3"), (3, "z", "z")]
    names = _read(FakeReader(docs, lose_on={2}), size=3)
    assert names[0] == "a" and names[-1] == "z" and len(names) == 5
    assert len([n for n in names if n.startswith("t")]) == 3


def test_only_consecutive_losses_count_against_the_limit():
    docs = [(t, f"m{t:02d}", f"m{t:02d}") for t in range(30)]
    every_other = {2 * i for i in range(1, 12)}  # far more losses than the limit, never two in a row
    assert len(_read(FakeReader(docs, lose_on=every_other), size=3)) == 30
    in_a_row = set(range(2, 3 + MAX_PIT_REOPENS))
    with pytest.raises(NotFoundError):
        _read(FakeReader(docs, lose_on=in_a_row), size=3)


def test_a_related_batch_whose_point_in_time_is_lost_on_every_read_fails_instead_of_looping():
    from es_backfill.config import RelatedIndex
    from es_backfill.enrich import RelatedLookup
    from es_backfill.source import SourceError

    # Four related documents for message "m", two per request: every read of the batch loses its point in time.
    docs = [(i, "m", f"h{i}") for i in range(4)]
    reader = FakeReader(docs, lose_on=set(range(3, 200, 3)))
    spec = RelatedIndex("history", "history", "message_id", ("ts",), "many")
    with RelatedLookup(reader, [spec], "1m", page_size=2) as lookup, pytest.raises(SourceError, match="keep_alive"):  # type: ignore[arg-type]
        lookup.fetch(["m"])
    assert reader.searches < 40


def test_a_tie_group_larger_than_a_page_that_loses_its_point_in_time_on_every_reread_fails_instead_of_looping():
    docs = [(1, "t", f"t{i}") for i in range(10)]  # one tie group, four pages long
    reader = FakeReader(docs, lose_on=set(range(3, 500, 2)))  # every second search from the third
    with pytest.raises(NotFoundError):
        _read(reader, size=3)
    assert reader.searches < 30
