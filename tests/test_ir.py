"""prunekit.ir: the original tool's graphs load and run; sparse models round-trip with their zeros."""

import json
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import prunekit.ir as ir  # noqa: E402
import prunekit.torch as pruning  # noqa: E402

# the original tool's two graphs (node lists without weights), copied from its repository
SAMPLES = os.path.join(os.path.dirname(__file__), "data")
CLASSIFIER = os.path.join(SAMPLES, "resnet50v1d.json")
DETECTOR = os.path.join(SAMPLES, "resnet50v1d_centernet.json")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def load_sample(path):
    return ir.load(path, weights="random")


def test_classifier_runs_and_cuts():
    graph = load_sample(CLASSIFIER)
    model = ir.to_torch(graph).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        features = ir.to_torch(graph, outputs=527).eval()
        assert features(torch.randn(1, 3, 224, 224)).shape == (1, 2048)
    assert "layers.resnetv1d_conv0.weight" in dict(model.named_parameters())


def test_detector_has_three_heads():
    graph = load_sample(DETECTOR)
    with torch.no_grad():
        heads = ir.to_torch(graph).eval()(torch.randn(1, 3, 512, 512))
    assert len(heads) == 3 and all(h.shape[-2:] == (128, 128) for h in heads)


def test_stride_edit_for_cifar_and_use_as_submodule():
    graph = load_sample(CLASSIFIER)
    first_conv = graph.find(op="nn.conv2d")[0]
    pool = graph.find(op="nn.max_pool2d")[0]
    assert (first_conv.id, pool.id) == (287, 299)
    first_conv.attrs["strides"] = [1, 1]
    pool.attrs["strides"] = [1, 1]
    backbone = ir.to_torch(graph, outputs=527)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(2048, 10))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p[torch.rand_like(p) < 0.5] = 0
    zeros = {n: (p == 0).clone() for n, p in model.named_parameters() if p.dim() >= 2}
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.01, momentum=0.9, restore_sparsity=True,
                            fix_sparsity=True)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for name, p in model.named_parameters():
        if name in zeros:
            assert (p[zeros[name]] == 0).all(), name


def write(tmp_path, nodes, name="g.json"):
    path = tmp_path / name
    path.write_text(json.dumps(nodes))
    return path


def tiny_nodes():
    return [{"node_id": 0, "node_type": "Var", "op_type": "Const", "shape": [1, 2, 4, 4]},
            {"node_id": 1, "node_type": "Call", "op_type": "nn.conv2d", "inputs": [0, "c_weight"],
             "attrs": {"strides": [1, 1], "padding": [1, 1, 1, 1], "kernel_size": [3, 3], "W_shape": [3, 2, 3, 3]}},
            {"node_id": 2, "node_type": "Call", "op_type": "nn.relu", "inputs": [1], "attrs": None}]


def conv(**attrs):
    base = {"strides": [1, 1], "padding": [1, 1, 1, 1], "kernel_size": [3, 3], "W_shape": [3, 2, 3, 3]}
    return lambda n: n[1].update(attrs={**base, **attrs})


