"""The mission's map as a PNG: the fused map, the routes the robots drove, and a legend.

The picture has three parts: a title line (area, coverage, accuracy), the map (every cell a
square of `scale` pixels; routes drawn through cell centres, so a route that stays on free
cells never touches a wall), and a legend beside the map naming every colour and marker.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from .mapping import FREE_THRESHOLD, OCCUPIED_THRESHOLD, assess
from .routing import Cell
from .world import World

MIN_MAP_WIDTH = 800
"""Pixels the map is scaled to at least, where the height allows it."""
MAX_MAP_HEIGHT = 1600
MAX_SCALE = 32

UNKNOWN_RGB = (150, 150, 155)
UNSEEN_OBSTACLE_RGB = (118, 118, 128)
FREE_RGB = (250, 250, 246)
OCCUPIED_RGB = (20, 20, 24)
PANEL_RGB = (255, 255, 255)
TEXT_RGB = (34, 34, 40)
FAINT_TEXT_RGB = (96, 96, 104)
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
"""One colour per robot, in the order of the routes; none of them is a grey of the map."""

TITLE_HEIGHT = 40
LEGEND_WIDTH = 240
MIN_WIDTH = 720
"""The title line needs this much, however narrow the map."""
ROW = 24
PAD = 16
MAP_KEYS = (
    (FREE_RGB, "free"),
    (OCCUPIED_RGB, "occupied"),
    (UNKNOWN_RGB, "unknown"),
    (UNSEEN_OBSTACLE_RGB, "unknown (in truth a wall)"),
)


@dataclass(frozen=True)
class Track:
    """One robot's route on the map: its name and the cells it turned at (or all of them)."""

    name: str
    cells: Sequence[Cell]


@dataclass(frozen=True)
class Layout:
    """Where the parts of the picture are, in pixels."""

    scale: int
    width: int
    height: int
    map_box: tuple[int, int, int, int]
    """``(left, top, right, bottom)`` of the map; cell ``(x, y)`` starts at
    ``(left + x * scale, top + y * scale)``."""
    legend_box: tuple[int, int, int, int]


