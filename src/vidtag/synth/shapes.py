"""Shape geometry in units of `size` (the diameter of the circumscribed circle), centred at 0.

Polygons are returned as (N, 2) arrays already rotated and scaled; circle and ring are drawn as
ellipses by the renderer, so they only need their radii here.
"""

from __future__ import annotations

import math

import numpy as np

SQUARE_HALF_SIDE = 0.5 / math.sqrt(2.0)
STAR_INNER = 0.45
DOT_FRACTION = 0.15


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _star() -> np.ndarray:
    k = np.arange(10)
    r = np.where(k % 2 == 0, 0.5, 0.5 * STAR_INNER)
    a = k * math.pi / 5 - math.pi / 2
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _cross(arm: float) -> np.ndarray:
    h = arm / 2
    e = math.sqrt(0.25 - h * h)  # arm ends touch the circumscribed circle
    pts = [(h, -e), (h, -h), (e, -h), (e, h), (h, h), (h, e)]
    half = np.array(pts)  # top arm's right edge, right arm, bottom arm's right edge
    return np.concatenate([half, -half])


def _unit_polygon(shape: str, param: float) -> np.ndarray:
    if shape == "square":
        s = SQUARE_HALF_SIDE
        return np.array([(-s, -s), (s, -s), (s, s), (-s, s)])
    if shape == "triangle":
        a = np.arange(3) * 2 * math.pi / 3 - math.pi / 2
        return 0.5 * np.stack([np.cos(a), np.sin(a)], axis=1)
    if shape == "star":
        return _star()
    if shape == "cross":
        return _cross(param)
    raise ValueError(f"{shape} is not a polygon")


def polygon(shape: str, param: float, size: float, angle: float) -> np.ndarray:
    """Vertices of a polygonal shape (square, triangle, star, cross), relative to its centre."""
    return _rotate(_unit_polygon(shape, param) * size, angle)


def dot_radius_fraction(shape: str, param: float) -> float:
    """Distance of the marker dot from the centre, in units of size; chosen so the dot lies on
    the filled body of the shape (on the annulus for a ring, on an arm for a cross)."""
    if shape == "ring":
        return 0.25 * (1.0 + param)
    if shape == "cross":
        return 0.3
    if shape == "square":
        return 0.2
    return 0.24  # circle, triangle and star: towards a vertex/tip


def dot_offset(
    shape: str, param: float, size: float, angle: float, dot_angle: float
) -> tuple[float, float]:
    """Centre of the marker dot relative to the shape's centre; it turns with the shape."""
    r = dot_radius_fraction(shape, param) * size
    a = angle + dot_angle
    return r * math.cos(a), r * math.sin(a)


def dot_angle_choices(shape: str) -> tuple[float, ...] | None:
    """Directions (relative to the shape's angle) where the dot fits; None means any angle."""
    if shape == "triangle":
        return tuple(k * 2 * math.pi / 3 - math.pi / 2 for k in range(3))
    if shape == "star":
        return tuple(k * 2 * math.pi / 5 - math.pi / 2 for k in range(5))
    if shape == "cross":
        return tuple(k * math.pi / 2 for k in range(4))
    return None
