"""Ground-truth occupancy worlds for the SLAM exploration mission."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

MIN_SIDE = 20
MAX_SIDE = 400
MIN_OBSTACLES = 6
MAX_OBSTACLES = 12
MAX_OCCUPIED_FRACTION = 0.19
MIN_OCCUPIED_FRACTION = 0.11


@dataclass(frozen=True)
class World:
    """A ground-truth occupancy grid; ``truth[y, x]`` is True where the cell is occupied."""

    name: str
    seed: int
    width: int
    height: int
    truth: NDArray[np.bool_]

    def __post_init__(self) -> None:
        """Check the grid shape and freeze the array."""
        if self.truth.shape != (self.height, self.width):
            raise ValueError(
                f"truth has shape {self.truth.shape}, expected (height, width) = "
                f"({self.height}, {self.width})"
            )
        frozen = np.array(self.truth, dtype=np.bool_, copy=True)
        frozen.setflags(write=False)
        object.__setattr__(self, "truth", frozen)

    def __eq__(self, other: object) -> bool:
        """Compare worlds by parameters and grid contents."""
        if not isinstance(other, World):
            return NotImplemented
        return (self.name, self.seed, self.width, self.height) == (
            other.name,
            other.seed,
            other.width,
            other.height,
        ) and bool(np.array_equal(self.truth, other.truth))

    def __hash__(self) -> int:
        """Hash the parameters and the grid contents."""
        return hash((self.name, self.seed, self.width, self.height, self.truth.tobytes()))

    @property
    def free(self) -> NDArray[np.bool_]:
        """Mask of free cells (all of them are mutually reachable)."""
        return ~self.truth

    @property
    def occupied_fraction(self) -> float:
        """Fraction of interior (non-border) cells that are occupied."""
        return float(self.truth[1:-1, 1:-1].mean())


def _seed_rng(name: str, seed: int) -> np.random.Generator:
    """Derive a generator from the area name and the seed."""
    digest = hashlib.sha256(f"{name}\x00{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def _obstacle_mask(
    rng: np.random.Generator, width: int, height: int, mean_area: float
) -> NDArray[np.bool_]:
    """Draw one rectangular or circular obstacle of roughly ``mean_area`` cells."""
    mask = np.zeros((height, width), dtype=np.bool_)
    cx = int(rng.integers(1, width - 1))
    cy = int(rng.integers(1, height - 1))
    circle_cap = (min(width, height) - 2) / 6
    if rng.random() < 0.5 or circle_cap * circle_cap * math.pi < mean_area * 0.5:
        aspect = float(rng.uniform(0.5, 2.0))
        area = mean_area * float(rng.uniform(0.6, 1.4))
        rw = min(max(2, round(math.sqrt(area * aspect))), (width - 2) // 3)
        rh = min(max(2, round(area / rw)), (height - 2) // 3)
        rw = min(max(2, round(area / rh)), (width - 2) // 3)
        x0, y0 = max(1, cx - rw // 2), max(1, cy - rh // 2)
        mask[y0 : min(height - 1, y0 + rh), x0 : min(width - 1, x0 + rw)] = True
    else:
        radius = max(1.0, math.sqrt(mean_area / math.pi) * float(rng.uniform(0.7, 1.3)))
        radius = min(radius, circle_cap)
        yy, xx = np.mgrid[0:height, 0:width]
        mask[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius] = True
        mask[0, :] = mask[-1, :] = False
        mask[:, 0] = mask[:, -1] = False
    return mask


def largest_free_component(truth: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Return the largest 4-connected region of free cells.

    The grid must have an occupied border, so neighbour indices never leave the grid.
    """
    if not (truth[0].all() and truth[-1].all() and truth[:, 0].all() and truth[:, -1].all()):
        raise ValueError("truth must have an occupied one-cell border")
    height, width = truth.shape
    free = (~truth).ravel().tolist()
    labels = [-1] * (height * width)
    best_label, best_size, label = -1, 0, 0
    for start, is_free in enumerate(free):
        if not is_free or labels[start] >= 0:
            continue
        labels[start] = label
        stack, size = [start], 0
        while stack:
            cell = stack.pop()
            size += 1
            for nb in (cell - 1, cell + 1, cell - width, cell + width):
                if free[nb] and labels[nb] < 0:
                    labels[nb] = label
                    stack.append(nb)
        if size > best_size:
            best_label, best_size = label, size
        label += 1
    grid = np.asarray(labels, dtype=np.int64).reshape(height, width)
    component: NDArray[np.bool_] = grid == best_label
    return component


def generate_world(name: str, seed: int = 0, width: int = 80, height: int = 60) -> World:
    """Generate a deterministic world from the area name and seed.

    Args:
        name: Area name; different names give different worlds.
        seed: Extra seed mixed into the name hash.
        width: Grid width in cells (20..400).
        height: Grid height in cells (20..400).

    Returns:
        A world with one-cell border walls and 6-12 obstacles, in which every free cell
        is reachable from every other free cell.

    Raises:
        ValueError: If the name is empty or a dimension is out of range.
    """
    if not name:
        raise ValueError("name must be a non-empty string")
    for label, value in (("width", width), ("height", height)):
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise ValueError(f"{label} must be between {MIN_SIDE} and {MAX_SIDE}, got {value}")
    rng = _seed_rng(name, seed)
    truth = np.zeros((height, width), dtype=np.bool_)
    truth[0, :] = truth[-1, :] = True
    truth[:, 0] = truth[:, -1] = True
    interior = (width - 2) * (height - 2)
    wanted = int(np.clip(round(interior / 600), MIN_OBSTACLES, MAX_OBSTACLES))
    target = float(rng.uniform(0.12, 0.17))
    mean_area = target * interior / wanted
    placed = 0
    for _ in range(MAX_OBSTACLES * 20):
        fraction = float(truth[1:-1, 1:-1].mean())
        if placed >= MAX_OBSTACLES or (placed >= wanted and fraction >= MIN_OCCUPIED_FRACTION):
            break
        candidate = truth | _obstacle_mask(rng, width, height, mean_area)
        if float(candidate[1:-1, 1:-1].mean()) > MAX_OCCUPIED_FRACTION:
            continue
        truth = candidate
        placed += 1
    truth = ~largest_free_component(truth)
    return World(name=name, seed=seed, width=width, height=height, truth=truth)
