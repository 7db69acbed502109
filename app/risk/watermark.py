"""The risk engine's event-time watermark, as a pure class: no clock, no consumer, no Kafka.

A *source* is one (topic, partition, venue) of the engine's inputs. :class:`Watermark` keeps,
per source, the newest event time read from it and when (monotonic seconds) it was last read;
:meth:`Watermark.at` says, from what the caller knows now (the wall clock, which partitions may
still hold records to read, whether the worker is still applying its raw topics), the event
time no input still to come can be older than. ``app.risk.service.RiskService`` feeds it and
releases the inputs held below it (minus ``RISK_LATENESS_MS``) to the engine.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field

Source = tuple[str, int, str]  # (topic, partition, venue)


@dataclass(slots=True)
class Watermark:
    lateness_ns: int  # RISK_LATENESS_MS: how late a live input may reach the engine
    idle_ns: int  # RISK_IDLE_MS: a source older than this by the wall clock is history; so long quiet, idle
    #: source → [newest event time (ns), monotonic seconds it was last read]
    sources: dict[Source, list[float]] = field(default_factory=dict)

    def observe(self, source: Source, ts: int, now: float) -> None:
        """An input of event time ``ts`` read from ``source`` at monotonic ``now`` (seconds)."""
        seen = self.sources.setdefault(source, [0, now])
        seen[0] = max(seen[0], ts)
        seen[1] = now

    def at(self, now: float, wall_ns: int, unread: Set[tuple[str, int]], behind: bool) -> float:
        """Event time (ns) no input still to come can be older than. ``unread``: the (topic,
        partition)s whose records are still to be read, or may be (end not known, or not known
        lately); ``behind``: the worker is still applying its raw topics (a replay).

        Each source counts with the newest event time read from it, except when it is read to
        its end:

        * and its data is history (its newest input more than ``idle`` old by the wall clock)
          and it was read from less than ``idle`` ago, or the worker is behind: it holds the
          others back at its newest event time — the worker may not have reached that
          partition's next records yet;
        * otherwise (live data, or quiet: its history done, or a live source the pipeline holds
          up — a partition leader moving, a producer retrying): what it brings next are frames
          received no earlier than ``lateness`` ago. It counts with that (or its newest event
          time, if later): a quiet source never lets the watermark run ahead of the wall clock.
          (Dropping quiet sources did: when the whole pipeline stalled a few seconds under a
          broker failover, every source was quiet, the watermark infinite, every input held was
          released, and the stalled ones came late.)

        A partition no record was read from yet holds everything while it has records: its
        first records may be older than all the others (−inf). No source at all: +inf."""
        if unread - {(topic, partition) for topic, partition, _venue in self.sources}:
            return float("-inf")
        idle_s = self.idle_ns / 1e9
        recent = wall_ns - self.lateness_ns
        live_after = wall_ns - self.idle_ns
        marks = []
        for (topic, partition, _venue), (ts, seen) in self.sources.items():
            if (topic, partition) in unread:
                marks.append(ts)  # behind: its next records may be older than what the others show
            elif ts < live_after and (now - seen < idle_s or behind):
                marks.append(ts)  # history, quiet only because the worker is busy elsewhere: it may come
            else:
                marks.append(max(ts, recent))
        return min(marks) if marks else float("inf")