@pytest.mark.parametrize("change,message", [
    (lambda n: n[2].update(op_type="nn.softmax"), r"node 2: unknown op 'nn.softmax'"),
    (lambda n: n[2].update(inputs=[7]), r"node 2: input 7 is defined by no node"),
    (lambda n: n[1].update(inputs=[2, "c_weight"]), r"node 1: input 2 comes later in the graph"),
    (lambda n: n[2].update(inputs=[2]), r"node 2: input 2 comes later"),
    (lambda n: n[1]["attrs"].pop("W_shape"), r"node 1 \(nn.conv2d\) lacks attrs \['W_shape'\]"),
    (lambda n: n.append(dict(n[2])), r"node 2 is defined twice"),
    # issue 16 item 13: each of these passed, or failed far from the node, before
    (conv(W_shape="3,2,3,3"), r"node 1 \(nn.conv2d\): attr 'W_shape' must be 4 integers; got '3,2,3,3'"),
    (conv(W_shape={"a": 1}), r"node 1 \(nn.conv2d\): attr 'W_shape' must be 4 integers"),
    (conv(W_shape=[3, -2, 3, 3]), r"node 1 \(nn.conv2d\): attr 'W_shape' must be integers >= 1"),
    (conv(W_shape=[3, 2.5, 3, 3]), r"node 1 \(nn.conv2d\): attr 'W_shape' must be 4 integers"),
    (lambda n: n[1].update(attrs="strides=1"), r"node 1 \(nn.conv2d\): attrs must be an object"),
    (conv(strides=[]), r"node 1 \(nn.conv2d\): attr 'strides' must be 1 or 2 integers; got \[\]"),
    (conv(strides=[0, 1]), r"node 1 \(nn.conv2d\): attr 'strides' must be integers >= 1"),
    (conv(padding=[1, 1, 1]), r"node 1 \(nn.conv2d\): attr 'padding' must be 1 or 2 or 4 integers"),
    (conv(kernel_size=[5, 5]), r"node 1 \(nn.conv2d\): kernel_size \[5, 5\] disagrees with W_shape \[3, 2, 3, 3\]"),
    (conv(W_shape=[3, 5, 3, 3], kernel_size=[3, 3]), r"node 1 \(nn.conv2d\): input has 2 channels; W_shape"),
    (conv(data_layout="NHWC"), r"node 1 \(nn.conv2d\): attrs \['data_layout'\] are not supported"),
    (conv(groups=2), r"node 1 \(nn.conv2d\): W_shape \[3, 2, 3, 3\]: 3 output channels do not split into 2"),
    (conv(padding=[9, 9, 9, 9], strides=[20, 20]), None),  # large padding is legal: the output is 1x1
    (conv(dilation=[4, 4], padding=[0, 0]), r"node 1 \(nn.conv2d\): a spatial size of 4 is too small for kernel 3"),
    (lambda n: n[2].update(op_type="add", inputs=[1, "c_weight"]),
     r"node 2 \(add\): input 1 must be a node id \(an integer\); got 'c_weight'"),
    (lambda n: n[2].update(op_type="add", inputs=[1, 0]), r"node 2 \(add\): adds shapes \(1, 3, 4, 4\)"),
    (lambda n: n[1].update(inputs=[0, 5]), r"node 1 \(nn.conv2d\): input 1 must be a weight name"),
    (lambda n: n[2].update(inputs=[True]), r"node 2: input True is neither a node id nor a weight name"),
    (lambda n: n[2].update(attrs={"alpha": 0.1}), r"node 2 \(nn.relu\): attrs \['alpha'\] are not supported"),
    (lambda n: n[2].update(node_id="2"), r"node id '2' is not an integer"),
    (lambda n: n[2].update(inputs="1"), r"node 2: inputs must be a list"),
    (lambda n: n[0].update(shape=[1, 2, 0, 4]), r"graph input 0: shape \(1, 2, 0, 4\) must be"),
    (lambda n: n[2].update(extra=1), r"node 2: unknown fields \['extra'\]"),
])
def test_malformed_graphs_name_the_node(tmp_path, change, message):
    nodes = tiny_nodes()
    change(nodes)
    if message is None:
        ir.load(write(tmp_path, nodes), weights="random")
        return
    with pytest.raises(ir.IRError, match=message):
        ir.load(write(tmp_path, nodes), weights="random")


def test_huge_shapes_are_refused_before_allocating(tmp_path):
    nodes = tiny_nodes()
    nodes[0]["shape"] = [1, 100000, 4, 4]
    nodes[1]["attrs"]["W_shape"] = [100000, 100000, 3, 3]
    with pytest.raises(ir.IRError, match=r"node 1: initialising 90,000,000,000 weights .* exceeds"):
        ir.load(write(tmp_path, nodes), weights="random")


