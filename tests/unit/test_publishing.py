"""The rate rules of what the book agent publishes, on a driven clock."""

from __future__ import annotations

from app.publishing import DepthPublisher, LogLimiter, ResyncRetry, TopConflater


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_resync_requests_are_repeated_with_backoff_never_more_than_a_minute_apart() -> None:
    clock = Clock()
    retry = ResyncRetry(5.0, clock=clock)
    waits = []
    retry.requested("okx:BTC-USDT")
    for _ in range(8):
        (at, _wait), = retry.pending.values()
        waits.append(at - clock.now)
        clock.now = at - 0.001
        assert retry.due() == []
        clock.now = at
        assert retry.due() == ["okx:BTC-USDT"]
        retry.requested("okx:BTC-USDT")  # the repeat went out
    assert waits == [5, 10, 20, 40, 60, 60, 60, 60]
    retry.done("okx:BTC-USDT")
    clock.now += 3600
    assert retry.due() == []


def test_a_log_line_per_reason_per_interval_with_the_count_left_out() -> None:
    clock = Clock()
    limiter = LogLimiter(5.0, clock=clock)
    assert limiter.allow("bad-json") == (True, 0)
    assert [limiter.allow("bad-json")[0] for _ in range(3)] == [False, False, False]
    assert limiter.allow("bad-levels") == (True, 0)  # another reason has its own window
    clock.now += 5
    assert limiter.allow("bad-json") == (True, 3)


def test_depth_is_published_at_most_once_per_interval_and_the_last_change_always_goes_out() -> None:
    clock = Clock()
    sent: list[tuple[str, float]] = []
    depth = DepthPublisher(0.1, lambda key: sent.append((key, clock.now)), clock=clock)
    assert not depth.due()
    depth.touch("a")
    assert sent == []  # a change only marks its book: the frame path builds no aggregate
    assert depth.due()  # never published: due at once
    clock.now += 0.03
    depth.touch("a")
    depth.touch("b")
    depth.flush()
    assert sent == [("a", 1000.03), ("b", 1000.03)]
    assert not depth.due()
    depth.touch("a")  # within the interval: waits
    clock.now += 0.05
    assert not depth.due()
    depth.flush()
    assert len(sent) == 2
    clock.now += 0.06
    assert depth.due()  # the interval since the last one passed: the waiting change goes out
    depth.flush()
    assert sent[-1] == ("a", clock.now)
    clock.now += 1
    assert not depth.due()
    depth.flush()
    assert len(sent) == 3  # nothing changed since


def test_a_depth_flush_stops_at_its_budget_and_the_longest_waiting_go_first() -> None:
    clock = Clock()
    sent: list[str] = []

    def publish(key: str) -> None:  # each aggregate takes 2 ms of the clock
        sent.append(key)
        clock.now += 0.002

    depth = DepthPublisher(1.0, publish, clock=clock)
    for key in "abcdef":
        depth.touch(key)
        clock.now += 0.01
    for key in "fedcba":  # all within their interval: they wait
        depth.touch(key)
    sent.clear()
    clock.now += 1.0
    depth.flush(budget_s=0.005)
    assert sent == ["a", "b", "c"]  # published longest ago first; stopped once 5 ms were spent
    depth.flush(budget_s=0.005)
    assert sent == ["a", "b", "c", "d", "e", "f"]
    depth.flush(budget_s=0.005)
    assert len(sent) == 6


def test_conflated_tops_are_the_latest_per_instrument_once_per_interval() -> None:
    clock = Clock()
    conflater: TopConflater[str] = TopConflater(0.25, clock=clock)
    conflater.offer("a", "a1")
    conflater.offer("a", "a2")
    conflater.offer("b", "b1")
    assert conflater.due() == []
    clock.now += 0.25
    assert sorted(conflater.due()) == ["a2", "b1"]
    conflater.offer("a", "a3")
    assert conflater.due() == []
    clock.now += 0.25
    assert conflater.due() == ["a3"]
    clock.now += 0.25
    assert conflater.due() == []


def test_a_forgotten_book_is_not_published_until_it_moves_again() -> None:
    clock = Clock()
    sent: list[str] = []
    depth = DepthPublisher(1.0, sent.append, clock=clock)
    for key in "abc":
        depth.touch(key)
    depth.forget({"b"})  # its partition was let go
    depth.flush()
    assert sent == ["a", "c"]
    depth.touch("b")  # back, and moved
    assert depth.due()
    depth.flush()
    assert sent == ["a", "c", "b"]
    assert not depth.due()
