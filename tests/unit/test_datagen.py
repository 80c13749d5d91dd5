from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest

from include.dev.datagen import DatasetSpec, generate

START = datetime(2024, 3, 1, tzinfo=UTC)
END = datetime(2024, 3, 4, tzinfo=UTC)


def _spec(**overrides) -> DatasetSpec:
    return DatasetSpec(**{"messages": 300, "start": START, "end": END, "seed": 7, **overrides})


def test_same_seed_gives_same_documents():
    assert list(generate(_spec())) == list(generate(_spec()))


def test_different_seed_gives_different_documents():
    assert list(generate(_spec(seed=1))) != list(generate(_spec(seed=2)))


def test_related_document_counts_stay_within_configured_bounds():
    per_message: dict[str, Counter] = defaultdict(Counter)
    for role, _, source in generate(_spec(max_history=3, max_audit=2)):
        per_message[source["message_id"]][role] += 1
    assert len(per_message) == 300
    assert all(c["messages"] == 1 for c in per_message.values())
    assert max(c["history"] for c in per_message.values()) <= 3
    assert max(c["audit"] for c in per_message.values()) <= 2
    assert max(c["status"] for c in per_message.values()) <= 1
    # the bounds are reached, not just respected
    assert max(c["history"] for c in per_message.values()) == 3
    assert any(c["history"] + c["audit"] + c["status"] == 0 for c in per_message.values())


def test_message_timestamps_fall_within_the_half_open_range():
    for role, _, source in generate(_spec()):
        if role == "messages":
            moment = datetime.fromisoformat(source["@timestamp"])
            assert START <= moment < END


def test_text_includes_non_ascii_characters():
    bodies = " ".join(s["body"] for role, _, s in generate(_spec()) if role == "messages")
    assert any(ord(ch) > 0xFFFF for ch in bodies)  # emoji, outside the BMP
    assert "日本語" in bodies or "Привет" in bodies


def test_no_related_ratio_of_one_gives_messages_only():
    assert {role for role, _, _ in generate(_spec(no_related_ratio=1.0))} == {"messages"}


@pytest.mark.parametrize(
    "overrides",
    [{"end": START}, {"messages": -1}, {"no_related_ratio": 1.5}, {"start": datetime(2024, 3, 1)}],
)
def test_invalid_specs_are_rejected(overrides):
    with pytest.raises(ValueError):
        _spec(**overrides)
