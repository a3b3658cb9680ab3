"""Routes over free cells: what a robot actually drives between its waypoints.

The planner knows the world, so each leg between two waypoints is a shortest path over free
cells (4-connected moves), found once at planning time. Among the shortest paths, the one
with fewer turns is preferred, so routes run straight along sweep lines and around
obstacles. A route travels compactly as its corners: the cells where it turns.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

Cell = tuple[int, int]
"""``(x, y)``."""

_MOVES = ((1, 0), (0, 1), (-1, 0), (0, -1))


def route(free: NDArray[np.bool_], waypoints: Sequence[Cell]) -> list[Cell]:
    """Return every cell driven through to visit `waypoints` in order.

    Args:
        free: ``free[y, x]`` is True where a robot may drive; the border must be blocked.
        waypoints: Free cells in visiting order.

    Returns:
        A 4-connected chain of free cells from the first waypoint to the last (empty when
        there are no waypoints); consecutive duplicates are dropped.

    Raises:
        ValueError: If a waypoint is blocked or cannot be reached from the previous one.
    """
    if not waypoints:
        return []
    passable = free.ravel().tolist()
    width = free.shape[1]
    cells = [_check(free, waypoints[0])]
    for goal in waypoints[1:]:
        cells.extend(_leg(free, passable, width, cells[-1], _check(free, goal))[1:])
    return cells


def _check(free: NDArray[np.bool_], cell: Cell) -> Cell:
    x, y = int(cell[0]), int(cell[1])
    height, width = free.shape
    if not (0 <= x < width and 0 <= y < height) or not free[y, x]:
        raise ValueError(f"waypoint {(x, y)} is not a free cell of the grid")
    return x, y


def _leg(
    free: NDArray[np.bool_], passable: list[bool], width: int, start: Cell, goal: Cell
) -> list[Cell]:
    """A shortest path from `start` to `goal`, both included."""
    if start == goal:
        return [start]
    straight = _straight(free, start, goal)
    if straight is not None:
        return straight
    distance = _search(passable, width, goal, start)
    return _walk(distance, width, start, goal)


def _straight(free: NDArray[np.bool_], start: Cell, goal: Cell) -> list[Cell] | None:
    """The straight run between two cells of one row or column, if it is all free."""
    (x0, y0), (x1, y1) = start, goal
    if x0 == x1:
        step = 1 if y1 > y0 else -1
        ys = range(y0, y1 + step, step)
        return [(x0, y) for y in ys] if free[min(y0, y1) : max(y0, y1) + 1, x0].all() else None
    if y0 == y1:
        step = 1 if x1 > x0 else -1
        xs = range(x0, x1 + step, step)
        return [(x, y0) for x in xs] if free[y0, min(x0, x1) : max(x0, x1) + 1].all() else None
    return None


def _search(passable: list[bool], width: int, source: Cell, target: Cell) -> dict[int, int]:
    """A* from `source` until `target` is settled; returns distances from `source`.

    Every distance recorded for a cell is an upper bound, and exact for settled cells and
    for any cell that lies on a shortest path (the heuristic is consistent).
    """
    origin = source[1] * width + source[0]
    tx, ty = target
    end = ty * width + tx
    distance = {origin: 0}
    settled: set[int] = set()
    frontier = [(abs(source[0] - tx) + abs(source[1] - ty), 0, origin)]
    while frontier:
        _, g, cell = heapq.heappop(frontier)
        if cell in settled:
            continue
        settled.add(cell)
        if cell == end:
            return distance
        for step in (1, -1, width, -width):  # the border is blocked: no index wraps
            near = cell + step
            if passable[near] and g + 1 < distance.get(near, 1 << 30):
                distance[near] = g + 1
                y, x = divmod(near, width)
                heapq.heappush(frontier, (g + 1 + abs(x - tx) + abs(y - ty), g + 1, near))
    raise ValueError(f"no free path from {source} to {target}")


def _walk(distance: dict[int, int], width: int, start: Cell, goal: Cell) -> list[Cell]:
    """Descend the distances from `start` to `goal`, going straight on where possible."""
    path = [start]
    x, y = start
    left = distance[y * width + x]
    heading: tuple[int, int] | None = None
    while left:
        options = [
            move
            for move in _MOVES
            if distance.get((y + move[1]) * width + x + move[0], -1) == left - 1
        ]
        move = heading if heading in options else options[0]
        x, y, left, heading = x + move[0], y + move[1], left - 1, move
        path.append((x, y))
    if path[-1] != goal:
        raise AssertionError(f"walk ended at {path[-1]}, not {goal}")
    return path


def corners(cells: Sequence[Cell]) -> list[Cell]:
    """Compress a 4-connected chain to its ends and the cells where it turns."""
    if len(cells) <= 2:
        return list(cells)
    kept = [cells[0]]
    for before, here, after in zip(cells, cells[1:], cells[2:], strict=False):
        if (here[0] - before[0], here[1] - before[1]) != (after[0] - here[0], after[1] - here[1]):
            kept.append(here)
    kept.append(cells[-1])
    return kept


def expand(points: Sequence[Sequence[int]]) -> list[Cell]:
    """Restore every cell of a route given by its corners (the inverse of `corners`).

    Raises:
        ValueError: If two consecutive corners share neither a row nor a column.
    """
    cells: list[Cell] = []
    for index, point in enumerate(points):
        x, y = int(point[0]), int(point[1])
        if not cells:
            cells.append((x, y))
            continue
        px, py = cells[-1]
        if px != x and py != y:
            raise ValueError(f"corner {index} {(x, y)} is not in line with {(px, py)}")
        dx, dy = (x > px) - (x < px), (y > py) - (y < py)
        cells.extend(
            (px + dx * k, py + dy * k) for k in range(1, max(abs(x - px), abs(y - py)) + 1)
        )
    return cells
