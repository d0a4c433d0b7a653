"""The ``phantom`` dataset: seeded, procedurally generated MRI-like volumes with lesions.

Each case is a stack of 2-D slices through a 3-D ellipsoidal "organ" with smooth texture and a
multiplicative bias field, on a dark background. Zero to two bright, irregular 3-D lesions sit
inside the organ; each spans several adjacent slices and shrinks toward its first and last
slice. The mask is exactly the set of pixels that received lesion intensity. No files needed.

With ``channels=2`` each slice has a second contrast of the same anatomy and lesions (as T2 and
ADC, or FLAIR and T1): a brighter organ with partly its own texture, hypo-intense lesions of
lower relative contrast, and its own noise. Its random numbers come from a generator of their
own, so channel 1 is bit-identical to the ``channels=1`` output and the masks are the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsss_bench import hookimpl
from wsss_bench.contracts import Case
from wsss_bench.hookspecs import Register
from wsss_bench.options import option

_REF_SIZE = 64  # lengths below are in pixels at this slice size and scale with ``size``
_BACKGROUND = 0.03
_LESION_COUNT_P = (0.1, 0.45, 0.45)  # probability of 0, 1, 2 lesions in a case
_LESION_RADIUS = (6.0, 13.0)  # pixels at _REF_SIZE
_LESION_CONTRAST = (0.25, 0.5)  # added to an organ at about 0.43, before the bias field
_MIN_LESION_RADIUS = 3.0  # pixels, absolute: every positive slice shows a visible spot
# Second contrast (channels=2): organ level, share of channel 1's texture in its own, and the
# fraction of channel 1's lesion amount that is subtracted (hypo-intense lesions).
_ORGAN_LEVEL_2 = (0.55, 0.65)
_SHARED_TEXTURE_2 = 0.6
_LESION_DROP_2 = (0.35, 0.55)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigmas: list[tuple[float, ...]]
) -> np.ndarray:
    """Smooth periodic noise (FFT): white noise through a sum of Gaussian filters with the given
    per-axis sigmas, each scaled to unit gain, then rescaled to zero mean and unit std."""
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = np.fft.rfftn(white)
    gain = np.zeros(spectrum.shape, dtype=np.float32)
    for sigma in sigmas:
        g = np.ones(spectrum.shape, dtype=np.float32)
        for axis, (n, s) in enumerate(zip(shape, sigma, strict=True)):
            freq = np.fft.rfftfreq(n) if axis == len(shape) - 1 else np.fft.fftfreq(n)
            g1 = np.exp(-2.0 * (np.pi * freq * s) ** 2).astype(np.float32)
            g = g * g1.reshape([-1 if a == axis else 1 for a in range(len(shape))])
        gain += g / np.sqrt(np.mean(g**2))
    out = np.fft.irfftn(spectrum * gain, s=shape, axes=tuple(range(len(shape))))
    out -= out.mean()
    std = out.std()
    return out / std if std > 0 else out


def _harmonics(rng: np.random.Generator, amplitude: float, orders: range) -> np.ndarray:
    """Random ``[k, a_k, phi_k]`` rows for an angular radius perturbation."""
    return np.array([[k, rng.uniform(0, amplitude), rng.uniform(0, 2 * np.pi)] for k in orders])


def _radius_factor(theta: np.ndarray, harmonics: np.ndarray) -> np.ndarray:
    """``1 + sum_k a_k cos(k theta + phi_k)``."""
    out = np.ones_like(theta)
    for k, a, phi in harmonics:
        out += a * np.cos(k * theta + phi)
    return out


@dataclass(frozen=True)
class Phantom:
    """Seeded synthetic MRI-like cases: organ ellipsoid, bias field, noise, bright lesions.

    Case ``i`` depends only on ``(seed, i)`` and the shape/intensity parameters, never on
    ``n_cases``. ``noise`` is the std of the Gaussian noise added to the real and imaginary
    channels before taking the magnitude (Rician, as in MRI); ``contrast`` scales the lesion
    intensity (1.0 = lesions 0.25-0.5 above an organ at about 0.43, before the bias field).
    """

    name: str = "phantom"
    description: str = "Synthetic MRI-like organ with bright 3-D lesions, seeded, no files needed"
    needs_data_dir: bool = False  # declared, not an option (it stays in unit keys)
    # declared (wsss_bench.contracts.Dataset): generated, never downloaded or cached
    reads_files: ClassVar[bool] = False
    archive: ClassVar[None] = None
    download_note: ClassVar[str] = "it is generated: no files to download"
    cache_version: ClassVar[int] = 0
    cam_view: ClassVar[bool] = False
    # options whose value here leaves unit keys as they were before the option existed
    key_neutral: ClassVar[dict[str, Any]] = {"channels": 1}
    n_cases: int = option(24, "cases (patients) generated; at least 2; case i never depends "
                                 "on it")
    n_slices: int = option(16, "slices per case (the depth of each 3-D volume)")
    size: int = option(64, "slice side in pixels (at least 32); organ and lesions scale with it")
    seed: int = option(0, "generator seed: case i depends only on (seed, i) and the shape "
                          "options")
    noise: float = option(0.03, "std of the complex Gaussian noise whose magnitude is taken "
                                "(Rician, as in MRI); 0 = none")
    contrast: float = option(1.0, "lesion intensity scale (1.0 = lesions 0.25-0.5 above an organ "
                                  "at about 0.43)")
    channels: int = option(1, "image channels: 1, or 2 for a second contrast of the same "
                              "anatomy (hypo-intense lesions); channel 1 stays the same")

    def __post_init__(self) -> None:
        problems = [
            f"{k} must be an int (got {v!r})"
            for k, v in (
                ("n_cases", self.n_cases),
                ("n_slices", self.n_slices),
                ("size", self.size),
                ("seed", self.seed),
                ("channels", self.channels),
            )
            if isinstance(v, bool) or not isinstance(v, int | np.integer)
        ]
        if problems:
            raise ValueError("invalid phantom parameters: " + "; ".join(problems))
        if self.n_cases < 2:
            problems.append(f"n_cases must be >= 2 (got {self.n_cases})")
        if self.n_slices < 1:
            problems.append(f"n_slices must be >= 1 (got {self.n_slices})")
        if self.size < 32:
            problems.append(f"size must be >= 32 (got {self.size})")
        if self.seed < 0:
            problems.append(f"seed must be >= 0 (got {self.seed})")
        if not self.noise >= 0:
            problems.append(f"noise must be >= 0 (got {self.noise})")
        if not self.contrast > 0:
            problems.append(f"contrast must be > 0 (got {self.contrast})")
        if self.channels not in (1, 2):
            problems.append(f"channels must be 1 or 2 (got {self.channels})")
        if problems:
            raise ValueError("invalid phantom parameters: " + "; ".join(problems))

    def cases(self, data_dir: Path | None = None) -> Iterator[Case]:
        """Yield ``n_cases`` cases ``phantom_000, ...``; ``data_dir`` is ignored."""
        for index in range(self.n_cases):
            yield self.case(index)

    def case(self, index: int) -> Case:
        """Case number ``index`` (any index >= 0, also beyond ``n_cases``)."""
        images, masks, _ = self.generate(index)
        return Case(case_id=f"phantom_{index:03d}", images=images, masks=masks)

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``images`` float32[S,C,H,W] (C = ``channels``), lesion ``masks`` bool[S,H,W]
        and the ``organ`` bool[S,H,W] of case ``index``; every lesion pixel lies inside the
        organ."""
        if index < 0:
            raise ValueError(f"case index must be >= 0 (got {index})")
        rng = np.random.default_rng([self.seed, index])
        n_s, size = self.n_slices, self.size
        scale = size / _REF_SIZE
        z = np.arange(n_s, dtype=np.float64)[:, None, None]
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

        # Organ: a rotated 3-D ellipsoid, present on every slice (cross-section >= ~0.6).
        cy, cx = size * (0.5 + rng.uniform(-0.06, 0.06, size=2))
        ay, ax = size * rng.uniform(0.27, 0.38, size=2)
        cz = (n_s - 1) / 2 + rng.uniform(-0.05, 0.05) * n_s
        az = rng.uniform(0.7, 0.9) * max(n_s, 1.5)
        rot = rng.uniform(0, np.pi)
        organ_shape = _harmonics(rng, 0.04, range(2, 5))
        cos_r, sin_r = np.cos(rot), np.sin(rot)
        u = ((xx - cx) * cos_r + (yy - cy) * sin_r) / ax  # organ-normalised in-plane coords
        v = (-(xx - cx) * sin_r + (yy - cy) * cos_r) / ay
        f_org = np.sqrt(np.clip(1 - ((z - cz) / az) ** 2, 0.05, None))  # [S,1,1]
        rho_org = np.hypot(u, v)[None] / f_org  # [S,H,W]
        boundary = _radius_factor(np.arctan2(v, u), organ_shape)[None]
        organ = rho_org <= boundary
        edge = 1.2 / (min(ax, ay) * f_org)  # ~1 px soft edge, in normalised units
        organ_soft = np.clip((boundary - rho_org) / edge + 0.5, 0.0, 1.0)

        # Texture (two scales, smooth across slices) and a smooth multiplicative bias field.
        tex = _smooth_noise(
            rng, (n_s, size, size), [(1.0, 3.0 * scale, 3.0 * scale), (0.5, scale, scale)]
        )
        organ_level = rng.uniform(0.38, 0.48)
        tissue = organ_soft * (organ_level + 0.045 * tex)
        gx, gy = (xx / size - 0.5) * 2, (yy / size - 0.5) * 2
        gz = (z / max(n_s - 1, 1) - 0.5) * 2
        c = rng.uniform(-0.08, 0.08, size=5)
        bias = 1 + c[0] * gx + c[1] * gy + c[2] * gx * gy + c[3] * (gx**2 - gy**2) + c[4] * gz
        bias = np.clip(bias, 0.7, 1.3)

        # Lesions: irregular 3-D blobs, each over a run of adjacent slices, kept inside the organ.
        lesion = np.zeros((n_s, size, size))
        masks = np.zeros((n_s, size, size), dtype=bool)
        inner = rho_org <= 0.85 * boundary
        lesion_tex = _smooth_noise(rng, (n_s, size, size), [(0.7, 1.5 * scale, 1.5 * scale)])
        n_lesions = rng.choice(len(_LESION_COUNT_P), p=_LESION_COUNT_P)
        for _ in range(n_lesions):
            span = int(np.clip(round(rng.uniform(0.3, 0.6) * n_s), 2, n_s)) if n_s > 1 else 1
            z0 = int(rng.integers(0, n_s - span + 1))
            radius = rng.uniform(_LESION_RADIUS[0], _LESION_RADIUS[1]) * scale
            half = (span - 1) / 2
            t = (np.arange(span) - half) / (half + 0.5)
            radii = np.maximum(radius * np.sqrt(1 - t**2), _MIN_LESION_RADIUS)
            # Centre at organ-normalised radius <= 0.5 on every slice of the span.
            reach = 0.5 * float(f_org[z0 : z0 + span].min())
            r_c, a_c = reach * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            uc, vc = r_c * np.cos(a_c), r_c * np.sin(a_c)
            ly = cy + uc * ax * sin_r + vc * ay * cos_r
            lx = cx + uc * ax * cos_r - vc * ay * sin_r
            shape = _harmonics(rng, 0.12, range(2, 5))
            drift = rng.uniform(-0.4, 0.4)  # shape rotates slowly through the slices
            amount = rng.uniform(_LESION_CONTRAST[0], _LESION_CONTRAST[1]) * self.contrast
            reach_px = int(np.ceil(radii.max() * 1.4 + 2))  # bounding box of the blob
            y0, y1 = max(int(ly) - reach_px, 0), min(int(ly) + reach_px + 1, size)
            x0, x1 = max(int(lx) - reach_px, 0), min(int(lx) + reach_px + 1, size)
            box = (slice(y0, y1), slice(x0, x1))
            dy, dx = yy[box] - ly, xx[box] - lx
            dist, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
            for j, r_s in enumerate(radii):
                s = z0 + j
                r_theta = r_s * _radius_factor(theta + drift * j, shape)
                blob = (dist <= r_theta) & inner[s][box]
                profile = 0.8 + 0.2 * (1 - dist / r_theta)
                texture = 1 + 0.1 * np.clip(lesion_tex[s][box], -2, 2)
                lesion[s][box] += np.where(blob, amount * profile * texture, 0.0)
                masks[s][box] |= blob

        signal = (_BACKGROUND + tissue + lesion) * bias
        # Magnitude of the signal plus complex Gaussian noise (Rician, as in MRI): never < 0.
        real = signal + self.noise * rng.standard_normal(signal.shape)
        imag = self.noise * rng.standard_normal(signal.shape)
        image = np.clip(np.hypot(real, imag), 0.0, 1.0).astype(np.float32)[:, None]
        if self.channels == 2:
            second = self._second_contrast(index, organ_soft, tex, lesion, bias)
            image = np.concatenate([image, second[:, None]], axis=1)
        return image, masks, organ

    def _second_contrast(self, index: int, organ_soft: np.ndarray, tex: np.ndarray,
                         lesion: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """Channel 2, float32[S,H,W], from its own generator (channel 1's stream untouched):
        organ at 0.55-0.65 with a texture correlated 0.6 with channel 1's, lesions darker by
        35-55 % of channel 1's lesion amount (never below the background), Rician noise."""
        rng = np.random.default_rng([self.seed, index, 2])
        n_s, size = self.n_slices, self.size
        scale = size / _REF_SIZE
        own = _smooth_noise(rng, (n_s, size, size), [(1.0, 2.0 * scale, 2.0 * scale)])
        mix = _SHARED_TEXTURE_2 * tex + np.sqrt(1 - _SHARED_TEXTURE_2**2) * own
        level = rng.uniform(*_ORGAN_LEVEL_2)
        tissue = organ_soft * (level + 0.04 * mix)
        drop = rng.uniform(*_LESION_DROP_2) * lesion
        signal = np.maximum(_BACKGROUND + tissue - drop, _BACKGROUND) * bias
        real = signal + self.noise * rng.standard_normal(signal.shape)
        imag = self.noise * rng.standard_normal(signal.shape)
        return np.clip(np.hypot(real, imag), 0.0, 1.0).astype(np.float32)


@hookimpl
def register_datasets(register: Register) -> None:
    """Register the default ``phantom`` dataset."""
    register(Phantom())
