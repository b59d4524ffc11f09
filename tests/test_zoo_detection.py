"""The small-ResNet zoo entries and the CenterNet detection example (examples/detection): offline, small."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from prunekit import zoo

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")  # the offline object source: scikit-learn's digits

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
DETECTION = os.path.join(ROOT, "examples", "detection")
RESNETS = ["small-resnet-fashion-mnist-dense", "small-resnet-fashion-mnist-95"]
DETECTORS = ["centernet-fashion-mnist-dense", "centernet-fashion-mnist-80"]


def _example(name, folder=DETECTION):
    if folder not in sys.path:
        sys.path.insert(0, folder)  # train.py imports its neighbours by name
    spec = importlib.util.spec_from_file_location(f"detection_{name}", os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the small ResNet entries -------------------------------------------------------------------------

def test_small_resnet_entries_are_residual_and_exactly_as_sparse_as_claimed():
    dense, sparse = (zoo.info(n) for n in RESNETS)
    assert dense.architecture == sparse.architecture == "small-resnet" and dense.sparsity == 0.0
    graph = zoo.load_graph(sparse.name)
    zeros, total = zoo.sparsity(graph, sparse.pruned)
    assert zeros / total == sparse.sparsity and abs(sparse.sparsity - 0.95) < 1e-3
    assert len(graph.find(op="add")) == 3 and graph.find(op="nn.global_avg_pool2d")  # one add per block
    assert not any("stem" in n for n in sparse.pruned) and any("shortcut" in n for n in sparse.pruned)
    for name in sparse.pruned:  # every pruned tensor near the target (unstructured, per tensor)
        assert abs(float((graph.weights[name] == 0).mean()) - 0.95) < 0.01, name


def test_small_resnet_builds_the_same_in_torch_and_onnx():
    ort = pytest.importorskip("onnxruntime")
    name = RESNETS[1]
    x = zoo.info(name).transforms()(np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28)).astype(np.uint8))
    expected = zoo.load(name).eval()(torch.from_numpy(x)).detach().numpy()
    proto = zoo.load(name, framework="onnx")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], expected, rtol=1e-4, atol=1e-4)


def test_small_resnet_traces_to_the_ir_with_its_residual_adds():
    import prunekit.ir as ir
    from prunekit.torch.models import SmallResNet
    model = SmallResNet(classes=3, blocks=2).eval()
    graph = ir.from_torch(model, torch.zeros(2, 1, 32, 32))  # from_torch compares the built graph's output
    assert len(graph.find(op="add")) == 6
    x = torch.rand(2, 1, 40, 40)  # any size: the stride-16 net pools globally
    torch.testing.assert_close(ir.to_torch(graph).eval()(x), model(x))


def test_transfer_example_takes_the_small_resnet(tmp_path):
    classify = _example("classify", os.path.join(ROOT, "examples", "transfer"))
    out = tmp_path / "summary.json"
    assert classify.main(["--backbone", RESNETS[1], "--dataset", "digits", "--epochs", "1", "--max-steps", "3",
                          "--batch-size", "16", "--test-subset", "32", "--json", str(out), "--quiet"]) == 0
    summary = json.loads(out.read_text())
    assert summary["same_zeros"] and summary["backbone_zeros_after"] == summary["backbone_zeros_before"] > 0


# --- detection ------------------------------------------------------------------------------------------

def test_synthetic_set_is_deterministic_coco_with_separate_boxes():
    synthetic = _example("synthetic")
    images, coco = synthetic.make("train", 12, seed=3, canvas=48, sizes=(12, 20), source="digits")
    again, coco2 = synthetic.make("train", 12, seed=3, canvas=48, sizes=(12, 20), source="digits")
    other, _ = synthetic.make("test", 12, seed=3, canvas=48, sizes=(12, 20), source="digits")
    assert np.array_equal(images, again) and coco == coco2 and not np.array_equal(images, other)
    assert images.shape == (12, 1, 48, 48) and images.dtype == np.uint8
    assert [c["name"] for c in coco["categories"]] == ["top", "footwear"]
    per_image = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 48 and y + h <= 48 and a["area"] == w * h and a["category_id"] in (1, 2)
        assert images[a["image_id"] - 1, 0, int(y):int(y + h), int(x):int(x + w)].max() > 25  # the object is there
        per_image.setdefault(a["image_id"], []).append(a["bbox"])
    assert set(per_image) == set(range(1, 13)) and max(len(b) for b in per_image.values()) <= 4
    for boxes in per_image.values():
        assert all(synthetic._iou(a, b) < 0.2 for i, a in enumerate(boxes) for b in boxes[:i])
    with pytest.raises(ValueError, match="split must be"):
        synthetic.make("val", 2, source="digits")


def test_decoder_finds_the_boxes_placed_in_a_heat_map():
    centernet = _example("centernet")
    boxes = {1: [(1, [8.0, 12.0, 16.0, 20.0]), (2, [36.0, 4.0, 24.0, 12.0])], 2: [(2, [20.0, 30.0, 10.0, 18.0])]}
    h = w = 16
    heat, size, offset = torch.zeros(2, 2, h, w), torch.zeros(2, 2, h, w), torch.zeros(2, 2, h, w)
    for image, placed in boxes.items():
        for category, (x, y, bw, bh) in placed:
            cx, cy = (x + bw / 2) / 4, (y + bh / 2) / 4
            ix, iy = int(cx), int(cy)
            heat[image - 1, category - 1, max(0, iy - 1):iy + 2, max(0, ix - 1):ix + 2] = 0.5  # a peak with shoulders
            heat[image - 1, category - 1, iy, ix] = 0.9
            size[image - 1, :, iy, ix] = torch.tensor([bw / 4, bh / 4])
            offset[image - 1, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
    found = centernet.decode(heat, size, offset, top_k=5, image_ids=[1, 2])
    assert len(found) == 3  # the shoulders are not peaks; empty cells score 0 and are dropped
    got = sorted((d["image_id"], d["category_id"], d["bbox"], d["score"]) for d in found)
    want = sorted((image, c, b, 0.9) for image, placed in boxes.items() for c, b in placed)
    for (gi, gc, gb, gs), (wi, wc, wb, ws) in zip(got, want):
        assert (gi, gc) == (wi, wc) and gs == pytest.approx(ws) and gb == pytest.approx(wb, abs=1e-3)


def test_targets_decode_back_to_the_annotations_with_ap_1():
    pytest.importorskip("pycocotools")
    centernet, synthetic = _example("centernet"), _example("synthetic")
    _, coco = synthetic.make("test", 20, canvas=64, source="digits")
    t = centernet.targets(coco, 64)
    n, _, h, w = t["heat"].shape
    size, offset = torch.zeros(n, 2, h, w), torch.zeros(n, 2, h, w)
    for i, j in zip(*np.nonzero(t["mask"])):
        cell = int(t["index"][i, j])
        size[i, :, cell // w, cell % w] = torch.from_numpy(t["size"][i, j])
        offset[i, :, cell // w, cell % w] = torch.from_numpy(t["offset"][i, j])
    found = centernet.decode(torch.from_numpy(t["heat"]), size, offset, 10, [im["id"] for im in coco["images"]])
    assert len(found) == len(coco["annotations"])
    assert centernet.coco_eval(coco, found) == {"map": pytest.approx(1.0), "map50": pytest.approx(1.0)}
    assert centernet.coco_eval(coco, []) == {"map": 0.0, "map50": 0.0}


def test_detection_example_trains_prunes_and_evaluates_end_to_end(tmp_path):
    pytest.importorskip("pycocotools")
    train = _example("train")
    out = tmp_path / "s.json"
    args = ["--source", "digits", "--train-images", "16", "--test-images", "4", "--canvas", "32", "--batch-size", "4",
            "--epochs", "1", "--max-steps", "4", "--ramp-fraction", "0.25", "--cache", str(tmp_path / "cache"),
            "--width", "16", "--json", str(out), "--quiet"]
    assert train.main(args + ["--target-sparsity", "0.8"]) == 0
    summary = json.loads(out.read_text())
    assert summary["steps"] == 4 and summary["ramp_steps"] == 1 and summary["same_zeros_after_ramp"] is True
    assert abs(summary["pruned_tensors_sparsity"] - 0.8) < 0.01 and 0 <= summary["map"] <= summary["map50"] <= 1
    assert summary["test_boxes"] > 0 and os.listdir(tmp_path / "cache")  # the synthetic sets were cached
    assert train.main(args + ["--backbone", RESNETS[1], "--keep-backbone-zeros"]) == 0  # read from the cache
    summary = json.loads(out.read_text())
    assert summary["pruned_tensors_sparsity"] == pytest.approx(zoo.info(RESNETS[1]).sparsity, abs=1e-3)


def test_detection_entries_build_three_headed_models_the_decoder_reads():
    import dataclasses

    from prunekit.zoo import detection
    assert [e.name for e in zoo.list("detection") if not e.user_weights] == DETECTORS
    dense, sparse = (zoo.info(n) for n in DETECTORS)
    assert dense.sparsity == 0.0 and abs(sparse.sparsity - 0.8) < 1e-3 and sparse.pruned
    assert not any("stem" in n or "neck" in n or "heatmap" in n for n in sparse.pruned)
    for e in (dense, sparse):
        assert e.task == "detection" and set(e.metrics) == {"map", "map50"} and e.dataset == detection.DATASET
        assert 0 < e.metrics["map"] < e.metrics["map50"] <= 1 and e.input["size"] == [64, 64]
    images = np.random.default_rng(0).integers(0, 256, (2, 1, 64, 64)).astype(np.uint8)
    with torch.no_grad():
        heat, size, offset = zoo.load(sparse.name).eval()(sparse.transforms()(torch.from_numpy(images)))
    assert heat.shape == size.shape == offset.shape == (2, 2, 16, 16)
    assert 0 <= float(heat.min()) <= float(heat.max()) <= 1
    found = detection.decode(heat, size, offset, top_k=5, image_ids=[7, 8])
    assert found and {d["image_id"] for d in found} <= {7, 8} and all(len(d["bbox"]) == 4 for d in found)
    with pytest.raises(zoo.ZooError, match="re-measured on 'fashion-mnist-detection'"):
        from prunekit.zoo.measure import evaluate
        evaluate(dataclasses.replace(sparse, dataset="coco"), limit=2)


def test_cli_keeps_the_small_resnets_stem_dense_by_default(capsys):
    from prunekit.cli import main
    assert main(["plan", "--model", "small-resnet", "--target-sparsity", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1.weight" in out and "fc.weight" in out
    assert not any(line.startswith("stem.0.weight") and "0.9000" in line for line in out.splitlines())
    assert main(["plan", "--model", "small-resnet", "--keywords-no-sparse", "bias"]) == 0
    assert any(line.startswith("stem.0.weight") and "0.9000" in line for line in capsys.readouterr().out.splitlines())


def test_convert_takes_a_small_resnet_state_dict(tmp_path):
    import prunekit.ir as ir
    from prunekit.cli import main
    from prunekit.torch.models import SmallResNet
    model = SmallResNet(classes=4).eval()
    torch.save(model.state_dict(), tmp_path / "r.pt")
    assert main(["convert", str(tmp_path / "r.pt"), str(tmp_path / "r.json"), "--arch", "small-resnet"]) == 0
    graph = ir.load(str(tmp_path / "r.json"), weights=str(tmp_path / "r.safetensors"))
    assert len(graph.find(op="add")) == 3
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(ir.to_torch(graph).eval()(x), model(x))
