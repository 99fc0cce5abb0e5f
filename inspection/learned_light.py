"""The station's light as it shows on intact parts: a set of distant lights learned from scans, not described by hand.

Soft boxes, a dome, ring lights and a key light all come down, for a part a few centimetres across a few
decimetres from its lamps, to light arriving from a set of directions with some strength each. So the light is
learned as non-negative weights over a fixed grid of directions covering the sphere, plus a constant: a matte
face's grey level is gain × (constant + Σ weight × max(0, n·l) × unblocked(l)), the gain being exposure × the
material's albedo, free per scan and camera. Because each direction is a ray the part can block, the same model
predicts the part's shadows on itself, which a function of the normal alone cannot: under a key light the floor
of a bracket beside its wall is dark though it faces up.

Non-negativity is what keeps this from overfitting: light cannot be negative, so a few thousand samples pin
down the few dozen directions that carry light, and the rest stay zero (scipy's NNLS gives sparse solutions).
Light from below the tray's plane is allowed; the tray throws some back up onto downward faces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import open3d as o3d
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import nnls

from amflow_edge.inspection.geometry.raycast import tensor

DIRECTIONS = 400
"""Candidate light directions over the sphere (Fibonacci lattice, about 16° apart): finer than a soft box's
spread as a part sees it, coarse enough that a few thousand samples determine every weight."""
SHADOW_EPS_MM = 0.05
MAX_FIT_SAMPLES = 1500
"""Samples per (scan, camera) the fit uses; more change the weights by less than their noise."""
ROUGH_FIT_SAMPLES = 500
"""Samples per (scan, camera) of the first fit over every candidate lamp, which only finds the lamps that carry
light: it costs a shadow ray per sample and lamp and an NNLS over all 400-odd of them, and was two thirds of
commissioning's time at MAX_FIT_SAMPLES. The fits that weigh the lamps found use MAX_FIT_SAMPLES."""
ROBUST_ITERATIONS = 4
HUBER_K = 1.5
"""Residuals beyond this many robust scales are down-weighted: glints, dust, a mis-segmented cell."""
MIN_WEIGHT_SHARE = 0.002
"""Directions carrying less than this share of the total light are dropped after the fit: each costs a
shadow ray per compared cell at every inspection, and light that weak changes no grey level by a DN."""
LAMP_RADIUS_MM = 40.0
"""How far from its centre a lamp is sampled for shadows: a ring light round a lens, a small soft box."""
LAMP_OFFSETS = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))
SHININESS = (8.0, 16.0, 32.0)
"""Highlight exponents tried at commissioning: broad sheen of sintered powder to the tighter glint of FDM."""
_SEED = 0x11_6847


@dataclass(frozen=True)
class FitSamples:
    """What one camera saw of one intact scan's surface: flattened (N, 3) points and normals, (N,) grey levels."""

    key: str
    """Scan and camera, e.g. "scan-3/cam02": one gain each."""
    points: np.ndarray
    normals: np.ndarray
    photo: np.ndarray
    scene: o3d.t.geometry.RaycastingScene
    """The design at its found pose, to cast the shadow rays against."""
    eye: np.ndarray | None = None
    """The camera's centre (3,), for the highlights it sees; None: no highlights are learned from these samples."""


class LampRecord(BaseModel):
    """One lamp of a learned light, as stored with the station's commissioning data."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    position_mm: list[float] = Field(min_length=3, max_length=3, description="Tray-frame position, mm.")
    weight: float = Field(
        ge=0.0, description="Grey levels per unit gain it gives a face turned to it at the tray centre."
    )


class LearnedLightRecord(BaseModel):
    """A learned light as stored: its lamps, the constant term, and how well it explained intact parts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lamps: list[LampRecord] = Field(min_length=1, description="The lamps that carry light, strongest first.")
    constant: float = Field(
        ge=0.0,
        description="Grey levels per unit gain that no direction accounts for (black level, light from everywhere).",
    )
    spread: float = Field(
        ge=0.0,
        description="Robust spread (1.4826 × MAD) of photo ÷ prediction − 1 on intact parts left out of the fit: how "
        "well the light predicts intact faces; a scan whose spread is far above it was lit otherwise.",
    )
    samples: int = Field(ge=0, description="Surface samples the fit used.")
    shininess: float = Field(
        default=SHININESS[0],
        gt=0.0,
        description="Blinn-Phong exponent of the parts' highlights, the one of SHININESS that explained the "
        "intact parts best; how strong they are is fitted per scan and camera, as it depends on the material.",
    )

    def light(self) -> LearnedLight:
        return LearnedLight(
            np.array([lamp.position_mm for lamp in self.lamps], dtype=np.float32),
            np.array([lamp.weight for lamp in self.lamps], dtype=np.float32),
            self.constant,
            self.spread,
            self.shininess,
        )


