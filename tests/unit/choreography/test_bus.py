"""The bus on the in-process stream (fakeredis): claims, dead letters, replay, trimming."""

from __future__ import annotations

import fakeredis
import pytest

from sagakit.choreography import Bus, DeadLetterNotFound, SagaEvent


@pytest.fixture
def bus() -> Bus:
    return Bus(fakeredis.FakeRedis(), "t:stream", claim_idle=0.0, max_deliveries=2, block=0)


def test_an_entry_a_consumer_left_pending_is_claimed_with_its_delivery_count(bus: Bus) -> None:
    bus.ensure_group("g")
    bus.publish([SagaEvent("x", "s1", "t")])
    (entry,) = bus.read("g", "dead-one")
    ((claimed, deliveries),) = bus.reclaim("g", "live-one")
    assert claimed[0] == entry[0] and deliveries == 2


def test_a_dead_letter_keeps_its_error_and_its_replay_counts_on(bus: Bus) -> None:
    bus.ensure_group("g")
    bus.publish([SagaEvent("x", "s1", "t", {"k": 1})])
    (entry,) = bus.read("g", "c")
    bus.note_error("g", entry[0], "RuntimeError: boom")
    bus.dead_letter("g", entry, 2)
    (letter,) = bus.dead_letters()
    assert (letter.group, letter.error, letter.deliveries) == ("g", "RuntimeError: boom", 2)
    assert not bus.client.xpending("t:stream", "g")["pending"]  # acknowledged
    bus.replay(letter.id)
    assert bus.dead_letters() == []
    (again,) = bus.read("g", "c")
    assert again[1][b"replayed"] == b"2"
    assert SagaEvent.from_fields(again[1]).data == {"k": 1}
    with pytest.raises(DeadLetterNotFound):
        bus.replay(letter.id)
    with pytest.raises(DeadLetterNotFound):
        bus.replay("not-an-id")


def test_trimming_keeps_what_a_group_still_needs(bus: Bus) -> None:
    bus.ensure_group("fast")
    bus.ensure_group("slow")
    ids = bus.publish([SagaEvent("x", f"s{i}", "t") for i in range(5)])
    for entry_id, _ in bus.read("fast", "c", count=5):
        bus.ack("fast", entry_id)
    pending = bus.read("slow", "c", count=2)  # delivered, not acknowledged
    bus.trim()
    kept = [i.decode() for i, _ in bus.client.xrange("t:stream")]
    assert pending[0][0] in kept and set(ids[2:]) <= set(kept)


def test_a_lost_group_is_made_again(bus: Bus) -> None:
    bus.ensure_group("g")
    bus.client.delete("t:stream")  # as after a Redis restart without persistence
    assert bus.read("g", "c") == []
    bus.publish([SagaEvent("x", "s1", "t")])
    assert len(bus.read("g", "c")) == 1
