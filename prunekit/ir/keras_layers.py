"""The two Keras layers ``ir.to_keras`` needs beyond Keras's own, registered as serializable objects.

Registered under the package name ``prunekit`` (``prunekit>BiasAdd``, ``prunekit>PadConstant``), so a
``.keras`` file written by ``prunekit convert`` or ``ir.to_keras(...).save()`` opens with
``keras.models.load_model`` in any process where this module has been imported. ``import prunekit.ir``
arranges that without importing Keras itself: if Keras is already imported this module is imported at
once, otherwise right after Keras's own import finishes (see ``prunekit.ir._register_keras_layers``).
``keras.models.load_model(path, custom_objects=prunekit.ir.keras_objects())`` works too.
"""

import keras
from keras import layers, ops

__all__ = ["BiasAdd", "PadConstant", "OBJECTS"]


@keras.saving.register_keras_serializable(package="prunekit")
class BiasAdd(layers.Layer):
    """``x + b`` over the last (channel) axis."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, x):
        return x + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="prunekit")
class PadConstant(layers.Layer):
    """Spatial padding of an NHWC tensor with a constant (-inf before a max pool)."""

    def __init__(self, pads, value, **kwargs):
        super().__init__(**kwargs)
        self.pads, self.value = [list(p) for p in pads], float(value)

    def call(self, x):
        return ops.pad(x, [[0, 0], self.pads[0], self.pads[1], [0, 0]], constant_values=self.value)

    def get_config(self):
        return {**super().get_config(), "pads": self.pads, "value": self.value}


OBJECTS = {"prunekit>BiasAdd": BiasAdd, "prunekit>PadConstant": PadConstant}
