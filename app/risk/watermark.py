"""The risk engine's event-time watermark, as a pure class: no clock, no consumer, no Kafka.

A *source* is one (topic, partition, venue) of the engine's inputs. :class:`Watermark` keeps,
per source, the newest event time read from it and when (monotonic seconds) it was last read;
:meth:`Watermark.at` says, from what the caller knows now (the wall clock, which partitions may
still hold records to read, which raw partitions the worker still has frames of to apply), the
event time no input still to come can be older than. ``app.risk.service.RiskService`` feeds it and
releases the inputs held below it (minus ``RISK_LATENESS_MS``) to the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
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
        seen = self.sources.get(source)
        if seen is None:
            self.sources[source] = [ts, now]
            return
        if ts > seen[0]:
            seen[0] = ts
        seen[1] = now

    def at(self, now: float, wall_ns: int, unread: Set[tuple[str, int]],
           applying: Mapping[tuple[str, int], float]) -> float:
        """Event time (ns) no input still to come can be older than. ``unread``: the (topic,
        partition)s whose records are still to be read, or may be (end not known, or not known
        lately); ``applying``: the raw (topic, partition)s the worker has frames of still to
        apply, each with the receive time (ns) it has applied it to (-inf: nothing yet).

        Each source counts with the newest event time read from it, except when it is read to
        its end:

        * and its data is history (its newest input more than ``idle`` old by the wall clock)
          and it was read from less than ``idle`` ago: it holds the others back at its newest
          event time — it is being written (a replay) and its next records may come soon;
        * otherwise (live data, or quiet: its history done, or a live source the pipeline holds
          up — a partition leader moving, a producer retrying): what it brings next are frames
          received no earlier than ``lateness`` ago. It counts with that (or its newest event
          time, if later): a quiet source never lets the watermark run ahead of the wall clock.
          (Dropping quiet sources did: when the whole pipeline stalled a few seconds under a
          broker failover, every source was quiet, the watermark infinite, every input held was
          released, and the stalled ones came late. Holding quiet sources at their own newest
          time while the worker was behind at all did the opposite: a worker a few records
          behind most of the time under live load — `make run` on two busy cores — held event
          time at the newest time of a source with nothing to say, such as an instrument
          listing, for good.)

        Each raw partition with frames still to apply counts with the receive time it is applied
        to: every input is made from a raw frame (its event time is the frame's receive time), and
        those still to apply were received no earlier. It bounds the partitions no input was read
        from yet too (an option's first ticker in a replay, whose raw partition is applied behind
        the others'), and it costs a live worker nothing: what it applies was received
        milliseconds ago, later than the lateness bound.

        A partition no record was read from yet holds everything while it has records: its
        first records may be older than all the others (−inf). No source and nothing to apply: +inf."""
        return min((mark for mark, _source, _why in self.source_marks(now, wall_ns, unread, applying)),
                   default=float("inf"))

    def held_by(self, now: float, wall_ns: int, unread: Set[tuple[str, int]],
                applying: Mapping[tuple[str, int], float]) -> list[str]:
        """What holds :meth:`at` where it is: the sources at its value, each with why — for the
        web view and for anyone asking why event time does not move."""
        found = self.source_marks(now, wall_ns, unread, applying)
        low = min((mark for mark, _source, _why in found), default=float("inf"))
        return [f"{topic}[{partition}]{'' if venue is None else ' ' + venue}: {why}"
                for mark, (topic, partition, venue), why in found if mark == low]

    def source_marks(self, now: float, wall_ns: int, unread: Set[tuple[str, int]],
                     applying: Mapping[tuple[str, int], float]) -> list[tuple[float, tuple[str, int, str | None], str]]:
        """Each source's mark (:meth:`at` is their minimum), the source, and why (a constant:
        this runs at every watermark; :meth:`held_by` formats the lines)."""
        unseen = unread - {(topic, partition) for topic, partition, _venue in self.sources}
        if unseen:
            return [(float("-inf"), (topic, partition, None), "records to read, none read yet")
                    for topic, partition in sorted(unseen)]
        idle_s = self.idle_ns / 1e9
        recent = wall_ns - self.lateness_ns
        live_after = wall_ns - self.idle_ns
        marks: list[tuple[float, tuple[str, int, str | None], str]] = [
            (ts, (topic, partition, None), "raw frames still to apply, received from here on")
            for (topic, partition), ts in applying.items()]
        for source, (ts, seen) in self.sources.items():
            if source[:2] in unread:
                # behind: its next records may be older than what the others show
                marks.append((ts, source, "newest read, more to read"))
            elif ts < live_after and now - seen < idle_s:
                marks.append((ts, source, "newest read, history being written"))
            else:
                marks.append((max(ts, recent), source, "read to its end, live"))
        return marks
