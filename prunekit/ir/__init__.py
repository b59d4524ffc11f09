"""The IR: ``import prunekit.ir as ir``; ``ir.load``, ``ir.save`` (numpy only), and lazily imported
builders ``ir.to_torch``, ``ir.from_torch``, ``ir.to_onnx``, ``ir.from_onnx``, ``ir.to_keras``.

Importing this package imports no framework. It arranges for the two Keras layers of ``ir.to_keras``
to be registered with Keras as soon as Keras is imported (at once when it already is), so that a
``.keras`` file prunekit wrote opens with ``keras.models.load_model`` after ``import prunekit.ir``.
"""

import importlib.abc
import importlib.util
import sys
import warnings

from prunekit.ir.graph import FORMAT_VERSION, OPS, Graph, IRError, Node, find_weights, load, save

__all__ = ["FORMAT_VERSION", "OPS", "Graph", "IRError", "Node", "load", "save", "find_weights", "to_torch",
           "from_torch", "to_onnx", "from_onnx", "to_keras", "keras_objects"]


def to_torch(graph, inputs=None, outputs=None):
    from prunekit.ir.torch_build import to_torch as build
    return build(graph, inputs, outputs)


def from_torch(module, example_input):
    from prunekit.ir.torch_trace import from_torch as convert
    return convert(module, example_input)


def to_onnx(graph, path, inputs=None, outputs=None):
    from prunekit.ir.onnx_io import to_onnx as export
    return export(graph, path, inputs, outputs)


def from_onnx(path):
    from prunekit.ir.onnx_io import from_onnx as load_onnx
    return load_onnx(path)


def to_keras(graph, outputs=None, input_shape=None):
    from prunekit.ir.keras_build import to_keras as build
    return build(graph, outputs, input_shape)


def keras_objects():
    """``{registered name: class}`` of prunekit's Keras layers, for ``load_model(custom_objects=...)``."""
    from prunekit.ir.keras_layers import OBJECTS
    return dict(OBJECTS)


def _register_now():
    try:
        import prunekit.ir.keras_layers  # noqa: F401  (registration is the import's side effect)
    except Exception as e:  # a broken Keras install must not break the import that triggered this
        warnings.warn(f"prunekit.ir could not register its Keras layers: {e}", stacklevel=3)


class _LoaderThenRegister(importlib.abc.Loader):
    """Keras's own loader, then the registration once ``keras`` is fully imported."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register_now()

    def __getattr__(self, name):  # resource readers and the like
        return getattr(self._loader, name)


class _KerasImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "keras":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # once only
        spec = importlib.util.find_spec("keras")
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderThenRegister(spec.loader)
        return spec


def _register_keras_layers():
    if "keras" in sys.modules:
        _register_now()
    elif not any(isinstance(f, _KerasImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _KerasImportHook())


_register_keras_layers()
