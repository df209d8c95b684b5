"""Model shape, one fold's outputs, saliency averaging and the reduce contract."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from helpers import FAST

from hpcsnp.config import Config
from hpcsnp.errors import InputError


def test_model_follows_the_spec():
    from hpcsnp.cnn.model import build_model

    m = build_model(100, Config.publication())
    names = [layer.name for layer in m.layers]
    for name in ("conv1", "conv2", "dropout1", "shortcut", "residual", "conv3", "dropout2",
                 "flatten", "dropout3", "dense", "isru"):
        assert name in names
    convs = {n: m.get_layer(n) for n in ("conv1", "conv2", "shortcut", "conv3")}
    assert {n: c.kernel_size[0] for n, c in convs.items()} == {"conv1": 4, "conv2": 20, "shortcut": 4, "conv3": 4}
    assert all(c.filters == 10 and c.padding == "same" for c in convs.values())
    assert m.get_layer("dense").input.shape[-1] == 100 * 10
    assert m.get_layer("dropout1").rate == 0.75
    # the defaults: no dropout after the first block (the layer kept, inactive), the others at --dropout
    d = build_model(100, Config())
    assert [d.get_layer(f"dropout{i}").rate for i in (1, 2, 3)] == [0.0, 0.25, 0.25]
    assert build_model(100, Config(dropout1=None, dropout=0.5)).get_layer("dropout1").rate == 0.5
    # conv1 4*4*10+10, conv2 20*10*10+10, shortcut 4*4*10+10, conv3 4*10*10+10, dense 1000+1
    trainable = sum(int(np.prod(v.shape)) for v in m.trainable_variables)
    assert trainable == 170 + 2010 + 170 + 410 + 1001


def test_publication_settings_and_overrides():
    from hpcsnp.cli import _build_config

    cfg = _build_config(publication=True, batch_size=8)
    assert (cfg.batch_size, cfg.learning_rate, cfg.patience, cfg.dropout, cfg.lr_decay_patience, cfg.refit) == (
        8, 1e-3, 10, 0.75, 0, False)
    paper = ("learning_rate", "patience", "dropout", "dropout1", "lr_decay_patience", "refit", "genotype_basis",
             "n_models", "l2_dense", "weight_average")
    assert cfg.dropout1 is None and cfg.first_dropout() == 0.75  # every dropout at the publication's rate
    assert Config.from_dict({}).first_dropout() == 0.25  # a run recorded before dropout1: as it trained
    assert dataclasses.replace(Config(), **{k: getattr(cfg, k) for k in paper}) == cfg.replace(batch_size=64)
    assert cfg.genotype_basis == "onehot" and Config().genotype_basis == "additive"
    assert cfg.n_models == 1 and Config().n_models == 0  # one model per fold, as published; by default, by data size
    assert cfg.l2_dense == 0.0 and Config().l2_dense > 0  # the published output layer has no L2
    assert cfg.weight_average == 0.0 < Config().weight_average  # published: the last step's weights
    # a record written before --refit, --genotype-basis, --seeds, --dosage-scale and
    # --missing-dosage existed (no such keys) reads as trained without the refit, on the one-hot
    # channels, one model per fold, the dosage coordinate unscaled, missing calls at dosage 0
    recorded = Config().to_dict()
    for key in ("refit", "genotype_basis", "n_models", "dosage_scale", "missing_dosage", "weight_average"):
        del recorded[key]
    old = Config.from_dict(recorded)
    assert (old.refit, old.genotype_basis, old.n_models, old.dosage_scale, old.missing_dosage,
            old.weight_average) == (False, "onehot", 1, 1.0, "zero", 0.0)
    # a refit recorded before --refit-start existed was the fresh one
    assert Config.from_dict({"refit": True, "refit_start": "warm"}).refit_start == "warm"
    assert Config.from_dict({"refit": True}).refit_start == "fresh" == Config().refit_start
    now = Config.from_dict(Config().to_dict())
    assert (now.refit, now.genotype_basis, now.n_models, now.dosage_scale, now.missing_dosage) == (
        True, "additive", 0, 4.0, "mean")
    with pytest.raises(InputError, match="give one"):
        _build_config("x.json", publication=True)


@pytest.mark.parametrize("rate,bits", [(0.75, 4), (0.4375, 4), (66 / 256, 8), (0.3, 16)])
def test_fast_dropout_is_inverted_bernoulli_and_replays_from_its_counter(rate, bits):
    import tensorflow as tf

    from hpcsnp.cnn.model import FastDropout, mask_bits

    assert mask_bits(rate) == bits
    d = FastDropout(rate, seed=7)
    x = np.ones((50, 400, 10), np.float32)
    a = d(x, training=True).numpy()
    kept = a != 0
    assert abs(kept.mean() - (1 - rate)) < 0.01  # 200,000 draws: sd of the mean < 0.0011
    # elements drawn from the same random word are independent: a nibble mask's two halves
    # come from the same bytes, a byte mask's neighbours from the same word
    flat = kept.reshape(-1)
    for a_, b_ in ((flat[:100_000], flat[100_000:]), (flat[0::2], flat[1::2])):
        assert abs((a_ & b_).mean() - (1 - rate) ** 2) < 0.01
    assert np.allclose(a[kept], 1 / (1 - rate))
    assert np.array_equal(d(x, training=False).numpy(), x)
    b = d(x, training=True).numpy()
    assert not np.array_equal(a, b)  # a new mask every step
    d.counter.assign(0)
    assert np.array_equal(d(x, training=True).numpy(), a)  # the counter alone fixes the mask
    # a size that leaves part of the last word unused, known to the graph or not (a batch length
    # of None): the mask of a freshly counted layer is the same either way
    odd = np.ones((3, 7, 5), np.float32)
    d.counter.assign(0)
    known = d(odd, training=True).numpy()
    d.counter.assign(0)
    unknown = tf.function(lambda v: d(v, training=True),
                          input_signature=[tf.TensorSpec([None, 7, 5], tf.float32)])(odd).numpy()
    assert np.array_equal(known, unknown) and set(np.unique(known)) == {0.0, np.float32(1 / (1 - rate))}


def test_random_words_are_uniform_and_independent_across_words_steps_and_seeds():
    """The masks' random words (model.random_words, a counter-based hash): every bit and
    every nibble uniform, neighbouring words, consecutive steps and neighbouring seeds
    uncorrelated, and the same (seed, step) the same words."""
    from hpcsnp.cnn.model import random_words

    n = 1 << 17

    def words(seed, step):
        return random_words(n, np.int64(seed), np.int64(step)).numpy()
    w = words(3, 10)
    assert w.dtype == np.uint32 and np.array_equal(w, words(3, 10))
    bits = (w[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    assert np.abs(bits.mean(axis=0) - 0.5).max() < 0.01  # sd of each bit's mean 0.0014
    nibbles = np.bincount(((w[:, None] >> np.arange(0, 32, 4, dtype=np.uint32)) & 15).ravel(), minlength=16)
    expected = 8 * n / 16
    assert ((nibbles - expected) ** 2 / expected).sum() < 45  # chi-square, 15 df: P(> 45) < 1e-4

    def corr(a, b):
        return np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1]
    for a, b in ((w[:-1], w[1:]), (w, words(3, 11)), (w, words(4, 10)), (w & 15, words(3, 11) & 15)):
        assert abs(corr(a, b)) < 0.015  # sd 0.0028
    assert np.mean(w == words(3, 11)) < 1e-3


@pytest.mark.parametrize("basis", ["additive", "onehot"])
@pytest.mark.parametrize("n_snps,kernels", [
    (300, (4, 20, 4, 4)), (30, (4, 20, 4, 4)),  # the paper's: fused; too short to fuse (two convolutions)
    (200, (3, 7, 5, 2)), (200, (2, 2, 3, 1)), (200, (5, 11, 1, 3)), (120, (1, 1, 1, 1)),  # odd/even/size-1 pads
    (200, (1, 2, 7, 3)),  # a shortcut wider than conv1 + conv2 on both sides
    (12, (1, 2, 3, 41)),  # conv3 wider than the SNPs: fused, but the edges put in place (not one block)
])
def test_training_forward_is_the_keras_model_with_fewer_flops(n_snps, kernels, basis):
    """TrainingForward computes the Keras model's function (edges included) and the same
    loss gradients for every parameter; its merged final dropout keeps (1 - r)^2 of the
    units, scaled by the inverse."""
    import keras
    import tensorflow as tf

    from hpcsnp.cnn.data import one_hot
    from hpcsnp.cnn.fused import TrainingForward
    from hpcsnp.cnn.model import build_model, flops_per_sample
    from hpcsnp.config import Config

    k1, k2, ks, k3 = kernels
    # float32 (bf16_step "auto" would compute in bfloat16 on CPUs that have it): the function
    # itself is compared, not bfloat16's rounding (test_bf16_step_... covers that)
    cfg = Config(dropout=0.0, kernel_1=k1, kernel_2=k2, kernel_shortcut=ks, kernel_3=k3, genotype_basis=basis,
                 bf16_step=False)
    keras.utils.set_random_seed(1)
    m = build_model(n_snps, cfg)
    for v in m.trainable_variables:  # non-trivial biases too
        v.assign(tf.random.normal(v.shape, stddev=0.3, seed=2))
    f = TrainingForward(m, cfg)
    assert f.fused == (n_snps >= 2 * f.span)
    x = one_hot(np.random.default_rng(0).integers(-1, 3, (6, n_snps)).astype(np.int8))
    t = tf.constant(np.linspace(-1, 1, 6), tf.float32)
    want = m(x, training=False).numpy()
    # float32 rounding: the additive basis feeds three non-zero channels per SNP where one-hot
    # feeds one, so its sums carry more rounding; its tolerance is relative to the largest entry
    additive = basis == "additive"
    np.testing.assert_allclose(f(x, training=True).numpy(), want, rtol=2e-5,
                               atol=1e-5 * np.abs(want).max() if additive else 2e-6)

    def grads(fn):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(fn(x)[:, 0] - t)) + tf.add_n(m.losses)
        return tape.gradient(loss, m.trainable_variables)
    for a, b in zip(grads(lambda x: f(x, training=True)), grads(lambda x: m(x, training=True))):
        # float32 rounding of sums over the whole tensor: tolerance relative to its largest entry
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-4,
                                   atol=1e-5 + (2e-5 if additive else 2e-6) * np.abs(b.numpy()).max())
    fl = flops_per_sample(4236, Config())
    assert fl["train_step_fused"] < 0.5 * fl["train_step"]

    cfg = cfg.replace(dropout=0.25)
    m = build_model(n_snps, cfg)
    f = TrainingForward(m, cfg)
    y = f.drop2.drop(tf.ones((40, 5000)), 1 - (1 - 0.25) ** 2).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.5625) < 0.01 and np.allclose(y[kept], 1 / 0.5625)


def test_the_additive_basis_is_the_one_hot_network_in_other_coordinates():
    """The additive basis (missing, centred dosage, heterozygote, called) is an invertible map
    of the one-hot channels that both first convolutions read: a one-hot network with kernels
    K is the additive network with kernels M^-1 K, so the two represent the same functions,
    and the additive channels are what the basis says for every genotype code."""
    import keras
    import tensorflow as tf

    from hpcsnp.cnn.data import one_hot
    from hpcsnp.cnn.model import GenotypeBasis, build_model
    from hpcsnp.config import Config

    codes = np.array([[-1, 0, 1, 2]], np.int8)
    for s in (1.0, 4.0, 0.5):
        coded = build_model(4, Config(dosage_scale=s)).get_layer("basis")(one_hot(codes)).numpy()[0]
        # codes -1, 0, 1, 2 -> missing, s x (dosage - 1), heterozygote, called
        np.testing.assert_array_equal(coded, [[1, 0, 0, 0], [0, -s, 0, 1], [0, 0, 1, 1], [0, s, 0, 1]])
    # a model saved before the scale existed (no "dosage_scale" in its layer config) reads unscaled,
    # and one saved before the missing fill existed (no "fill_missing") reads missing calls as 0
    old = GenotypeBasis.from_config({"basis": "additive", "name": "basis"})
    assert old.matrix[:, 1].tolist() == [0, 0, -1, 1] and not old.fill_missing
    np.testing.assert_array_equal(old(one_hot(codes)).numpy()[0, 0], [1, 0, 0, 0])

    keras.utils.set_random_seed(3)
    hot = build_model(150, Config(genotype_basis="onehot"))
    add = build_model(150, Config(genotype_basis="additive"))
    assert "basis" not in [layer.name for layer in hot.layers]
    for v in hot.trainable_variables:
        v.assign(tf.random.normal(v.shape, stddev=0.3, seed=4))
    inverse = np.linalg.inv(add.get_layer("basis").matrix)
    for a, h in zip(add.trainable_variables, hot.trainable_variables):
        first = a.path.split("/")[0] in ("conv1", "shortcut") and a.path.endswith("kernel")
        a.assign(np.einsum("zh,thf->tzf", inverse, h.numpy()) if first else h.numpy())
    x = one_hot(np.random.default_rng(5).integers(-1, 3, (8, 150)).astype(np.int8))
    np.testing.assert_allclose(add(x).numpy(), hot(x).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(build_model(150, Config(genotype_basis="additive"))(x).numpy(), hot(x).numpy())


def test_missing_calls_read_as_the_mean_dosage_saved_with_the_model(tmp_path):
    """--missing-dosage mean: a missing call's dosage coordinate is its SNP's mean centred
    dosage over the called genotypes (times the scale), every other code reads as before, each
    SNP's map stays invertible (the same functions), and the fill is saved with the model."""
    import keras

    from hpcsnp.cnn.data import one_hot
    from hpcsnp.cnn.model import build_model
    from hpcsnp.config import Config
    from hpcsnp.genotypes import ONE_HOT_TABLE, mean_dosage

    g = np.array([[0, 1, 2, -1], [2, 2, -1, -1], [0, -1, 2, -1]], np.int8)
    m = mean_dosage([g[:1], g[1:]], 4, centred=True)  # batches: the sums add up
    np.testing.assert_allclose(m, [-1 / 3, 0.5, 1.0, 0.0])  # an all-missing SNP reads 0
    model = build_model(4, Config(dosage_scale=4.0), m)
    basis = model.get_layer("basis")
    coded = basis(one_hot(g)).numpy()
    assert coded[2, 1].tolist() == [1, 2, 0, 0] and coded[1, 2].tolist() == [1, 4, 0, 0]  # 4 x 0.5, 4 x 1
    assert coded[0, 3].tolist() == [1, 0, 0, 0] and coded[0, 0].tolist() == [0, -4, 0, 1]
    plain = build_model(4, Config(missing_dosage="zero")).get_layer("basis")(one_hot(g)).numpy()
    called = g >= 0
    np.testing.assert_array_equal(coded[called], plain[called])
    by_code = basis(one_hot(np.repeat(np.array([[-1], [0], [1], [2]], np.int8), 4, axis=1))).numpy()
    for j in range(4):  # SNP j's map: one row per code -1, 0, 1, 2
        assert abs(np.linalg.det(by_code[:, j])) > 1
    assert ONE_HOT_TABLE[0].tolist() == [1, 0, 0, 0]  # the layer reads the missing channel first
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras").get_layer("basis")
    np.testing.assert_allclose(again.missing_dosage.numpy(), m.astype(np.float32))
    np.testing.assert_array_equal(again(one_hot(g)).numpy(), coded)


