"""XrayLocalContrast: channel 0 the grey view, channels 1 and 2 its high-pass residues,
checked against hand-computed values (a flat image, a ramp, a Gaussian blob)."""
import numpy as np
import pytest
from mmengine.registry import init_default_scope

from projects.mv2d_xray.mv2d_xray.datasets import XrayLocalContrast
from projects.mv2d_xray.mv2d_xray.datasets.transforms.contrast import high_pass

init_default_scope('mmdet3d')


def three_channels(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None].astype(np.float32), 3, axis=2)


def test_flat_and_linear_images_have_no_residue():
    """A Gaussian blur keeps constants and (away from the borders) linear ramps."""
    flat = three_channels(np.full((40, 50), 97.5))
    out = XrayLocalContrast(sigmas_px=(1.5, 4.0))(dict(img=[flat]))['img'][0]
    assert out.dtype == np.float32 and out.shape == (40, 50, 3)
    np.testing.assert_array_equal(out[..., 0], flat[..., 0])
    np.testing.assert_allclose(out[..., 1:], 0.0, atol=1e-4)
    yy, xx = np.mgrid[:60, :70]
    ramp = 20.0 + 0.8 * xx + 0.3 * yy
    residue = high_pass(ramp, 3.0)
    np.testing.assert_allclose(residue[15:-15, 15:-15], 0.0, atol=1e-3)


@pytest.mark.parametrize('sigma', [1.5, 4.0])
def test_gaussian_blob_keeps_its_hand_computed_fraction(sigma):
    """A 2D Gaussian blob of height A and std s blurred by std g peaks at A s^2 / (s^2 +
    g^2), so the residue at its centre is A g^2 / (s^2 + g^2)."""
    size, s, amp = 81, 3.0, 10.0
    yy, xx = np.mgrid[:size, :size] - size // 2
    blob = 50.0 + amp * np.exp(-(xx ** 2 + yy ** 2) / (2 * s ** 2))
    out = XrayLocalContrast(sigmas_px=(sigma, 8.0))(dict(img=[three_channels(blob)]))['img'][0]
    expected = amp * sigma ** 2 / (s ** 2 + sigma ** 2)
    assert out[size // 2, size // 2, 1] == pytest.approx(expected, rel=0.03)
    expected_wide = amp * 8.0 ** 2 / (s ** 2 + 8.0 ** 2)
    assert out[size // 2, size // 2, 2] == pytest.approx(expected_wide, rel=0.03)


def test_each_view_is_filtered_on_its_own():
    views = [three_channels(np.full((30, 30), 10.0)), three_channels(np.full((30, 30), 10.0))]
    views[1][15, 15] = 110.0
    out = XrayLocalContrast()(dict(img=views))['img']
    np.testing.assert_allclose(out[0][..., 1:], 0.0, atol=1e-4)
    assert out[1][15, 15, 1] > 50.0 and out[1][15, 15, 2] > out[1][15, 15, 1]


@pytest.mark.parametrize('sigmas', [(2.0,), (0.0, 4.0), (2.0, -1.0), (2.0, float('nan'))])
def test_refuses_bad_sigmas(sigmas):
    with pytest.raises(ValueError, match='sigmas_px'):
        XrayLocalContrast(sigmas_px=sigmas)
