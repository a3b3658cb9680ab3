"""Map fusion, quality assessment and rendering."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from .sensing import L_MAX, L_MIN
from .world import World

OCCUPIED_THRESHOLD = 0.2
FREE_THRESHOLD = -0.2
MAX_SCALE = 32

UNKNOWN_RGB = (150, 150, 155)
UNSEEN_OBSTACLE_RGB = (118, 118, 128)
FREE_RGB = (250, 250, 246)
OCCUPIED_RGB = (20, 20, 24)
PATH_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 200, 200),
    (240, 50, 230),
    (170, 110, 40),
    (128, 0, 0),
    (0, 128, 128),
    (0, 0, 128),
    (128, 128, 0),
    (210, 180, 0),
    (255, 105, 180),
    (100, 100, 255),
    (0, 200, 120),
)


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


def render_png(
    world: World,
    fused: NDArray[np.float32],
    paths: Sequence[Sequence[tuple[int, int]]] = (),
    scale: int = 6,
) -> bytes:
    """Render a fused map with robot paths as a PNG image.

    Unknown cells are grey, free cells light, occupied cells black; ground-truth obstacles
    that were never observed are drawn faintly, and each path gets its own colour.

    Args:
        world: The world the map belongs to.
        fused: Fused log-odds grid of the world's shape.
        paths: One waypoint list per robot.
        scale: Pixels per cell (1..32).

    Returns:
        PNG bytes of a ``(width * scale) x (height * scale)`` image.
    """
    _check_shape(world, fused)
    if not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be between 1 and {MAX_SCALE}, got {scale}")
    pixels = np.empty((world.height, world.width, 3), dtype=np.uint8)
    pixels[...] = UNKNOWN_RGB
    unknown = (fused <= OCCUPIED_THRESHOLD) & (fused >= FREE_THRESHOLD)
    pixels[unknown & world.truth] = UNSEEN_OBSTACLE_RGB
    free = fused < FREE_THRESHOLD
    # Shade by confidence so weakly observed cells stay slightly darker.
    confidence = np.clip(-fused[free] / 2.0, 0.0, 1.0)[:, None]
    base = np.asarray(UNKNOWN_RGB, dtype=np.float32)
    target = np.asarray(FREE_RGB, dtype=np.float32)
    pixels[free] = (base + (target - base) * (0.75 + 0.25 * confidence)).astype(np.uint8)
    pixels[fused > OCCUPIED_THRESHOLD] = OCCUPIED_RGB
    image = Image.fromarray(pixels).resize(
        (world.width * scale, world.height * scale), Image.Resampling.NEAREST
    )
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    pen = ImageDraw.Draw(overlay)
    line_width = max(1, scale // 3)
    dot = max(1, scale // 2)
    for number, path in enumerate(paths):
        colour = PATH_COLOURS[number % len(PATH_COLOURS)]
        points = [((x + 0.5) * scale, (y + 0.5) * scale) for x, y in path]
        if len(points) > 1:
            pen.line(points, fill=(*colour, 190), width=line_width, joint="curve")
        for px, py in points[:1] + points[-1:]:
            pen.ellipse((px - dot, py - dot, px + dot, py + dot), fill=(*colour, 255))
    image = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
    draw = ImageDraw.Draw(image)
    quality = assess(world, fused)
    title = f"{world.name}  coverage {quality.coverage:.1%}  accuracy {quality.accuracy:.1%}"
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((4, 2), title, font=font)
    if right < image.width and bottom < image.height:
        draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=(255, 255, 255))
        draw.text((4, 2), title, fill=(0, 0, 0), font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
