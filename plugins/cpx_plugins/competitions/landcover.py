"""Procedural stand-in for 4-band (R, G, B, NIR) satellite land-cover tiles.

The real challenge gives square 1024 px tiles of four bands, each pixel labelled one of seven
classes: background (other or unlabelled land: meadow, scrub, yards), water, forest, cropland,
building, road and bare soil. This generator draws tiles of that kind without shipping any of the
real data, at any side ``size`` (tests use 64 px).

Every sample is drawn from its own seed sequence keyed on (seed, index), so a prefix of a longer
run is identical to a shorter run. Geometry lives in units of the tile side and every random
decision that shapes the tile (regions, rivers, roads, settlement, spectra) is drawn before any
size-dependent one, so one (seed, index) gives the same tile at 64 px as at 1024 px.

Layout: a domain-warped Voronoi partition of the land into meadow, forest, cropland (cut into
rectangular parcels on a rotated grid, each with its own crop stage and row direction) and bare
soil; then lakes and a meandering river; straight-ish roads; a settlement (yards, a street grid,
rectangular buildings on lots, their shadows) and a few large flat-roofed buildings.

The near-infrared band carries what the visible bands cannot: forest and water are both dark in
R, G and B (and a green, algal lake has almost the forest's colour) but forest is bright in NIR
and water nearly black; green crops are the brightest in NIR; roofs and roads are flat across
the bands (buildings mid in NIR). The visible bands overlap on purpose: harvested or ploughed
parcels look like bare soil, dirt roads like soil, dark roofs like asphalt, dry meadow like a
ripe crop; haze, gain, texture, shadows and noise vary per tile and per pixel.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image

from cpx_plugins.competitions.sampling import samples, shift, streams

CLASSES = ("background", "water", "forest", "cropland", "building", "road", "bare_soil")
BACKGROUND, WATER, FOREST, CROPLAND, BUILDING, ROAD, BARE_SOIL = range(7)
BANDS = ("red", "green", "blue", "nir")

# Keeps these streams apart from anything else in the project seeded with the same small ints.
_SALT = 0x1A_ADC0

# Reflectance (R, G, B, NIR) of the materials; one is picked and jittered per region.
_MEADOW = np.array([[0.08, 0.12, 0.07, 0.32], [0.15, 0.16, 0.10, 0.27], [0.11, 0.13, 0.09, 0.24]], np.float32)
_FOREST = np.array([[0.04, 0.07, 0.04, 0.38], [0.03, 0.05, 0.04, 0.26], [0.05, 0.08, 0.05, 0.42]], np.float32)
_CROPS = np.array([[0.05, 0.11, 0.05, 0.50],    # green crop
                   [0.07, 0.12, 0.07, 0.40],    # young crop
                   [0.20, 0.19, 0.10, 0.33],    # ripe cereal
                   [0.22, 0.19, 0.15, 0.27],    # stubble: looks like bare soil
                   [0.12, 0.10, 0.08, 0.17]],   # ploughed
                  np.float32)
_CROP_WEIGHTS = np.array([0.34, 0.18, 0.18, 0.16, 0.14])
_SOIL = np.array([[0.26, 0.22, 0.17, 0.32], [0.30, 0.20, 0.13, 0.33], [0.18, 0.16, 0.13, 0.22],
                  [0.34, 0.31, 0.26, 0.38]], np.float32)
_WATER = np.array([[0.03, 0.05, 0.07, 0.015],   # clear, deep
                   [0.08, 0.10, 0.08, 0.04],    # turbid
                   [0.04, 0.075, 0.045, 0.05]],  # algal: the forest's colour, not its NIR
                  np.float32)
_ROADS = np.array([[0.10, 0.11, 0.12, 0.13],    # asphalt
                   [0.27, 0.27, 0.26, 0.29],    # concrete
                   [0.22, 0.19, 0.15, 0.26]],   # dirt: soil-like
                  np.float32)
_ROAD_WEIGHTS = np.array([0.6, 0.2, 0.2])
_ROOFS = np.array([[0.30, 0.14, 0.10, 0.34],    # clay tile
                   [0.20, 0.20, 0.21, 0.22],    # grey
                   [0.09, 0.09, 0.10, 0.11],    # dark: asphalt-like
                   [0.45, 0.45, 0.44, 0.43],    # white flat roof
                   [0.14, 0.18, 0.24, 0.20]],   # blue metal
                  np.float32)
_ROOF_WEIGHTS = np.array([0.35, 0.25, 0.15, 0.15, 0.1])
_YARD = np.array([0.12, 0.13, 0.10, 0.26], np.float32)

# land classes of the Voronoi regions and their base odds (a tile redraws them)
_LAND = np.array([BACKGROUND, FOREST, CROPLAND, BARE_SOIL])
_LAND_ODDS = np.array([0.28, 0.30, 0.32, 0.10])

P_RIVER = 0.45
P_LAKE = 0.4
P_SETTLEMENT = 0.6
P_ROADS = (0.12, 0.38, 0.32, 0.18)  # 0..3 main roads
TABLE = 64  # per-lot / per-parcel tables repeat every TABLE cells


def synthesize(count: int, size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``count`` (image uint8 size x size x 4 (R, G, B, NIR), mask uint8 size x size) pairs.

    Mask values are class ids, positions in :data:`CLASSES`. Sample ``i`` depends only on
    ``(seed, i)``.
    """
    return samples(render_tile, count, size, seed)