def test_the_fused_step_checks_the_layer_sequence_and_falls_back(caplog):
    """TrainingForward recomputes one particular network: a model that is not it (here an
    activation after conv1 and nothing else) trains through its Keras layers, with a warning."""
    import keras

    from hpcsnp.cnn.fused import TrainingForward, layer_sequence_problem, training_forward
    from hpcsnp.cnn.model import build_model
    from hpcsnp.config import Config

    cfg = Config()
    m = build_model(100, cfg)
    assert layer_sequence_problem(m) is None and isinstance(training_forward(m, cfg), TrainingForward)
    inp = keras.Input((100, 4), name="one_hot")
    x = keras.layers.Conv1D(10, 4, padding="same", activation="relu", name="conv1")(inp)
    other = keras.Model(inp, x)
    assert training_forward(other, cfg) is other
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "does not apply to this model (convolution 'conv1' is not linear" in said[0], said


def test_an_activation_lets_the_network_represent_interactions_within_its_receptive_field(caplog):
    """Before its bounded output the published network is linear in the one-hot input, so the
    interaction contrast f(2,2) - f(2,0) - f(0,2) + f(0,0) of any two SNPs is zero; with
    --activation it is not for SNPs within the receptive field (26 SNPs) and still is beyond.
    Such a model trains through its Keras layers, said at info level, not as a warning."""
    import logging

    import keras

    from hpcsnp.cnn.fused import training_forward
    from hpcsnp.cnn.model import build_model
    from hpcsnp.genotypes import ONE_HOT_TABLE

    def contrast(model, a, b):
        pre = keras.Model(model.input, model.get_layer("dense").output)  # before the ISRU
        g = np.zeros((4, 200), np.int64)
        g[0, [a, b]] = 2
        g[1, a] = 2
        g[2, b] = 2
        out = pre.predict(ONE_HOT_TABLE[g + 1], verbose=0)[:, 0].astype(np.float64)
        return abs(out[0] - out[1] - out[2] + out[3]) / max(abs(out[1] - out[3]), abs(out[2] - out[3]))

    linear = build_model(200, Config(seed=1))
    relu = build_model(200, Config(seed=1, activation="relu"))  # relative to the main effects:
    assert contrast(linear, 100, 105) < 1e-4 and contrast(linear, 20, 150) < 1e-4  # float32 rounding
    assert contrast(relu, 100, 105) > 1e-2 and contrast(relu, 20, 150) < 1e-4
    with caplog.at_level(logging.INFO, logger="hpcsnp.cnn.fused"):
        assert training_forward(relu, Config(activation="relu")) is relu
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert "training through the Keras layers" in caplog.text
    with pytest.raises(InputError, match="activation must be one of"):
        Config(activation="sigmoid")
    assert Config(activation="relu", bf16_step=True).ignored()


