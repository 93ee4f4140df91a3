"""Procedural stand-in for CelebAMask-HQ face-parsing pairs.

Tests, smoke runs and demos need image/mask pairs that look enough like the real task (same 19
classes, same layout, same left/right convention) without shipping any of the real data. Every
sample is drawn from its own seed sequence keyed on (seed, index), so a prefix of a longer run is
identical to a shorter run, and every random decision that shapes the face is drawn before any
size-dependent one, so one (seed, index) gives the same face at 128 px as at 512 px.

The image is deliberately not a colour lookup of the mask: skin, nose, ears and neck share one
skin tone, lips can be almost skin coloured, cloth and background clutter can take skin or hair
colours, and lighting, texture and noise vary per pixel. The mask stays hard edged; the image gets
soft shading that ignores class boundaries (rim shadow, hair shadow, chin shadow, makeup) so that
boundaries have to be found from shape and context.

Left and right: measured on 200 real training masks, the "l_" classes (4 l_eye, 6 l_brow,
8 l_ear) are the subject's own left, which is the IMAGE RIGHT (mean centroid x 309, 311, 398 of
512 against 203, 199, 119 for 5, 7, 9; "l_" is right of "r_" in ~93% of images having both).
``_L_SIDE`` encodes that.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from cpx_plugins.competitions.face_canvas import Canvas, hsv, mix, pick, random_colour
from cpx_plugins.competitions.sampling import samples, streams

(BG, SKIN, NOSE, EYE_G, L_EYE, R_EYE, L_BROW, R_BROW, L_EAR, R_EAR, MOUTH, U_LIP, L_LIP, HAIR,
 HAT, EAR_R, NECK_L, NECK, CLOTH) = range(19)

# Local coordinate u grows towards the image right, so "l_" parts live at u > 0 (see docstring).
_L_SIDE = 1.0

# Keeps these streams apart from anything else in the project seeded with the same small ints.
_SALT = 0x5F_ACE5

# Rare accessories are drawn a little more often than in CelebAMask-HQ (glasses 5.8%, hat 5.3%,
# necklace 4.5% of images there) so that a few dozen samples still exercise every class.
P_GLASSES = 0.10
P_SUNGLASSES = 0.25  # of glasses
P_HAT = 0.09
P_NECKLACE = 0.10
P_EARRINGS = 0.40  # per image, given at least one visible ear
P_MOUTH_OPEN = 0.57
P_CLOTH = 0.72
P_BALD = 0.03

_SKIN_ANCHORS = np.array(
    [[250, 222, 202], [236, 192, 162], [208, 158, 122], [165, 114, 80], [115, 76, 52], [72, 48, 36]],
    np.float32)

_HAIR_COLOURS = (
    ((22, 17, 16), 0.30), ((58, 40, 30), 0.24), ((104, 72, 48), 0.17), ((196, 160, 112), 0.11),
    ((138, 62, 36), 0.06), ((160, 156, 152), 0.04), (None, 0.05),  # None: dyed, random hue
)

_LIPSTICK = np.array([[176, 78, 84], [150, 62, 62], [204, 96, 116], [120, 42, 52], [190, 110, 100]],
                     np.float32)

_IRIS = np.array([[70, 45, 30], [40, 28, 22], [90, 120, 150], [80, 110, 80], [120, 120, 120],
                  [110, 80, 45]], np.float32)

_METALS = np.array([[212, 175, 70], [196, 196, 204], [235, 230, 220], [150, 110, 60]], np.float32)


def synthesize(count: int, size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``count`` (image RGB uint8 size x size x 3, mask uint8 size x size) face-parsing pairs.

    Sample ``i`` depends only on ``(seed, i)``.
    """
    return samples(render_face, count, size, seed)


