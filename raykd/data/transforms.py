"""The forward model and slice preprocessing.

Conventions (``../shared/docs/method.md``): orthonormal 2D FFT over the last two axes, masks
*uncentred* (k-space DC at pixel [0, 0], no fftshift anywhere), magnitude zero-filled input.
All k-space arithmetic runs in complex64 regardless of autocast, because bf16/fp16 FFTs lose
the accuracy the data-consistency step exists to keep.
"""

from __future__ import annotations

import numpy as np
import torch


def fft2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2D FFT over the last two axes (input real or complex, output complex64)."""
    return torch.fft.fft2(x.to(torch.complex64) if not x.is_complex() else x, norm="ortho")


def ifft2(k: torch.Tensor) -> torch.Tensor:
    """Orthonormal inverse 2D FFT over the last two axes."""
    return torch.fft.ifft2(k, norm="ortho")


def to_complex(x: torch.Tensor) -> torch.Tensor:
    """Two channels (real, imag) [B, 2, H, W] → one complex64 channel [B, 1, H, W]."""
    x = x.float()
    return torch.complex(x[:, 0:1], x[:, 1:2])


def to_channels(z: torch.Tensor) -> torch.Tensor:
    """One complex channel [B, 1, H, W] → two real channels (real, imag) [B, 2, H, W]."""
    return torch.cat([z.real, z.imag], dim=1)


def is_complex_batch(x: torch.Tensor) -> bool:
    """Complex data travel as two real channels (real, imag); magnitude data as one."""
    return x.ndim == 4 and x.shape[1] == 2


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """|x| of a two-channel complex batch [B, 2, H, W] as [B, 1, H, W]; one channel unchanged.

    Metrics on complex data are computed on this magnitude (fastMRI's convention).
    """
    if not is_complex_batch(x):
        return x
    return torch.sqrt(x[:, 0:1].float() ** 2 + x[:, 1:2].float() ** 2)


def undersample(target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate acquisition: ``y = M ⊙ F(x)`` and the zero-filled image ``F⁻¹(y)``.

    ``target`` is real [..., H, W] (magnitude data: the zero-filled input is ``|F⁻¹(y)|``) or a
    complex batch as two channels [B, 2, H, W] (complex data: ``F(x)`` is the measured complex
    k-space and the zero-filled input is ``F⁻¹(y)`` as two channels, phase kept). ``mask``
    broadcasts against [B, 1, H, W]. Returns ``(zero_filled, y)``, float32 and complex64.
    """
    with torch.autocast(device_type=target.device.type, enabled=False):
        if is_complex_batch(target):
            y = fft2(to_complex(target)) * mask.to(torch.float32)
            return to_channels(ifft2(y)), y
        y = fft2(target.float()) * mask.to(torch.float32)
        zero_filled = ifft2(y).abs()
    return zero_filled, y


def degrade(target: torch.Tensor, mask: torch.Tensor, sr=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The network input and measured k-space for a batch of targets [B, 1 or 2, H, W].

    Reconstruction, and super-resolution by k-space truncation (``mask`` is then the low-pass
    mask): :func:`undersample`. Image-domain super-resolution (``sr.degradation == 'image'``):
    area-downsample by ``sr.scale``, bicubic back to H×W; nothing is measured in k-space
    (``mask`` is all zeros), so data-consistency layers pass their input through.
    """
    if sr is None or sr.degradation == "kspace":
        return undersample(target, mask)
    import torch.nn.functional as F

    with torch.autocast(device_type=target.device.type, enabled=False):
        h, w = target.shape[-2:]
        low = F.interpolate(
            target.float(), size=(max(1, h // sr.scale), max(1, w // sr.scale)), mode="area"
        )
        up = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
        if is_complex_batch(target):  # real and imaginary parts resampled alike, no clamp
            y = fft2(to_complex(up)) * mask.to(torch.float32)
            return up, y
        up = up.clamp_min(0)
        y = fft2(up) * mask.to(torch.float32)
    return up, y


def center_crop_or_pad(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop or zero-pad the last two axes of ``image`` to ``size``, axis by axis."""
    out_h, out_w = size
    h, w = image.shape[-2:]
    # Crop first (axis by axis), then pad what is still too small.
    top = max((h - out_h) // 2, 0)
    left = max((w - out_w) // 2, 0)
    image = image[..., top : top + min(h, out_h), left : left + min(w, out_w)]
    h, w = image.shape[-2:]
    pad_h, pad_w = out_h - h, out_w - w
    if pad_h > 0 or pad_w > 0:
        pads = [(0, 0)] * (image.ndim - 2) + [
            (pad_h // 2, pad_h - pad_h // 2),
            (pad_w // 2, pad_w - pad_w // 2),
        ]
        image = np.pad(image, pads)
    return image


def normalise_max(image: np.ndarray) -> np.ndarray:
    """Scale a slice to max 1 (complex: max magnitude 1; an all-zero slice stays zero)."""
    peak = float(np.max(np.abs(image)))
    return image / peak if peak > 0 else image