def test_weight_shape_must_match_attrs(tmp_path):
    np.savez(tmp_path / "w.npz", c_weight=np.zeros((3, 2, 5, 5), np.float32))
    with pytest.raises(ir.IRError, match=r"node 1: weight 'c_weight' has shape \(3, 2, 5, 5\); its attrs say \(3, 2, 3, 3\)"):
        ir.load(write(tmp_path, tiny_nodes()), weights=tmp_path / "w.npz")


def test_weights_files_that_are_not_weights(tmp_path):
    graph = write(tmp_path, tiny_nodes())
    with pytest.raises(ir.IRError, match=r"weights file '.*nowhere.npz' does not exist"):
        ir.load(graph, weights=tmp_path / "nowhere.npz")
    np.save(tmp_path / "w.npy", np.zeros(3))
    with pytest.raises(ir.IRError, match=r"w.npy' is a single .npy array; weights files are"):
        ir.load(graph, weights=tmp_path / "w.npy")
    (tmp_path / "junk.npz").write_bytes(os.urandom(256))
    with pytest.raises(ir.IRError, match=r"junk.npz' is neither a .npz archive nor safetensors") as info:
        ir.load(graph, weights=tmp_path / "junk.npz")
    assert "pickle" not in str(info.value)
    np.savez(tmp_path / "ints.npz", c_weight=np.zeros((3, 2, 3, 3), np.int64))
    with pytest.raises(ir.IRError, match=r"node 1: weight 'c_weight' must be a floating-point array; got int64"):
        ir.load(graph, weights=tmp_path / "ints.npz")


def test_no_pickle_unless_trusted(tmp_path):
    weights = {"c_weight": np.ones((3, 2, 3, 3), np.float32)}
    np.savez(tmp_path / "pickled.npz", params=np.array(weights, dtype=object))
    with pytest.raises(ir.IRError, match="holds pickled objects.*trust_pickle=True"):
        ir.load(write(tmp_path, tiny_nodes()), weights=tmp_path / "pickled.npz")
    graph = ir.load(write(tmp_path, tiny_nodes()), weights=tmp_path / "pickled.npz", trust_pickle=True)
    assert np.array_equal(graph.weights["c_weight"], weights["c_weight"])


def test_random_weights_only_when_asked(tmp_path):
    path = write(tmp_path, tiny_nodes())
    with pytest.raises(ir.IRError, match=r"no weights for .*g.json.*weights='random'"):
        ir.load(path)
    graph = ir.load(path, weights="random")
    assert graph.weights["c_weight"].shape == (3, 2, 3, 3) and graph.weights_file == "random"


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_load_finds_the_weights_save_wrote(tmp_path, suffix):
    graph = ir.load(write(tmp_path, tiny_nodes()), weights="random")
    graph.weights["c_weight"][0] = 0
    ir.save(graph, tmp_path / "m.json", tmp_path / f"w{suffix}")
    again = ir.load(tmp_path / "m.json")  # the graph records its weights file
    assert np.array_equal(again.weights["c_weight"], graph.weights["c_weight"])
    ir.save(graph, tmp_path / "n.json")  # only a graph: its weights are found beside it by name
    os.replace(tmp_path / f"w{suffix}", tmp_path / f"n{suffix}")
    assert np.array_equal(ir.load(tmp_path / "n.json").weights["c_weight"], graph.weights["c_weight"])


def test_save_writes_nothing_when_it_fails(tmp_path):
    graph = ir.load(write(tmp_path, tiny_nodes()), weights="random")
    graph.weights["c_weight"] = graph.weights["c_weight"].astype(np.int32)  # not a weight dtype
    with pytest.raises(ir.IRError, match="floating-point"):
        ir.save(graph, tmp_path / "m.json", tmp_path / "m.safetensors")
    with pytest.raises(ir.IRError, match="must end with .npz or .safetensors"):
        ir.save(graph, tmp_path / "m.json", tmp_path / "m.bin")
    assert sorted(os.listdir(tmp_path)) == ["g.json"]


