"""Procedural stand-in for drone photos of vegetation (binary: background, vegetation).

The real challenge gives oblique-free drone photos about 384 px high and 444..740 px wide, each
labelled vegetation (trees, shrubs, hedgerows, woodland) against everything else: bare soil,
grass that does not count as vegetation, roads, roofs and shadows. This generator draws scenes
of that kind without shipping any of the real data: height ``size``, width ``round(size * r)``
with the aspect ``r`` drawn per image in [1.15, 1.93], so the images of one set differ in width.

Every sample is drawn from its own seed sequence keyed on (seed, index), so a prefix of a longer
run is identical to a shorter run. All geometry lives in units of the image height and every
random decision that shapes the scene (aspect, materials, objects, sun) is drawn before any
size-dependent one, so one (seed, index) gives the same scene at 64 px as at 384 px.

The image is deliberately not a colour lookup of the mask. The hard case of the real data is
grass that is not vegetation: here lawn and meadow are light, yellowish green and smooth, while
trees and shrubs are darker, more saturated and lumpy (crowns lit on one side, leaf clumps);
but some trees are yellowish or sunlit, some lawns are dark green, shadows of trees turn the
ground dark green-grey, and a roof may be green. Texture, per-object shading, a global colour
cast, vignetting, noise and a slight blur that ignores class boundaries do the rest, so shape
and context have to be learnt, which a small CNN manages in a few epochs.
"""

from __future__ import annotations

import colorsys
from typing import Iterator

import numpy as np
from PIL import Image, ImageFilter

from cpx_plugins.competitions.sampling import samples, shift, streams

BACKGROUND, VEGETATION = 0, 1

ASPECT_RANGE = (1.15, 1.93)  # width / height; the real images are 384 x 444..740

# Keeps these streams apart from anything else in the project seeded with the same small ints.
_SALT = 0x7E6E_7A7E

# vegetation share per image: a fifth of the images hold little (the real set has such images)
P_SPARSE = 0.2
SPARSE_SHARE = (0.02, 0.12)
DENSE_SHARE = (0.16, 0.55)

MAX_TREES = 60
MAX_HEDGES = 4


def synthesize(count: int, size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``count`` (image RGB uint8 size x W x 3, mask uint8 size x W) pairs, with the
    width ``W = round(size * r)`` drawn per image (``r`` in :data:`ASPECT_RANGE`).

    Mask values are class ids: 0 background, 1 vegetation. Sample ``i`` depends only on
    ``(seed, i)``.
    """
    return samples(render_scene, count, size, seed)


def render_scene(size: int, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample, addressable directly (a Dataset can call this per item)."""
    return _Scene(size, *streams(_SALT, seed, index)).render()


# --------------------------------------------------------------------------------------------
# helpers

def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)),
                    np.float32) * 255.0


def _resize(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(grid.astype(np.float32)).resize(
        (width, height), Image.Resampling.BICUBIC), dtype=np.float32)


# ground materials (hue, saturation, value ranges); "lawn" and "meadow" are the grass that the
# organisers do NOT label vegetation: lighter and more yellow than trees, but overlapping them
_GROUND = {
    "soil": ((0.05, 0.10), (0.25, 0.55), (0.35, 0.66)),
    "dry_grass": ((0.11, 0.17), (0.25, 0.55), (0.55, 0.82)),
    "lawn": ((0.16, 0.25), (0.28, 0.55), (0.48, 0.76)),
    "meadow": ((0.14, 0.22), (0.35, 0.6), (0.40, 0.62)),
    "gravel": ((0.05, 0.15), (0.0, 0.12), (0.50, 0.78)),
}
_GROUND_WEIGHTS = {"soil": 0.22, "dry_grass": 0.2, "lawn": 0.3, "meadow": 0.18, "gravel": 0.1}

_ROOFS = [((0.0, 0.06), (0.45, 0.75), (0.45, 0.75)),   # terracotta
          ((0.0, 1.0), (0.0, 0.08), (0.35, 0.8)),      # grey / concrete
          ((0.55, 0.65), (0.1, 0.35), (0.3, 0.55)),    # slate
          ((0.28, 0.4), (0.3, 0.6), (0.25, 0.45))]     # green metal: a green that is no vegetation
_ROOF_WEIGHTS = [0.4, 0.35, 0.15, 0.1]


