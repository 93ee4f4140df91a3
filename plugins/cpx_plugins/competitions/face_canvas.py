"""The canvas the synthetic faces of :mod:`cpx_plugins.competitions.faces` are painted on: the
pose (scale, rotation, shift) mapping face-local coordinates to pixels, smooth noise fields drawn
at fixed cell counts (so a sample looks alike at any size), painting a region into the mask and
the image, shading, colour helpers, and the camera's finish (colour cast, tone curve, noise, blur).
"""

from __future__ import annotations

import colorsys
from typing import Optional

import numpy as np
from PIL import Image, ImageFilter

# --------------------------------------------------------------------------------------------
# helpers

def hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour (3 float32 in 0..255) from hue (wrapped), saturation and value (clipped to 0..1)."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)),
                    np.float32) * 255.0


def upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """A small 2-D grid resized bicubically to ``size x size`` float32: a smooth noise field."""
    return np.asarray(Image.fromarray(grid.astype(np.float32)).resize(
        (size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def pick(rng: np.random.Generator, options):
    """One value of ``options`` (``(value, weight)`` pairs), drawn with probability proportional to its weight."""
    weights = np.array([w for _, w in options], float)
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def mix(a, b, t):
    """``a`` blended towards ``b`` by ``t`` (0: ``a``, 1: ``b``), float32."""
    return np.asarray(a, np.float32) * (1.0 - t) + np.asarray(b, np.float32) * t


def random_colour(rng: np.random.Generator, skin: np.ndarray, hair: np.ndarray) -> np.ndarray:
    """Clothing / hat / clutter colour; sometimes deliberately skin- or hair-like."""
    r = rng.random()
    if r < 0.12:
        return np.clip(skin * rng.uniform(0.85, 1.1) + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
    if r < 0.22:
        return np.clip(hair * rng.uniform(0.8, 1.3) + rng.normal(0, 8, 3), 0, 255).astype(np.float32)
    if r < 0.40:
        return hsv(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.05, 0.25))  # near black
    if r < 0.52:
        return hsv(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.8, 0.98))  # near white
    return hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95))


