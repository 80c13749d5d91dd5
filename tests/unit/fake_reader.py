"""A fake at the reader seam (``EsReader``'s ``call``, ``search`` and its client's point-in-time calls)."""

from __future__ import annotations

from typing import Any

from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import NotFoundError


def lost_pit() -> NotFoundError:
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
            raise lost_pit()
        order = self.docs if self.generation % 2 else list(reversed(self.docs))
        hits = sorted(
            (
                {"_index": "fake", "_id": name, "_source": {"message_id": doc_id}, "sort": [ts, doc_id, shard_doc]}
                for shard_doc, (ts, doc_id, name) in enumerate(order)
            ),
            key=lambda h: h["sort"],
        )
        after = body.get("search_after")
        if after is not None:
            hits = [h for h in hits if h["sort"] > after]
        return {"hits": {"hits": hits[: body["size"]]}}