def render_face(size: int, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample, addressable directly (a Dataset can call this per item)."""
    return _Face(size, *streams(_SALT, seed, index)).render()


class _Face(Canvas):
    """One sample: geometry in face-local units (see :class:`Canvas`), painted back-to-front into
    mask and image. Canonical positions follow the (well aligned) CelebAMask-HQ crops: eyes at v ~ -0.02,
    u ~ +-0.1; mouth at v ~ 0.23; chin at v ~ 0.4.
    """

    # ---------------------------------------------------------------- sample

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        self.sample_look()
        self.sample_geometry()
        self.background()
        if self.has_hair:
            self.hair_back()
        self.torso()
        self.neck()
        if self.necklace:
            self.draw_necklace()
        if self.has_hair and self.strands_front:
            self.hair_strands()
        for side in (-1.0, 1.0):
            if self.ear_vis[side]:
                self.ear(side)
        self.face()
        self.nose()
        self.lips()
        for side in (-1.0, 1.0):
            self.brow(side)
        if self.has_hair:
            self.hair_front()
        if self.hat:
            self.draw_hat()
        if self.glasses:
            self.draw_glasses()
        if not self.sunglasses:
            for side in (-1.0, 1.0):
                self.eye(side)
        for side in (-1.0, 1.0):
            if self.earrings and self.ear_vis[side]:
                self.earring(side)
        return self.finish(), self.mask

    def sample_look(self) -> None:
        rng = self.rng
        t = rng.beta(1.5, 2.4) * (len(_SKIN_ANCHORS) - 1)
        i = min(int(t), len(_SKIN_ANCHORS) - 2)
        self.skin_rgb = np.clip(mix(_SKIN_ANCHORS[i], _SKIN_ANCHORS[i + 1], t - i)
                                + rng.normal(0, 6, 3), 0, 255).astype(np.float32)
        hair = pick(rng, _HAIR_COLOURS)
        if hair is None:
            hair_rgb = hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.9))
        else:
            hair_rgb = np.array(hair, np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 5, 3)
        self.hair_rgb = np.clip(hair_rgb, 0, 255).astype(np.float32)
        lip_t = rng.uniform(0.15, 0.85)  # low: lips nearly skin coloured
        self.lip_rgb = mix(self.skin_rgb, _LIPSTICK[rng.integers(len(_LIPSTICK))], lip_t)
        self.brow_rgb = mix(self.hair_rgb, self.skin_rgb, rng.uniform(0.05, 0.55)) * rng.uniform(0.6, 0.95)
        self.iris_rgb = _IRIS[rng.integers(len(_IRIS))] * rng.uniform(0.8, 1.2)
        la = rng.uniform(0, 2 * np.pi)
        strength = rng.uniform(0.0, 0.45)
        self.light_dir = (np.cos(la) * strength, np.sin(la) * strength)
        lum = 1.0 + (self.light_dir[0] * self.face_u + self.light_dir[1] * self.face_v) / 0.35
        self.light = np.clip(lum + 0.07 * self.noise_low, 0.45, 1.6).astype(np.float32)
        self.makeup = rng.uniform(0.0, 0.5) if rng.random() < 0.4 else 0.0
        self.blush = rng.uniform(0.0, 0.25)

    def sample_geometry(self) -> None:
        rng = self.rng
        self.yaw = rng.uniform(-1.0, 1.0) * 0.6
        self.feature_shift = self.yaw * 0.03  # inner features slide with the head turn
        # face outline: superellipse whose half-width tapers towards the chin
        self.face_half_width = rng.uniform(0.255, 0.30)
        self.face_half_height = rng.uniform(0.35, 0.41)
        self.face_centre_v = rng.uniform(0.02, 0.05)
        self.jaw = rng.uniform(0.15, 0.42)
        self.face_exponent = rng.uniform(2.0, 2.8)
        self.chin = self.face_centre_v + self.face_half_height
        # features
        self.eye_y = rng.uniform(-0.025, 0.015)
        self.eye_dx = rng.uniform(0.09, 0.115)
        self.eye_half_width = rng.uniform(0.045, 0.058)
        self.eye_height_top = rng.uniform(0.013, 0.022)
        self.eye_height_bottom = rng.uniform(0.007, 0.014)
        self.eye_tilt = rng.uniform(-0.08, 0.15)
        self.gaze = rng.normal(0, 0.25, 2)
        self.brow_y = self.eye_y - rng.uniform(0.05, 0.075)
        self.brow_dx = self.eye_dx + rng.uniform(-0.005, 0.012)
        self.brow_half_width = rng.uniform(0.065, 0.082)
        self.brow_thickness = rng.uniform(0.026, 0.042)
        self.brow_arch = rng.uniform(0.0, 0.02)
        self.brow_slope = rng.uniform(-0.12, 0.12)
        self.nose_top = self.eye_y + rng.uniform(-0.01, 0.015)
        self.nose_bot = rng.uniform(0.15, 0.19)
        self.nose_width_top = rng.uniform(0.026, 0.04)
        self.nose_width_bottom = rng.uniform(0.066, 0.088)
        self.mouth_v = self.nose_bot + rng.uniform(0.06, 0.09)
        self.mouth_half_width = rng.uniform(0.09, 0.125)
        self.upper_lip_height = rng.uniform(0.022, 0.038)
        self.lower_lip_height = rng.uniform(0.032, 0.055)
        self.smile = rng.uniform(-0.006, 0.022)
        self.bow = rng.uniform(0.1, 0.5)
        self.mouth_open = rng.random() < P_MOUTH_OPEN
        self.open_up = rng.uniform(0.005, 0.018)
        self.open_dn = rng.uniform(0.01, 0.045)
        self.teeth = rng.random() < 0.7
        # ears: the one on the side the face turns towards tends to disappear behind the cheek
        self.ear_v = rng.uniform(0.04, 0.1)
        self.ear_half_width = rng.uniform(0.036, 0.05)
        self.ear_half_height = rng.uniform(0.068, 0.09)
        self.ear_out = rng.uniform(0.0, 0.022)
        self.ear_vis = {s: bool(rng.random() < 0.54 - 0.35 * self.yaw * s) for s in (-1.0, 1.0)}
        # hair
        self.has_hair = rng.random() >= P_BALD
        self.hair_volume = rng.uniform(0.03, 0.14)
        self.cap_centre_v = self.face_centre_v - self.face_half_height * 0.3
        self.cap_half_height = self.face_half_height * 0.72 + self.hair_volume + rng.uniform(0.02, 0.07)
        r = rng.random()
        self.hair_len = (rng.uniform(-0.05, 0.1) if r < 0.3 else
                         rng.uniform(0.15, 0.4) if r < 0.55 else rng.uniform(0.45, 0.95))
        self.hair_flare = rng.uniform(0.0, 0.5)
        self.bangs = rng.random() < 0.22
        self.hairline = (self.brow_y - rng.uniform(-0.01, 0.04) if self.bangs
                         else self.face_centre_v - self.face_half_height + rng.uniform(0.07, 0.16))
        self.hairline_curve = rng.uniform(0.6, 2.2)
        self.part = rng.uniform(-0.1, 0.1)
        self.part_depth = rng.uniform(0.0, 0.05)
        self.strands_front = self.hair_len > self.chin and rng.random() < 0.6
        self.lock = {s: (not self.ear_vis[s]) or rng.random() < 0.15 for s in (-1.0, 1.0)}
        self.lock_len = {s: rng.uniform(0.1, 0.25) for s in (-1.0, 1.0)}
        # neck and torso
        self.neck_half_width = rng.uniform(0.13, 0.18)
        self.neck_flare = rng.uniform(0.1, 0.6)
        self.shoulder_v = self.chin + rng.uniform(-0.06, 0.07)
        self.torso_half_width = rng.uniform(0.5, 0.85)
        self.torso_half_height = rng.uniform(0.15, 0.35)
        self.cloth = rng.random() < P_CLOTH
        self.turtle = self.cloth and rng.random() < 0.08
        self.neckline_depth = rng.uniform(0.0, 0.18)
        self.neckline_w = self.neck_half_width * rng.uniform(0.9, 2.2)
        self.neckline_v = rng.random() < 0.4
        # accessories
        self.glasses = rng.random() < P_GLASSES
        self.sunglasses = self.glasses and rng.random() < P_SUNGLASSES
        self.hat = rng.random() < P_HAT
        self.necklace = rng.random() < P_NECKLACE
        self.earrings = any(self.ear_vis.values()) and rng.random() < P_EARRINGS

    # ---------------------------------------------------------------- layers

    def _cap(self, U, V, wob):
        a = self.face_half_width + self.hair_volume
        return (U / a) ** 2 + ((V - self.cap_centre_v) / self.cap_half_height) ** 2 < 1.0 + 0.08 * wob

    def _hair_colour(self, win, U, V):
        streak = np.clip(0.5 + 0.35 * self.streak[win], 0, 1)
        shine = 0.25 * np.exp(-((V - self.cap_centre_v + 0.05 * self.noise_low[win]) / 0.07) ** 2)
        return self.shade(win, self.hair_rgb, mid=0.08, fine=0.08, chroma=4.0,
                          extra=(0.72 + 0.56 * streak) * (1.0 + shine)) + 30.0 * shine[..., None]

    def hair_back(self) -> None:
        win = self.FULL
        U, V = self.uv(win)
        wob = self.wobble
        cap = self._cap(U, V, wob)
        if self.hair_len > self.cap_centre_v:
            half = self.face_half_width + self.hair_volume + self.hair_flare * np.clip(V - self.chin + 0.1, 0, None)
            half = half * (1.0 + 0.08 * wob)
            fall = (np.abs(U) < half) & (V > self.cap_centre_v) & (V < self.hair_len + 0.03 * wob)
            cap = cap | fall
        self.paint(win, cap, HAIR, self._hair_colour(win, U, V))

    def torso(self) -> None:
        win = self.window(-1.5, 1.5, self.shoulder_v - 0.01, 1.5)
        if win is None:
            return
        U, V = self.uv(win)
        cy = self.shoulder_v + self.torso_half_height
        body = np.where(V < cy, (U / self.torso_half_width) ** 2 + ((V - cy) / self.torso_half_height) ** 2 < 1,
                        np.abs(U) < self.torso_half_width)
        skin = self.shade(win, self.skin_rgb * 0.92, extra=1.0 - 0.2 * np.clip(V - self.shoulder_v, 0, 0.3))
        self.paint(win, body, NECK, skin)
        if not self.cloth:
            return
        rng = self.rng
        du = np.abs(U - self.feature_shift * 0.5) / self.neckline_w
        prof = np.clip(1 - du, 0, 1) if self.neckline_v else np.sqrt(np.clip(1 - du ** 2, 0, 1))
        bare = (du < 1) & (V < self.shoulder_v + self.neckline_depth * prof + 0.01 * self.wobble[win])
        c1 = random_colour(rng, self.skin_rgb, self.hair_rgb)
        c2 = random_colour(rng, self.skin_rgb, self.hair_rgb)
        kind = rng.integers(4)
        period = rng.uniform(0.02, 0.08)
        ang = rng.uniform(0, np.pi)
        if kind == 1:  # stripes
            t = (np.sin(2 * np.pi * (np.cos(ang) * U + np.sin(ang) * V) / period) > 0)
            col = mix(c1, c2, t[..., None].astype(np.float32))
        elif kind == 2:  # checks
            t = (np.sin(2 * np.pi * U / period) * np.sin(2 * np.pi * V / period)) > 0
            col = mix(c1, c2, 0.5 * t[..., None].astype(np.float32))
        else:
            col = c1[None, None, :]
        folds = 1.0 + 0.15 * self.noise_mid[win] + 0.08 * np.sin(U * rng.uniform(20, 60) + 3 * self.noise_low[win])
        col = col * (self.light[win] * folds)[..., None] + 6.0 * self.chroma[win]
        self.paint(win, body & ~bare, CLOTH, col)

    def neck(self) -> None:
        win = self.window(-0.6, 0.6, self.face_centre_v, 1.5)
        if win is None:
            return
        U, V = self.uv(win)
        half = self.neck_half_width + self.neck_flare * np.clip(V - self.chin - 0.05, 0, None) ** 2 * 4
        region = (np.abs(U - self.feature_shift * 0.5) < half) & (V > self.face_centre_v)
        shadow = 1.0 - 0.35 * np.exp(-np.clip(V - self.chin, 0, None) / 0.04)
        col = self.shade(win, self.skin_rgb * 0.93, extra=shadow)
        self.paint(win, region, NECK, col)
        if self.turtle:
            collar = region & (V > self.chin + self.rng.uniform(-0.02, 0.05))
            col = self.shade(win, random_colour(self.rng, self.skin_rgb, self.hair_rgb), mid=0.12)
            self.paint(win, collar, CLOTH, col)

    def draw_necklace(self) -> None:
        rng = self.rng
        top = self.chin + rng.uniform(-0.02, 0.08)
        curve = rng.uniform(0.5, 3.0)
        half = self.neck_half_width * rng.uniform(1.0, 1.6)
        thick = rng.uniform(0.004, 0.011)
        win = self.window(-half - 0.05, half + 0.05, top - 0.05, top + curve * half ** 2 + 0.1)
        if win is None:
            return
        U, V = self.uv(win)
        du = U - self.feature_shift * 0.5
        line = top + curve * du ** 2
        region = (np.abs(V - line) < thick) & (np.abs(du) < half)
        if rng.random() < 0.5:  # pendant
            pr = rng.uniform(0.008, 0.02)
            region |= (du ** 2 + (V - top - pr) ** 2) < pr ** 2
        region &= np.isin(self.mask[win], (NECK, CLOTH))
        metal = _METALS[rng.integers(len(_METALS))]
        glint = 1.0 + 0.3 * np.sin(U * 400.0)
        self.paint(win, region, NECK_L, self.shade(win, metal, mid=0.1, fine=0.1, extra=glint))

    def hair_strands(self) -> None:
        win = self.window(-0.8, 0.8, self.chin - 0.1, self.hair_len + 0.1)
        if win is None:
            return
        U, V = self.uv(win)
        wob = self.wobble[win]
        half = (self.face_half_width + self.hair_volume + self.hair_flare * np.clip(V - self.chin + 0.1, 0, None)) * (1 + 0.08 * wob)
        inner = self.face_half_width * self.rng.uniform(0.55, 0.85)
        if float(self.face_half_width + self.hair_volume - inner) < 0.04:  # would only leave slivers
            return
        inner = inner + 0.02 * wob
        mid, width = (half + inner) / 2, (half - inner) / 2
        # strands end in a rounded tip rather than a ragged cut, which left thin slivers
        width = width * np.sqrt(np.clip((self.hair_len - V) / 0.08, 0, 1))
        region = (np.abs(np.abs(U) - mid) < width) & (V > self.chin - 0.1)
        self.paint(win, region, HAIR, self._hair_colour(win, U, V))

    def _ear_centre(self, side):
        return side * (self.face_half_width + self.ear_out) - self.yaw * 0.03, self.ear_v

    def ear(self, side: float) -> None:
        eu, ev = self._ear_centre(side)
        win = self.window(eu - 0.06, eu + 0.06, ev - 0.1, ev + 0.1)
        if win is None:
            return
        U, V = self.uv(win)
        du, dv = (U - eu) / self.ear_half_width, (V - ev) / self.ear_half_height
        # wider at the top, narrower lobe
        du = du / (1.0 - 0.25 * np.clip(dv, 0, 1))
        region = du ** 2 + dv ** 2 < 1
        inner = np.exp(-((du * 1.6) ** 2 + (dv * 1.4) ** 2))
        col = self.shade(win, self.skin_rgb * 0.9, extra=1.0 - 0.3 * inner)
        self.paint(win, region, L_EAR if side == _L_SIDE else R_EAR, col)

    def _face_f(self, U, V):
        dv = (V - self.face_centre_v) / self.face_half_height
        hw = self.face_half_width * (1.0 - self.jaw * np.clip(dv, 0, 1) ** 1.5)
        return np.abs(U / hw) ** self.face_exponent + np.abs(dv) ** self.face_exponent

    def face(self) -> None:
        top = self.face_centre_v - self.face_half_height
        win = self.window(-self.face_half_width - 0.01, self.face_half_width + 0.01, top - 0.2, self.chin + 0.01)
        if win is None:
            return
        U, V = self.uv(win)
        f = self._face_f(U, V)
        region = f < 1.0
        if not self.has_hair:  # the scalp of a bald head is labelled skin
            region |= self._cap(U, V, self.wobble[win]) & (V < self.face_centre_v)
        rim = 1.0 - 0.3 * np.clip(f, 0, 1) ** 4
        # soft shadow under the hairline ignores the hard hair boundary drawn later
        hl = self.hairline + self.hairline_curve * U ** 2
        hshadow = 1.0 - (0.25 * np.exp(-np.clip(V - hl, 0, None) / 0.03) if self.has_hair else 0.0)
        extra = rim * hshadow
        col = self.shade(win, self.skin_rgb, extra=extra)
        cheeks = sum(np.exp(-(((U - s * 0.13 - self.feature_shift) / 0.06) ** 2 + ((V - 0.1) / 0.05) ** 2))
                     for s in (-1, 1))
        col = col + (self.blush * cheeks)[..., None] * np.array([40, -15, -10], np.float32)
        if self.makeup:
            around = sum(np.exp(-(((U - s * self.eye_dx - self.feature_shift) / 0.07) ** 2
                                  + ((V - self.eye_y + 0.015) / 0.035) ** 2)) for s in (-1, 1))
            col = col * (1.0 - self.makeup * 0.5 * around)[..., None]
        self.paint(win, region, SKIN, col)

    def nose(self) -> None:
        win = self.window(-0.15, 0.15, self.nose_top - 0.01, self.nose_bot + 0.05)
        if win is None:
            return
        U, V = self.uv(win)
        tt = np.clip((V - self.nose_top) / (self.nose_bot - self.nose_top), 0, 1)
        cx = self.feature_shift + self.yaw * 0.02 * tt
        du = U - cx
        half = self.nose_width_top + (self.nose_width_bottom - self.nose_width_top) * tt ** 2.5
        region = (V > self.nose_top) & (V < self.nose_bot) & (np.abs(du) < half)
        bulb_v = self.nose_bot - 0.012
        region |= (du / self.nose_width_bottom) ** 2 + ((V - bulb_v) / 0.028) ** 2 < 1
        side = np.sign(self.light_dir[0] + 1e-6)
        shade = 1.0 - 0.18 * np.clip(-side * du / (half + 1e-3), 0, 1)  # far side from the light
        shade = shade + 0.12 * np.exp(-((du / 0.02) ** 2 + ((V - bulb_v + 0.01) / 0.02) ** 2))
        for s in (-1.0, 1.0):
            nostril = ((du - s * self.nose_width_bottom * 0.45) / (self.nose_width_bottom * 0.28)) ** 2 \
                + ((V - self.nose_bot - 0.006) / 0.009) ** 2
            shade = shade * (1.0 - 0.55 * np.exp(-nostril * 2.0))
        self.paint(win, region, NOSE, self.shade(win, self.skin_rgb, extra=shade))

    def lips(self) -> None:
        mx = self.feature_shift * 1.1
        win = self.window(mx - self.mouth_half_width - 0.01, mx + self.mouth_half_width + 0.01, self.mouth_v - 0.05, self.mouth_v + 0.09)
        if win is None:
            return
        U, V = self.uv(win)
        du = U - mx
        tw = 1.0 - (du / self.mouth_half_width) ** 2
        inside = tw > 0
        tw = np.clip(tw, 0, None)
        line = self.mouth_v - self.smile * (du / self.mouth_half_width) ** 2
        top = self.mouth_v - self.upper_lip_height * np.sqrt(tw) * (1.0 - self.bow * np.exp(-(du / (0.22 * self.mouth_half_width)) ** 2))
        bottom = self.mouth_v + self.lower_lip_height * tw ** 0.6
        if self.mouth_open:
            ti = np.clip(1.0 - (du / (self.mouth_half_width * 0.82)) ** 2, 0, None)
            up_in, dn_in = line - self.open_up * ti, line + self.open_dn * ti
        else:
            up_in = dn_in = line
        upper = inside & (V > top) & (V < up_in)
        lower = inside & (V >= dn_in) & (V < bottom)
        gloss = np.exp(-((V - (dn_in + bottom) * 0.5) / 0.01) ** 2) * 0.2
        self.paint(win, upper, U_LIP, self.shade(win, self.lip_rgb * 0.9, fine=0.05))
        self.paint(win, lower, L_LIP, self.shade(win, self.lip_rgb, fine=0.05, extra=1.0 + gloss))
        if self.mouth_open:
            mouth = inside & (V >= up_in) & (V < dn_in) & (ti > 0)
            col = self.shade(win, np.array([70, 22, 28], np.float32), chroma=2.0)
            if self.teeth:
                tooth = V < up_in + (dn_in - up_in) * 0.45
                col = np.where(tooth[..., None], self.shade(win, np.array([228, 222, 205], np.float32)), col)
            self.paint(win, mouth, MOUTH, col)

    def brow(self, side: float) -> None:
        bx = side * self.brow_dx + self.feature_shift
        win = self.window(bx - self.brow_half_width - 0.01, bx + self.brow_half_width + 0.01,
                          self.brow_y - 0.06, self.brow_y + 0.05)
        if win is None:
            return
        U, V = self.uv(win)
        du = U - bx
        centre = self.brow_y - self.brow_arch * (1 - (du / self.brow_half_width) ** 2) - side * self.brow_slope * du
        thick = self.brow_thickness * (1.0 - 0.55 * np.clip(side * du / self.brow_half_width, 0, 1))
        region = (np.abs(du) < self.brow_half_width) & (np.abs(V - centre) < thick / 2)
        col = self.shade(win, self.brow_rgb, mid=0.1, fine=0.15, extra=0.85 + 0.3 * np.clip(
            0.5 + 0.4 * self.streak[win], 0, 1))
        self.paint(win, region, L_BROW if side == _L_SIDE else R_BROW, col)

    def hair_front(self) -> None:
        top = self.cap_centre_v - self.cap_half_height - 0.05
        win = self.window(-0.5, 0.5, top, 0.5)
        if win is None:
            return
        U, V = self.uv(win)
        wob = self.wobble[win]
        cap = self._cap(U, V, wob)
        line = (self.hairline + self.hairline_curve * U ** 2 + 0.015 * wob
                - self.part_depth * np.exp(-((U - self.part) / 0.03) ** 2))
        # the cap ellipse reaches below the jaw; in front of the face only the part over the face
        # itself and above the ears belongs to this layer (the rest was drawn behind)
        region = cap & (V < line) & ((self._face_f(U, V) < 1.0) | (V < self.ear_v - self.ear_half_height))
        for s in (-1.0, 1.0):
            if not self.lock[s]:
                continue
            eu, ev = self._ear_centre(s)
            bottom = max(ev + self.ear_half_height * 1.2, self.lock_len[s]) + 0.02 * wob
            taper = np.sqrt(np.clip((bottom - V) / 0.06, 0, 1))  # strands end in a rounded tip
            lock = ((np.abs(U - eu) < (self.ear_half_width * 1.6 + 0.015 + 0.01 * wob) * taper)
                    & (V > self.cap_centre_v) & (s * U > self.face_half_width * 0.72 + 0.01 * wob))
            region |= lock
        self.paint(win, region, HAIR, self._hair_colour(win, U, V))

    def draw_hat(self) -> None:
        rng = self.rng
        brim_v = self.hairline + rng.uniform(-0.04, 0.05)
        a = self.face_half_width + self.hair_volume + rng.uniform(0.01, 0.05)
        b = self.cap_half_height + rng.uniform(0.02, 0.08)
        win = self.window(-a - 0.15, a + 0.15, self.cap_centre_v - b - 0.05, brim_v + 0.05)
        if win is None:
            return
        U, V = self.uv(win)
        region = ((U / a) ** 2 + ((V - self.cap_centre_v) / b) ** 2 < 1) & (V < brim_v)
        if rng.random() < 0.5:
            bw = a + rng.uniform(0.02, 0.12)
            region |= (np.abs(V - brim_v + 0.005) < rng.uniform(0.012, 0.03)) & (np.abs(U) < bw)
        col = random_colour(rng, self.skin_rgb, self.hair_rgb)
        knit = 1.0 + rng.uniform(0, 0.15) * np.sin(U * rng.uniform(60, 200))
        self.paint(win, region, HAT, self.shade(win, col, mid=0.12, fine=0.08, extra=knit))

    def draw_glasses(self) -> None:
        rng = self.rng
        gw, gh = rng.uniform(0.055, 0.075), rng.uniform(0.032, 0.055)
        gp = rng.uniform(2.0, 5.0)
        ft = rng.uniform(0.004, 0.01)
        gy = self.eye_y - rng.uniform(0.0, 0.012)
        reach = self.face_half_width + 0.02
        win = self.window(-reach - 0.02, reach + 0.02, gy - gh - 0.02, gy + gh + 0.02)
        if win is None:
            return
        U, V = self.uv(win)
        frame_rgb = (_METALS[rng.integers(len(_METALS))] if rng.random() < 0.35
                     else random_colour(rng, self.skin_rgb, self.hair_rgb) * 0.6)
        tint = hsv(rng.random(), rng.uniform(0, 0.3), 1.0) / 255.0
        lens_dark = hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.08, 0.3))
        lens = np.zeros(U.shape, bool)
        frame = np.zeros(U.shape, bool)
        for s in (-1.0, 1.0):
            du, dv = np.abs(U - s * self.eye_dx - self.feature_shift), np.abs(V - gy)
            outer = (du / gw) ** gp + (dv / gh) ** gp < 1
            inner = (du / (gw - ft)) ** gp + (dv / (gh - ft)) ** gp < 1
            lens |= inner
            frame |= outer & ~inner
            temple = (s * (U - self.feature_shift) > self.eye_dx + gw - ft) & (s * U < reach) \
                & (np.abs(V - gy + gh * 0.45) < ft * 0.7)
            frame |= temple
        bridge = (np.abs(U - self.feature_shift) < self.eye_dx - gw + ft) & (np.abs(V - gy + gh * 0.35) < ft * 0.8)
        frame |= bridge
        sheen = 0.12 * np.clip(0.5 + 0.5 * np.sin((U + V) * 60.0 + rng.uniform(0, 6)), 0, 1)
        if self.sunglasses:
            lens_col = self.shade(win, lens_dark, mid=0.05, chroma=2.0, extra=1.0 + 2.0 * sheen)
        else:
            lens_col = self.image[win] * tint + 255.0 * sheen[..., None]
        self.paint(win, lens, EYE_G, lens_col)
        self.paint(win, frame, EYE_G, self.shade(win, frame_rgb, mid=0.05, fine=0.05))

    def eye(self, side: float) -> None:
        ex = side * self.eye_dx + self.feature_shift
        win = self.window(ex - self.eye_half_width - 0.01, ex + self.eye_half_width + 0.01,
                          self.eye_y - 0.04, self.eye_y + 0.04)
        if win is None:
            return
        U, V = self.uv(win)
        du = U - ex
        centre = self.eye_y - side * self.eye_tilt * du
        t = np.clip(1.0 - (du / self.eye_half_width) ** 2, 0, None) ** 0.8
        dv = V - centre
        region = (t > 0) & (dv > -self.eye_height_top * t) & (dv < self.eye_height_bottom * t)
        region &= ~np.isin(self.mask[win], (HAIR, HAT))  # bangs may hide an eye
        r_iris = (self.eye_height_top + self.eye_height_bottom) * 0.62
        ix = ex + self.gaze[0] * self.eye_half_width * 0.3
        iy = self.eye_y + self.gaze[1] * 0.004
        d = np.sqrt((U - ix) ** 2 + (V - iy) ** 2)
        sclera = mix(np.array([232, 226, 220], np.float32), self.skin_rgb, 0.25)
        col = self.shade(win, sclera, fine=0.02)
        iris = self.shade(win, self.iris_rgb, fine=0.1, extra=1.0 - 0.3 * np.clip(d / r_iris, 0, 1))
        col = np.where((d < r_iris)[..., None], iris, col)
        col = np.where((d < r_iris * 0.42)[..., None], np.float32(15.0), col)
        lid = np.clip(1.0 - (dv + self.eye_height_top * t) / (self.eye_height_top * 0.5 + 1e-4), 0, 1)
        col = col * (1.0 - 0.75 * lid)[..., None]
        self.paint(win, region, L_EYE if side == _L_SIDE else R_EYE, col)

    def earring(self, side: float) -> None:
        rng = self.rng
        eu, ev = self._ear_centre(side)
        av = ev + self.ear_half_height * 0.95
        win = self.window(eu - 0.09, eu + 0.09, av - 0.02, av + 0.14)
        if win is None:
            return
        U, V = self.uv(win)
        kind = rng.integers(3)
        if kind == 0:  # stud
            r = rng.uniform(0.01, 0.02)
            region = (U - eu) ** 2 + (V - av) ** 2 < r ** 2
        elif kind == 1:  # hoop
            R, t = rng.uniform(0.03, 0.07), rng.uniform(0.004, 0.01)
            d = np.sqrt((U - eu) ** 2 + (V - av - R) ** 2)
            region = np.abs(d - R) < t
        else:  # drop
            dh = rng.uniform(0.02, 0.045)
            region = ((U - eu) / rng.uniform(0.01, 0.02)) ** 2 + ((V - av - 0.01 - dh) / dh) ** 2 < 1
            region |= (np.abs(U - eu) < 0.002) & (V > av) & (V < av + 0.01)
        metal = (_METALS[rng.integers(len(_METALS))] if rng.random() < 0.7
                 else random_colour(rng, self.skin_rgb, self.hair_rgb))
        glint = 1.0 + 0.35 * np.sin((U - V) * 300.0)
        self.paint(win, region, EAR_R, self.shade(win, metal, mid=0.05, fine=0.1, extra=glint))
