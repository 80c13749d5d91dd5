"""A batch of related lookups that overflows a request keeps what the answer holds completely and asks again only
for the rest; every message still gets exactly its documents, however the batch splits.

The engine here is a fake at the reader seam that answers ``terms`` searches as Elasticsearch does: sorted by the
smallest join value of each document, then the sort fields, cut at ``size``, and pages of a point in time after a
``search_after`` key.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from es_backfill.config import RelatedIndex
from es_backfill.enrich import RelatedLookup, complete_ids
from es_backfill.source import SHARD_DOC, Cluster, Reader

SPEC = RelatedIndex("history", "history", "message_id", ("ts",), "many")


class TermsEngine(Reader):
    """``docs``: (document id, join values, ts). Counts the ids every search looks up."""

    def __init__(self, docs: list[tuple[str, list[str], int]]) -> None:
        super().__init__(max_retries=0)
        self.cluster = Cluster("elasticsearch", "9.5.4", "fake", SHARD_DOC)
        self.docs = docs
        self.looked_up = 0

    def close(self) -> None:
        pass

    def _error_status(self, exc: BaseException) -> tuple[int | None, str] | None:
        return None

    def _open_pit(self, index: str, keep_alive: str) -> str:
        return "pit"

    def _close_pit(self, pit_id: str) -> None:
        pass

    def _search(self, index: str | None, body: dict[str, Any], scroll: str | None) -> dict[str, Any]:
        (ids,) = (set(values) for values in body["query"]["bool"]["filter"][0]["terms"].values())
        self.looked_up += len(ids)
        tiebreaker = "_shard_doc" in body["sort"]
        hits = sorted(
            (
                {"_index": "history", "_id": doc_id, "_source": {"message_id": values, "ts": ts},
                 "sort": [min(values), ts, *([n] if tiebreaker else [])]}
                for n, (doc_id, values, ts) in enumerate(self.docs)
                if ids & set(values)
            ),
            key=lambda h: h["sort"],
        )  # fmt: skip
        if "search_after" in body:
            hits = [h for h in hits if h["sort"] > body["search_after"]]
        return {"hits": {"hits": hits[: body["size"]]}, "_shards": {"failed": 0}}

    def _root(self) -> dict[str, Any]:
        raise NotImplementedError

    _count = _field_mapping = _mappings = _scroll = _clear_scroll = _root


def _expected(docs: list[tuple[str, list[str], int]], ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    by_id: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    for doc_id, values, ts in docs:
        for value in dict.fromkeys(values):
            if value in ids:
                by_id.setdefault(value, []).append((ts, doc_id, {"message_id": values, "ts": ts}))
    return {mid: [source for _, _, source in sorted(found)] for mid, found in by_id.items()}


def test_a_full_answer_completes_the_ids_it_shows_before_its_last_one():
    found = [{"sort": [v, 0]} for v in ("a", "a", "b", "c")]
    assert complete_ids(found, ["a", "b", "c", "d"], page_size=4) == ({"a", "b"}, ["c", "d"])
    assert complete_ids(found[:3], ["a", "b", "x"], page_size=4) == ({"a", "b", "x"}, [])  # not full: all of them


def test_sort_values_that_are_not_the_ids_as_written_complete_nothing():
    normalised = [{"sort": [v, 0]} for v in ("abc", "abd")]  # a lowercase normaliser on "ABC", "ABD"
    assert complete_ids(normalised, ["ABC", "ABD"], page_size=2) == (set(), ["ABC", "ABD"])
    numeric = [{"sort": [v, 0]} for v in (1, 2)]
    assert complete_ids(numeric, ["1", "2"], page_size=2) == (set(), ["1", "2"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=3), st.integers(0, 5)), max_size=40),
    st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=8, unique=True),
    st.integers(1, 7),
)
def test_every_message_gets_exactly_its_documents_however_the_batch_splits(raw, ids, page_size):
    docs = [(f"d{n:02}", values, ts) for n, (values, ts) in enumerate(raw)]
    engine = TermsEngine(docs)
    with RelatedLookup(engine, [SPEC], "1m", page_size=page_size) as lookup:
        assert lookup.fetch(ids)["history"] == _expected(docs, ids)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 5)), max_size=30), st.integers(1, 7))
def test_a_join_on_a_multi_field_joins_by_the_value_sorted_by_whether_or_not_the_batch_splits(raw, page_size):
    # "message_id.keyword" is not in _source: the join value is the one each document was sorted by.
    docs = [(f"d{n:02}", [value], ts) for n, (value, ts) in enumerate(raw)]
    keyword = RelatedIndex("history", "history", "message_id.keyword", ("ts",), "many")
    ids = list("abcdefgh")
    with RelatedLookup(TermsEngine(docs), [keyword], "1m", page_size=page_size) as lookup:
        assert lookup.fetch(ids)["history"] == _expected(docs, ids)


def test_an_overflowing_batch_looks_each_id_up_about_once_not_once_per_page():
    # 200 messages with 3 documents each; requests of 100 documents hold 33 messages and a part.
    docs = [(f"{m:03}-{k}", [f"m{m:03}"], k) for m in range(200) for k in range(3)]
    engine = TermsEngine(docs)
    ids = [f"m{m:03}" for m in range(200)]
    with RelatedLookup(engine, [SPEC], "1m", page_size=100) as lookup:
        assert sum(map(len, lookup.fetch(ids)["history"].values())) == 600
    # Re-reading the whole batch in 6 pages would look 200 ids up 7 times (1,400); each request here asks for
    # the ids left: 200 + 167 + 134 + ... about 700, and no point in time is opened.
    assert engine.looked_up < 800 and engine.requests["open_point_in_time"] == 0
