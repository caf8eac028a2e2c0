import numpy as np
import pytest
import torch

from raykd.data.masks import CartesianMask, FixedMask, load_mask_file
from raykd.data.transforms import center_crop_or_pad, fft2, ifft2, undersample
from raykd.errors import DataError
from raykd.models.dccnn import DataConsistency


def test_fft_is_orthonormal_and_uncentred():
    x = torch.rand(2, 1, 16, 16)
    k = fft2(x)
    assert torch.allclose(k.abs().pow(2).sum(), x.pow(2).sum(), rtol=1e-5)  # Parseval
    # Uncentred: DC at [0, 0] equals sum / sqrt(N).
    assert torch.allclose(k[..., 0, 0].real, x.sum(dim=(-2, -1)) / 16, rtol=1e-5)
    assert torch.allclose(ifft2(k).real, x, atol=1e-6)


def test_undersample_full_mask_is_identity_and_zero_filled_is_magnitude():
    x = torch.rand(1, 1, 16, 16)
    zf, y = undersample(x, torch.ones(1, 1, 16, 16))
    assert torch.allclose(zf, x, atol=1e-6)
    mask = torch.from_numpy(CartesianMask(4, seed=1, num_low=4)((16, 16))).expand(1, 1, 16, 16)
    zf, y = undersample(x, mask)
    assert zf.dtype == torch.float32 and y.dtype == torch.complex64
    assert torch.all(zf >= 0)
    assert torch.all(y[mask == 0] == 0)


def test_dc_keeps_sampled_kspace_of_complex_result():
    # Through the model's own layer: the k-space of what DataConsistency returns equals the
    # measurement y at every sampled point and the CNN's k-space elsewhere.
    x = torch.rand(2, 1, 16, 16)
    mask = torch.from_numpy(CartesianMask(4, seed=3, num_low=4)((16, 16)))
    _, y = undersample(x, mask)
    x_cnn = torch.randn(2, 1, 16, 16)
    out = DataConsistency(complex=True)(torch.cat([x_cnn, torch.zeros_like(x_cnn)], 1), y, mask)
    k_out = fft2(torch.complex(out[:, :1], out[:, 1:]))
    sampled = mask.bool().expand_as(k_out)
    assert torch.allclose(k_out[sampled], y[sampled], atol=1e-5)
    assert torch.allclose(k_out[~sampled], fft2(x_cnn)[~sampled], atol=1e-5)
    # The real (magnitude-pipeline) layer: exactly data-consistent for a Hermitian-symmetric
    # mask (row r sampled iff row -r is), as the layer's docstring states.
    sym = mask.clone()
    sym[..., 1:, :] = torch.maximum(mask[..., 1:, :], mask[..., 1:, :].flip(-2))
    _, y_sym = undersample(x, sym)
    real = DataConsistency()(x_cnn, y_sym, sym)
    assert real.dtype == torch.float32 and real.shape == x.shape
    k_real = fft2(real)
    sampled = sym.bool().expand_as(k_real)
    assert torch.allclose(k_real[sampled], y_sym[sampled], atol=1e-5)
    assert torch.allclose(k_real[~sampled], fft2(x_cnn)[~sampled], atol=1e-5)
    # With a full mask DC returns the measured image itself.
    full = torch.ones(16, 16)
    _, y_full = undersample(x, full)
    assert torch.allclose(DataConsistency()(x_cnn, y_full, full), x, atol=1e-5)


def test_dc_runs_fp32_under_bf16_autocast():
    x = torch.rand(1, 1, 16, 16)
    mask = torch.ones(16, 16)
    _, y = undersample(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DataConsistency()(x.bfloat16(), y, mask)
    assert out.dtype == torch.float32
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("size,acc", [(150, 4), (150, 5), (240, 4), (240, 5), (64, 3)])
def test_cartesian_mask_statistics(size, acc):
    m = CartesianMask(acc, seed=7)((size, size))
    rows = m[:, 0]
    assert np.all(m == rows[:, None])  # whole rows
    assert int(rows.sum()) == int(size / acc)
    assert rows[:5].all() and rows[-5:].all()  # 10 lowest frequencies, uncentred


def test_cartesian_mask_matches_paper_masks(shared_data):
    for sub, size in (("cardiac_150", 150), ("brain_240", 240)):
        for acc in (4, 5):
            paper = load_mask_file(shared_data / "masks" / sub / f"mask_{acc}x.npy")
            ours = CartesianMask(acc, seed=0)((size, size))
            assert paper.sum(axis=1).astype(bool).sum() == ours[:, 0].sum()
            # The released brain 5x mask misses row N-5, so check the 9 rows all masks share.
            assert paper[:5].all() and paper[-4:].all()


def test_cartesian_mask_seeded_and_leaves_global_rng_alone():
    np.random.seed(123)
    torch.manual_seed(123)
    before_np, before_t = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    a = CartesianMask(4, seed=5)((64, 64))
    b = CartesianMask(4, seed=5)((64, 64))
    c = CartesianMask(4, seed=6)((64, 64))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(np.random.get_state()[1], before_np)
    assert torch.equal(torch.get_rng_state(), before_t)
    per_vol = CartesianMask(4, seed=5, per_volume=True)
    assert np.array_equal(per_vol((64, 64), "v1"), per_vol((64, 64), "v1"))
    assert not np.array_equal(per_vol((64, 64), "v1"), per_vol((64, 64), "v2"))


def test_mask_errors(tmp_path):
    np.save(tmp_path / "zeros.npy", np.zeros((8, 8)))
    with pytest.raises(DataError, match="all zeros"):
        load_mask_file(tmp_path / "zeros.npy")
    np.save(tmp_path / "m.npy", np.ones((8, 8)))
    with pytest.raises(DataError, match=r"shape \(8, 8\) does not match .*\(16, 16\)"):
        FixedMask(tmp_path / "m.npy")((16, 16))
    with pytest.raises(DataError, match="not found"):
        load_mask_file(tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="cannot be read"):
        load_mask_file(tmp_path / "bad.npy")
    with pytest.raises(DataError, match="fewer than the 10"):
        CartesianMask(8)((40, 40))


def test_crop_and_pad():
    img = np.arange(36, dtype=float).reshape(6, 6)
    assert center_crop_or_pad(img, (4, 4)).tolist() == img[1:5, 1:5].tolist()
    padded = center_crop_or_pad(img, (8, 10))
    assert padded.shape == (8, 10) and padded[1:7, 2:8].tolist() == img.tolist()
    mixed = center_crop_or_pad(np.ones((3, 10, 4)), (6, 6))
    assert mixed.shape == (3, 6, 6) and mixed[:, :, :1].sum() == 0
