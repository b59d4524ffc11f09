"""Build a Keras model from IR files and run it, in a process without torch:
python ir_keras_check.py GRAPH.json WEIGHTS INPUT.npy OUTPUT.npz [N,C,H,W]"""

import os
import sys
import warnings

import numpy as np

import prunekit.ir as ir

graph_path, weights, input_path, output_path = sys.argv[1:5]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    graph = ir.load(graph_path, weights="random" if weights == "-" else weights)
x = np.load(input_path)
model = ir.to_keras(graph, input_shape=x.shape)
outs = model(x)
outs = outs if isinstance(outs, (list, tuple)) else [outs]
zeros = sum(int((w == 0).sum()) for w in model.get_weights() if w.ndim >= 2)
np.savez(output_path, *[np.asarray(o) for o in outs], zeros=np.array(zeros))
print("keras ok", os.environ.get("KERAS_BACKEND"))