class Canvas:
    """A square mask and image of ``size`` pixels with a random pose and noise fields; the face
    parts of a subclass paint into them back to front, :meth:`finish` gives the final image.

    Local units: the image side is 1 at scale 1, origin at the image centre, v pointing down.
    """

    def __init__(self, size: int, rng: np.random.Generator, field_rng: np.random.Generator,
                 pixel_rng: np.random.Generator):
        # three streams, so the same geometry keeps the same noise fields and pixel noise
        self.size, self.rng, self.field_rng, self.pixel_rng = size, rng, field_rng, pixel_rng
        self.mask = np.zeros((size, size), np.uint8)
        self.image = np.zeros((size, size, 3), np.float32)

        # pose: the real crops are aligned, so only mild jitter
        self.scale = float(np.clip(rng.normal(1.04, 0.07), 0.85, 1.25))
        self.rotation = float(np.clip(rng.normal(0.0, 0.08), -0.25, 0.25))
        self.shift_x = float(np.clip(rng.normal(0.0, 0.025), -0.06, 0.06))
        self.shift_y = float(np.clip(rng.normal(-0.025, 0.025), -0.08, 0.04))
        c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        self.grid_x, self.grid_y = c[None, :], c[:, None]
        cr, sr = np.cos(self.rotation), np.sin(self.rotation)
        dx, dy = self.grid_x - self.shift_x, self.grid_y - self.shift_y
        self.face_u = ((cr * dx + sr * dy) / self.scale).astype(np.float32)
        self.face_v = ((-sr * dx + cr * dy) / self.scale).astype(np.float32)

        # smooth random fields; cell counts are fixed so the same sample looks alike at any size
        self.noise_low = upsample(field_rng.standard_normal((4, 4)), size)
        self.noise_mid = upsample(field_rng.standard_normal((12, 12)), size)
        self.noise_fine = upsample(field_rng.standard_normal((40, 40)), size)
        self.wobble = upsample(field_rng.standard_normal((16, 16)), size)
        self.streak = upsample(field_rng.standard_normal((8, 72)), size)
        self.chroma = np.stack([upsample(field_rng.standard_normal((6, 6)), size) for _ in range(3)], -1)

    # ---------------------------------------------------------------- canvas primitives

    def window(self, u0: float, u1: float, v0: float, v1: float) -> Optional[tuple[slice, slice]]:
        """Pixel rows/cols covering a local-coordinate box, so small parts stay cheap."""
        us = np.array([u0, u1, u0, u1])
        vs = np.array([v0, v0, v1, v1])
        cr, sr = np.cos(self.rotation), np.sin(self.rotation)
        x = self.shift_x + self.scale * (cr * us - sr * vs)
        y = self.shift_y + self.scale * (sr * us + cr * vs)
        px, py = (x + 0.5) * self.size - 0.5, (y + 0.5) * self.size - 0.5
        c0, c1 = max(int(np.floor(px.min())) - 1, 0), min(int(np.ceil(px.max())) + 2, self.size)
        r0, r1 = max(int(np.floor(py.min())) - 1, 0), min(int(np.ceil(py.max())) + 2, self.size)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    FULL = (slice(None), slice(None))

    def uv(self, win):
        U, V = self.face_u[win], self.face_v[win]
        return U, V

    def paint(self, win, region: np.ndarray, cls: int, colour) -> None:
        if win is None or not region.any():
            return
        # copyto with where= is several times faster than boolean-index assignment here
        np.copyto(self.mask[win], np.uint8(cls), where=region)
        np.copyto(self.image[win], np.asarray(colour, np.float32), where=region[..., None])

    def shade(self, win, base, mid=0.05, fine=0.03, chroma=5.0, extra=None) -> np.ndarray:
        lum = self.light[win] * (1.0 + mid * self.noise_mid[win] + fine * self.noise_fine[win])
        if extra is not None:
            lum = lum * extra
        return np.asarray(base, np.float32) * lum[..., None] + chroma * self.chroma[win]

    def background(self) -> None:
        """The backdrop, filling the whole image: a two-colour gradient, lighting and colour noise, up
        to 7 boxes, ellipses or bands of clutter, optional blur. Colours come from
        :func:`random_colour`, some like the subclass's ``skin_rgb`` and ``hair_rgb``."""
        rng, size = self.rng, self.size
        c1 = random_colour(rng, self.skin_rgb, self.hair_rgb)
        c2 = random_colour(rng, self.skin_rgb, self.hair_rgb)
        a = rng.uniform(0, 2 * np.pi)
        ramp = np.clip((np.cos(a) * self.grid_x + np.sin(a) * self.grid_y) + 0.5, 0, 1)
        bg = c1 + (c2 - c1) * ramp[..., None]
        bg *= (1.0 + rng.uniform(0.05, 0.25) * self.noise_low)[..., None]
        bg += 14.0 * self.chroma
        for _ in range(int(rng.integers(0, 8))):
            col = random_colour(rng, self.skin_rgb, self.hair_rgb)
            cx, cy = rng.uniform(-0.6, 0.6, 2)
            w, h = rng.uniform(0.03, 0.4, 2)
            kind = rng.integers(3)
            alpha = rng.uniform(0.5, 1.0)
            b = rng.uniform(0, np.pi)
            if kind == 2:  # a band across the whole frame
                rows, cols = slice(None), slice(None)
            else:
                r0, r1 = (int(np.clip((v + 0.5) * size, 0, size)) for v in (cy - h, cy + h + 2 / size))
                c0, c1 = (int(np.clip((v + 0.5) * size, 0, size)) for v in (cx - w, cx + w + 2 / size))
                if r0 >= r1 or c0 >= c1:
                    continue
                rows, cols = slice(r0, r1), slice(c0, c1)
            X, Y, sub = self.grid_x[:, cols], self.grid_y[rows], bg[rows, cols]
            if kind == 0:
                region = (np.abs(X - cx) < w) & (np.abs(Y - cy) < h)
            elif kind == 1:
                region = ((X - cx) / w) ** 2 + ((Y - cy) / h) ** 2 < 1
            else:
                region = np.abs(np.cos(b) * (X - cx) + np.sin(b) * (Y - cy)) < w * 0.3
            np.copyto(sub, mix(sub, col, alpha), where=region[..., None])
        if rng.random() < 0.3:
            bg = bg * (1.0 + rng.uniform(0.05, 0.2) * self.noise_fine[..., None])
        radius = rng.uniform(0.0, 0.012) * size
        if radius > 0.3:
            bg8 = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
            bg = np.asarray(bg8.filter(ImageFilter.GaussianBlur(radius)), np.float32)
        self.image[:] = bg

    # ---------------------------------------------------------------- camera

    def finish(self) -> np.ndarray:
        rng, size = self.rng, self.size
        img = self.image
        cast = rng.normal(1.0, 0.05, 3).astype(np.float32)
        contrast = rng.uniform(0.8, 1.15)
        gamma = rng.uniform(0.85, 1.2)
        vignette = 1.0 - rng.uniform(0, 0.35) * (self.grid_x ** 2 + self.grid_y ** 2)
        img = img * cast * vignette[..., None]
        # tone curve through a lookup table: a per-pixel pow is the slowest step at 512 px
        levels = np.arange(256, dtype=np.float32) / 255.0
        curve = (np.clip((levels - 0.5) * contrast + 0.5, 0, 1) ** gamma * 255.0).astype(np.float32)
        img = curve[np.clip(img, 0, 255).astype(np.uint8)]
        sigma = rng.uniform(1.0, 7.0)
        blur = rng.uniform(0.0, 0.0016) * size
        img += self.pixel_rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
        out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        if blur > 0.35:  # lens softness: blends a pixel across edges, never moves them
            out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(blur)))
        return np.ascontiguousarray(out)
