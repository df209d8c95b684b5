"""Attribution methods: SmoothGrad without noise is the saliency; integrated gradients are complete."""

import numpy as np
import pytest
import tensorflow as tf

from hpcsnp.config import Config
from hpcsnp.model import build_model
from hpcsnp.saliency import integrated_gradients, make_attribution, missing_baseline, smoothgrad


@pytest.fixture(scope="module")
def model_and_input():
    import keras

    keras.utils.set_random_seed(2)
    model = build_model(50, Config(alpha=0.5))  # a strong ISRU curvature: the model is not linear
    for v in model.trainable_variables:  # weights large enough to use the non-linearity
        v.assign(v * 3.0)
    g = np.random.default_rng(0).integers(-1, 3, (6, 50))
    x = tf.one_hot(g + 1, 4)  # channel order does not matter for these identities
    return model, x


def test_smoothgrad_without_noise_is_the_saliency(model_and_input):
    model, x = model_and_input
    sal = make_attribution(model, "saliency")(x).numpy()
    np.testing.assert_allclose(tf.reduce_sum(smoothgrad(model, x, samples=3, noise=0.0), 0).numpy(), sal, rtol=1e-6)
    noisy = tf.reduce_sum(smoothgrad(model, x, samples=3, noise=0.5), 0).numpy()
    assert not np.allclose(noisy, sal)  # the noise does something


def test_integrated_gradients_sum_to_the_change_of_the_output(model_and_input):
    model, x = model_and_input
    attr = integrated_gradients(model, x, steps=64).numpy()
    change = (model(x)[:, 0] - model(missing_baseline(x))[:, 0]).numpy()
    assert np.abs(change).min() > 1e-2
    np.testing.assert_allclose(attr.sum(axis=1), change, rtol=1e-3, atol=1e-4)
    shard = make_attribution(model, "ig")(x).numpy()  # the shard holds sums of |A_i|
    np.testing.assert_allclose(shard, np.abs(integrated_gradients(model, x)).sum(0), rtol=1e-5)


def test_a_fold_writes_a_shard_per_attribution(sim_store, tmp_path):
    import zarr
    from helpers import FAST

    from hpcsnp.train import train_fold

    store, _ = sim_store
    r = train_fold(store, 1, tmp_path, FAST.replace(attribution="smoothgrad,ig"))
    for method in ("saliency", "smoothgrad", "ig"):
        shard = zarr.open_array(str(r.path / f"{method}.zarr"))
        assert shard.attrs["n_samples"] == r.metrics["n_test"] and (shard[:] >= 0).all() and shard[:].sum() > 0
    assert set(r.metrics["attribution_seconds"]) == {"saliency", "smoothgrad", "ig"}