@pytest.mark.parametrize("n_snps,r1", [(300, 0.25), (40, 0.25), (300, 0.0)])
def test_training_forward_with_dropout_applies_the_drawn_masks_scaled(n_snps, r1):
    """With dropout on, TrainingForward (scale folded into the kernels, mask as one
    multiplication) equals the Keras layers with the same masks applied and scaled by
    1 / keep explicitly, and so do the loss gradients.  With dropout1 off (the default) it
    draws no mask there: that layer's counter does not move."""
    import keras
    import tensorflow as tf

    from hpcsnp.cnn.data import one_hot
    from hpcsnp.cnn.fused import TrainingForward
    from hpcsnp.cnn.model import build_model
    from hpcsnp.config import Config

    cfg = Config(dropout=0.25, dropout1=r1, bf16_step=False)  # float32: the function, not bfloat16's rounding
    keras.utils.set_random_seed(4)
    m = build_model(n_snps, cfg, np.random.default_rng(1).uniform(-1, 1, n_snps))  # missing calls mean-filled
    for v in m.trainable_variables:
        v.assign(tf.random.normal(v.shape, stddev=0.3, seed=5))
    f = TrainingForward(m, cfg)
    L = m.get_layer
    x = one_hot(np.random.default_rng(2).integers(-1, 3, (6, n_snps)).astype(np.int8))
    t = tf.constant(np.linspace(-1, 1, 6), tf.float32)
    r = 1 - 0.75 ** 2

    def explicit(x):
        x = L("basis")(x)  # the default genotype basis
        y = L("conv2")(L("conv1")(x))
        if r1:
            y = y * f.drop1.keep_mask(y, r1) / (1 - r1)
        z = tf.reshape(L("conv3")(L("shortcut")(x) + y), [6, -1])
        z = z * f.drop2.keep_mask(z, r) / (1 - r)
        return L("isru")(L("dense")(z))

    def run(fn):
        f.drop1.counter.assign(7)
        f.drop2.counter.assign(11)
        with tf.GradientTape() as tape:
            out = fn(x)
            loss = tf.reduce_mean(tf.square(out[:, 0] - t)) + tf.add_n(m.losses)
        return out.numpy(), tape.gradient(loss, m.trainable_variables)

    out_f, g_f = run(lambda x: f(x, training=True))
    assert int(f.drop1.counter.numpy()) == (8 if r1 else 7) and int(f.drop2.counter.numpy()) == 12
    out_e, g_e = run(explicit)
    assert not np.allclose(out_f, m(x, training=False).numpy(), rtol=1e-3)  # the masks did something
    np.testing.assert_allclose(out_f, out_e, rtol=2e-5, atol=2e-6)
    for a, b in zip(g_f, g_e):  # sums of terms up to ~40 that cancel: float32 error relative to the largest
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-4, atol=1e-4 * np.abs(b.numpy()).max())