def sparse_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p[torch.rand_like(p) < 0.8] = 0
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def zeros_of(graph):
    return {k: int((v == 0).sum()) for k, v in graph.weights.items()}


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_torch_ir_files_torch_round_trip(tmp_path, suffix):
    model = sparse_resnet18()
    x = torch.randn(2, 3, 64, 64)
    graph = ir.from_torch(model, x)
    ir.save(graph, tmp_path / "m.json", tmp_path / f"m{suffix}")
    again = ir.load(tmp_path / "m.json", weights=tmp_path / f"m{suffix}")
    assert zeros_of(again) == zeros_of(graph)
    rebuilt = ir.to_torch(again).eval()
    with torch.no_grad():
        ref, out = model(x), rebuilt(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4
    ir.save(again, tmp_path / "m2.json", tmp_path / f"m2{suffix}")
    first, second = (json.loads((tmp_path / f).read_text()) for f in ("m.json", "m2.json"))
    assert (first.pop("weights"), second.pop("weights")) == (f"m{suffix}", f"m2{suffix}")
    assert first == second
    def matrix_zeros(m):
        return sum(int((p == 0).sum()) for p in m.parameters() if p.dim() >= 2)
    assert matrix_zeros(rebuilt) == matrix_zeros(model) > 0, "every exact zero survives torch -> IR -> torch"


def test_from_torch_names_what_it_cannot_convert():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GELU())
    with pytest.raises(ir.IRError, match=r"module '1' \(GELU\) has no IR op"):
        ir.from_torch(model, torch.randn(1, 3, 8, 8))


class _AddConstant(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x) + 1


class _AddAlpha(_AddConstant):
    def forward(self, x):
        return torch.add(self.conv(x), x, alpha=2)


class _InPlace(_AddConstant):
    def forward(self, x):
        y = self.conv(x)
        y.mul_(1.5)  # a method the IR does not have
        return y


@pytest.mark.parametrize("make,message", [
    (_AddConstant, r"call_function 'add' \(fx node 'add'\): operand 1 is a constant"),
    (_AddAlpha, r"call_function 'add' .*keywords \['alpha'\]"),
    (_InPlace, r"call_method 'mul_'"),
    (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.AvgPool2d(2, divisor_override=3)),
     r"module '1': AvgPool2d\(divisor_override=3\) has no IR op"),
    (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)).train(),
     r"module '1': BatchNorm2d is in training mode.*model.eval\(\)"),
])
def test_from_torch_refuses_what_it_would_get_wrong(make, message):
    """Issue 16 item 12: each of these was converted silently into a different model."""
    model = make()
    if not isinstance(model, torch.nn.Sequential) or not model.training:
        model = model.eval()
    with pytest.raises(ir.IRError, match=message):
        ir.from_torch(model, torch.randn(1, 3, 4, 4))


class _HiddenScale(torch.nn.Module):
    """A forward that reads Python state the tracer cannot see: the comparison catches it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x) if self.calls == 1 else torch.relu(self.conv(x))


def test_from_torch_compares_the_graph_with_the_module():
    torch.manual_seed(0)
    with pytest.raises(ir.IRError, match="output 0 of the traced graph differs from _HiddenScale's own"):
        ir.from_torch(_HiddenScale().eval(), torch.randn(1, 3, 4, 4))
    with pytest.raises(ir.IRError, match=r"example input of shape \(1, 1, 8, 8\) does not fit|input has 1 channels"):
        ir.from_torch(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)).eval(), torch.randn(1, 1, 8, 8))


def test_from_torch_follows_shape_branches():
    """prunekit's seed CNN branches on the input size; the traced graph is the branch the example takes."""
    from prunekit.torch.models import SeedCNN
    torch.manual_seed(0)
    model = SeedCNN().eval()
    x = torch.randn(2, 1, 28, 28)
    graph = ir.from_torch(model, x)
    with torch.no_grad():
        assert torch.allclose(ir.to_torch(graph).eval()(x), model(x), atol=1e-5)


