"""A fake at the reader seam: a :class:`~es_backfill.source.Reader` whose primitives answer from a list."""

from __future__ import annotations

from typing import Any

from es_backfill.source import SHARD_DOC, Cluster, Reader


class LostContext(Exception):
    """What the fake engine raises for a lost point in time or scroll."""


class FakeReader(Reader):
    """Answers searches like a point in time (or scroll) over ``docs`` ((ts, id, name) tuples) sorted by
    (ts, id) and loses the snapshot on the searches numbered in ``lose_on``; each new point in time
    numbers the documents (the ``_shard_doc`` tiebreaker) in the reverse order of the previous one."""

    def __init__(self, docs: list[tuple[int, str, str]], lose_on: set[int], strategy: str = SHARD_DOC) -> None:
        super().__init__(max_retries=0)
        self.cluster = Cluster("elasticsearch", "9.5.4", "fake", strategy)
        self.docs = docs
        self.lose_on = lose_on
        self.searches = 0
        self.generation = 0
        self.cleared: list[str] = []

    def close(self) -> None:
        pass

    def _error_status(self, exc: BaseException) -> tuple[int | None, str] | None:
        if isinstance(exc, LostContext):
            return 404, "search_context_missing_exception: No search context found for id [7]"
        return None

    def _open_pit(self, index: str, keep_alive: str) -> str:
        self.generation += 1
        return f"pit-{self.generation}"

    def _close_pit(self, pit_id: str) -> None:
        pass

    def _hits(self) -> list[dict[str, Any]]:
        order = self.docs if self.generation % 2 else list(reversed(self.docs))
        with_tiebreaker = self.cluster.strategy == SHARD_DOC
        return sorted(
            (
                {
                    "_index": "fake",
                    "_id": name,
                    "_source": {"message_id": doc_id},
                    "sort": [ts, doc_id, shard_doc] if with_tiebreaker else [ts, doc_id],
                }
                for shard_doc, (ts, doc_id, name) in enumerate(order)
            ),
            key=lambda h: h["sort"],
        )

    def _search(self, index: str | None, body: dict[str, Any], scroll: str | None) -> dict[str, Any]:
        self.searches += 1
        if self.searches in self.lose_on:
            raise LostContext()
        hits = self._hits()
        after = body.get("search_after")
        if after is not None:
            hits = [h for h in hits if h["sort"] > after]
        response: dict[str, Any] = {"hits": {"hits": hits[: body["size"]]}}
        if scroll:
            self._scrolled = hits[body["size"] :]
            self._page = body["size"]
            response["_scroll_id"] = "scroll-1"
        return response

    def _scroll(self, scroll_id: str, keep_alive: str) -> dict[str, Any]:
        self.searches += 1
        if self.searches in self.lose_on:
            raise LostContext()
        page, self._scrolled = self._scrolled[: self._page], self._scrolled[self._page :]
        return {"hits": {"hits": page}, "_scroll_id": scroll_id}

    def _clear_scroll(self, scroll_id: str) -> None:
        self.cleared.append(scroll_id)

    def _root(self) -> dict[str, Any]:
        raise NotImplementedError

    def _count(self, index: str, query: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _field_mapping(self, index: str, fields: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def _mappings(self, index: str) -> dict[str, Any]:
        raise NotImplementedError