@pytest.mark.fast
def test_bf16_auto_follows_the_cpu_and_explicit_settings_win(monkeypatch):
    """bf16_step "auto" (the default) trains in bfloat16 exactly where the CPU computes it;
    True / False override the CPU; anything else is refused."""
    import hpcsnp.resources as res
    from hpcsnp.config import Config
    from hpcsnp.errors import InputError

    assert Config().bf16_step == "auto"
    for native in (True, False):
        monkeypatch.setattr(res, "native_bfloat16", lambda native=native: native)
        assert Config().bf16() is native
        assert Config(bf16_step=True).bf16() is True and Config(bf16_step=False).bf16() is False
        assert Config(fuse_convolutions=False).bf16() is False  # only the fused step has a bfloat16 version
    with pytest.raises(InputError, match="bf16_step"):
        Config(bf16_step="yes")


def test_bf16_step_computes_in_bfloat16_and_predicts_in_float32():
    """--bf16: the training call runs in bfloat16 (so it differs from float32 at bfloat16's
    precision, not more) and hands float32 outputs and gradients to the float32 weights;
    the inference call stays exactly the float32 function."""
    import keras
    import tensorflow as tf

    from hpcsnp.cnn.data import one_hot
    from hpcsnp.cnn.fused import TrainingForward
    from hpcsnp.cnn.model import build_model
    from hpcsnp.config import Config

    cfg = Config(dropout=0.0, bf16_step=True)
    keras.utils.set_random_seed(6)
    m = build_model(300, cfg)
    f16, f32 = TrainingForward(m, cfg), TrainingForward(m, cfg.replace(bf16_step=False))
    x = one_hot(np.random.default_rng(3).integers(-1, 3, (8, 300)).astype(np.int8))
    t = tf.constant(np.linspace(-1, 1, 8), tf.float32)

    def run(fn):
        with tf.GradientTape() as tape:
            out = fn(x, training=True)
            loss = tf.reduce_mean(tf.square(out[:, 0] - t)) + tf.add_n(m.losses)
        return out, tape.gradient(loss, m.trainable_variables)

    (o16, g16), (o32, g32) = run(f16), run(f32)
    assert o16.dtype == tf.float32 and all(g.dtype == tf.float32 for g in g16)
    assert not np.array_equal(o16.numpy(), o32.numpy())  # it did compute in bfloat16
    np.testing.assert_allclose(o16.numpy(), o32.numpy(), atol=0.05 * float(tf.reduce_max(tf.abs(o32))))
    # all gradients together (a bias gradient is a sum over every position of the batch with
    # much cancellation: alone it can be far off in relative terms, and tiny)
    d16, d32 = (tf.concat([tf.reshape(g, [-1]) for g in gs], 0) for gs in (g16, g32))
    assert float(tf.norm(d16 - d32)) <= 0.05 * float(tf.norm(d32))
    np.testing.assert_array_equal(f16(x, training=False).numpy(), f32(x, training=False).numpy())


@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("basis,missing", [("additive", "mean"), ("additive", "zero"), ("onehot", "mean")])
def test_training_forward_on_codes_is_its_one_hot_call_to_the_bit(basis, missing, bf16):
    """The training step reads int8 codes through a table of the four codes' coordinates
    (per SNP where missing calls read as the SNP's mean dosage): outputs and every gradient
    are those of the one-hot call, bit for bit, with dropout on, in bfloat16 and float32."""
    import keras
    import tensorflow as tf

    from hpcsnp.cnn.data import one_hot
    from hpcsnp.cnn.fused import TrainingForward
    from hpcsnp.cnn.model import build_model
    from hpcsnp.config import Config

    cfg = Config(genotype_basis=basis, missing_dosage=missing, bf16_step=bf16)
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    m = build_model(300, cfg, missing_dosage=rng.uniform(-1, 1, 300).astype(np.float32))
    for v in m.trainable_variables:
        v.assign(tf.random.normal(v.shape, stddev=0.3, seed=5))
    f = TrainingForward(m, cfg)
    codes = tf.constant(rng.integers(-1, 3, (6, 300)).astype(np.int8))
    t = tf.constant(np.linspace(-1, 1, 6), tf.float32)

    def run(fn, training):
        for layer in (f.drop1, f.drop2, f.drop3):
            layer.counter.assign(0)  # the same dropout masks for both calls
        with tf.GradientTape() as tape:
            out = fn(training)
            loss = tf.reduce_mean(tf.square(out[:, 0] - t)) + tf.add_n(m.losses)
        return [out.numpy()] + [g.numpy() for g in tape.gradient(loss, m.trainable_variables)]

    for training in (True, False):
        by_code = run(lambda tr: f.on_codes(codes, tr), training)
        by_one_hot = run(lambda tr: f(one_hot(codes), training=tr), training)
        for a, b in zip(by_code, by_one_hot):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_replacing_the_edges_has_the_gradient_of_its_formula(dtype):
    """conv12's edges are replaced by an add of their differences; its hand-written gradient
    (the interior's gradient zeroed in place at the edges) is TF's gradient of that formula."""
    import tensorflow as tf

    from hpcsnp.cnn.fused import _replace_edges

    rng = np.random.default_rng(7)
    interior = tf.constant(rng.standard_normal((3, 50, 4)), dtype)
    edges = tf.constant(rng.standard_normal((3, 5, 4)), dtype)
    pos = np.r_[0:2, 47:50]
    idx = tf.constant(np.stack(np.broadcast_arrays(np.arange(3)[:, None], pos[None, :]), -1), tf.int32)
    weight = tf.constant(rng.standard_normal((3, 50, 4)), dtype)

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch([interior, edges])
            out = fn()
            loss = tf.reduce_sum(tf.cast(out * weight, tf.float32))
        return [out.numpy()] + [g.numpy() for g in tape.gradient(loss, [interior, edges])]

    mine = grads(lambda: _replace_edges(interior, edges, idx))
    formula = grads(lambda: tf.tensor_scatter_nd_add(interior, idx, edges - tf.gather_nd(interior, idx)))
    for a, b in zip(mine, formula):
        np.testing.assert_array_equal(a, b)
    assert not mine[1][:, pos].any() and mine[1][:, 2:47].all()