def test_onnx_round_trip_keeps_outputs_and_zeros(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = sparse_resnet18()
    x = torch.randn(2, 3, 64, 64)
    graph = ir.from_torch(model, x)
    ir.to_onnx(graph, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(onnx_out - ref).max() / np.abs(ref).max() < 1e-4
    back = ir.from_onnx(tmp_path / "m.onnx")
    assert zeros_of(back) == zeros_of(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 17.7: "The given NumPy array is not writable" came through
        rebuilt = ir.to_torch(back).eval()
    with torch.no_grad():
        out = rebuilt(x).numpy()
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4


def onnx_model(nodes, inits, shape=(1, 3, 9, 9), elem=1):
    from onnx import helper, numpy_helper
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, list(shape))],
                              [helper.make_tensor_value_info(nodes[-1].output[0], elem, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool"])
def test_from_onnx_auto_pad(tmp_path, mode, op):
    """Issue 16 item 11: auto_pad was ignored (a SAME_UPPER conv differed from onnxruntime by up to 2.6)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    if op == "Conv":
        node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=mode, strides=[2, 2], kernel_shape=[4, 4])
    else:
        node = helper.make_node(op, ["x"], ["y"], auto_pad=mode, strides=[2, 2], kernel_shape=[4, 4])
    onnx.save(onnx_model([node], {"w": w} if op == "Conv" else {}), tmp_path / "m.onnx")
    x = rng.standard_normal((1, 3, 9, 9)).astype(np.float32)
    (ref,) = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    try:
        graph = ir.from_onnx(tmp_path / "m.onnx")
        with torch.no_grad():
            out = ir.to_torch(graph).eval()(torch.from_numpy(x)).numpy()
    except ir.IRError as e:  # an average pool over asymmetric padding has no torch builder: refused, named
        assert op == "AveragePool" and mode != "VALID" and "node" in str(e)
        return
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,message", [
    (lambda h: h.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", pads=[1, 1, 1, 1]),
     r"ONNX node 'y' \(Conv\) has both auto_pad=SAME_UPPER and pads"),
    (lambda h: h.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2]), "dilated pooling"),
    (lambda h: h.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2]), r"extra outputs \['idx'\]"),
    (lambda h: h.make_node("Gemm", ["x", "w"], ["y"], alpha=2.0), r"alpha=2.0 is not supported"),
    (lambda h: h.make_node("LeakyRelu", ["x"], ["y"]), r"ONNX node 'y' \(LeakyRelu\) has no IR op"),
    (lambda h: h.make_node("Add", ["x", "w"], ["y"]), r"adds a constant of shape \(4, 3, 4, 4\)"),
    (lambda h: h.make_node("Conv", ["x", "x"], ["y"]), r"its weight 'x' must be an initializer"),
])
def test_from_onnx_refuses_what_it_cannot_express(tmp_path, make, message):
    onnx = pytest.importorskip("onnx")
    from onnx import helper
    w = np.ones((4, 3, 4, 4), np.float32)
    onnx.save(onnx_model([make(helper)], {"w": w}), tmp_path / "m.onnx")
    with pytest.raises(ir.IRError, match=message):
        ir.from_onnx(tmp_path / "m.onnx")


def test_onnx_export_keeps_the_weights_dtype(tmp_path):
    """Issue 16 item 14: fp16/fp64 graphs were written with float32 inputs, which onnxruntime rejects."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    graph = ir.load(write(tmp_path, tiny_nodes()), weights="random")
    graph.weights = {k: v.astype(np.float16) for k, v in graph.weights.items()}
    ir.to_onnx(graph, tmp_path / "h.onnx")
    session = ort.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"0": np.ones((2, 2, 4, 4), np.float16)})
    assert out.dtype == np.float16 and out.shape == (2, 3, 4, 4)
    graph.weights = {k: v.astype(np.float64) for k, v in graph.weights.items()}  # onnxruntime has no fp64 Conv
    with pytest.raises(ir.IRError, match="onnxruntime cannot run the exported model .*float64.*cast the weights"):
        ir.to_onnx(graph, tmp_path / "d.onnx")
    assert not any(name.startswith(".d.onnx") or name == "d.onnx" for name in os.listdir(tmp_path))


def test_from_onnx_reads_torch_onnx_export(tmp_path):
    """A model exported by torch.onnx.export (it adds Identity nodes over initializers) imports and matches."""
    pytest.importorskip("onnx")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(tmp_path / "tv.onnx"), dynamo=False, opset_version=17)
    graph = ir.from_onnx(tmp_path / "tv.onnx")
    with torch.no_grad():
        ref, out = model(x), ir.to_torch(graph).eval()(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5


def test_original_graph_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    graph = load_sample(CLASSIFIER)
    ir.to_onnx(graph, tmp_path / "r50.onnx")
    session = ort.InferenceSession(str(tmp_path / "r50.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        ref = ir.to_torch(graph).eval()(torch.from_numpy(x)).numpy()
    assert np.abs(onnx_out - ref).max() / np.abs(ref).max() < 1e-4


def keras_in_subprocess(graph_path, weights, x, tmp_path):
    """Outputs (and the zero count of the kernels) of ir.to_keras, computed in a process without torch:
    TensorFlow and torch in one process can crash when torch later loads triton. ``weights=None``:
    ``graph_path`` is a saved .keras file, opened with keras.models.load_model after `import prunekit.ir`."""
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("tensorflow") is None:
        pytest.skip("keras with TensorFlow is not installed")
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    first = ["--load", str(graph_path)] if weights is None else [str(graph_path), str(weights)]
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "frameworks", "ir_keras_check.py"), *first,
                          str(tmp_path / "x.npy"), str(tmp_path / "out.npz")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = np.load(tmp_path / "out.npz")
    return [result[f"arr_{i}"] for i in range(len(result.files) - 1)], int(result["zeros"])


def test_torch_ir_keras_keeps_outputs_and_zeros(tmp_path):
    model = sparse_resnet18()
    x = torch.randn(2, 3, 64, 64)
    graph = ir.from_torch(model, x)
    ir.save(graph, tmp_path / "g.json", tmp_path / "g.safetensors")
    (out,), keras_zeros = keras_in_subprocess(tmp_path / "g.json", tmp_path / "g.safetensors", x.numpy(), tmp_path)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4
    torch_zeros = sum(int((p == 0).sum()) for p in model.parameters() if p.dim() >= 2)
    assert keras_zeros == torch_zeros > 0


def test_original_detector_to_keras(tmp_path):
    graph = load_sample(DETECTOR)
    ir.save(graph, tmp_path / "d.json", tmp_path / "d.safetensors")  # the weights initialised from the attrs
    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    outs, _ = keras_in_subprocess(tmp_path / "d.json", tmp_path / "d.safetensors", x, tmp_path)
    with torch.no_grad():
        refs = [r.numpy() for r in ir.to_torch(graph).eval()(torch.from_numpy(x))]
    assert len(outs) == 3
    for o, r in zip(outs, refs):
        assert o.shape == r.shape == (1, r.shape[1], 64, 64)
        # random weights through ~60 layers without trained BN statistics: float32 sums drift, so the
        # check is on the whole tensor's relative error rather than the worst element
        assert np.linalg.norm(o - r) / np.linalg.norm(r) < 1e-4


# ---- the command line, run as a user runs it: `python -m prunekit` in a subprocess (issues 16.14, 17.1-17.3)

def cli(*args, cwd):
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "prunekit", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=600)


def one_line_error(result, pattern):
    import re
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert re.search(pattern, result.stderr), result.stderr


def sparse_small_graph(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p[torch.rand_like(p) < 0.9] = 0
    return ir.from_torch(model, torch.randn(1, 3, 6, 6))


def test_cli_convert_and_show_use_the_weights_beside_the_graph(tmp_path):
    """17.1: the sparse weights were replaced by random ones with exit 0."""
    graph = sparse_small_graph(tmp_path)
    ir.save(graph, tmp_path / "model.json", tmp_path / "model.safetensors")
    result = cli("convert", "model.json", "m2.onnx", cwd=tmp_path)
    assert result.returncode == 0 and "with the weights of" in result.stdout and not result.stderr, result.stderr
    assert zeros_of(ir.from_onnx(tmp_path / "m2.onnx")) == zeros_of(graph)
    shown = cli("ir", "show", "model.json", cwd=tmp_path)
    total = sum(v.size for v in graph.weights.values() if v.ndim >= 2)
    zeros = sum(int((v == 0).sum()) for v in graph.weights.values() if v.ndim >= 2)
    assert f"sparsity of weight matrices/kernels {zeros / total:.4f}" in shown.stdout and zeros / total > 0.8
    (tmp_path / "model.safetensors").unlink()
    one_line_error(cli("convert", "model.json", "m3.onnx", cwd=tmp_path),
                   r"'model.json' records its weights in 'model.safetensors', which does not exist.*--random-weights")
    one_line_error(cli("ir", "show", "model.json", cwd=tmp_path), r"records its weights in 'model.safetensors'")
    ir.save(graph, tmp_path / "bare.json")
    one_line_error(cli("convert", "bare.json", "m3.onnx", cwd=tmp_path),
                   r"no weights for 'bare.json'.*--random-weights")
    assert not (tmp_path / "m3.onnx").exists()
    assert cli("convert", "model.json", "m3.onnx", "--random-weights", cwd=tmp_path).returncode == 0


def test_cli_convert_leaves_nothing_when_it_fails(tmp_path):
    """16.14: out.json stayed behind after a bad --out-weights; an fp64 graph was written for onnxruntime to reject."""
    graph = sparse_small_graph(tmp_path)
    ir.save(graph, tmp_path / "g.json", tmp_path / "g.safetensors")
    one_line_error(cli("convert", "g.json", "out.json", "--out-weights", "out.bin", cwd=tmp_path),
                   r"--out-weights 'out.bin' must end with .safetensors or .npz")
    graph.weights = {k: v.astype(np.float64) for k, v in graph.weights.items()}
    ir.save(graph, tmp_path / "d.json", tmp_path / "d.safetensors")
    one_line_error(cli("convert", "d.json", "d.onnx", cwd=tmp_path), r"onnxruntime cannot run the exported model")
    one_line_error(cli("convert", "g.json", "g.onnx", "--input-shape", "1,4,6,6", cwd=tmp_path),
                   r"--input-shape 1,4,6,6 does not fit the graph: node 1 \(nn.conv2d\): input has 4 channels")
    assert sorted(os.listdir(tmp_path)) == ["d.json", "d.safetensors", "g.json", "g.safetensors"]


def prunekit_checkpoint(path, classes=10):
    """A checkpoint in the layout `prunekit train` writes (recipe.run): model, optimizers, recipe."""
    from prunekit.torch.models import SeedCNN
    torch.manual_seed(0)
    model = SeedCNN(classes=classes)
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, momentum=0.9, target_sparsity=0.8)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "models": {"pruned": model.state_dict()},
                "optimizers": {"pruned": opt.state_dict()}, "epoch": 1, "history": [],
                "recipe": {"model": "seed-cnn", "dataset": "synthetic"}}, path)
    return model.eval()


