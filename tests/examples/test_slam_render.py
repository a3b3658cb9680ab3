"""The map picture: routes drawn where the robots drove, a legend, a readable size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from sagakit_examples.slam.mapping import fuse
from sagakit_examples.slam.planning import plan
from sagakit_examples.slam.render import (
    MAP_KEYS,
    PATH_COLOURS,
    TEXT_RGB,
    Layout,
    Track,
    layout,
    marker_box,
    render_png,
    scale_for,
)
from sagakit_examples.slam.routing import corners
from sagakit_examples.slam.sensing import explore_sector, scan_poses
from sagakit_examples.slam.world import World, generate_world

NAMES = ["scout-01", "scout-02", "scout-03"]


def mission_map(name: str = "warehouse") -> tuple[World, NDArray[np.float32], list[Track]]:
    """A 3-robot mission's world, fused map and driven routes (as corners, as they travel)."""
    world = generate_world(name, seed=0)
    routes = plan(world, 3)
    grids = [explore_sector(world, scan_poses(r.cells), seed=i) for i, r in enumerate(routes)]
    tracks = [Track(n, corners(r.cells)) for n, r in zip(NAMES, routes, strict=True)]
    return world, fuse(grids), tracks


def pixels(png: bytes) -> NDArray[np.uint8]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    array: NDArray[np.uint8] = np.asarray(image.convert("RGB"))
    return array


def matching(area: NDArray[np.uint8], colours: list[tuple[int, int, int]]) -> NDArray[np.bool_]:
    mask = np.zeros(area.shape[:2], dtype=np.bool_)
    for colour in colours:
        mask |= (area == np.asarray(colour, dtype=np.uint8)).all(axis=2)
    return mask


def path_cells(png: bytes, place: Layout, tracks: list[Track]) -> list[tuple[int, int]]:
    """Cells ``(x, y)`` under every pixel of a route's line (its end markers left out)."""
    image = pixels(png).copy()
    for track in tracks:  # blank the markers, which may overlap the cells around the ends
        for end in (track.cells[0], track.cells[-1]):
            x0, y0, x1, y1 = marker_box(place, end)
            image[y0 : y1 + 1, x0 : x1 + 1] = 255
    left, top, right, bottom = place.map_box
    area = image[top:bottom, left:right]
    ys, xs = np.nonzero(matching(area, list(PATH_COLOURS[: len(tracks)])))
    return sorted(
        {(int(x) // place.scale, int(y) // place.scale) for x, y in zip(xs, ys, strict=True)}
    )


def test_no_route_pixel_lies_on_a_wall() -> None:
    world, fused, tracks = mission_map()
    place = layout(world, len(tracks), scale_for(world))
    drawn = path_cells(render_png(world, fused, tracks), place, tracks)

    assert len(drawn) > 500  # the routes are there
    assert [cell for cell in drawn if world.truth[cell[1], cell[0]]] == []
    image = pixels(render_png(world, fused, tracks))
    for colour, track in zip(PATH_COLOURS, tracks, strict=False):
        for end in (track.cells[0], track.cells[-1]):  # a start and an end marker
            x0, y0, x1, y1 = marker_box(place, end)
            assert matching(image[y0:y1, x0:x1], [colour]).sum() > (x1 - x0) * (y1 - y0) // 3


def test_the_wall_check_catches_routes_drawn_through_walls() -> None:
    world, fused, _ = mission_map()
    straight = [Track(n, r.waypoints) for n, r in zip(NAMES, plan(world, 3), strict=True)]
    place = layout(world, 3, scale_for(world))
    drawn = path_cells(render_png(world, fused, straight), place, straight)

    assert [cell for cell in drawn if world.truth[cell[1], cell[0]]] != []


def test_the_picture_is_readable_and_has_a_legend() -> None:
    world, fused, tracks = mission_map()
    png = render_png(world, fused, tracks)
    place = layout(world, 3, scale_for(world))
    image = pixels(png)

    assert image.shape[1] == place.width >= 800 + 200
    assert image.shape[0] == place.height
    left, top, right, bottom = place.map_box
    assert (right - left, bottom - top) == (world.width * place.scale, world.height * place.scale)
    assert right - left >= 800
    legend = image[place.legend_box[1] : place.legend_box[3], place.legend_box[0] :]
    for colour in [*PATH_COLOURS[:3], *(key for key, _ in MAP_KEYS), TEXT_RGB]:
        assert matching(legend, [colour]).sum() > 20, f"legend lacks {colour}"
    assert matching(legend, [PATH_COLOURS[3]]).sum() == 0  # no fourth robot listed


def test_the_legend_names_the_robots() -> None:
    world, fused, tracks = mission_map()
    renamed = [Track(t.name.replace("scout", "rover"), t.cells) for t in tracks]
    place = layout(world, 3, scale_for(world))
    first, second = (
        pixels(render_png(world, fused, tracks)),
        pixels(render_png(world, fused, renamed)),
    )
    left, top, right, bottom = place.map_box

    assert np.array_equal(first[top:bottom, left:right], second[top:bottom, left:right])
    assert not np.array_equal(first[:, right:], second[:, right:])


@pytest.mark.parametrize(
    ("width", "height", "scale"), [(80, 60, 10), (20, 20, 32), (400, 400, 2), (20, 400, 4)]
)
def test_the_scale_makes_the_map_wide_but_not_too_tall(width: int, height: int, scale: int) -> None:
    assert scale_for(generate_world("size", width=width, height=height)) == scale


def test_a_bad_scale_or_shape_is_refused() -> None:
    world, fused, tracks = mission_map()
    with pytest.raises(ValueError, match="scale"):
        render_png(world, fused, tracks, scale=40)
    with pytest.raises(ValueError, match="shape"):
        render_png(world, fused[:10], tracks)
