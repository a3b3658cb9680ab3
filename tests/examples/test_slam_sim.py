"""Tests for the pure simulation part of the SLAM exploration example."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from sagakit_examples.slam.mapping import MapQuality, assess, fuse
from sagakit_examples.slam.planning import Sector, coverage_path, plan, split_sectors
from sagakit_examples.slam.sensing import (
    L_FREE,
    L_MAX,
    L_OCC,
    decode_grid,
    encode_grid,
    explore_sector,
    grid_from_text,
    grid_to_text,
    integrate_scan,
    scan,
    scan_poses,
)
from sagakit_examples.slam.world import World, generate_world


def boxed_world(width: int, height: int, name: str = "box") -> World:
    """Return an obstacle-free world with only the border walls."""
    truth = np.zeros((height, width), dtype=np.bool_)
    truth[0, :] = truth[-1, :] = True
    truth[:, 0] = truth[:, -1] = True
    return World(name=name, seed=0, width=width, height=height, truth=truth)


def reachable_count(truth: NDArray[np.bool_]) -> int:
    """Count the free cells 4-connected to the first free cell, by breadth-first search."""
    height, width = truth.shape
    start = tuple(int(v) for v in np.argwhere(~truth)[0])
    seen = {start}
    queue = deque([start])
    while queue:
        y, x = queue.popleft()
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            inside = 0 <= ny < height and 0 <= nx < width
            if inside and not truth[ny, nx] and (ny, nx) not in seen:
                seen.add((ny, nx))
                queue.append((ny, nx))
    return len(seen)


def explore(name: str, robots: int, fraction: float) -> tuple[World, list[NDArray[np.float32]]]:
    """Explore a world with one robot per sector, as a mission does; return the local grids."""
    world = generate_world(name, seed=0)
    grids = [
        explore_sector(world, scan_poses(route.cells), seed=index, fraction=fraction)
        for index, route in enumerate(plan(world, robots))
    ]
    return world, grids


# -- world ----------------------------------------------------------------------------------


def test_world_is_deterministic_per_name_and_seed() -> None:
    first = generate_world("warehouse", seed=3)
    again = generate_world("warehouse", seed=3)
    assert first == again
    assert np.array_equal(first.truth, again.truth)
    assert hash(first) == hash(again)
    assert not np.array_equal(first.truth, generate_world("harbour", seed=3).truth)
    assert not np.array_equal(first.truth, generate_world("warehouse", seed=4).truth)


@pytest.mark.parametrize(("width", "height"), [(20, 20), (80, 60), (200, 120), (400, 24)])
def test_world_has_walls_and_plausible_density(width: int, height: int) -> None:
    for seed in range(5):
        world = generate_world("site", seed=seed, width=width, height=height)
        assert world.truth.shape == (height, width)
        assert world.truth[0].all()
        assert world.truth[-1].all()
        assert world.truth[:, 0].all()
        assert world.truth[:, -1].all()
        assert 0.10 <= world.occupied_fraction <= 0.20


@pytest.mark.parametrize("seed", range(8))
def test_every_free_cell_is_reachable(seed: int) -> None:
    world = generate_world(f"maze-{seed}", seed=seed)
    assert reachable_count(world.truth) == int(world.free.sum())


def test_world_grid_is_read_only() -> None:
    world = generate_world("frozen")
    with pytest.raises(ValueError, match="read-only"):
        world.truth[5, 5] = True


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"width": 19}, "width"),
        ({"width": 401}, "width"),
        ({"height": 10}, "height"),
        ({"height": 1000}, "height"),
    ],
)
def test_world_rejects_bad_dimensions(kwargs: dict[str, int], parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        generate_world("bad", **kwargs)


# -- planning -------------------------------------------------------------------------------


def test_split_sectors_covers_interior_without_overlap() -> None:
    world = generate_world("split")
    sectors = split_sectors(world, 3)
    counts = np.zeros(world.truth.shape, dtype=np.int64)
    for sector in sectors:
        counts[sector.y0 : sector.y1, sector.x0 : sector.x1] += 1
    assert (counts[1:-1, 1:-1] == 1).all()
    assert counts.sum() == (world.width - 2) * (world.height - 2)
    assert [sector.index for sector in sectors] == [0, 1, 2]


@settings(max_examples=150, deadline=None)
@given(width=st.integers(20, 400), robots=st.integers(1, 16))
def test_split_sectors_property(width: int, robots: int) -> None:
    world = boxed_world(width, 20)
    if (width - 2) // robots < 3:
        with pytest.raises(ValueError, match="robots"):
            split_sectors(world, robots)
        return
    sectors = split_sectors(world, robots)
    columns = [x for sector in sectors for x in range(sector.x0, sector.x1)]
    assert columns == list(range(1, width - 1))
    widths = {sector.width for sector in sectors}
    assert len(sectors) == robots
    assert max(widths) - min(widths) <= 1
    assert min(widths) >= 3
    assert all((sector.y0, sector.y1) == (1, 19) for sector in sectors)


@pytest.mark.parametrize("robots", [0, 17, -1])
def test_split_sectors_rejects_robot_count(robots: int) -> None:
    with pytest.raises(ValueError, match="robots"):
        split_sectors(generate_world("split"), robots)


def test_sector_dict_round_trip() -> None:
    sector = Sector(index=2, x0=5, x1=12, y0=1, y1=59)
    assert Sector.from_dict(json.loads(json.dumps(sector.to_dict()))) == sector
    with pytest.raises(ValueError, match="x1"):
        Sector.from_dict({"index": 0, "x0": 1, "x1": "4", "y0": 1, "y1": 5})


def test_coverage_path_is_a_boustrophedon_inside_its_sector() -> None:
    world = generate_world("lawn", seed=1)
    spacing = 4
    for sector in split_sectors(world, 3):
        path = coverage_path(world, sector, spacing=spacing)
        assert path
        assert all(sector.contains(x, y) and not world.truth[y, x] for x, y in path)
        lines: dict[int, list[int]] = {}
        for x, y in path:
            lines.setdefault(x, []).append(y)
        xs = list(lines)
        assert xs == sorted(xs)
        assert len(xs) >= 5
        assert all(b - a == spacing for a, b in itertools.pairwise(xs))
        directions = []
        for x, ys in lines.items():
            line = (x - xs[0]) // spacing
            if len(ys) > 1:
                expected = sorted(ys) if line % 2 == 0 else sorted(ys, reverse=True)
                assert ys == expected
                directions.append(line % 2)
        assert set(directions) == {0, 1}


def test_coverage_path_finds_a_lone_free_cell() -> None:
    truth = np.ones((20, 20), dtype=np.bool_)
    truth[7, 6] = False
    world = World(name="rock", seed=0, width=20, height=20, truth=truth)
    sector = Sector(index=0, x0=1, x1=19, y0=1, y1=19)
    assert coverage_path(world, sector) == [(6, 7)]
    truth[7, 6] = True
    solid = World(name="rock", seed=0, width=20, height=20, truth=truth)
    assert coverage_path(solid, sector) == []
    with pytest.raises(ValueError, match="spacing"):
        coverage_path(world, sector, spacing=0)


# -- sensing --------------------------------------------------------------------------------


def test_scan_measures_walls_and_reports_misses_as_max_range() -> None:
    world = boxed_world(40, 40)
    rng = np.random.default_rng(0)
    readings = scan(world, (20, 20), rng, beams=36, max_range=10.0, noise=0.3)
    assert len(readings) == 36
    assert all(r == 10.0 for _, r in readings)
    far = scan(world, (20, 20), rng, beams=36, max_range=40.0, noise=0.0)
    for angle, measured in far:
        # Exact distance from the cell centre (20.5, 20.5) to the inner wall faces at 1 and 39.
        walls = [math.inf]
        for component in (math.cos(angle), math.sin(angle)):
            if abs(component) > 1e-9:
                walls.append((18.5 if component > 0 else 19.5) / abs(component))
        assert abs(measured - min(walls)) <= 0.5


def test_integrate_scan_marks_free_then_hit_and_skips_misses() -> None:
    grid = np.zeros((20, 30), dtype=np.float32)
    integrate_scan(grid, (10, 10), [(0.0, 5.0)], max_range=10.0)
    assert grid[10, 15] == pytest.approx(L_OCC)
    assert np.allclose(grid[10, 10:15], L_FREE)
    assert np.count_nonzero(grid) == 6
    miss = np.zeros((20, 30), dtype=np.float32)
    integrate_scan(miss, (10, 10), [(0.0, 10.0)], max_range=10.0)
    assert miss.max() == 0.0
    assert np.allclose(miss[10, 10:21], L_FREE)
    assert np.count_nonzero(miss) == 11
    for _ in range(20):
        integrate_scan(grid, (10, 10), [(0.0, 5.0)], max_range=10.0)
    assert grid.max() == L_MAX


def test_explore_sector_is_deterministic_and_fast() -> None:
    world = generate_world("timing")
    path = coverage_path(world, split_sectors(world, 3)[1])
    started = time.perf_counter()
    grid = explore_sector(world, path, seed=7)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0  # measured around 0.015 s
    assert grid.dtype == np.float32
    assert grid.shape == world.truth.shape
    assert np.array_equal(grid, explore_sector(world, path, seed=7))
    assert not np.array_equal(grid, explore_sector(world, path, seed=8))
    assert not explore_sector(world, path, seed=7, fraction=0.0).any()
    with pytest.raises(ValueError, match="fraction"):
        explore_sector(world, path, seed=7, fraction=1.5)


def test_grid_encoding_round_trips_exactly() -> None:
    _, grids = explore("codec", robots=2, fraction=1.0)
    for grid in grids:
        data = encode_grid(grid)
        assert len(data) < grid.nbytes
        decoded = decode_grid(data)
        assert decoded.dtype == np.float32
        assert np.array_equal(decoded, grid)
        text = grid_to_text(grid)  # as it travels in a step output
        assert json.loads(json.dumps(text)) == text
        assert np.array_equal(grid_from_text(text), grid)
    with pytest.raises(ValueError, match="encoded grid"):
        decode_grid(b"definitely not a grid")
    with pytest.raises(ValueError, match="base64"):
        grid_from_text("not base64!")
    with pytest.raises(ValueError, match="encoded grid"):
        grid_from_text("bm90IGEgZ3JpZA==")


def test_a_robot_scans_every_few_cells_and_at_the_end() -> None:
    cells = [(x, 1) for x in range(1, 11)]
    assert scan_poses(cells, every=4) == [(1, 1), (5, 1), (9, 1), (10, 1)]
    assert scan_poses(cells[:9], every=4) == [(1, 1), (5, 1), (9, 1)]
    assert scan_poses([], every=4) == []
    with pytest.raises(ValueError, match="every"):
        scan_poses(cells, every=0)


# -- mapping --------------------------------------------------------------------------------


def test_full_exploration_maps_the_world() -> None:
    world, grids = explore("warehouse", robots=3, fraction=1.0)
    quality = assess(world, fuse(grids))
    # Measured: coverage 0.9964, accuracy 0.9911.
    assert quality.coverage > 0.85
    assert quality.accuracy > 0.9
    assert quality.total_cells == world.width * world.height
    assert 0 < quality.known_cells <= quality.total_cells


def test_partial_exploration_covers_clearly_less() -> None:
    world, full = explore("warehouse", robots=3, fraction=1.0)
    _, partial = explore("warehouse", robots=3, fraction=0.3)
    full_quality = assess(world, fuse(full))
    partial_quality = assess(world, fuse(partial))
    # Measured: coverage 0.9964 in full versus 0.8766 with 30 % of every route driven.
    assert partial_quality.coverage < 0.9
    assert partial_quality.coverage < full_quality.coverage - 0.1
    assert partial_quality.accuracy > 0.9


def test_fuse_sums_clamps_and_validates() -> None:
    a = np.full((3, 4), 3.0, dtype=np.float32)
    b = np.full((3, 4), 2.0, dtype=np.float32)
    c = np.full((3, 4), -0.5, dtype=np.float32)
    assert np.array_equal(fuse([b, c]), np.full((3, 4), 1.5, dtype=np.float32))
    clamped = fuse([a, b])
    assert clamped.max() == L_MAX
    assert clamped.dtype == np.float32
    with pytest.raises(ValueError, match="grids"):
        fuse([])
    with pytest.raises(ValueError, match="shape"):
        fuse([a, np.zeros((4, 3), dtype=np.float32)])


def test_assess_perfect_blank_and_inverted_maps() -> None:
    world = generate_world("oracle")
    perfect = np.where(world.truth, 4.0, -4.0).astype(np.float32)
    assert assess(world, perfect) == MapQuality(1.0, 1.0, world.truth.size, world.truth.size)
    blank = assess(world, np.zeros(world.truth.shape, dtype=np.float32))
    assert (blank.coverage, blank.accuracy, blank.known_cells) == (0.0, 0.0, 0)
    assert assess(world, -perfect).accuracy == 0.0
    assert set(blank.to_dict()) == {"coverage", "accuracy", "known_cells", "total_cells"}
    with pytest.raises(ValueError, match="shape"):
        assess(world, np.zeros((5, 5), dtype=np.float32))