def test_cli_converts_prunekit_checkpoints(tmp_path):
    """17.3: `prunekit convert runs/train/checkpoint.pt x.onnx --arch seed-cnn` could not convert at all."""
    ort = pytest.importorskip("onnxruntime")
    model = prunekit_checkpoint(tmp_path / "checkpoint.pt", classes=7)
    result = cli("convert", "checkpoint.pt", "x.onnx", "--arch", "seed-cnn", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    x = torch.randn(3, 1, 28, 28)
    session = ort.InferenceSession(str(tmp_path / "x.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-5)
    one_line_error(cli("convert", "checkpoint.pt", "y.onnx", "--arch", "resnet18", cwd=tmp_path),
                   r"the checkpoint is a prunekit 'seed-cnn' run; --arch says 'resnet18'")


def test_cli_mismatched_checkpoints_are_one_line_errors(tmp_path):
    """17.3: a 10-class or 1-channel file for --arch resnet18 gave a `size mismatch` traceback."""
    torchvision = pytest.importorskip("torchvision")
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    one_line_error(cli("convert", "r18.pt", "r.onnx", "--arch", "resnet18", "--num-classes", "1000", cwd=tmp_path),
                   r"'r18.pt' does not fit torchvision resnet18 \(1000 classes\): "
                   r"fc.weight is \(10, 512\) in the file, "
                   r"\(1000, 512\) in the model")
    assert not (tmp_path / "r.onnx").exists()
    (tmp_path / "bin.json").write_bytes(bytes(range(256)))
    one_line_error(cli("ir", "show", "bin.json", cwd=tmp_path), r"'bin.json' is not an IR graph: a binary file")
    one_line_error(cli("ir", "show", "r18.pt", cwd=tmp_path), r"'r18.pt' is not an IR graph")


def test_cli_keras_file_opens_with_load_model(tmp_path):
    """17.2: a .keras file from convert opens with keras.models.load_model after `import prunekit.ir`; 16.14: the
    dilation of a conv2d_transpose survives to_keras. The graph uses both prunekit layers (BiasAdd, PadConstant)."""
    nodes = [{"node_id": 0, "node_type": "Var", "op_type": "Const", "shape": [1, 2, 7, 7]},
             {"node_id": 1, "op_type": "nn.conv2d_transpose", "inputs": [0, "t_weight"],
              "attrs": {"strides": [1, 1], "padding": [1, 1], "kernel_size": [3, 3], "W_shape": [2, 3, 3, 3],
                        "dilation": [2, 2], "channels": [3]}},
             {"node_id": 2, "op_type": "nn.bias_add", "inputs": [1, "t_bias"], "attrs": {"_shape": [3]}},
             {"node_id": 3, "op_type": "nn.max_pool2d", "inputs": [2],
              "attrs": {"pool_size": [3, 3], "strides": [2, 2], "padding": [1, 1]}}]
    path = write(tmp_path, nodes)
    graph = ir.load(path, weights="random")
    graph.weights["t_bias"] = np.arange(3, dtype=np.float32) - 1
    ir.save(graph, tmp_path / "t.json", tmp_path / "t.safetensors")
    result = cli("convert", "t.json", "t.keras", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    x = np.random.default_rng(0).standard_normal((2, 2, 7, 7)).astype(np.float32)
    (out,), _ = keras_in_subprocess(tmp_path / "t.keras", None, x, tmp_path)
    with torch.no_grad():
        ref = ir.to_torch(graph).eval()(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_import_prunekit_ir_imports_no_framework():
    """The Keras layers register lazily: `import prunekit.ir` must not pull in Keras, TensorFlow or torch."""
    import subprocess
    import sys
    code = ("import sys, prunekit.ir\n"
            "loaded = [m for m in ('keras', 'tensorflow', 'torch', 'onnx') if m in sys.modules]\n"
            "assert not loaded, loaded\n"
            "assert any(type(f).__name__ == '_KerasImportHook' for f in sys.meta_path)\n")
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
