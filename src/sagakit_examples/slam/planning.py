"""Sector assignment, boustrophedon coverage paths, and the routes robots drive along them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .routing import route
from .world import World

MIN_ROBOTS = 1
MAX_ROBOTS = 16
MIN_STRIP_WIDTH = 3
SPACING = 4
"""Cells between a robot's sweep lines (the sensor sees 10 cells)."""

Waypoint = tuple[int, int]


@dataclass(frozen=True)
class Sector:
    """A rectangular part of the world's interior with half-open bounds ``[x0, x1) x [y0, y1)``."""

    index: int
    x0: int
    x1: int
    y0: int
    y1: int

    def __post_init__(self) -> None:
        """Reject empty or inverted bounds."""
        if self.index < 0:
            raise ValueError(f"index must be >= 0, got {self.index}")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(
                f"sector bounds must be non-empty, got x=[{self.x0}, {self.x1}) "
                f"y=[{self.y0}, {self.y1})"
            )

    @property
    def width(self) -> int:
        """Number of columns in the sector."""
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        """Number of rows in the sector."""
        return self.y1 - self.y0

    def contains(self, x: int, y: int) -> bool:
        """Return whether cell ``(x, y)`` lies inside the sector."""
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def to_dict(self) -> dict[str, int]:
        """Return a JSON-friendly representation."""
        return {"index": self.index, "x0": self.x0, "x1": self.x1, "y0": self.y0, "y1": self.y1}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sector:
        """Build a sector from the output of :meth:`to_dict`."""
        values: dict[str, int] = {}
        for key in ("index", "x0", "x1", "y0", "y1"):
            value = data.get(key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"sector field {key!r} must be an integer, got {value!r}")
            values[key] = value
        return cls(**values)


def split_sectors(world: World, robots: int) -> list[Sector]:
    """Split the world's interior into vertical strips of near-equal width.

    Args:
        world: The world to split.
        robots: Number of strips, one per robot (1..16).

    Returns:
        Sectors ordered left to right, covering every interior cell exactly once.

    Raises:
        ValueError: If ``robots`` is out of range or a strip would be narrower than 3 cells.
    """
    if not MIN_ROBOTS <= robots <= MAX_ROBOTS:
        raise ValueError(f"robots must be between {MIN_ROBOTS} and {MAX_ROBOTS}, got {robots}")
    interior = world.width - 2
    base, extra = divmod(interior, robots)
    if base < MIN_STRIP_WIDTH:
        raise ValueError(
            f"robots={robots} would give strips narrower than {MIN_STRIP_WIDTH} cells "
            f"on a world {world.width} cells wide"
        )
    sectors: list[Sector] = []
    x0 = 1
    for index in range(robots):
        x1 = x0 + base + (1 if index < extra else 0)
        sectors.append(Sector(index=index, x0=x0, x1=x1, y0=1, y1=world.height - 1))
        x0 = x1
    return sectors


def _sweep_positions(start: int, stop: int, spacing: int) -> list[int]:
    """Positions ``spacing`` apart in ``[start, stop)``, centred in the range."""
    span = stop - start
    offset = ((span - 1) % spacing) // 2
    return list(range(start + offset, stop, spacing))


def _along_positions(start: int, stop: int, spacing: int) -> list[int]:
    """Positions ``spacing`` apart from ``start`` that always include ``stop - 1``."""
    positions = list(range(start, stop, spacing))
    if positions[-1] != stop - 1:
        positions.append(stop - 1)
    return positions


def coverage_path(world: World, sector: Sector, spacing: int = 4) -> list[Waypoint]:
    """Plan a boustrophedon (lawnmower) coverage path through a sector.

    Sweep lines run vertically, ``spacing`` columns apart, alternating between downward
    and upward travel. Waypoints on occupied cells are dropped.

    Args:
        world: The world the sector belongs to.
        sector: The sector to cover.
        spacing: Distance in cells between sweep lines and between waypoints on a line.

    Returns:
        Waypoints as ``(x, y)`` cells; non-empty whenever the sector has a free cell.

    Raises:
        ValueError: If ``spacing`` is below 1 or the sector lies outside the world.
    """
    if spacing < 1:
        raise ValueError(f"spacing must be >= 1, got {spacing}")
    if sector.x0 < 0 or sector.y0 < 0 or sector.x1 > world.width or sector.y1 > world.height:
        raise ValueError(f"sector {sector.to_dict()} lies outside the world")
    truth = world.truth
    rows = _along_positions(sector.y0, sector.y1, spacing)
    path: list[Waypoint] = []
    for line, x in enumerate(_sweep_positions(sector.x0, sector.x1, spacing)):
        ordered = rows if line % 2 == 0 else rows[::-1]
        path.extend((x, y) for y in ordered if not truth[y, x])
    if path:
        return path
    cx, cy = (sector.x0 + sector.x1 - 1) / 2, (sector.y0 + sector.y1 - 1) / 2
    free = [
        (x, y)
        for y in range(sector.y0, sector.y1)
        for x in range(sector.x0, sector.x1)
        if not truth[y, x]
    ]
    if not free:
        return []
    return [min(free, key=lambda cell: ((cell[0] - cx) ** 2 + (cell[1] - cy) ** 2, cell))]


@dataclass(frozen=True)
class Route:
    """One robot's assignment: its sector, the waypoints covering it, the cells it drives."""

    sector: Sector
    waypoints: list[Waypoint]
    cells: list[Waypoint]
    """Every cell driven through, in order: each leg between waypoints is a shortest path
    over free cells, so the route never crosses an obstacle."""


def plan(world: World, robots: int, spacing: int = SPACING) -> list[Route]:
    """Split the world into one sector per robot and route a coverage path through each.

    Raises:
        ValueError: As `split_sectors` does.
    """
    routes = []
    for sector in split_sectors(world, robots):
        waypoints = coverage_path(world, sector, spacing)
        routes.append(Route(sector, waypoints, route(world.free, waypoints)))
    return routes
