"""Sparse inference: equal outputs, and a sparse kernel only where the measurement says it is faster."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

import prunekit.torch as pruning  # noqa: E402
from prunekit.torch.inference import SparseConv2d, SparseLinear  # noqa: E402
from prunekit.torch.models import SeedCNN  # noqa: E402


def pruned_cnn(sparsity=0.9):
    torch.manual_seed(0)
    model = SeedCNN().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p[torch.rand_like(p) < sparsity] = 0
    return model


@pytest.mark.parametrize("kernel", ["scipy-csr", "torch-csr"])
@pytest.mark.parametrize("batch", [1, 5])
def test_sparse_layers_equal_dense(kernel, batch):
    model = pruned_cnn()
    x = torch.randn(batch, 1, 28, 28)
    with torch.no_grad():
        for conv in (model.conv2, torch.nn.Conv2d(64, 32, 3, stride=1, padding=2, dilation=2)):
            h = torch.randn(batch, 64, 13, 13)
            d, s = conv(h), SparseConv2d(conv, kernel)(h)
            assert s.shape == d.shape and float((s - d).norm() / d.norm()) < 1e-5
        d, s = model.linear1(torch.randn(batch, 1024)), None
        lin = model.linear1
        h = torch.randn(batch, 1024)
        s = SparseLinear(lin, kernel)(h)
        assert float((s - lin(h)).norm() / lin(h).norm()) < 1e-5
    assert model(x).shape == (batch, 10)


def test_chooses_by_measurement_only():
    model = pruned_cnn()
    x = torch.randn(2, 1, 28, 28)
    def timer(fn):
        # candidates are timed through a lambda over a SparseLinear/SparseConv2d: look it up
        cand = fn.__defaults__[0] if fn.__defaults__ else None
        return 1.0 if cand is not None and cand.kernel == "scipy-csr" else 10.0
    fast, report = pruning.sparsify_for_inference(model, x, kernels=("scipy-csr", "torch-csr"), timer=timer)
    assert {r["chosen"] for r in report} == {"scipy-csr"}
    assert isinstance(fast.linear1, SparseLinear) and isinstance(fast.conv2, SparseConv2d)
    with torch.no_grad():
        assert float((fast(x) - model(x)).norm() / model(x).norm()) < 1e-5

    slow, report = pruning.sparsify_for_inference(model, x, timer=lambda fn: 5.0)  # never faster
    assert {r["chosen"] for r in report} == {"dense"}
    assert isinstance(slow.linear1, torch.nn.Linear)
    assert isinstance(model.linear1, torch.nn.Linear), "the original model is not modified"


def test_report_lists_unavailable_kernels():
    model = pruned_cnn()
    _, report = pruning.sparsify_for_inference(model, torch.randn(1, 1, 28, 28),
                                               kernels=("scipy-csr", "semi-structured"), timer=lambda fn: 1.0)
    row = next(r for r in report if r["name"] == "linear1")
    assert row["density"] == pytest.approx(0.1, abs=0.03)
    assert isinstance(row["candidates"]["scipy-csr"], float)  # it ran (and timed 1.0 like dense: not chosen)
    if not torch.cuda.is_available():
        assert row["candidates"]["semi-structured"].startswith("unavailable: 2:4 semi-structured kernels need CUDA")
    assert row["chosen"] == "dense"


def test_a_model_that_is_one_layer_is_replaced():
    layer = torch.nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < 0.9] = 0
    fast, report = pruning.sparsify_for_inference(layer, torch.randn(1, 64), kernels=("scipy-csr",),
                                                  timer=lambda fn: 1.0 if fn.__defaults__ else 10.0)
    assert report[0]["chosen"] == "scipy-csr" and isinstance(fast, SparseLinear)
