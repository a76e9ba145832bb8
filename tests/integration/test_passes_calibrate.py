"""Calibration: activations of every conv/matmul input, patch moments, and the calibration errors."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sqcc.calibrate import (calibration_feeds, collect_activations, instrument, load_calibration_images,
                            patch_covariance)
from sqcc.errors import SqccError

from test_passes_lowrank import SHARED, squeezenet, tvm_run  # noqa: F401

IMAGES = SHARED / "data" / "imagenet-sample"


def test_collect_activations_shapes_and_values(squeezenet):
    feeds = calibration_feeds(squeezenet, IMAGES, limit=2)
    assert len(feeds) == 2 and feeds[0]["data"].shape == (1, 3, 224, 224)
    acts = collect_activations(squeezenet.mod, feeds, layers=["conv0", "conv3", "conv25"])
    assert set(acts) == {"conv0", "conv3", "conv25"}
    assert acts["conv0"].shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(acts["conv0"][1:], feeds[1]["data"])
    assert acts["conv3"].shape == (2, 16, 55, 55) and acts["conv3"].min() >= 0  # after a ReLU
    assert acts["conv25"].shape == (2, 512, 13, 13)
    # the instrumented module still computes the original output first
    mod, names = instrument(squeezenet.mod, {"conv3"})
    assert names == ["conv3"]


def test_patch_covariance_matches_im2col():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 6))
    cov, mean = patch_covariance(x, (3, 2), (2, 1), (1, 0, 1, 1), (1, 2), groups=2, return_mean=True)
    assert cov.shape == (2, 12, 12) and mean.shape == (2, 12)
    # brute force
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 1)))
    pts = []
    for n in range(2):
        for i in range(4):
            for j in range(5):
                if 2 * i + 2 >= xp.shape[2] or j + 2 >= xp.shape[3]:
                    continue
                pts.append(xp[n, :, 2 * i:2 * i + 3:1, j:j + 3:2])
    p = np.stack(pts).reshape(len(pts), 2, 12)
    np.testing.assert_allclose(cov[1], p[:, 1].T @ p[:, 1] / len(p), rtol=1e-10)
    np.testing.assert_allclose(mean[0], p[:, 0].mean(0), rtol=1e-10)


def test_empty_or_missing_calibration_folder(tmp_path):
    from sqcc.models import Preprocess

    with pytest.raises(SqccError, match="contains no images"):
        load_calibration_images(tmp_path, Preprocess(), 4)
    with pytest.raises(SqccError, match="does not exist"):
        load_calibration_images(tmp_path / "nope", Preprocess(), 4)


def test_calibration_folder_mismatched_with_model(squeezenet):
    from sqcc.models import Preprocess

    wrong = dataclasses.replace(squeezenet, preprocess=Preprocess(size=(160, 160), resize=183))
    with pytest.raises(SqccError, match="do not match"):
        calibration_feeds(wrong, IMAGES, limit=1)
    with pytest.raises(SqccError, match="expects"):
        collect_activations(squeezenet.mod, [{"data": np.zeros((1, 3, 160, 160), np.float32)}])
    with pytest.raises(SqccError, match="no calibration inputs"):
        collect_activations(squeezenet.mod, [])


def test_calibration_views_are_view_major_mirrors_and_crops(squeezenet):
    """views=k adds the ten-crop views of each image, view-major, so even/odd halves split images."""
    feeds = calibration_feeds(squeezenet, IMAGES, limit=4, views=3)
    x = [f["data"] for f in feeds]
    assert len(x) == 12
    centre = calibration_feeds(squeezenet, IMAGES, limit=4)
    for i in range(4):
        np.testing.assert_array_equal(x[i], centre[i]["data"])  # first the evaluation view
        np.testing.assert_array_equal(x[4 + i], x[i][..., ::-1])  # then its mirror
        assert np.abs(x[8 + i] - x[i]).mean() > 0.1  # then the top-left crop: other pixels
    # an odd number of images loses one when views > 1 (else the halves would share images)
    assert len(calibration_feeds(squeezenet, IMAGES, limit=3, views=2)) == 4
    with pytest.raises(SqccError, match="views=11 out of range"):
        calibration_feeds(squeezenet, IMAGES, limit=2, views=11)
