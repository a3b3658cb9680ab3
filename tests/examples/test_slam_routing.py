"""Routes the robots drive: shortest paths over free cells between their waypoints."""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from sagakit_examples.slam.planning import plan
from sagakit_examples.slam.routing import Cell, corners, expand, route
from sagakit_examples.slam.world import generate_world


def box(width: int, height: int) -> NDArray[np.bool_]:
    """Free interior, blocked border."""
    free = np.zeros((height, width), dtype=np.bool_)
    free[1:-1, 1:-1] = True
    return free


def bfs_distance(free: NDArray[np.bool_], start: Cell, goal: Cell) -> int:
    """Length in moves of a shortest 4-connected path, by breadth-first search."""
    seen = {start}
    queue = deque([(start, 0)])
    while queue:
        (x, y), steps = queue.popleft()
        if (x, y) == goal:
            return steps
        for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if free[ny, nx] and (nx, ny) not in seen:
                seen.add((nx, ny))
                queue.append(((nx, ny), steps + 1))
    raise AssertionError(f"{goal} unreachable from {start}")


def assert_drivable(free: NDArray[np.bool_], cells: list[Cell]) -> None:
    assert all(free[y, x] for x, y in cells), "a route cell is blocked"
    for (ax, ay), (bx, by) in itertools.pairwise(cells):
        assert abs(ax - bx) + abs(ay - by) == 1, f"{(ax, ay)} -> {(bx, by)} is not one move"


def test_a_free_straight_leg_is_driven_straight() -> None:
    free = box(12, 8)
    assert route(free, [(1, 1), (5, 1)]) == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]
    assert route(free, [(3, 6), (3, 4)]) == [(3, 6), (3, 5), (3, 4)]
    assert route(free, [(2, 2), (2, 2)]) == [(2, 2)]
    assert route(free, []) == []


def test_an_open_diagonal_leg_turns_once() -> None:
    free = box(12, 12)
    cells = route(free, [(1, 1), (8, 6)])
    assert_drivable(free, cells)
    assert len(cells) - 1 == 7 + 5  # shortest
    assert len(corners(cells)) == 3  # start, one turn, end


def test_a_wall_between_waypoints_is_driven_around() -> None:
    free = box(12, 12)
    free[5, 1:10] = False  # a wall across the column, open at x = 10
    cells = route(free, [(3, 2), (3, 8)])
    assert_drivable(free, cells)
    assert not any(y == 5 and x < 10 for x, y in cells)
    assert len(cells) - 1 == bfs_distance(free, (3, 2), (3, 8))


def test_blocked_or_unreachable_waypoints_are_refused() -> None:
    free = box(12, 12)
    free[:, 6] = False  # two halves
    with pytest.raises(ValueError, match=r"waypoint \(6, 3\) is not a free cell"):
        route(free, [(2, 3), (6, 3)])
    with pytest.raises(ValueError, match="no free path"):
        route(free, [(2, 3), (8, 3)])
    with pytest.raises(ValueError, match="not a free cell"):
        route(free, [(40, 3)])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), picks=st.lists(st.integers(0, 10**9), min_size=2, max_size=6))
def test_routes_are_shortest_drivable_and_visit_every_waypoint(seed: int, picks: list[int]) -> None:
    world = generate_world("route", seed=seed, width=40, height=30)
    free_cells = [(int(x), int(y)) for y, x in np.argwhere(world.free)]
    waypoints = [free_cells[pick % len(free_cells)] for pick in picks]
    cells = route(world.free, waypoints)

    assert_drivable(world.free, cells)
    assert cells[0] == waypoints[0]
    assert cells[-1] == waypoints[-1]
    position = 0
    for a, b in itertools.pairwise(waypoints):
        start = cells.index(a, position)
        end = cells.index(b, start)
        if a != b:
            assert end - start == bfs_distance(world.free, a, b)
        position = end
    assert expand(corners(cells)) == cells


def test_corners_compress_and_expand_restores() -> None:
    cells = [(1, 1), (2, 1), (3, 1), (3, 2), (3, 3), (2, 3)]
    assert corners(cells) == [(1, 1), (3, 1), (3, 3), (2, 3)]
    assert expand([[1, 1], [3, 1], [3, 3], [2, 3]]) == cells
    assert corners(cells[:2]) == cells[:2]
    with pytest.raises(ValueError, match="not in line"):
        expand([[1, 1], [2, 2]])


def test_planned_routes_never_cross_an_obstacle_where_waypoint_lines_would() -> None:
    world = generate_world("warehouse", seed=0)
    crossings = 0
    for planned in plan(world, 3):
        assert_drivable(world.free, planned.cells)
        assert planned.cells[0] == planned.waypoints[0]
        assert planned.cells[-1] == planned.waypoints[-1]
        assert set(planned.waypoints) <= set(planned.cells)
        # A straight line between consecutive waypoints, as the map used to draw them:
        for (ax, ay), (bx, by) in itertools.pairwise(planned.waypoints):
            steps = max(abs(ax - bx), abs(ay - by))
            line = {
                (round(ax + (bx - ax) * k / steps), round(ay + (by - ay) * k / steps))
                for k in range(steps + 1)
            }
            crossings += any(world.truth[y, x] for x, y in line)
    assert crossings > 0, "this world should have waypoints on both sides of an obstacle"
