"""Simulated range sensing and log-odds occupancy updates."""

from __future__ import annotations

import base64
import binascii
import io
import math
import zlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .world import World

L_OCC = 0.85
L_FREE = -0.4
L_MIN = -4.0
L_MAX = 4.0
RAY_STEP = 0.5
SCAN_EVERY = 4
"""Cells a robot drives between two scans."""

Pose = tuple[int, int]
Reading = tuple[float, float]


def _check_pose(shape: tuple[int, ...], pose: Pose) -> None:
    """Raise ValueError if ``pose`` is not a cell of a grid with ``shape``."""
    height, width = shape
    x, y = pose
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"pose {pose} lies outside the {width}x{height} grid")


def _ray_cells(
    pose: Pose, angles: NDArray[np.float64], distances: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Cells hit by sampling every ray at every distance; both arrays are ``(beams, steps)``."""
    ox, oy = pose[0] + 0.5, pose[1] + 0.5
    xs = np.floor(ox + np.outer(np.cos(angles), distances)).astype(np.int64)
    ys = np.floor(oy + np.outer(np.sin(angles), distances)).astype(np.int64)
    return xs, ys


def scan(
    world: World,
    pose: Pose,
    rng: np.random.Generator,
    beams: int = 48,
    max_range: float = 10.0,
    noise: float = 0.3,
) -> list[Reading]:
    """Simulate a 360-degree range scan from a cell.

    Args:
        world: Ground truth to cast rays over.
        pose: Sensor cell ``(x, y)``.
        rng: Source of the beam phase and the range noise.
        beams: Number of evenly spaced beams.
        max_range: Sensor range in cells; beams that hit nothing report exactly this value.
        noise: Standard deviation of the Gaussian range noise, in cells.

    Returns:
        ``(angle, measured_range)`` pairs, one per beam.
    """
    if beams < 1:
        raise ValueError(f"beams must be >= 1, got {beams}")
    if max_range <= 0:
        raise ValueError(f"max_range must be > 0, got {max_range}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    _check_pose(world.truth.shape, pose)
    phase = float(rng.uniform(0.0, 2 * math.pi / beams))
    angles = phase + np.arange(beams, dtype=np.float64) * (2 * math.pi / beams)
    distances = np.arange(1, int(max_range / RAY_STEP) + 1, dtype=np.float64) * RAY_STEP
    xs, ys = _ray_cells(pose, angles, distances)
    inside = (xs >= 0) & (xs < world.width) & (ys >= 0) & (ys < world.height)
    hit = ~inside
    hit[inside] = world.truth[ys[inside], xs[inside]]
    has_hit = hit.any(axis=1)
    # The first sample inside an obstacle overshoots its edge by up to one step.
    true_range = distances[hit.argmax(axis=1)] - RAY_STEP / 2
    measured = np.clip(true_range + rng.normal(0.0, noise, beams), 0.0, max_range)
    ranges = np.where(has_hit, measured, max_range)
    return [(float(a), float(r)) for a, r in zip(angles, ranges, strict=True)]


def integrate_scan(
    grid: NDArray[np.float32], pose: Pose, readings: Sequence[Reading], max_range: float
) -> None:
    """Update a log-odds grid in place with an inverse sensor model.

    Cells along each beam before the measured surface get ``L_FREE``, the cell just
    beyond the surface gets ``L_OCC``. Readings at ``max_range`` are treated as no hit.
    Each cell is updated at most once per scan, then the grid is clamped.
    """
    if grid.ndim != 2:
        raise ValueError(f"grid must be two-dimensional, got shape {grid.shape}")
    _check_pose(grid.shape, pose)
    if not readings:
        return
    height, width = grid.shape
    data = np.asarray(readings, dtype=np.float64).reshape(-1, 2)
    angles, ranges = data[:, 0], np.clip(data[:, 1], 0.0, max_range)
    is_hit = ranges < max_range
    distances = np.arange(0, int(max_range / RAY_STEP) + 1, dtype=np.float64) * RAY_STEP
    xs, ys = _ray_cells(pose, angles, distances)
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    free_limit = np.where(is_hit, ranges - RAY_STEP, max_range)
    free_mask = inside & (distances[None, :] <= free_limit[:, None])
    free_idx = np.unique(ys[free_mask] * width + xs[free_mask])

    surface = ranges[is_hit] + RAY_STEP / 2
    hx = np.floor(pose[0] + 0.5 + np.cos(angles[is_hit]) * surface).astype(np.int64)
    hy = np.floor(pose[1] + 0.5 + np.sin(angles[is_hit]) * surface).astype(np.int64)
    hit_inside = (hx >= 0) & (hx < width) & (hy >= 0) & (hy < height)
    occ_idx = np.unique(hy[hit_inside] * width + hx[hit_inside])
    free_idx = np.setdiff1d(free_idx, occ_idx, assume_unique=True)

    flat = grid.reshape(-1)
    flat[free_idx] += np.float32(L_FREE)
    flat[occ_idx] += np.float32(L_OCC)
    np.clip(grid, L_MIN, L_MAX, out=grid)


def scan_poses(cells: Sequence[Pose], every: int = SCAN_EVERY) -> list[Pose]:
    """Where a robot driving through `cells` scans: every `every` cells, and at the end."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    poses = list(cells[::every])
    if cells and (len(cells) - 1) % every:
        poses.append(cells[-1])
    return poses


def explore_sector(
    world: World,
    path: Sequence[Pose],
    seed: int,
    beams: int = 48,
    max_range: float = 10.0,
    noise: float = 0.3,
    fraction: float = 1.0,
) -> NDArray[np.float32]:
    """Scan from each pose of one robot's path, in order.

    Args:
        world: Ground truth the robot senses.
        path: Scan poses ``(x, y)`` in driving order (see `scan_poses`).
        seed: Seed of the robot's sensor noise.
        beams: Beams per scan.
        max_range: Sensor range in cells.
        noise: Standard deviation of the range noise.
        fraction: Share of the path actually driven (0..1), to model a partial run.

    Returns:
        The robot's local log-odds grid, world-sized, zero where nothing was observed.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    grid = np.zeros((world.height, world.width), dtype=np.float32)
    for pose in path[: math.ceil(fraction * len(path))]:
        readings = scan(world, pose, rng, beams=beams, max_range=max_range, noise=noise)
        integrate_scan(grid, pose, readings, max_range)
    return grid


def encode_grid(grid: NDArray[np.float32]) -> bytes:
    """Serialise a log-odds grid to compact, lossless bytes."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(grid, dtype=np.float32), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), 6)


def decode_grid(data: bytes) -> NDArray[np.float32]:
    """Restore a grid serialised by :func:`encode_grid`."""
    try:
        array = np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False)
    except (zlib.error, ValueError, OSError) as exc:
        raise ValueError(f"data is not an encoded grid: {exc}") from exc
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 2:
        raise ValueError("data does not hold a two-dimensional float32 grid")
    result: NDArray[np.float32] = array
    return result


def grid_to_text(grid: NDArray[np.float32]) -> str:
    """An encoded grid as base64 text, to travel in a JSON step output."""
    return base64.b64encode(encode_grid(grid)).decode("ascii")


def grid_from_text(text: str) -> NDArray[np.float32]:
    """Restore a grid from :func:`grid_to_text`.

    Raises:
        ValueError: If `text` is not an encoded grid.
    """
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"text is not base64: {exc}") from exc
    return decode_grid(data)
