"""A saga's timeline as SVG geometry: one lane per step instance, one bar per attempt.

Every attempt of an action is a bar from its start to its end, coloured by outcome; the
wait before a retry (its backoff) is a dashed line between two bars; each compensation is
a bar on the lane of the instance it undoes, so its pairing with the action and the reverse
order of the compensations read at a glance. The template only draws what this computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

LABEL = 168.0
"""Width of the lane names, in viewBox units."""
WIDTH = 1000.0
LANE = 26.0
BAR = 14.0
AXIS = 28.0
MIN_BAR = 3.0
MIN_UNDO = 7.0
"""Compensations are often a few milliseconds: drawn at least this wide, to be seen."""
STEPS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)


@dataclass(frozen=True, slots=True)
class Bar:
    """One attempt, drawn."""

    x: float
    width: float
    direction: str
    attempt: int
    status: str
    start: str
    end: str
    title: str


@dataclass(frozen=True, slots=True)
class Gap:
    """The wait between an attempt's end and the next attempt's start (backoff)."""

    x1: float
    x2: float
    start: str
    end: str


@dataclass
class Lane:
    """One step instance's row."""

    name: str
    y: float
    status: str
    bars: list[Bar] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass
class Timeline:
    """The whole drawing: its size, lanes, axis ticks and the "now" marker."""

    height: float
    lanes: list[Lane]
    ticks: list[Tick]
    now_x: float | None
    start: str
    span: float
    now: str
    label: float = LABEL
    plot: float = WIDTH - LABEL - 16
    """Where the plot begins and how wide it is (the page's script redraws a running saga
    as time passes, with the same scale)."""


def _at(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _label(seconds: float) -> str:
    if seconds >= 60:
        minutes, rest = divmod(seconds, 60)
        return f"{int(minutes)}m{int(rest):02d}s" if rest else f"{int(minutes)}m"
    return f"{seconds:g}s"


def _ticks(span: float, x: Any) -> list[Tick]:
    step = next((s for s in STEPS if span / s <= 8), STEPS[-1])
    count = int(span / step) + 1
    return [Tick(x(i * step), _label(round(i * step, 3))) for i in range(count)]


def build(detail: dict[str, Any], now: datetime) -> Timeline:
    """The timeline of a saga's detail view (`queries.saga_view`), drawn at `now`."""
    start = _at(detail["created_at"]) or now
    running = detail.get("finished_at") is None
    instants = [start]
    for step in detail["steps"]:
        for a in (*step["attempts"], *step["compensations"]):
            instants += [t for k in ("started_at", "finished_at") if (t := _at(a[k]))]
    end = now if running else max([*instants, _at(detail["finished_at"]) or start])
    span = max((end - start).total_seconds(), 0.001)
    scale = (WIDTH - LABEL - 16) / span  # the page's script uses the same (Timeline.plot)

    def x(seconds: float) -> float:
        return round(LABEL + seconds * scale, 2)

    def offset(t: datetime) -> float:
        return (t - start).total_seconds()

    lanes = []
    for i, step in enumerate(detail["steps"]):
        lane = Lane(step["name"], AXIS + i * LANE, step["status"])
        previous_end: datetime | None = None
        for a in (*step["attempts"], *step["compensations"]):
            began = _at(a["started_at"]) or _at(a["scheduled_at"])
            if began is None:
                continue
            ended = _at(a["finished_at"]) or (now if a["status"] in ("running",) else began)
            if a["direction"] == "action" and previous_end is not None and began > previous_end:
                left, right = x(offset(previous_end)), x(offset(began))
                lane.gaps.append(Gap(left, right, previous_end.isoformat(), began.isoformat()))
            if a["direction"] == "action":
                previous_end = ended
            left = x(offset(began))
            least = MIN_UNDO if a["direction"] == "compensation" else MIN_BAR
            width = max(x(offset(ended)) - left, least)
            verb = "undo" if a["direction"] == "compensation" else "attempt"
            took = (ended - began).total_seconds()
            title = f"{step['name']}: {verb} {a['attempt']} {a['status']} ({took:.3f}s)"
            lane.bars.append(
                Bar(
                    left,
                    width,
                    a["direction"],
                    a["attempt"],
                    a["status"],
                    began.isoformat(),
                    ended.isoformat(),
                    title,
                )
            )
        lanes.append(lane)
    return Timeline(
        height=AXIS + len(lanes) * LANE + 8,
        lanes=lanes,
        ticks=_ticks(span, lambda s: x(s)),
        now_x=x(offset(now)) if running else None,
        start=start.isoformat(),
        span=span,
        now=now.isoformat(),
    )