def test_micro_batches_give_the_whole_batch_update():
    """Wide marker sets: a batch computed as accumulated micro-batches (5 + 5 + 5 + 1 rows)
    moves every parameter as the whole batch does (no dropout, so the functions are equal)."""
    import keras
    import tensorflow as tf

    from hpcsnp.cnn.data import one_hot
    from hpcsnp.cnn.fused import TrainingForward, on_codes
    from hpcsnp.cnn.model import build_model
    from hpcsnp.cnn.steps import _accumulating_step
    from hpcsnp.config import Config

    cfg = Config(dropout=0.0, bf16_step=False)  # float32: the same update, not bfloat16's rounding of it
    keras.utils.set_random_seed(3)
    m = build_model(120, cfg)
    f = TrainingForward(m, cfg)
    start = [v.numpy() for v in m.trainable_variables]
    rng = np.random.default_rng(1)
    g = tf.constant(rng.integers(-1, 3, (16, 120)).astype(np.int8))
    t = tf.constant(rng.standard_normal(16).astype(np.float32))

    def after(step_factory):
        for v, x in zip(m.trainable_variables, start):
            v.assign(x)
        opt = keras.optimizers.Adam(0.01)
        opt.build(m.trainable_variables)
        step = step_factory(opt)
        losses = [float(step(g, t)) for _ in range(3)]
        return losses, [v.numpy() for v in m.trainable_variables]

    def whole(opt):
        def step(g, t):
            with tf.GradientTape() as tape:
                mse = tf.reduce_mean(tf.square(f(one_hot(g))[:, 0] - t))
                loss = mse + tf.add_n(m.losses)
            opt.apply_gradients(zip(tape.gradient(loss, m.trainable_variables), m.trainable_variables))
            return mse
        return step

    la, wa = after(whole)
    lb, wb = after(lambda opt: _accumulating_step(m, on_codes(f), opt, 5, lambda g: g))
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for a, b in zip(wa, wb):
        # Adam divides each gradient by its own root mean square, so float rounding of a
        # near-zero gradient's sums moves its parameter by ~1e-6 of the ~1e-2 steps taken
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(wa[0], start[0])  # the parameters did move


@pytest.mark.parametrize("micro", [False, True], ids=["whole-batch", "micro-batches"])
def test_weight_averages_follow_the_steps_and_stand_in_for_the_weights(micro):
    """--weight-average d: after each optimiser step t the averages move to
    d_t * average + (1 - d_t) * weights, d_t = min(d, (1 + t) / (10 + t)); inside
    ``averaged()`` the model holds them, after it its own weights again."""
    import tensorflow as tf

    from hpcsnp.cnn.steps import CompiledSteps

    cfg = Config(weight_average=0.5, dropout=0.0, step_activation_mb=1 if micro else 16, batch_size=8)
    steps = CompiledSteps.build(30_000 if micro else 120, cfg, None, 1, lambda m: None)
    params = steps.model.trainable_variables
    assert len(steps.averages) == len(params) and all(any(a is r for r in steps.run_variables) for a in steps.averages)
    expected = [v.numpy() for v in params]
    rng = np.random.default_rng(2)
    g = tf.constant(rng.integers(-1, 3, (8, steps.n_var)).astype(np.int8))
    t = tf.constant(rng.standard_normal(8).astype(np.float32))
    for step in range(1, 15):
        steps.train_step(g, t)
        d = min(0.5, (1 + step) / (10 + step))
        expected = [d * e + (1 - d) * v.numpy() for e, v in zip(expected, params)]
        for a, e in zip(steps.averages, expected):
            np.testing.assert_allclose(a.numpy(), e, rtol=1e-5, atol=1e-7)
    own = [v.numpy() for v in params]
    assert not np.allclose(own[0], expected[0])  # the averages lag the weights
    with steps.averaged():
        for v, e in zip(params, expected):
            np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-7)
    for v, o in zip(params, own):
        np.testing.assert_array_equal(v.numpy(), o)
    steps.start_averages()  # a warm refit's: from the weights it loaded
    for a, o in zip(steps.averages, own):
        np.testing.assert_array_equal(a.numpy(), o)
    off = CompiledSteps.build(120, Config(weight_average=0.0), None, 1, lambda m: None)
    assert off.averages == []
    with off.averaged():  # nothing to swap
        pass


@pytest.mark.parametrize("basis", ["additive", "onehot"])
def test_affine_readout_predicts_what_the_convolutions_do(basis):
    """The per-SNP effect table (readout.py) gives the network's predictions: for the default
    basis (missing calls read at a per-SNP fill) and the one-hot one, on near-zero weights
    and after training steps that moved them, with missing calls and every code; a network
    with non-linear convolutions predicts through them."""
    import tensorflow as tf

    from hpcsnp.cnn.steps import CompiledSteps

    n = 300
    rng = np.random.default_rng(3)
    cfg = Config(genotype_basis=basis, batch_size=16)
    steps = CompiledSteps.build(n, cfg, None, 1, lambda m: None,
                                missing_dosage=rng.uniform(-1, 1, n).astype(np.float32))
    assert steps.readout is not None
    g = rng.integers(-1, 3, (40, n)).astype(np.int8)
    t = tf.constant(rng.standard_normal(16).astype(np.float32))

    def agree():
        want = steps.predict_step(tf.constant(g)).numpy()
        got = steps.predictor()(g)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        return want

    first = agree()
    for _ in range(20):
        steps.train_step(tf.constant(g[:16]), t)
    moved = agree()
    # the weights, and the table with them, moved; the output is not saturated (ISRU's bound 5.77)
    assert np.abs(moved - first).max() > 0.5 * np.ptp(first) > 0 and np.abs(moved).max() < 4
    relu = CompiledSteps.build(n, Config(activation="relu"), None, 1, lambda m: None)
    assert relu.readout is None
    np.testing.assert_array_equal(relu.predictor()(g), relu.predict_step(tf.constant(g)).numpy())


class _Batches:
    """A row source of fixed int8 codes, in batches of ``size`` (the shape CompiledSteps reads)."""

    def __init__(self, g, size):
        self.g, self.size = g, size

    def iterate(self, batch, shuffle, threads):
        for s in range(0, len(self.g), self.size):
            yield self.g[s:s + self.size], None, None


