"""The IR: ``import prunekit.ir as ir``; ``ir.load``, ``ir.save`` (numpy only), and lazily imported
builders ``ir.to_torch``, ``ir.from_torch``, ``ir.to_onnx``, ``ir.from_onnx``, ``ir.to_keras``."""

from prunekit.ir.graph import FORMAT_VERSION, OPS, Graph, IRError, Node, load, save

__all__ = ["FORMAT_VERSION", "OPS", "Graph", "IRError", "Node", "load", "save", "to_torch", "from_torch",
           "to_onnx", "from_onnx", "to_keras"]


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
