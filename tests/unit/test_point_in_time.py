"""Paging through a point in time that is lost and reopened, against a fake at the reader seam.

The fake numbers its documents (the ``_shard_doc`` tiebreaker) afresh for every point in time, in a
different order each time, as merges do; the real-cluster test lives in
``tests/integration/test_lost_point_in_time.py``. Here: tie groups, page boundaries and loss counts.
"""

from __future__ import annotations

from typing import Any

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import NotFoundError

from es_backfill.source import MAX_PIT_REOPENS, PointInTime

SORT = [{"ts": "asc"}, {"id": "asc"}, "_shard_doc"]


def _lost() -> NotFoundError:
    meta = ApiResponseMeta(404, "1.1", HttpHeaders(), 0.0, NodeConfig("http", "localhost", 9200))
    reason = {"type": "search_context_missing_exception", "reason": "No search context found for id [7]"}
    return NotFoundError("search_phase_execution_exception", meta, {"error": {"root_cause": [reason]}})


class FakeReader:
    """Answers ``search`` like a point in time over ``docs`` ((ts, id, name) tuples) and loses the point
    in time on the searches numbered in ``lose_on``; each new point in time reverses the numbering."""

    def __init__(self, docs: list[tuple[int, str, str]], lose_on: set[int]) -> None:
        self.docs = docs
        self.lose_on = lose_on
        self.searches = 0
        self.generation = 0
        self.client = self

    def call(self, name: str, fn: Any, **kwargs: Any) -> Any:
        return fn(**kwargs)

    def open_point_in_time(self, index: str, keep_alive: str) -> dict[str, str]:
        self.generation += 1
        return {"id": f"pit-{self.generation}"}

    def close_point_in_time(self, id: str) -> None:
        pass

    def search(self, **body: Any) -> dict[str, Any]:
        self.searches += 1
        if self.searches in self.lose_on:
            raise _lost()
        order = self.docs if self.generation % 2 else list(reversed(self.docs))
        hits = sorted(
            ({"_id": name, "sort": [ts, doc_id, shard_doc]} for shard_doc, (ts, doc_id, name) in enumerate(order)),
            key=lambda h: h["sort"],
        )
        after = body.get("search_after")
        if after is not None:
            hits = [h for h in hits if h["sort"] > after]
        return {"hits": {"hits": hits[: body["size"]]}}


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