@pytest.mark.parametrize("basis", ["additive", "onehot"])
def test_saliency_from_the_effect_table_is_the_gradients(basis):
    """The saliency a fold writes comes from the per-SNP effect table where the network is
    affine (readout.saliency_sum): the same per-SNP sums as the gradient pass over every
    line, on weights that training moved into ISRU's curved part; with another gradient
    method asked for too, that one still comes from the gradients."""
    import tensorflow as tf

    from hpcsnp.cnn.attribution import fold_attributions
    from hpcsnp.cnn.steps import CompiledSteps

    n = 300
    rng = np.random.default_rng(5)
    cfg = Config(genotype_basis=basis, batch_size=16, attribution="smoothgrad")
    steps = CompiledSteps.build(n, cfg, None, 1, lambda m: None,
                                missing_dosage=rng.uniform(-1, 1, n).astype(np.float32))
    g = rng.integers(-1, 3, (45, n)).astype(np.int8)
    t = tf.constant(rng.standard_normal(16).astype(np.float32) * 3)
    for _ in range(30):
        steps.train_step(tf.constant(g[:16]), t)
    src = _Batches(g, 20)  # a short last batch
    want = fold_attributions(steps.model, src.iterate(20, False, 1), n, ["saliency", "smoothgrad"])
    got = steps.attributions(src)
    assert list(got.sums) == ["saliency", "smoothgrad"] and got.n == want.n == 45
    np.testing.assert_allclose(got.sums["saliency"], want.sums["saliency"], rtol=2e-5)
    np.testing.assert_array_equal(got.sums["smoothgrad"], want.sums["smoothgrad"])
    # the lines' slopes differ (ISRU is curved where they are), so no common factor hides an error
    z = steps.readout.z(g, steps.readout.table())
    slope = (1 + steps.readout.alpha * z * z) ** -1.5
    assert slope.min() < 0.9 * slope.max()


def test_isru_is_bounded_by_alpha():
    from hpcsnp.cnn.model import ISRU

    y = ISRU(0.03)(np.array([[-1e6], [0.0], [1.0], [1e6]], np.float32)).numpy().ravel()
    assert y[1] == 0 and y[2] == pytest.approx(1 / np.sqrt(1.03))
    assert abs(y[0]) == pytest.approx(1 / np.sqrt(0.03), rel=1e-4) == y[3]


def test_fold_outputs(run, sim_store):
    import keras

    from hpcsnp.store import open_store

    run_dir, results = run
    store = open_store(sim_store[0])
    r = results[0]
    assert r.path == run_dir / "sim" / "fold_1" and not (run_dir / "sim" / "fold_1.partial").exists()
    m = json.loads((r.path / "metrics.json").read_text())
    for key in ("pcc", "mse", "mae", "epochs", "seconds", "seed", "config", "versions", "target_mean"):
        assert key in m
    assert m["config"]["batch_size"] == 16 and m["val_fold"] == 2 and m["epochs"] <= 3
    pred = pd.read_csv(r.path / "predictions.csv", dtype={"sample_id": str})
    assert len(pred) == m["n_test"] == int((store.fold == 1).sum())
    assert set(pred["fold"]) == {1}
    # predictions are un-scaled back to the phenotype's units (the sim's mean is 100)
    assert abs(pred["prediction"].mean() - pred["truth"].mean()) < 5 * pred["truth"].std()
    assert pred["prediction"].mean() > 50
    # the saved model reloads and reproduces the predictions
    from hpcsnp.cnn.data import one_hot

    model = keras.models.load_model(r.path / "model.keras")
    rows = [int(np.flatnonzero(store.sample_id == s)[0]) for s in pred["sample_id"]]
    x = one_hot(store.genotypes[:][rows])
    again = model(x, training=False).numpy()[:, 0] * m["target_sd"] + m["target_mean"]
    np.testing.assert_allclose(again, pred["prediction"], rtol=1e-4, atol=1e-3)
    # missing calls (5 % of this store's) read as the mean dosage of the lines the final model
    # trained on: the refit's training + validation folds, never the test fold
    from hpcsnp.genotypes import mean_dosage

    fit_rows = np.flatnonzero(store.fold != 1)
    fill = model.get_layer("basis").missing_dosage.numpy()
    wanted = mean_dosage([store.genotypes[:][fit_rows]], store.n_variants, centred=True)
    np.testing.assert_allclose(fill, wanted, rtol=1e-6)
    assert not np.allclose(fill, mean_dosage([store.genotypes[:]], store.n_variants, centred=True), rtol=1e-4)


def test_finished_fold_is_skipped_and_force_redoes_it(run, sim_store):
    from hpcsnp.cnn.train import train_fold

    run_dir, results = run
    before = (results[0].path / "metrics.json").stat().st_mtime_ns
    again = train_fold(sim_store[0], 1, run_dir, FAST)
    assert again.skipped and (results[0].path / "metrics.json").stat().st_mtime_ns == before


def test_unstandardised_target_beyond_isru_bound_is_warned(sim_store, tmp_path, caplog):
    from hpcsnp.cnn.train import train_fold

    train_fold(sim_store[0], 1, tmp_path, Config(max_epochs=1, standardize=False, batch_size=32, n_models=1))
    logs = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("beyond the ISRU bound" in line for line in logs)


def test_the_mean_fill_changes_nothing_where_no_call_is_missing(tmp_path):
    """--missing-dosage mean only acts on missing calls: on a store with none, a fold trains to
    the same predictions to the bit as with --missing-dosage zero (the same random draws, and
    the fill is added as zeros)."""
    from hpcsnp.cnn.train import train_fold
    from hpcsnp.io.simulate import simulate_store

    simulate_store(tmp_path / "full.zarr", samples=150, snps=40, folds=3, seed=2)
    cfg = FAST.replace(max_epochs=2)
    preds = [pd.read_csv(train_fold(tmp_path / "full.zarr", 1, tmp_path / fill, cfg.replace(missing_dosage=fill))
                         .path / "predictions.csv")["prediction"].to_numpy() for fill in ("mean", "zero")]
    np.testing.assert_array_equal(preds[0], preds[1])


