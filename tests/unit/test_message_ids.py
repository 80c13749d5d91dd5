"""The backfill-wide id check of ``verify`` keeps its digests on disk, partitioned, and finds exactly the repeats
the in-memory check finds, naming the same ids."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from es_backfill.records import MessageIds

IDS = st.one_of(st.text(max_size=8), st.integers(-(2**70), 2**70), st.sampled_from(["m1", "m2", "\ud800", "é"]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(IDS, st.none()), max_size=MessageIds.EXAMPLES))
def test_spilled_and_in_memory_checks_find_the_same_repeats(ids):
    in_memory, spilled = MessageIds("message_id"), MessageIds("message_id", spill=True)
    for n, message_id in enumerate(ids):
        assert in_memory.add(message_id, f"doc {n}") == spilled.add(message_id, f"doc {n}")
    expected = in_memory.problems()
    for _ in range(2):  # asked twice: the same answer
        found = spilled.problems()
        assert [p.split(" (e.g.")[0] for p in found] == [p.split(" (e.g.")[0] for p in expected]
        # The same ids named, in the partitions' order rather than as met.
        assert sorted(spilled.duplicates) == sorted(in_memory.duplicates)
        assert spilled.missing == in_memory.missing


def test_repeats_across_many_partitions_are_counted_and_named():
    spilled = MessageIds("message_id", spill=True)
    for n in range(20_000):
        spilled.add(f"msg-{n}", "")
    for n in (5, 7, 19_999):
        spilled.add(f"msg-{n}", "")
    (problem,) = spilled.problems()
    assert problem.startswith("3 messages repeat an earlier id (e.g. ")
    assert sorted(problem[problem.index("e.g. ") + 5 : -1].split(", ")) == ["msg-19999", "msg-5", "msg-7"]
