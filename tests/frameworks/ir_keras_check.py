"""Run ir.to_keras, or open a saved .keras file, in a process without torch:
python ir_keras_check.py GRAPH.json WEIGHTS INPUT.npy OUTPUT.npz        (WEIGHTS "-" = random)
python ir_keras_check.py --load MODEL.keras INPUT.npy OUTPUT.npz        (only `import prunekit.ir` first)"""

import os
import sys

import numpy as np

import prunekit.ir as ir

if sys.argv[1] == "--load":
    import keras  # imported after prunekit.ir, as a user would: the layers must register themselves
    model_path, input_path, output_path = sys.argv[2:5]
    model = keras.models.load_model(model_path)
else:
    graph_path, weights, input_path, output_path = sys.argv[1:5]
    graph = ir.load(graph_path, weights="random" if weights == "-" else weights)
    model = ir.to_keras(graph, input_shape=np.load(input_path).shape)
x = np.load(input_path)
outs = model(x)
outs = outs if isinstance(outs, (list, tuple)) else [outs]
zeros = sum(int((w == 0).sum()) for w in model.get_weights() if w.ndim >= 2)
np.savez(output_path, *[np.asarray(o) for o in outs], zeros=np.array(zeros))
print("keras ok", os.environ.get("KERAS_BACKEND"))