def test_several_seeds_per_fold_average_their_predictions_and_saliency(sim_store, tmp_path):
    """--models-per-fold 2 (--model-schedule own): two models per fold, each early-stopped and
    refitted as a one-model run of its seed would be; predictions, validation predictions and
    the saliency shard are their averages."""
    import zarr

    from hpcsnp.cnn.train import train_fold

    store, _ = sim_store
    train_fold(store, 1, tmp_path / "two", FAST.replace(n_models=2, model_schedule="own"))
    train_fold(store, 1, tmp_path / "one", FAST)
    train_fold(store, 1, tmp_path / "other", FAST.replace(seed=1))
    two, one, other = (tmp_path / d / "sim" / "fold_1" for d in ("two", "one", "other"))
    per_seed = pd.read_csv(two / "seed_predictions.csv", dtype={"sample_id": str})
    pred = pd.read_csv(two / "predictions.csv", dtype={"sample_id": str})
    np.testing.assert_allclose(pred["prediction"], (per_seed["seed_0"] + per_seed["seed_1"]) / 2, rtol=1e-6)
    for seed, d in ((0, one), (1, other)):  # each member is the model a one-seed run with that seed trains
        alone = pd.read_csv(d / "predictions.csv")
        np.testing.assert_allclose(per_seed[f"seed_{seed}"], alone["prediction"], rtol=1e-6)
    sal = [zarr.open_array(str(d / "saliency.zarr"))[:] for d in (two, one, other)]
    np.testing.assert_allclose(sal[0], (sal[1] + sal[2]) / 2, rtol=1e-6)
    m = json.loads((two / "metrics.json").read_text())
    assert [r["seed"] for r in m["seed_runs"]] == [0, 1] and (two / "seed_1" / "model.keras").exists()
    assert m["models"] == 2 and json.loads((one / "metrics.json").read_text())["models"] == 1
    assert not list(two.rglob("member.npz"))
    from hpcsnp.run.predict import predict_run  # predict loads every seed's model of the fold

    got = predict_run(tmp_path / "two", store, out=tmp_path / "p.csv", fold=1).table.set_index("sample_id")
    np.testing.assert_allclose(got.loc[pred["sample_id"], "cnn_mean"], pred["prediction"], rtol=1e-5)


def test_a_shared_schedule_early_stops_the_first_model_only(sim_store, tmp_path, caplog):
    """--model-schedule shared: the second model is not early-stopped; its
    refit replays the first model's epochs and learning rates from its own initialisation, and
    the fold's validation predictions are the first model's alone."""
    import logging

    from hpcsnp.cnn.train import train_fold

    store, _ = sim_store
    # a schedule whose learning rate changes before the best epoch, so replaying it is tested
    cfg = FAST.replace(max_epochs=8, patience=8, lr_decay_patience=1, lr_decay_steps=0, learning_rate=0.02,
                       genotype_basis="onehot", model_schedule="shared")
    with caplog.at_level(logging.INFO):
        two = train_fold(store, 1, tmp_path / "two", cfg.replace(n_models=2)).metrics
    one = train_fold(store, 1, tmp_path / "one", cfg)
    first, second = two["seed_runs"]
    assert "schedule_of" not in first and second["schedule_of"] == 0
    assert second["epochs"] == 0 and second["refit_epochs"] == first["refit_epochs"] == two["best_epoch"]
    seed1 = [r.getMessage() for r in caplog.records if "seed 1" in r.getMessage()]
    assert seed1 and not [m for m in seed1 if "val MAE" in m]  # no early-stopped epoch of its own
    assert any("the schedule seed 0's validation fold chose" in m for m in seed1)
    lrs = [cfg.learning_rate] + [h["lr"] for h in two["history"]]
    assert len(set(lrs[:two["best_epoch"]])) > 1, "the replayed schedule must change for this to test it"
    assert [h["lr"] for h in two["refit"]["history"]] == lrs[:two["best_epoch"]]
    replayed = [m.split(" lr ")[1].split()[0] for m in seed1 if "refit epoch" in m]
    assert replayed == [f"{lr:.3g}" for lr in lrs[:two["best_epoch"]]]  # the second model's refit, epoch by epoch
    fold = tmp_path / "two" / "sim" / "fold_1"
    assert (fold / "val_predictions.csv").read_bytes() == (one.path / "val_predictions.csv").read_bytes()
    per_seed = pd.read_csv(fold / "seed_predictions.csv")
    np.testing.assert_allclose(per_seed["seed_0"], pd.read_csv(one.path / "predictions.csv")["prediction"],
                               rtol=1e-6)
    assert not np.allclose(per_seed["seed_1"], per_seed["seed_0"], rtol=1e-3)  # its own initialisation


def test_rotated_models_early_stop_on_validation_folds_of_their_own(sim_store, tmp_path, caplog):
    """--model-schedule rotate (and auto, for two models): model k early-stops on the k-th
    fold after the fold's validation fold (skipping the test fold) and none is refitted; the
    fold's validation predictions are those of the models that never trained on that fold.
    A fold of one model refits it as the default schedule does."""
    import logging

    from hpcsnp.cnn.train import train_fold

    store, _ = sim_store  # 3 folds: test fold 1, validation folds 2, 3, 2 for three models
    cfg = FAST.replace(model_schedule="rotate")
    assert Config().rotates(2) and not Config().rotates(3)  # the default ("auto") rotates two models only
    with caplog.at_level(logging.INFO):
        three = train_fold(store, 1, tmp_path / "three", cfg.replace(n_models=3)).metrics
    said = {s: [r.getMessage() for r in caplog.records if f"seed {s}]" in r.getMessage()] for s in range(3)}
    assert [next(m for m in said[s] if "validation fold" in m).split("validation fold ")[1][0] for s in range(3)] \
        == ["2", "3", "2"]
    assert three["refit"] is None and [r["refit_epochs"] for r in three["seed_runs"]] == [0, 0, 0]
    assert three["config"] == cfg.replace(n_models=3).to_dict()  # the run's settings, which reduce checks
    # two models: the default schedule rotates them (the third model above validates on fold 2 too)
    two = train_fold(store, 1, tmp_path / "two", FAST.replace(n_models=2))
    alone = train_fold(store, 1, tmp_path / "alone", FAST.replace(refit=False))
    fold = two.path
    assert (fold / "val_predictions.csv").read_bytes() == (alone.path / "val_predictions.csv").read_bytes()
    per_seed = pd.read_csv(fold / "seed_predictions.csv")
    np.testing.assert_allclose(per_seed["seed_0"], pd.read_csv(alone.path / "predictions.csv")["prediction"],
                               rtol=1e-6)
    one = train_fold(store, 1, tmp_path / "one", cfg.replace(n_models=1))
    default = train_fold(store, 1, tmp_path / "default", FAST)
    assert one.metrics["refit"] and (one.path / "predictions.csv").read_bytes() == \
        (default.path / "predictions.csv").read_bytes()


