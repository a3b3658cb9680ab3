"""The SLAM example's dashboard panels: the robot fleet, and a completed mission's map.

Added through sagakit's ``register_dashboard`` hook, as ``GET /api/robots`` comes through
``register_api``; each panel reads the example's own service databases, never the saga log.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from . import databases, fleet
from .settings import Service
from .tables import allocations, maps

if TYPE_CHECKING:
    from sagakit.api.dashboard import Dashboard

ROBOTS = """
{% if robots %}
{% set held = robots | selectattr("held_by") | list %}
{% if held %}
<ul class="robots">
{% for r in held %}
  <li class="robot r-{{ r.state }}">
    <span class="mono robot-name">{{ r.name }}</span>
    <a class="mono" href="/sagas/{{ r.held_by }}">{{ r.held_by[:12] }}…</a>
    <span class="muted small">since {{ r.since | when }}</span>
  </li>
{% endfor %}
</ul>
{% endif %}
{% set others = robots | rejectattr("held_by") | list %}
{% if others %}
<p class="robots-free"><span class="muted small">Not held:</span>
{% for r in others %}
  <span class="chip mono r-{{ r.state }}" title="{{ r.state | replace('_', ' ') }}">
    {{- r.name }}{% if r.state != "free" %} · {{ r.state }}{% endif -%}
  </span>
{% endfor %}</p>
{% endif %}
<p class="muted small">{{ busy }} of {{ robots | length }} robots held by a mission.</p>
{% else %}<p class="muted">No robots yet: <code>sagakit robots add 8</code>.</p>{% endif %}
"""
MAP = """
<figure class="mission-map">
  <img src="{{ src }}" alt="The fused occupancy map of mission {{ saga_id }}" width="{{ width }}">
  <figcaption class="muted small">Coverage {{ '%.1f' % (coverage * 100) }} %,
  accuracy {{ '%.1f' % (accuracy * 100) }} % against the ground truth.</figcaption>
</figure>
"""


def robots_panel() -> Mapping[str, Any]:
    """Every robot in service, the mission holding it and since when."""
    robots_db = databases.current().engine(Service.ROBOTS)
    listed = fleet.list_fleet(robots_db)
    with robots_db.connect() as conn:
        held = conn.execute(
            sa.select(allocations.c.robot_id, allocations.c.allocated_at).where(
                allocations.c.released_at.is_(None)
            )
        ).all()
    since = {row.robot_id: row.allocated_at for row in held}
    robots = [{**robot, "since": since.get(robot["id"])} for robot in listed]
    return {"robots": robots, "busy": sum(1 for r in robots if r["held_by"])}


def map_panel(detail: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The map a completed mission stored (None for any other saga)."""
    if detail["type"] != "slam" or detail["status"] != "completed":
        return None
    with databases.current().engine(Service.MAPPING).connect() as conn:
        row = conn.execute(sa.select(maps).where(maps.c.saga_id == detail["id"])).first()
    if row is None:
        return None
    width = int.from_bytes(row.png[16:20], "big")  # the PNG's own width (its IHDR chunk)
    return {
        "src": "data:image/png;base64," + base64.b64encode(row.png).decode(),
        "saga_id": detail["id"],
        "coverage": row.coverage,
        "accuracy": row.accuracy,
        "width": width,
    }


def register(dashboard: Dashboard) -> None:
    """Add the robots panel (list and health pages) and the mission map (a mission's page)."""
    dashboard.add_panel("sagas", "Robots", ROBOTS, robots_panel)
    dashboard.add_panel("health", "Robots", ROBOTS, robots_panel)
    dashboard.add_panel("saga", "Mission map", MAP, map_panel)