def render_tile(size: int, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample, addressable directly (a Dataset can call this per item)."""
    return _Tile(size, *streams(_SALT, seed, index)).render()


# --------------------------------------------------------------------------------------------
# helpers

def _resize(grid: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(grid.astype(np.float32)).resize(
        (size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _pick(rng: np.random.Generator, table: np.ndarray, weights=None, jitter: float = 0.12) -> np.ndarray:
    p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    base = table[int(rng.choice(len(table), p=p))]
    return (base * rng.uniform(1 - jitter, 1 + jitter, 4)).astype(np.float32)


def _band(u: np.ndarray, v: np.ndarray, half: np.ndarray | float, size: int) -> np.ndarray:
    """Pixels within ``half`` of the line v = 0, at least about one pixel wide."""
    return np.abs(v) < np.maximum(half, 0.55 / size)


class _Tile:
    """One sample: planned in tile units (x, y in [0, 1]), then rasterised."""

    def __init__(self, size: int, rng: np.random.Generator, field_rng: np.random.Generator,
                 pixel_rng: np.random.Generator):
        self.size, self.rng, self.field_rng, self.pixel_rng = size, rng, field_rng, pixel_rng
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x, self.y = c[None, :], c[:, None]
        # smooth random fields; fixed cell counts, so a tile looks alike at any size
        self.warp = [self.field(5) for _ in range(2)]
        self.low = self.field(4)
        self.mid = self.field(12)
        self.fine = self.field(40)
        self.crowns = self.field(150)  # tree crowns in forest
        self.grain = self.field(300)   # soil and grass grain

    def field(self, cells: int) -> np.ndarray:
        return _resize(self.field_rng.standard_normal((cells + 1, cells + 1)), self.size)

    # ---------------------------------------------------------------- plan (all shape draws)

    def plan(self) -> None:
        rng = self.rng
        # land partition
        odds = _LAND_ODDS * rng.dirichlet(np.full(4, 1.5)) * 4
        n = int(rng.integers(6, 20))
        self.seeds = rng.uniform(-0.1, 1.1, (n, 2)).astype(np.float32)
        self.seed_class = _LAND[rng.choice(4, size=n, p=odds / odds.sum())]
        self.warp_amp = rng.uniform(0.03, 0.1)
        spectra = {BACKGROUND: (_MEADOW, None), FOREST: (_FOREST, None), BARE_SOIL: (_SOIL, None),
                   CROPLAND: (_CROPS, _CROP_WEIGHTS)}
        self.seed_refl = np.stack([_pick(rng, *spectra[int(c)]) for c in self.seed_class])
        # cropland parcels: a rotated grid; each parcel its own stage and row direction
        self.parcel_angle = rng.uniform(0, np.pi)
        self.parcel_size = rng.uniform(0.05, 0.14, 2)
        self.parcel_refl = np.stack([_pick(rng, _CROPS, _CROP_WEIGHTS) for _ in range(TABLE * 2)])
        self.parcel_index = rng.integers(0, len(self.parcel_refl), (TABLE, TABLE))
        self.parcel_rows = rng.random((TABLE, TABLE)) < 0.5
        self.row_period = rng.uniform(0.004, 0.012)
        self.row_amp = rng.uniform(0.05, 0.2)
        # woodlots and bare patches scattered over meadow
        self.woodlot_share = rng.uniform(0.0, 0.12)
        self.bare_share = rng.uniform(0.0, 0.06) if rng.random() < 0.5 else 0.0

        # water
        self.water_refl = _pick(rng, _WATER, jitter=0.15)
        self.river = None
        if rng.random() < P_RIVER:
            self.river = dict(angle=rng.uniform(0, np.pi), offset=rng.uniform(0.2, 0.8),
                              amps=rng.uniform(0.0, 0.08, 2), freqs=rng.uniform(3, 12, 2),
                              phases=rng.uniform(0, 2 * np.pi, 2), half=rng.uniform(0.012, 0.06))
        self.lake = None
        if rng.random() < P_LAKE:
            self.lake = dict(cx=rng.uniform(0.1, 0.9), cy=rng.uniform(0.1, 0.9), radius=rng.uniform(0.07, 0.24),
                             aspect=rng.uniform(0.6, 1.6))

        # roads
        self.roads = []
        for _ in range(int(rng.choice(len(P_ROADS), p=P_ROADS))):
            self.roads.append(dict(cx=rng.uniform(0.1, 0.9), cy=rng.uniform(0.1, 0.9), angle=rng.uniform(0, np.pi),
                                   bend=rng.uniform(-0.4, 0.4), half=rng.uniform(0.004, 0.011),
                                   refl=_pick(rng, _ROADS, _ROAD_WEIGHTS, jitter=0.1)))

        # settlement: yards, a street grid and buildings on lots
        self.settlement = None
        if rng.random() < P_SETTLEMENT:
            angle = self.roads[0]["angle"] if self.roads and rng.random() < 0.7 else rng.uniform(0, np.pi)
            lot = rng.uniform(0.025, 0.05)
            self.settlement = dict(
                cx=rng.uniform(0.2, 0.8), cy=rng.uniform(0.2, 0.8), rx=rng.uniform(0.12, 0.35),
                ry=rng.uniform(0.12, 0.35), angle=angle, lot=lot, block=int(rng.integers(3, 6)),
                street_half=rng.uniform(0.003, 0.006), street_refl=_pick(rng, _ROADS[:2], [0.8, 0.2], 0.1),
                built=rng.random((TABLE, TABLE)) < rng.uniform(0.55, 0.9),
                half=rng.uniform(0.22, 0.42, (TABLE, TABLE, 2)), off=rng.uniform(-0.08, 0.08, (TABLE, TABLE, 2)),
                roof=np.stack([_pick(rng, _ROOFS, _ROOF_WEIGHTS) for _ in range(TABLE)]),
                roof_index=rng.integers(0, TABLE, (TABLE, TABLE)))
        self.big = []  # warehouses, barns, factories: flat roofs large enough to see at 64 px
        for _ in range(int(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1]))):
            self.big.append(dict(cx=rng.uniform(0.05, 0.95), cy=rng.uniform(0.05, 0.95), angle=rng.uniform(0, np.pi),
                                 a=rng.uniform(0.02, 0.07), b=rng.uniform(0.015, 0.045),
                                 refl=_pick(rng, _ROOFS, [0.1, 0.3, 0.1, 0.35, 0.15])))

        # sun and sensor
        angle = rng.uniform(0, 2 * np.pi)
        self.sun = (float(np.cos(angle)), float(np.sin(angle)))
        self.shadow_len = rng.uniform(0.003, 0.01)
        self.haze = (rng.uniform(0.0, 0.05) * np.array([0.8, 1.0, 1.3, 0.4])).astype(np.float32)
        self.white = (rng.uniform(0.45, 0.62) * rng.normal(1.0, 0.04, 4)).astype(np.float32)
        self.noise_sigma = rng.uniform(0.8, 3.5)

    # ---------------------------------------------------------------- layers

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        self.plan()
        mask, refl, lum = self.land()
        self.water(mask, refl, lum)
        self.paint_roads(mask, refl, lum)
        self.paint_settlement(mask, refl, lum)
        return self.finish(refl, lum), mask

    def land(self):
        """The warped Voronoi partition, with crop parcels, woodlots and bare patches."""
        size = self.size
        wx = self.x + self.warp_amp * self.warp[0]
        wy = self.y + self.warp_amp * self.warp[1]
        # nearest seed by |w - s|^2 - |w|^2 = |s|^2 - 2 w.s: three passes per seed
        wx, wy = -2.0 * wx, -2.0 * wy
        best = np.full((size, size), np.inf, np.float32)
        index = np.zeros((size, size), np.intp)
        d = np.empty((size, size), np.float32)
        closer = np.empty((size, size), bool)
        for k, (sx, sy) in enumerate(self.seeds):
            np.multiply(wx, sx, out=d)
            d += wy * sy
            d += sx * sx + sy * sy
            np.less(d, best, out=closer)
            np.copyto(best, d, where=closer)
            np.copyto(index, k, where=closer)
        mask = self.seed_class[index].astype(np.uint8)
        refl = self.seed_refl[index]
        # meadow texture by default; the classes below refine it
        lum = 1.0 + 0.1 * self.mid + 0.06 * self.fine + 0.05 * self.grain

        # woodlots and bare patches cut from smooth fields over the meadow
        meadow = mask == BACKGROUND
        if self.woodlot_share > 0.005 and meadow.any():
            f = self.low + 0.5 * self.fine
            lots = meadow & (f > np.quantile(f, 1.0 - self.woodlot_share))
            mask[lots] = FOREST
            refl[lots] = self.seed_refl[self.seed_class == FOREST][0] if (self.seed_class == FOREST).any() \
                else _FOREST[0]
        if self.bare_share > 0.005:
            f = -self.low + 0.6 * self.fine
            patch = (mask == BACKGROUND) & (f > np.quantile(f, 1.0 - self.bare_share))
            mask[patch] = BARE_SOIL
            refl[patch] = _SOIL[0]

        crop = mask == CROPLAND
        if crop.any():
            c, s = np.cos(self.parcel_angle), np.sin(self.parcel_angle)
            u = (c * self.x + s * self.y) / self.parcel_size[0]
            v = (-s * self.x + c * self.y) / self.parcel_size[1]
            iu, iv = np.floor(u).astype(np.intp) % TABLE, np.floor(v).astype(np.intp) % TABLE
            parcel = self.parcel_index[iu, iv]
            refl[crop] = self.parcel_refl[parcel[crop]]
            along = np.where(self.parcel_rows[iu, iv], u * self.parcel_size[0], v * self.parcel_size[1])
            period_px = self.row_period * size
            amp = self.row_amp * float(np.clip((period_px - 2.0) / 3.0, 0.0, 1.0))  # no moire at small sizes
            rows = 1.0 + amp * np.sin(along * (2 * np.pi / self.row_period)) + 0.03 * self.fine
            # parcel edges: a thin darker margin
            fu, fv = u - np.floor(u), v - np.floor(v)
            edge = np.minimum(np.minimum(fu, 1 - fu) * self.parcel_size[0],
                              np.minimum(fv, 1 - fv) * self.parcel_size[1])
            rows = rows * (1.0 - 0.15 * (edge < 0.6 / size))
            np.copyto(lum, rows, where=crop)
        forest = mask == FOREST
        if forest.any():
            crowns = 0.78 + 0.3 * np.tanh(1.6 * self.crowns) + 0.08 * self.mid
            np.copyto(lum, crowns, where=forest)
        soil = mask == BARE_SOIL
        if soil.any():
            np.copyto(lum, 1.0 + 0.12 * self.low + 0.05 * self.mid + 0.04 * self.grain, where=soil)
        return mask, refl, lum

    def water(self, mask, refl, lum) -> None:
        water = np.zeros(mask.shape, bool)
        if self.river is not None:
            r = self.river
            c, s = np.cos(r["angle"]), np.sin(r["angle"])
            u = c * (self.x - 0.5) + s * (self.y - 0.5)
            v = -s * (self.x - 0.5) + c * (self.y - 0.5) + 0.5 - r["offset"]
            for a, f, p in zip(r["amps"], r["freqs"], r["phases"]):
                v = v - a * np.sin(f * u + p)
            water |= _band(u, v, r["half"] * (1.0 + 0.3 * self.mid), self.size)
        if self.lake is not None:
            lk = self.lake
            d = np.sqrt((self.x - lk["cx"]) ** 2 * lk["aspect"] + (self.y - lk["cy"]) ** 2 / lk["aspect"])
            water |= d / lk["radius"] < 1.0 + 0.35 * self.mid + 0.1 * self.fine
        if water.any():
            mask[water] = WATER
            refl[water] = self.water_refl
            np.copyto(lum, 1.0 + 0.04 * self.mid + 0.02 * self.grain, where=water)

    def paint_roads(self, mask, refl, lum) -> None:
        for road in self.roads:
            c, s = np.cos(road["angle"]), np.sin(road["angle"])
            dx, dy = self.x - road["cx"], self.y - road["cy"]
            u, v = c * dx + s * dy, -s * dx + c * dy
            region = _band(u, v - road["bend"] * u * u, road["half"], self.size)
            mask[region] = ROAD
            refl[region] = road["refl"]
            np.copyto(lum, 1.0 + 0.03 * self.fine + 0.03 * self.grain, where=region)

    def paint_settlement(self, mask, refl, lum) -> None:
        buildings = np.zeros(mask.shape, bool)
        st = self.settlement
        if st is not None:
            size = self.size
            reach = max(st["rx"], st["ry"]) * 1.2
            r0, r1 = max(int((st["cy"] - reach) * size), 0), min(int((st["cy"] + reach) * size) + 1, size)
            c0, c1 = max(int((st["cx"] - reach) * size), 0), min(int((st["cx"] + reach) * size) + 1, size)
            win = (slice(r0, r1), slice(c0, c1))
            X, Y = self.x[:, win[1]], self.y[win[0]]
            inside = (((X - st["cx"]) / st["rx"]) ** 2 + ((Y - st["cy"]) / st["ry"]) ** 2
                      < 1.0 + 0.3 * self.mid[win])
            inside &= mask[win] != WATER
            c, s = np.cos(st["angle"]), np.sin(st["angle"])
            u = (c * X + s * Y) / st["lot"]
            v = (-s * X + c * Y) / st["lot"]
            iu, iv = np.floor(u).astype(np.intp), np.floor(v).astype(np.intp)
            fu, fv = u - iu - 0.5, v - iv - 0.5
            iu %= TABLE
            iv %= TABLE
            # yards (meadow-like ground, labelled background) replace the land inside
            yard = inside & (mask[win] != ROAD)
            np.copyto(mask[win], np.uint8(BACKGROUND), where=yard)
            np.copyto(refl[win], _YARD, where=yard[..., None])
            np.copyto(lum[win], 1.0 + 0.12 * self.fine[win] + 0.06 * self.grain[win], where=yard)
            # a street every `block` lots, along both axes
            b = st["block"]
            du = np.abs(((u / b) - np.round(u / b)) * b) * st["lot"]
            dv = np.abs(((v / b) - np.round(v / b)) * b) * st["lot"]
            street = inside & ((du < max(st["street_half"], 0.55 / size)) | (dv < max(st["street_half"], 0.55 / size)))
            np.copyto(mask[win], np.uint8(ROAD), where=street)
            np.copyto(refl[win], st["street_refl"], where=street[..., None])
            # a building on most lots, away from the streets
            half = st["half"][iu, iv]
            off = st["off"][iu, iv]
            house = (inside & st["built"][iu, iv] & ~street & (mask[win] != ROAD)
                     & (np.abs(fu - off[..., 0]) < half[..., 0]) & (np.abs(fv - off[..., 1]) < half[..., 1]))
            np.copyto(refl[win], st["roof"][st["roof_index"][iu, iv]], where=house[..., None])
            ridge = np.where((fu - off[..., 0]) * c > 0, np.float32(1.0), np.float32(0.85))
            np.copyto(lum[win], ridge + 0.03 * self.fine[win], where=house)
            buildings[win] |= house
        for big in self.big:
            c, s = np.cos(big["angle"]), np.sin(big["angle"])
            dx, dy = self.x - big["cx"], self.y - big["cy"]
            u, v = c * dx + s * dy, -s * dx + c * dy
            region = (np.abs(u) < big["a"]) & (np.abs(v) < big["b"]) & (mask != WATER)
            np.copyto(refl, big["refl"], where=region[..., None])
            np.copyto(lum, 1.0 + 0.02 * self.fine, where=region)
            buildings |= region
        if buildings.any():
            mask[buildings] = BUILDING
            step = self.shadow_len * self.size
            dy, dx = int(round(-self.sun[1] * step)), int(round(-self.sun[0] * step))
            if dx or dy:  # shadows on the ground (labelled as the ground)
                shadow = shift(buildings, dy, dx) & ~buildings
                lum *= np.where(shadow, np.float32(0.45), np.float32(1.0))

    # ---------------------------------------------------------------- sensor

    def finish(self, refl: np.ndarray, lum: np.ndarray) -> np.ndarray:
        image = refl * lum[..., None] + self.haze
        image *= 255.0 / self.white
        image += self.pixel_rng.standard_normal(image.shape, dtype=np.float32) * np.float32(self.noise_sigma)
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)