def test_a_folds_second_model_restarts_the_first_ones_compiled_steps(sim_store, tmp_path, monkeypatch):
    """Two rotated models (no refit): the second trains with the first one's compiled
    functions restarted (CompiledSteps.restart: one build, no retrace), and every output is
    the one a build of its own gives, to the bit: its initial weights, dropout masks,
    optimiser and averages start afresh, and its saved model holds its own seeds."""
    import zipfile

    import zarr

    from hpcsnp.cnn import steps as steps_mod
    from hpcsnp.cnn.train import train_fold

    store, _ = sim_store
    # no epoch counts as better than the first (min_delta), so the first model's learning
    # rate is halved after its second epoch: the second model must start at the full rate
    cfg = FAST.replace(n_models=2, model_schedule="rotate", min_delta=1e9, lr_decay_patience=1, lr_decay_steps=0)
    builds = []
    build = steps_mod.CompiledSteps.build.__func__

    def counted(cls, *args, **kwargs):
        builds.append(kwargs)
        return build(cls, *args, **kwargs)
    monkeypatch.setattr(steps_mod.CompiledSteps, "build", classmethod(counted))
    restarted = train_fold(store, 1, tmp_path / "restarted", cfg).path
    assert len(builds) == 1
    monkeypatch.setattr(steps_mod.CompiledSteps, "restart", lambda self, *args, **kwargs: False)
    built = train_fold(store, 1, tmp_path / "built", cfg).path
    assert len(builds) == 3
    for name in ("predictions.csv", "val_predictions.csv", "seed_predictions.csv"):
        assert (restarted / name).read_bytes() == (built / name).read_bytes(), name
    for shard in ("saliency.zarr", "marginal.zarr"):
        np.testing.assert_array_equal(*(zarr.open_array(str(d / shard))[:] for d in (restarted, built)))
    per_seed = pd.read_csv(restarted / "seed_predictions.csv")
    assert not np.allclose(per_seed["seed_0"], per_seed["seed_1"], rtol=1e-3)  # two different models
    history = json.loads((restarted / "metrics.json").read_text())["history"]  # the first model's
    assert history[-1]["lr"] < cfg.learning_rate, "the first model's rate must fall for this to test its reset"

    def dropout_seeds(model_dir):
        config = json.loads(zipfile.ZipFile(model_dir / "model.keras").read("config.json"))
        return {lr["config"]["name"]: lr["config"]["seed"] for lr in config["config"]["layers"]
                if lr["config"]["name"].startswith("dropout")}
    assert dropout_seeds(restarted / "seed_1") == dropout_seeds(built / "seed_1") == \
        {"dropout1": 4, "dropout2": 5, "dropout3": 6}  # seed 1's: 3 seed + 1, 2, 3


def test_a_folds_models_read_every_line_once_for_their_marginal(sim_store, tmp_path, monkeypatch):
    """The ``marginal`` attribution reads every line of the store: a fold of two models
    reads it once (cached, then kept for the second model) where it fits the cache, and
    each model streams it where it does not (the fold's own lines cached either way); the
    shards are the same.  A fold of one model streams it."""
    import zarr

    from hpcsnp.cnn import train as train_mod

    store, _ = sim_store
    made = []
    real = train_mod.RowSource

    def counted(store_, rows, *args, **kwargs):
        src = real(store_, rows, *args, **kwargs)
        if len(rows) == store_.n_samples:
            made.append(src.cached is not None)
        return src
    monkeypatch.setattr(train_mod, "RowSource", counted)
    cfg = FAST.replace(n_models=2, model_schedule="rotate")
    shared = train_mod.train_fold(store, 1, tmp_path / "shared", cfg).path
    assert made == [True]
    made.clear()
    real_everyone = train_mod.everyone
    monkeypatch.setattr(train_mod, "everyone", lambda store_, cfg_, shared_=None:
                        real_everyone(store_, cfg_.replace(cache="never"), shared_))
    streamed = train_mod.train_fold(store, 1, tmp_path / "streamed", cfg).path
    assert made == [False, False]
    np.testing.assert_array_equal(*(zarr.open_array(str(d / "marginal.zarr"))[:] for d in (shared, streamed)))
    monkeypatch.setattr(train_mod, "everyone", real_everyone)
    made.clear()
    train_mod.train_fold(store, 1, tmp_path / "one", cfg.replace(n_models=1))
    assert made == [False]  # one model: streamed, nothing held for a next one


def test_a_fold_interrupted_before_its_second_model_resumes_to_the_same_result(sim_store, tmp_path, monkeypatch):
    """With a shared schedule, a fold that dies after its first model reads that model back
    (its schedule included) and trains the second as an uninterrupted fold does."""
    from hpcsnp.cnn import train as train_mod

    store, _ = sim_store
    cfg = FAST.replace(n_models=2, model_schedule="shared")
    whole = train_mod.train_fold(store, 1, tmp_path / "whole", cfg)
    real_refit = train_mod._refit

    def dies_at_the_second_model(store_, split, where, cfg_, *args, **kwargs):
        if cfg_.seed == 1:
            raise KeyboardInterrupt("killed")
        return real_refit(store_, split, where, cfg_, *args, **kwargs)

    monkeypatch.setattr(train_mod, "_refit", dies_at_the_second_model)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_fold(store, 1, tmp_path / "killed", cfg)
    assert (tmp_path / "killed" / "sim" / "fold_1.partial" / "member.npz").exists()
    monkeypatch.setattr(train_mod, "_refit", real_refit)
    resumed = train_mod.train_fold(store, 1, tmp_path / "killed", cfg)
    for name in ("predictions.csv", "val_predictions.csv", "seed_predictions.csv"):
        assert (whole.path / name).read_bytes() == (resumed.path / name).read_bytes()


def test_seeds_0_trains_as_many_models_as_the_folds_training_lines_call_for(sim_store, tmp_path):
    """The default: 80 training lines (240 in 3 folds) are far below AUTO_SEED_LINES, so
    the fold trains AUTO_SEEDS_MAX models, seeds 0..4, averaged."""
    from hpcsnp.cnn.train import train_fold
    from hpcsnp.config import AUTO_SEEDS_MAX

    r = train_fold(sim_store[0], 1, tmp_path, FAST.replace(n_models=0, max_epochs=1))
    assert r.metrics["n_train"] == 80 and r.metrics["models"] == AUTO_SEEDS_MAX == 5
    assert [s["seed"] for s in r.metrics["seed_runs"]] == [0, 1, 2, 3, 4]
    per_seed = pd.read_csv(r.path / "seed_predictions.csv")
    pred = pd.read_csv(r.path / "predictions.csv")
    np.testing.assert_allclose(pred["prediction"], per_seed[[f"seed_{k}" for k in range(5)]].mean(axis=1),
                               rtol=1e-6)
    assert json.loads((tmp_path / "config.json").read_text())["n_models"] == 0  # the run records the rule


def test_missing_genotype_augmentation_masks_the_share_asked_reproducibly():
    import tensorflow as tf

    from hpcsnp.cnn.steps import masked_codes
    from hpcsnp.config import Config

    g = tf.constant(np.random.default_rng(0).integers(0, 3, (64, 500)).astype(np.int8))
    counter = tf.Variable(0, dtype=tf.int64)
    encode = masked_codes(Config(mask_rate=0.3), counter)
    a, b = encode(g).numpy(), encode(g).numpy()
    np.testing.assert_array_equal(a, b)  # same step, same mask
    missing = a == -1
    assert abs(missing.mean() - 0.3) < 0.01
    np.testing.assert_array_equal(a[~missing], g.numpy()[~missing])  # every other call as it was
    counter.assign(1)
    assert (encode(g).numpy() == -1).tolist() != missing.tolist()  # a fresh mask each step
