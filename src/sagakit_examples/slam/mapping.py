"""Map fusion and quality assessment (the picture is drawn by `render`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from .sensing import L_MAX, L_MIN
from .world import World

OCCUPIED_THRESHOLD = 0.2
FREE_THRESHOLD = -0.2


@dataclass(frozen=True)
class MapQuality:
    """How much of the world a fused map covers and how well it agrees with the truth.

    Attributes:
        coverage: Share of the world's free (reachable) cells classified as known.
        accuracy: Share of known cells whose class matches the ground truth.
        known_cells: Cells anywhere on the map classified as free or occupied.
        total_cells: All cells of the map.
    """

    coverage: float
    accuracy: float
    known_cells: int
    total_cells: int

    def to_dict(self) -> dict[str, float | int]:
        """Return a JSON-friendly representation."""
        return asdict(self)


def fuse(grids: Sequence[NDArray[np.float32]]) -> NDArray[np.float32]:
    """Fuse local log-odds grids by summing them and clamping the result.

    Raises:
        ValueError: If ``grids`` is empty or the shapes differ.
    """
    if not grids:
        raise ValueError("grids must contain at least one grid")
    shape = grids[0].shape
    for position, grid in enumerate(grids):
        if grid.shape != shape:
            raise ValueError(f"grids[{position}] has shape {grid.shape}, expected {shape}")
    total = np.zeros(shape, dtype=np.float32)
    for grid in grids:
        total += grid.astype(np.float32, copy=False)
    np.clip(total, L_MIN, L_MAX, out=total)
    return total


def _check_shape(world: World, fused: NDArray[np.float32]) -> None:
    """Raise ValueError unless the map has the world's shape."""
    if fused.shape != world.truth.shape:
        raise ValueError(f"fused has shape {fused.shape}, expected {world.truth.shape}")


def assess(world: World, fused: NDArray[np.float32]) -> MapQuality:
    """Compare a fused map with the world's ground truth."""
    _check_shape(world, fused)
    occupied = fused > OCCUPIED_THRESHOLD
    free = fused < FREE_THRESHOLD
    known = occupied | free
    reachable = world.free
    known_cells = int(known.sum())
    correct = int((occupied & world.truth).sum() + (free & reachable).sum())
    reachable_cells = int(reachable.sum())
    return MapQuality(
        coverage=float((known & reachable).sum()) / reachable_cells if reachable_cells else 0.0,
        accuracy=correct / known_cells if known_cells else 0.0,
        known_cells=known_cells,
        total_cells=int(fused.size),
    )