def scale_for(world: World) -> int:
    """Pixels per cell: a map at least 800 px wide, unless that would make it too tall."""
    wide = math.ceil(MIN_MAP_WIDTH / world.width)
    return max(2, min(MAX_SCALE, wide, MAX_MAP_HEIGHT // world.height))


def layout(world: World, robots: int, scale: int) -> Layout:
    """Place the title, the map and the legend for a map of `robots` routes."""
    if not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be between 1 and {MAX_SCALE}, got {scale}")
    map_width, map_height = world.width * scale, world.height * scale
    rows = len(MAP_KEYS) + robots + 2 + 3  # three headers
    legend_height = PAD * 2 + rows * ROW
    height = TITLE_HEIGHT + max(map_height, legend_height)
    return Layout(
        scale=scale,
        width=max(map_width + LEGEND_WIDTH, MIN_WIDTH),
        height=height,
        map_box=(0, TITLE_HEIGHT, map_width, TITLE_HEIGHT + map_height),
        legend_box=(map_width, TITLE_HEIGHT, map_width + LEGEND_WIDTH, height),
    )


def render_png(
    world: World,
    fused: NDArray[np.float32],
    tracks: Sequence[Track] = (),
    scale: int | None = None,
) -> bytes:
    """Draw a fused map, the robots' routes and a legend as a PNG.

    Args:
        world: The world the map belongs to (its walls never observed are drawn faintly).
        fused: Fused log-odds grid of the world's shape.
        tracks: One route per robot, drawn in `PATH_COLOURS` order.
        scale: Pixels per cell (1..32); by default `scale_for(world)`.

    Returns:
        PNG bytes of an image `layout(world, len(tracks), scale)` describes.
    """
    quality = assess(world, fused)  # also checks the shape
    place = layout(world, len(tracks), scale or scale_for(world))
    image = Image.new("RGB", (place.width, place.height), PANEL_RGB)
    left, top, right, bottom = place.map_box
    cells = _cells(world, fused).resize((right - left, bottom - top), Image.Resampling.NEAREST)
    image.paste(cells, (left, top))
    draw = ImageDraw.Draw(image)
    for number, track in enumerate(tracks):
        _track(draw, place, track.cells, PATH_COLOURS[number % len(PATH_COLOURS)])
    title = f"{world.name}: coverage {quality.coverage:.1%}, accuracy {quality.accuracy:.1%}"
    font = _font(18)
    draw.text((PAD, 10), title, fill=TEXT_RGB, font=font)
    size = f"{len(tracks)} robots, {world.width} x {world.height} cells"
    draw.text(
        (PAD * 2 + draw.textlength(title, font=font), 12), size, fill=FAINT_TEXT_RGB, font=_font(15)
    )
    _legend(draw, place, [track.name for track in tracks])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _cells(world: World, fused: NDArray[np.float32]) -> Image.Image:
    """One pixel per cell, coloured by what the map knows."""
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
    return Image.fromarray(pixels)


def marker_box(place: Layout, cell: Cell) -> tuple[int, int, int, int]:
    """The pixels ``(left, top, right, bottom)`` a start or end marker on `cell` covers.

    A marker is larger than a cell, so that it shows at every scale; it may overlap the
    cells around it, where a route's line never does.
    """
    scale, (left, top, _, _) = place.scale, place.map_box
    cx, cy = left + (cell[0] + 0.5) * scale, top + (cell[1] + 0.5) * scale
    half = max(5, round(scale * 0.7))
    return (int(cx) - half, int(cy) - half, int(cx) + half, int(cy) + half)


def _track(
    draw: ImageDraw.ImageDraw,
    place: Layout,
    cells: Sequence[Cell],
    colour: tuple[int, int, int],
) -> None:
    """A route through cell centres, a square on its first cell and a disc on its last.

    The line stays inside the cells it passes through, so a route over free cells never
    paints a wall.
    """
    if not cells:
        return
    scale, (left, top, _, _) = place.scale, place.map_box
    centres = [(left + (x + 0.5) * scale, top + (y + 0.5) * scale) for x, y in cells]
    width = max(1, round(scale * 0.3))
    if len(centres) > 1:
        draw.line(centres, fill=colour, width=width, joint="curve")
    draw.rectangle(marker_box(place, cells[0]), fill=colour, outline=PANEL_RGB, width=2)
    draw.ellipse(marker_box(place, cells[-1]), fill=colour, outline=PANEL_RGB, width=2)


def _legend(draw: ImageDraw.ImageDraw, place: Layout, names: Sequence[str]) -> None:
    left, top, _, _ = place.legend_box
    font, small = _font(15), _font(14)
    x, y = left + PAD, top + PAD
    sample = (x, x + 22)

    def header(text: str) -> None:
        nonlocal y
        draw.text((x, y), text, fill=FAINT_TEXT_RGB, font=small)
        y += ROW

    def label(text: str) -> None:
        nonlocal y
        draw.text((sample[1] + 10, y), text, fill=TEXT_RGB, font=font)
        y += ROW

    header("map")
    for colour, text in MAP_KEYS:
        draw.rectangle((sample[0], y + 2, sample[1], y + 16), fill=colour, outline=FAINT_TEXT_RGB)
        label(text)
    header("routes driven")
    for number, name in enumerate(names):
        colour = PATH_COLOURS[number % len(PATH_COLOURS)]
        draw.line((sample[0], y + 9, sample[1], y + 9), fill=colour, width=4)
        label(name)
    header("markers")
    draw.rectangle((sample[0] + 5, y + 3, sample[0] + 17, y + 15), fill=TEXT_RGB)
    label("start")
    draw.ellipse((sample[0] + 5, y + 3, sample[0] + 17, y + 15), fill=TEXT_RGB)
    label("end")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)
