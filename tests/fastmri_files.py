"""Files in fastMRI's documented h5 format, written from the format's description (Zbontar et
al. 2018, "fastMRI: An Open Dataset and Benchmarks for Accelerated MRI", section 4 and the
dataset's README), not from raykd's writers, so that a reader test can compare raykd with the
``fastmri`` package on the same file.

Per file (one volume): ``kspace`` complex64 — single-coil ``[slices, H, W]``, multi-coil
``[slices, coils, H, W]`` — *centred* (DC in the middle), readout (frequency encoding) along H,
twice oversampled, phase encoding along W; ``reconstruction_esc`` (single-coil) or
``reconstruction_rss`` (multi-coil) float32 ``[slices, 320, 320]``: the magnitude (RSS over coils)
of the centre 320x320 crop of the centred orthonormal inverse 2D FFT; ``ismrmrd_header``: the
ISMRMRD XML header (``encoding/encodedSpace/matrixSize`` = H, W, 1; ``reconSpace/matrixSize`` =
320, 320, 1; ``encodingLimits/kspace_encoding_step_1`` minimum, maximum, centre); attributes
``acquisition`` (``CORPD_FBK`` / ``CORPDFS_FBK`` for knee), ``patient_id``, ``max``, ``norm``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

RECON = 320
HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <encoding>
    <encodedSpace>
      <matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>280</x><y>{fov_y}</y><z>4.5</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{r}</x><y>{r}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>140</x><y>140</y><z>3</z></fieldOfView_mm>
    </reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{wmax}</maximum><center>{c}</center>
      </kspace_encoding_step_1>
      <slice><minimum>0</minimum><maximum>0</maximum><center>0</center></slice>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
</ismrmrdHeader>
"""


def fft2c(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT over the last two axes (fastMRI's convention)."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=axes), norm="ortho"), axes)


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=axes), norm="ortho"), axes)


def crop(x: np.ndarray, size: int = RECON) -> np.ndarray:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def knee_like(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Complex images [n, h, w] with structure that is not symmetric under a transpose: an
    off-centre bright bar along the readout, a texture and a smooth phase."""
    rng = np.random.default_rng(seed)
    u = np.linspace(-1, 1, h)[:, None]
    v = np.linspace(-1, 1, w)[None, :]
    out = []
    for i in range(n):
        body = np.exp(-((u / 0.7) ** 2 + (v / 0.45) ** 2) * 2)
        bar = ((np.abs(u - 0.2) < 0.35) & (np.abs(v + 0.15) < 0.06)) * (1.5 + 0.2 * i)
        texture = 0.2 * rng.random((h, w))
        phase = np.exp(1j * (0.8 * u + 0.5 * v**2 + 0.3 * i))
        out.append((body + bar + texture) * phase)
    return np.stack(out).astype(np.complex64)


def write_fastmri(
    path: Path, images: np.ndarray, coils: np.ndarray | None = None, acquisition="CORPD_FBK"
) -> Path:
    """One file of fastMRI's format from complex images [n, H, W] (multi-coil: times coil
    sensitivities ``coils`` [C, H, W])."""
    n, h, w = images.shape
    if coils is None:
        kspace = fft2c(images)
        recon_key, recon = "reconstruction_esc", np.abs(crop(images))
    else:
        coil_images = images[:, None] * coils[None]
        kspace = fft2c(coil_images)
        recon_key = "reconstruction_rss"
        recon = np.sqrt((np.abs(crop(ifft2c(kspace))) ** 2).sum(axis=1))
    header = HEADER.format(h=h, w=w, r=RECON, fov_y=round(140 * w / RECON), wmax=w - 1, c=w // 2)
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace.astype(np.complex64)
        f[recon_key] = recon.astype(np.float32)
        f["ismrmrd_header"] = np.bytes_(header.encode())
        f.attrs["acquisition"] = acquisition
        f.attrs["patient_id"] = f"pid-{path.stem}"
        f.attrs["max"] = float(recon.max())
        f.attrs["norm"] = float(np.linalg.norm(recon))
    return path


def smooth_coils(c: int, h: int, w: int) -> np.ndarray:
    """``c`` smooth complex coil sensitivities [C, H, W] (Gaussian profiles around the FOV)."""
    u = np.linspace(-1, 1, h)[:, None]
    v = np.linspace(-1, 1, w)[None, :]
    maps = []
    for k in range(c):
        a = 2 * np.pi * k / c
        mag = np.exp(-((u - 0.8 * np.cos(a)) ** 2 + (v - 0.8 * np.sin(a)) ** 2) / 1.5)
        maps.append(mag * np.exp(1j * (a + 0.3 * u)))
    return np.stack(maps).astype(np.complex64)