@dataclass(frozen=True)
class Prediction:
    """Per point, per unit gain: the matte brightness, the share of it from half-hidden lamps, and the highlights
    at unit gloss (their strength depends on the material: a scan's gloss is fitted with its gain)."""

    matte: np.ndarray
    penumbra: np.ndarray
    glint: np.ndarray


@dataclass(frozen=True)
class LearnedLight:
    """Lamp positions (K, 3), their weights (K,) and the constant term; all in grey levels per unit gain."""

    lamps: np.ndarray
    """(K, 3) tray-frame positions (mm): near lamps light a part's near side more, and from a slightly different
    direction, than its far side."""
    weights: np.ndarray
    constant: float
    spread: float = 0.0
    """As LearnedLightRecord.spread; 0 until measured."""
    shininess: float = SHININESS[0]
    """As LearnedLightRecord.shininess."""

    def record(self, samples: int = 0) -> LearnedLightRecord:
        order = np.argsort(-self.weights)
        return LearnedLightRecord(
            lamps=[
                LampRecord(
                    position_mm=[round(float(v), 2) for v in self.lamps[i]], weight=round(float(self.weights[i]), 5)
                )
                for i in order
            ],
            constant=round(self.constant, 5),
            spread=round(self.spread, 5),
            samples=samples,
            shininess=self.shininess,
        )

    def expected(
        self,
        scene: o3d.t.geometry.RaycastingScene,
        points: np.ndarray,
        normals: np.ndarray,
        shadows: bool = True,
    ) -> np.ndarray:
        """Predicted matte brightness per unit gain of (N, 3) points with (N, 3) normals, with the part's own
        shadows when `shadows`."""
        return self.predict(scene, points, normals, None, shadows).matte

    def predict(
        self,
        scene: o3d.t.geometry.RaycastingScene,
        points: np.ndarray,
        normals: np.ndarray,
        eye: np.ndarray | None,
        shadows: bool = True,
        soft: bool = True,
    ) -> Prediction:
        """What (N, 3) points with (N, 3) normals should show a camera at `eye`: their matte brightness and their
        highlights per unit gain, and how much of the matte part comes from lamps the part half hides (a
        penumbra, where the prediction is a range rather than a value). Without `soft`, each lamp casts one
        shadow ray instead of one per LAMP_OFFSETS: no penumbra, a quarter of the rays."""
        count = len(points)
        basis = irradiance_basis(points, normals, self.lamps)
        weights = self.weights.astype(np.float32)
        seen = np.ones_like(basis)
        if shadows and count:
            # Real lamps have a size: each is sampled at LAMP_OFFSETS about its centre, so that a shadow's edge
            # is predicted as the range it may fall in, not as a line.
            seen = (soft_unblocked if soft else unblocked)(scene, points, normals, self.lamps)
        matte = (self.constant + (basis * seen) @ weights).astype(np.float32)
        half = ((seen > 0) & (seen < 1)).astype(np.float32)
        penumbra = ((basis * half) @ weights).astype(np.float32)
        glint = np.zeros(count, dtype=np.float32)
        if eye is not None and count:
            glint = ((highlight_basis(points, normals, self.lamps, eye, self.shininess) * seen) @ weights).astype(
                np.float32
            )
        return Prediction(matte, penumbra, glint)