def _draw_hsv(rng: np.random.Generator, ranges) -> np.ndarray:
    (h0, h1), (s0, s1), (v0, v1) = ranges
    return _hsv(rng.uniform(h0, h1), rng.uniform(s0, s1), rng.uniform(v0, v1))


class _Scene:
    """One sample: planned in height units (x in [0, r], y in [0, 1]), then rasterised."""

    def __init__(self, size: int, rng: np.random.Generator, field_rng: np.random.Generator,
                 pixel_rng: np.random.Generator):
        self.rng, self.field_rng, self.pixel_rng = rng, field_rng, pixel_rng
        self.aspect = float(rng.uniform(*ASPECT_RANGE))  # the first draw: it shapes everything
        self.h, self.w = size, max(int(round(size * self.aspect)), 1)
        self.x = ((np.arange(self.w, dtype=np.float32) + 0.5) / size)[None, :]
        self.y = ((np.arange(self.h, dtype=np.float32) + 0.5) / size)[:, None]
        # smooth random fields; cell counts depend on the aspect only, so a sample looks alike
        # at any size
        self.low = [self.field(3) for _ in range(3)]  # ground materials
        self.wood = self.field(4)
        self.mid = self.field(8)
        self.fine = self.field(22)
        self.leaf = self.field(70)   # leaf clumps in crowns
        self.blade = self.field(140)  # grain of grass and soil
        self.chroma = np.stack([self.field(5) for _ in range(3)], -1)

    def field(self, rows: int) -> np.ndarray:
        cols = max(2, int(round(rows * self.aspect)))
        return _resize(self.field_rng.standard_normal((rows + 1, cols + 1)), self.h, self.w)

    def window(self, cx: float, cy: float, reach: float):
        """Pixel rows/cols within ``reach`` (height units) of a point, or None off-image."""
        s = self.h
        r0, r1 = max(int((cy - reach) * s) - 1, 0), min(int((cy + reach) * s) + 2, self.h)
        c0, c1 = max(int((cx - reach) * s) - 1, 0), min(int((cx + reach) * s) + 2, self.w)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    # ---------------------------------------------------------------- plan (all shape draws)

    def plan(self) -> None:
        """Draw every shape of the scene; the order of the draws fixes each seed's scene."""
        self.plan_ground()
        self.plan_roads()
        self.plan_roofs()
        area, parts = self.plan_vegetation()
        self.plan_trees(area, parts[1])
        self.plan_hedges(area, parts[2])
        self.plan_light()

    def plan_ground(self) -> None:
        """Draw the ground: two or three materials, their sharpness, and perhaps mowing stripes."""
        rng = self.rng
        names = list(_GROUND)
        p = np.array([_GROUND_WEIGHTS[n] for n in names])
        k = int(rng.integers(2, 4))
        self.ground = [(names[i], _draw_hsv(rng, _GROUND[names[i]]))
                       for i in rng.choice(len(names), size=k, replace=False, p=p / p.sum())]
        self.ground_sharp = rng.uniform(3.0, 10.0)
        self.stripes = (rng.uniform(0, np.pi), rng.uniform(8, 30), rng.uniform(0.03, 0.1)) \
            if rng.random() < 0.35 else None

    def plan_roads(self) -> None:
        """Draw up to two roads, asphalt (perhaps with a centre line) or dirt."""
        rng, r = self.rng, self.aspect
        self.roads = []
        for _ in range(int(rng.choice(3, p=[0.45, 0.4, 0.15]))):
            asphalt = rng.random() < 0.55
            colour = (_hsv(rng.uniform(0.55, 0.7), rng.uniform(0, 0.1), rng.uniform(0.28, 0.5)) if asphalt
                      else _hsv(rng.uniform(0.07, 0.12), rng.uniform(0.2, 0.4), rng.uniform(0.55, 0.78)))
            self.roads.append(dict(cx=rng.uniform(0, r), cy=rng.uniform(0, 1), angle=rng.uniform(0, np.pi),
                                   bend=rng.uniform(-0.6, 0.6), width=rng.uniform(0.03, 0.09),
                                   colour=colour, line=asphalt and rng.random() < 0.5))

    def plan_roofs(self) -> None:
        """Draw up to four roofs of the kinds in :data:`_ROOFS`."""
        rng, r = self.rng, self.aspect
        self.roofs = []
        for _ in range(int(rng.choice(5, p=[0.45, 0.25, 0.15, 0.1, 0.05]))):
            kind = int(rng.choice(len(_ROOFS), p=_ROOF_WEIGHTS))
            self.roofs.append(dict(cx=rng.uniform(0, r), cy=rng.uniform(0, 1), angle=rng.uniform(0, np.pi),
                                   a=rng.uniform(0.05, 0.16), b=rng.uniform(0.04, 0.1),
                                   colour=_draw_hsv(rng, _ROOFS[kind]), ridge=rng.random() < 0.7,
                                   dark=rng.uniform(0.7, 0.9)))

    def plan_vegetation(self) -> tuple[float, np.ndarray]:
        """Draw the vegetation's share of the frame, its colours and the woodland.

        Returns the vegetation's area (height units squared) and its split between woodland,
        trees and hedgerows.
        """
        rng, r = self.rng, self.aspect
        # vegetation: a target share of the frame split between woodland, trees and hedgerows
        share = (rng.uniform(*SPARSE_SHARE) if rng.random() < P_SPARSE else rng.uniform(*DENSE_SHARE))
        parts = rng.dirichlet([1.2, 1.5, 0.8])
        if rng.random() < 0.4:
            parts[2] = 0.0
        parts = parts / parts.sum()
        area = share * r
        self.veg_hue = rng.uniform(0.22, 0.32)
        self.veg_sat = rng.uniform(0.4, 0.75)
        self.veg_val = rng.uniform(0.22, 0.42)
        self.leaf_amp = rng.uniform(0.14, 0.3)

        self.wood_share = float(share * parts[0])
        self.wood_colour = self.veg_colour(rng)
        return area, parts

    def plan_trees(self, area: float, part: float) -> None:
        """Draw trees covering about ``part`` of the vegetation ``area``, most in a few clusters."""
        rng, r = self.rng, self.aspect
        self.trees = []
        radius_range = (0.02, 0.1) if rng.random() < 0.7 else (0.05, 0.16)
        mean_r2 = (radius_range[0] ** 2 + radius_range[0] * radius_range[1] + radius_range[1] ** 2) / 3
        n_trees = min(int(round(area * part / (np.pi * mean_r2 * 0.7))), MAX_TREES)
        centres = [(rng.uniform(0, r), rng.uniform(0, 1), rng.uniform(0.06, 0.3))
                   for _ in range(int(rng.integers(1, 5)))]
        for _ in range(n_trees):
            if rng.random() < 0.75:
                cx, cy, spread = centres[int(rng.integers(len(centres)))]
                x, y = cx + rng.normal(0, spread), cy + rng.normal(0, spread)
            else:
                x, y = rng.uniform(0, r), rng.uniform(0, 1)
            self.trees.append(dict(cx=x, cy=y, radius=rng.uniform(*radius_range),
                                   lobes=rng.uniform(0.03, 0.12, 4), phases=rng.uniform(0, 2 * np.pi, 4),
                                   colour=self.veg_colour(rng), rough=rng.uniform(0.05, 0.2)))

    def plan_hedges(self, area: float, part: float) -> None:
        """Draw hedgerows covering about ``part`` of the vegetation ``area`` (none when 0)."""
        rng, r = self.rng, self.aspect
        self.hedges = []
        if part > 0:
            width = rng.uniform(0.025, 0.06)
            length = rng.uniform(0.6, 1.6)
            n = max(1, min(int(round(area * part / (width * 2 * length * 0.8))), MAX_HEDGES))
            for _ in range(n):
                self.hedges.append(dict(cx=rng.uniform(0, r), cy=rng.uniform(0, 1), angle=rng.uniform(0, np.pi),
                                        bend=rng.uniform(-0.5, 0.5), half_width=width * rng.uniform(0.8, 1.2),
                                        half_length=length * rng.uniform(0.6, 1.0) / 2,
                                        colour=self.veg_colour(rng)))

    def plan_light(self) -> None:
        """Draw the sun (direction, shadow length and darkness) and the camera's settings."""
        rng = self.rng
        angle = rng.uniform(0, 2 * np.pi)
        self.sun = np.array([np.cos(angle), np.sin(angle)], np.float32)
        self.shadow_len = rng.uniform(0.01, 0.06)
        self.shadow_dark = rng.uniform(0.4, 0.7)
        # camera
        self.cast = rng.normal(1.0, 0.05, 3).astype(np.float32)
        self.exposure = rng.uniform(0.85, 1.15)
        self.contrast = rng.uniform(0.85, 1.15)
        self.gamma = rng.uniform(0.85, 1.15)
        self.vignette = rng.uniform(0.0, 0.3)
        self.noise_sigma = rng.uniform(1.5, 6.0)
        self.blur = rng.uniform(0.0, 0.003)

    def veg_colour(self, rng: np.random.Generator) -> np.ndarray:
        u = rng.random()
        if u < 0.08:  # yellowing or autumn crown: a colour that grass can have too
            return _hsv(rng.uniform(0.11, 0.17), rng.uniform(0.4, 0.7), rng.uniform(0.4, 0.6))
        if u < 0.25:  # conifer: dark, bluish green
            return _hsv(rng.uniform(0.3, 0.42), rng.uniform(0.35, 0.65), rng.uniform(0.14, 0.28))
        return _hsv(self.veg_hue + rng.normal(0, 0.02), self.veg_sat + rng.normal(0, 0.08),
                    self.veg_val * rng.uniform(0.8, 1.35))

    # ---------------------------------------------------------------- layers

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        self.plan()
        image = self.paint_ground()
        roof_mask = self.paint_roads_and_roofs(image)
        veg_image, veg = self.paint_vegetation()
        self.cast_shadows(image, veg | roof_mask, veg)
        np.copyto(image, veg_image, where=veg[..., None])
        return self.finish(image), veg.astype(np.uint8)

    def paint_ground(self) -> np.ndarray:
        k = len(self.ground)
        logits = np.stack(self.low[:k], 0) * self.ground_sharp
        weights = np.exp(logits - logits.max(0, keepdims=True))
        weights /= weights.sum(0, keepdims=True)
        image = np.zeros((self.h, self.w, 3), np.float32)
        for i, (name, colour) in enumerate(self.ground):
            grain = 0.12 if name in ("soil", "gravel") else 0.07
            lum = 1.0 + 0.08 * self.mid + 0.05 * self.fine + grain * self.blade
            image += weights[i][..., None] * (colour * lum[..., None])
        if self.stripes is not None:
            a, freq, amp = self.stripes
            phase = (np.cos(a) * self.x + np.sin(a) * self.y) * freq * 2 * np.pi
            image *= (1.0 + amp * np.sign(np.sin(phase)))[..., None]
        return image + 6.0 * self.chroma

    def paint_roads_and_roofs(self, image: np.ndarray) -> np.ndarray:
        for road in self.roads:
            c, s = np.cos(road["angle"]), np.sin(road["angle"])
            dx, dy = self.x - road["cx"], self.y - road["cy"]
            u, v = c * dx + s * dy, -s * dx + c * dy
            v = v - road["bend"] * u * u
            half = road["width"] / 2 * (1.0 + 0.06 * self.mid)
            region = np.abs(v) < np.maximum(half, 0.6 / self.h)
            col = road["colour"] * (1.0 + 0.04 * self.fine + 0.05 * self.blade)[..., None]
            if road["line"]:
                col = np.where((np.abs(v) < 0.004)[..., None], np.float32(225.0), col)
            np.copyto(image, col, where=region[..., None])
        roof_mask = np.zeros((self.h, self.w), bool)
        for roof in self.roofs:
            win = self.window(roof["cx"], roof["cy"], np.hypot(roof["a"], roof["b"]))
            if win is None:
                continue
            c, s = np.cos(roof["angle"]), np.sin(roof["angle"])
            dx, dy = self.x[:, win[1]] - roof["cx"], self.y[win[0]] - roof["cy"]
            u, v = c * dx + s * dy, -s * dx + c * dy
            region = (np.abs(u) < roof["a"]) & (np.abs(v) < roof["b"])
            if not region.any():
                continue
            lum = 1.0 + 0.03 * self.fine[win]
            if roof["ridge"]:  # two pitches, one turned from the sun
                lum = lum * np.where(v > 0, np.float32(1.0), np.float32(roof["dark"]))
            np.copyto(image[win], roof["colour"] * lum[..., None], where=region[..., None])
            roof_mask[win] |= region
        return roof_mask

    def paint_vegetation(self) -> tuple[np.ndarray, np.ndarray]:
        veg = np.zeros((self.h, self.w), bool)
        veg_image = np.zeros((self.h, self.w, 3), np.float32)
        leaf = 1.0 + self.leaf_amp * self.leaf + 0.5 * self.leaf_amp * self.blade
        if self.wood_share > 0.002:
            # woodland: a smooth field cut at the quantile that gives the planned share
            f = self.wood + 0.3 * self.mid + 0.1 * self.fine
            region = f > np.quantile(f, 1.0 - self.wood_share)
            clumps = 0.8 + 0.2 * np.tanh(2.0 * self.fine) + 0.1 * self.mid
            col = self.wood_colour * (clumps * leaf)[..., None] + 8.0 * self.chroma
            np.copyto(veg_image, col, where=region[..., None])
            veg |= region
        for hedge in self.hedges:
            c, s = np.cos(hedge["angle"]), np.sin(hedge["angle"])
            dx, dy = self.x - hedge["cx"], self.y - hedge["cy"]
            u, v = c * dx + s * dy, -s * dx + c * dy
            v = v - hedge["bend"] * u * u
            hw = hedge["half_width"] * (1.0 + 0.25 * self.mid + 0.15 * self.fine)
            end = np.clip((hedge["half_length"] - np.abs(u)) / hedge["half_width"], 0, 1)
            region = np.abs(v) < np.maximum(hw * np.sqrt(end), 0.0)
            if not region.any():
                continue
            t = np.clip(v / np.maximum(hw, 1e-4), -1, 1)
            facing = float(-s * self.sun[0] + c * self.sun[1])  # sun component across the hedge
            lum = 0.85 - 0.25 * t * facing + 0.1 * np.sqrt(1 - t * t)
            np.copyto(veg_image, hedge["colour"] * (lum * leaf)[..., None], where=region[..., None])
            veg |= region
        for tree in self.trees:
            rad = tree["radius"]
            win = self.window(tree["cx"], tree["cy"], rad * 1.4)
            if win is None:
                continue
            dx, dy = self.x[:, win[1]] - tree["cx"], self.y[win[0]] - tree["cy"]
            d = np.sqrt(dx * dx + dy * dy) / rad
            theta = np.arctan2(dy, dx)
            edge = 1.0 + tree["rough"] * self.fine[win]
            for k, (a, p) in enumerate(zip(tree["lobes"], tree["phases"])):
                edge = edge + a * np.cos((k + 3) * theta + p)
            region = d < edge
            if not region.any():
                continue
            # a lit dome: brighter towards the sun, darker on the far side and at the rim
            nz = np.sqrt(np.clip(1.0 - (d / np.maximum(edge, 0.5)) ** 2, 0, 1))
            lum = 0.62 + 0.3 * (dx * self.sun[0] + dy * self.sun[1]) / rad * nz + 0.25 * nz
            col = tree["colour"] * (lum * leaf[win])[..., None]
            np.copyto(veg_image[win], col, where=region[..., None])
            veg[win] |= region
        return veg_image, veg

    def cast_shadows(self, image: np.ndarray, casters: np.ndarray, veg: np.ndarray) -> None:
        # shadows fall away from the sun; on the ground they are background, dark and greyish
        step = self.shadow_len * self.h
        dy, dx = int(round(-self.sun[1] * step)), int(round(-self.sun[0] * step))
        if dx == 0 and dy == 0:
            return
        shadow = shift(casters, dy, dx) & ~veg
        if not shadow.any():
            return
        tint = np.array([0.92, 0.97, 1.1], np.float32) * self.shadow_dark
        np.copyto(image, image * tint, where=shadow[..., None])

    # ---------------------------------------------------------------- camera

    def finish(self, image: np.ndarray) -> np.ndarray:
        cx, cy = self.aspect / 2, 0.5
        vignette = 1.0 - self.vignette * ((self.x - cx) ** 2 + (self.y - cy) ** 2)
        image = image * (self.cast * self.exposure) * vignette[..., None]
        levels = np.arange(256, dtype=np.float32) / 255.0
        curve = (np.clip((levels - 0.5) * self.contrast + 0.5, 0, 1) ** self.gamma * 255.0).astype(np.float32)
        image = curve[np.clip(image, 0, 255).astype(np.uint8)]
        image += self.pixel_rng.standard_normal(image.shape, dtype=np.float32) * np.float32(self.noise_sigma)
        out = np.clip(image + 0.5, 0, 255).astype(np.uint8)
        radius = self.blur * self.h
        if radius > 0.35:  # lens softness: blends pixels across edges, never moves them
            out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(radius)))
        return np.ascontiguousarray(out)
