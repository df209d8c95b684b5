"""The 1-D residual CNN of SPEC section 3, built from a Config.

Layers carry names so a saved model reads like the paper's figure.  Every
convolution is linear; the only non-linearity is the ISRU output.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, regularizers


@keras.saving.register_keras_serializable(package="hpcsnp")
class ISRU(layers.Layer):
    """Inverse square root unit, x / sqrt(1 + alpha x^2); bounded by +-1/sqrt(alpha)."""

    def __init__(self, alpha=0.03, **kwargs):
        super().__init__(**kwargs)
        self.alpha = float(alpha)

    def call(self, x):
        return x * tf.math.rsqrt(1.0 + self.alpha * tf.square(x))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


def _conv(cfg, kernel, name):
    return layers.Conv1D(cfg.filters, kernel, padding="same", activation="linear",
                         kernel_initializer=keras.initializers.TruncatedNormal(seed=None),
                         kernel_regularizer=regularizers.l2(cfg.l2_kernel),
                         bias_regularizer=regularizers.l2(cfg.l2_bias), name=name)


def build_model(n_snps: int, cfg) -> keras.Model:
    """SPEC section 3: two stacked convolutions plus a shortcut, one more
    convolution, flatten, and a dense ISRU output; dropout after each block."""
    inp = keras.Input((n_snps, 4), name="one_hot")
    x = _conv(cfg, cfg.kernel_1, "conv1")(inp)
    x = _conv(cfg, cfg.kernel_2, "conv2")(x)
    x = layers.Dropout(cfg.dropout, name="dropout1")(x)
    s = _conv(cfg, cfg.kernel_shortcut, "shortcut")(inp)
    x = layers.Add(name="residual")([s, x])
    x = _conv(cfg, cfg.kernel_3, "conv3")(x)
    x = layers.Dropout(cfg.dropout, name="dropout2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(cfg.dropout, name="dropout3")(x)
    x = layers.Dense(1, kernel_initializer=keras.initializers.TruncatedNormal(),
                     bias_regularizer=regularizers.l2(cfg.l2_bias), name="dense")(x)
    out = ISRU(cfg.alpha, name="isru")(x)
    return keras.Model(inp, out, name="hpcsnp_resnet")