def _lamp_offsets(lamps: np.ndarray) -> list[np.ndarray]:
    """(K, 3) offsets of each lamp's shadow samples, across the line from the tray centre to it."""
    axis = lamps / np.maximum(np.linalg.norm(lamps, axis=1, keepdims=True), 1e-6)
    helper = np.where(np.abs(axis[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    a = np.cross(axis, helper)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.cross(axis, a)
    return [(LAMP_RADIUS_MM * (u * a + v * b)).astype(np.float32) for u, v in LAMP_OFFSETS]


def candidate_directions(count: int = DIRECTIONS) -> np.ndarray:
    """(count, 3) unit vectors spread evenly over the sphere."""
    k = np.arange(count, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * k / count
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z]).astype(np.float32)


def soft_unblocked(
    scene: o3d.t.geometry.RaycastingScene, points: np.ndarray, normals: np.ndarray, lamps: np.ndarray
) -> np.ndarray:
    """(N, K) share of each lamp's LAMP_OFFSETS samples that reach each point past the part."""
    seen = np.zeros((len(points), len(lamps)), dtype=np.float32)
    for offset in _lamp_offsets(lamps):
        seen += unblocked(scene, points, normals, lamps + offset)
    return seen / np.float32(len(LAMP_OFFSETS))


def highlight_basis(
    points: np.ndarray, normals: np.ndarray, lamps: np.ndarray, eye: np.ndarray, shininess: float
) -> np.ndarray:
    """(N, K) Blinn-Phong highlight of lamp k at each point as a camera at `eye` sees it, scaled like the lamp's
    irradiance so that one weight per lamp serves both. In float64: where a lamp faces the camera across the
    part, 2 + 2 l·e cancels, and float32 was 1e-3 off there."""
    to_lamp_n, d2, distance = _towards(points, normals, lamps, np.float64)
    points = np.asarray(points, dtype=np.float64)
    lamps = np.asarray(lamps, dtype=np.float64)
    to_eye = np.asarray(eye, dtype=np.float64)[None, :] - points
    to_eye /= np.linalg.norm(to_eye, axis=1, keepdims=True)
    # The half vector (l + e)/|l + e| without (N, K, 3) arrays: n·h = (n·l + n·e)/√(2 + 2 l·e).
    lamp_dot_eye = (to_eye @ lamps.T - np.einsum("nc,nc->n", points, to_eye)[:, None]) / distance
    eye_n = np.einsum("nc,nc->n", to_eye, np.asarray(normals, dtype=np.float64))[:, None]
    cos = np.maximum((to_lamp_n + eye_n) / np.sqrt(np.maximum(2.0 + 2.0 * lamp_dot_eye, 1e-12)), 0.0)
    cos[to_lamp_n <= 0] = 0.0
    reach2 = np.einsum("kc,kc->k", lamps, lamps)
    return (np.power(cos, shininess) * (reach2[None, :] / d2)).astype(np.float32)


def gain_and_gloss(
    photo: np.ndarray, matte: np.ndarray, glint: np.ndarray, iterations: int = ROBUST_ITERATIONS
) -> tuple[float, float]:
    """The scan's gain (exposure × albedo) and gloss that make gain × matte + gloss × glint fit the photo best,
    robustly (a defect's few cells do not pull); gloss ≥ 0, and 0 where no highlight is predicted."""
    ratio = photo / np.maximum(matte, 1e-6)
    gain = float(np.median(ratio)) if len(ratio) else 1.0
    gloss = 0.0
    if not len(photo) or float(np.max(glint, initial=0.0)) <= 1e-6:
        return gain, gloss
    weights = np.ones(len(photo))
    design = np.column_stack([matte, glint]).astype(np.float64)
    for _ in range(iterations):
        root = np.sqrt(weights)
        solution, _ = nnls(design * root[:, None], photo.astype(np.float64) * root)
        gain, gloss = float(solution[0]), float(solution[1])
        relative = photo / np.maximum(design @ solution, 1e-6) - 1.0
        scale = max(1.4826 * float(np.median(np.abs(relative))), 1e-3)
        weights = np.minimum(1.0, HUBER_K * scale / np.maximum(np.abs(relative), 1e-9))
    return max(gain, 1e-6), gloss


def irradiance_basis(points: np.ndarray, normals: np.ndarray, lamps: np.ndarray) -> np.ndarray:
    """(N, K) irradiance of each point from lamp k, each lamp giving unit irradiance face-on at the tray centre."""
    cos, d2, _ = _towards(points, normals, lamps)
    reach2 = np.einsum("kc,kc->k", lamps, lamps)
    return (np.maximum(cos, 0.0) * reach2[None, :] / d2).astype(np.float32)


def _towards(
    points: np.ndarray, normals: np.ndarray, lamps: np.ndarray, dtype: type[np.floating] = np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K) cosine between each normal and the way to lamp k, squared distance and distance, by matrix
    products rather than (N, K, 3) arrays: the comparison asks this for every cell of every candidate pose."""
    points = np.asarray(points, dtype=dtype)
    normals = np.asarray(normals, dtype=dtype)
    lamps = np.asarray(lamps, dtype=dtype)
    d2 = (
        np.einsum("nc,nc->n", points, points)[:, None]
        - 2.0 * (points @ lamps.T)
        + np.einsum("kc,kc->k", lamps, lamps)[None, :]
    )
    d2 = np.maximum(d2, 1e-12)
    distance = np.sqrt(d2)
    cos = (normals @ lamps.T - np.einsum("nc,nc->n", points, normals)[:, None]) / distance
    return cos, d2, distance


def unblocked(
    scene: o3d.t.geometry.RaycastingScene,
    points: np.ndarray,
    normals: np.ndarray,
    lamps: np.ndarray,
) -> np.ndarray:
    """(N, K) 1 where lamp k lights point n past the part itself, else 0."""
    count, k = len(points), len(lamps)
    origins = (points + normals * SHADOW_EPS_MM).astype(np.float32)
    rays = np.empty((k, count, 6), dtype=np.float32)
    rays[:, :, :3] = origins[None]
    rays[:, :, 3:] = lamps.astype(np.float32)[:, None, :] - origins[None]
    blocked = scene.test_occlusions(tensor(rays.reshape(-1, 6)), tnear=0.0, tfar=1.0).numpy()
    return (~blocked.reshape(k, count).astype(bool)).T.astype(np.float32)


def candidate_lamps(camera_centres: np.ndarray) -> np.ndarray:
    """Where the station's lamps may be: evenly over a sphere as far from the tray centre as the cameras are,
    and on every camera (a ring light round the lens is the commonest station light, and the shadows it casts
    are the ones its own camera cannot see: only a lamp exactly there predicts that)."""
    radius = float(np.median(np.linalg.norm(camera_centres, axis=1)))
    return np.concatenate([candidate_directions() * radius, camera_centres]).astype(np.float32)


def fit_light(samples: Sequence[FitSamples], lamps: np.ndarray) -> tuple[LearnedLight, dict[str, float]]:
    """The light that best explains the samples, and each key's gain (median 1).

    First every candidate lamp with point shadows on ROUGH_FIT_SAMPLES per key, which finds the few dozen that
    carry light; then those lamps again with the soft shadows and the highlights the inspection predicts, for
    each of SHININESS, keeping the one that explains the samples best. Each fit alternates the weights (NNLS) and each key's gain
    and gloss, with a Huber re-weighting so that stray cells do not pull.
    """
    if not samples:
        raise ValueError("no samples to learn the light from")
    picked = _subsample(samples, MAX_FIT_SAMPLES)
    rough_samples = _subsample(picked, ROUGH_FIT_SAMPLES)
    hard = [unblocked(s.scene, s.points, s.normals, lamps) for s in rough_samples]
    rough, _, _ = _fit(rough_samples, lamps, hard, shininess=None)
    # The shadows do not depend on the highlight's exponent: cast once for every one tried.
    soft = [soft_unblocked(s.scene, s.points, s.normals, rough.lamps) for s in picked]
    best: tuple[LearnedLight, dict[str, float], float] | None = None
    for shininess in SHININESS:
        found = _fit(picked, rough.lamps, soft, shininess=shininess)
        if best is None or found[2] < best[2]:
            best = found
    assert best is not None
    return best[0], best[1]


def _subsample(samples: Sequence[FitSamples], most: int) -> list[FitSamples]:
    rng = np.random.default_rng(_SEED)
    picked = []
    for sample in samples:
        count = len(sample.photo)
        if count > most:
            pick = np.sort(rng.choice(count, most, replace=False))
            sample = FitSamples(
                sample.key, sample.points[pick], sample.normals[pick], sample.photo[pick], sample.scene, sample.eye
            )
        picked.append(sample)
    return picked


def _fit(
    samples: Sequence[FitSamples], lamps: np.ndarray, unshadowed: Sequence[np.ndarray], shininess: float | None
) -> tuple[LearnedLight, dict[str, float], float]:
    """One fit over `lamps`, given per sample how much of each lamp reaches each point past the part (hard or
    soft shadows); returns the light, each key's gain and the median |relative residual|."""
    mattes: list[np.ndarray] = []
    glints: list[np.ndarray] = []
    photos: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    for sample, seen in zip(samples, unshadowed, strict=True):
        points, normals = sample.points, sample.normals
        mattes.append(irradiance_basis(points, normals, lamps) * seen)
        glint = np.zeros_like(seen)
        if shininess is not None and sample.eye is not None:
            glint = highlight_basis(points, normals, lamps, sample.eye, shininess) * seen
        glints.append(glint)
        photos.append(sample.photo.astype(np.float64))
        keys.append(np.full(len(sample.photo), len(keys)))
    matte = np.concatenate(mattes).astype(np.float64)
    glint = np.concatenate(glints).astype(np.float64)
    photo = np.concatenate(photos)
    key = np.concatenate(keys)
    gains, gloss = np.ones(len(samples)), np.zeros(len(samples))
    weights = np.ones(len(photo))
    solution = np.zeros(matte.shape[1] + 1)
    relative = np.zeros(len(photo))
    for _ in range(ROBUST_ITERATIONS):
        design = np.column_stack([gains[key], gains[key][:, None] * matte + gloss[key][:, None] * glint])
        root = np.sqrt(weights)
        solution, _ = nnls(design * root[:, None], photo * root, maxiter=50 * design.shape[1])
        matte_now = solution[0] + matte @ solution[1:]
        glint_now = glint @ solution[1:]
        for index in range(len(samples)):
            mine = key == index
            gains[index], gloss[index] = gain_and_gloss(photo[mine], matte_now[mine], glint_now[mine], iterations=2)
        prediction = np.maximum(gains[key] * matte_now + gloss[key] * glint_now, 1e-6)
        relative = photo / prediction - 1.0
        scale = max(1.4826 * float(np.median(np.abs(relative))), 1e-3)
        weights = np.minimum(1.0, HUBER_K * scale / np.maximum(np.abs(relative), 1e-9))
    # Gains are relative to their median, so that a prediction per unit gain stays in grey levels.
    middle = float(np.median(gains))
    solution *= middle
    gains /= middle
    light_weights = solution[1:]
    if not np.any(light_weights > 0):
        raise ValueError(
            "no lamp explains the intact parts' shading (every weight is zero): are the scans exposed, and of parts?"
        )
    keep = light_weights > MIN_WEIGHT_SHARE * max(float(light_weights.sum()), 1e-9)
    light = LearnedLight(
        lamps[keep].copy(), light_weights[keep].astype(np.float32), float(solution[0]), 0.0, shininess or SHININESS[0]
    )
    cost = float(np.median(np.abs(relative)))
    return light, {sample.key: float(g) for sample, g in zip(samples, gains, strict=True)}, cost


def _held_out(light: LearnedLight, sample: FitSamples) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's relative residual, and the prediction it is relative to (per unit gain)."""
    found = light.predict(sample.scene, sample.points, sample.normals, sample.eye)
    gain, gloss = gain_and_gloss(sample.photo, found.matte, found.glint)
    prediction = np.maximum(found.matte + (gloss / gain) * found.glint, 1e-6)
    residual = (sample.photo / (gain * prediction) - 1.0).astype(np.float32)
    return residual, prediction.astype(np.float32)


@dataclass(frozen=True)
class HeldOut:
    """One key's samples as predicted by the fold that did not see its scan."""

    key: str
    residual: np.ndarray
    """(N,) photo ÷ (gain × matte + gloss × highlights) − 1, gain and gloss fitted as at inspection."""
    prediction: np.ndarray
    """(N,) the fold's prediction per unit gain, with the part's shadows."""
    photo: np.ndarray
    """(N,) the grey levels."""


@dataclass(frozen=True)
class LightLearning:
    """The learned light and what commissioning reports of it: each key's residuals on the fold that left its
    scan out, each key's gain in the final fit, and how many samples that fit used."""

    light: LearnedLight
    held_out: list[HeldOut]
    gains: dict[str, float]
    """Per key, the gain of the fit on every scan (median over the keys 1)."""
    samples: int


def learn_light_held_out(scans: Sequence[Sequence[FitSamples]], camera_centres: np.ndarray) -> LightLearning:
    """The light fitted on every scan, with its spread measured on scans left out (two folds, each fitted on the
    other half of the scans and judged on its own: a spread measured on the fit's own samples flatters it), keeping
    the held-out residuals (per key, for per-camera figures and histograms) and the
    gains of the final fit (per scan and camera, for the commissioning report)."""
    if len(scans) < 2:
        raise ValueError(f"learning the light needs at least 2 intact scans, got {len(scans)}")
    lamps = candidate_lamps(camera_centres)
    held_out = []
    for fold in (0, 1):
        train = [s for i, scan in enumerate(scans) if i % 2 != fold for s in scan]
        light, _ = fit_light(train, lamps)
        for sample in (s for i, scan in enumerate(scans) if i % 2 == fold for s in scan):
            residual, prediction = _held_out(light, sample)
            held_out.append(HeldOut(sample.key, residual, prediction, sample.photo))
    residual = np.concatenate([h.residual for h in held_out]) if held_out else np.zeros(1, dtype=np.float32)
    every = [s for scan in scans for s in scan]
    light, gains = fit_light(every, lamps)
    spread = 1.4826 * float(np.median(np.abs(residual)))
    used = sum(min(len(s.photo), MAX_FIT_SAMPLES) for s in every)
    return LightLearning(
        LearnedLight(light.lamps, light.weights, light.constant, spread, light.shininess), held_out, gains, used
    )
