"""The model zoo: its index, verified fetching (file:// and a local HTTP server), exact sparsity, the
claimed metric re-measured through transforms(), the CLI, and the sparse-transfer example."""

import hashlib
import http.server
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

from prunekit import zoo
from prunekit.core import parse_pattern
from prunekit.zoo import registry, store

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
TRAINED = [e for e in zoo.list() if not e.user_weights]
HAVE_FMNIST = os.path.isdir("/usr/share/datasets/fashion-mnist") or bool(os.environ.get("PRUNEKIT_DATA"))
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (scripts/setup.sh installs it)")
# the smallest bundled file: the one the download tests move around
SMALL = min(TRAINED, key=lambda e: e.files[0]["size"]).name


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PRUNEKIT_ZOO_URL", raising=False)
    return tmp_path / "home" / "zoo"


def _bundled(name):
    return os.path.join(registry.FILES_DIR, zoo.info(name).files[0]["name"])


def _cache_files(cache):
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


# --- the index ------------------------------------------------------------------------------------

def test_index_is_valid_and_every_bundled_file_matches():
    names = [e.name for e in zoo.list()]
    assert len(names) == len(set(names)) and len(TRAINED) >= 7
    for e in zoo.list():
        assert e.task in registry.TASKS and e.architecture and e.dataset and e.recipe and e.source and e.license
        parse_pattern(e.pattern)
        assert 0 <= e.sparsity < 1 and e.metrics and e.files
        assert set(e.metrics) <= {"top1", "map", "map50"}
        for spec in e.files:
            assert spec["bundled"]
            path = os.path.join(registry.FILES_DIR, spec["name"])
            with open(path, "rb") as f:
                data = f.read()
            assert len(data) == spec["size"] and hashlib.sha256(data).hexdigest() == spec["sha256"], spec["name"]
        e.transforms()
    published = [e for e in zoo.list() if e.user_weights]
    assert {e.metrics_origin for e in published} == {registry.PUBLISHED}
    assert {(e.sparsity, tuple(e.metrics.values())) for e in published} == {(0.95, (0.746,)), (0.8, (0.31,))}
    assert {e.metrics_origin for e in TRAINED} == {registry.MEASURED}
    # the bundled zoo stays small: 7.1 MB with the small ResNets and the two detectors
    assert sum(os.path.getsize(os.path.join(registry.FILES_DIR, f)) for f in os.listdir(registry.FILES_DIR)) < 8e6


def test_zoo_needs_numpy_only():
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {{'torch', 'tensorflow', 'keras', 'mxnet', 'jax', 'onnx'}}:
                    raise ImportError('blocked ' + name)
        sys.meta_path.insert(0, Block())
        from prunekit import zoo
        graph = zoo.load_graph({SMALL!r})
        print(len(graph.nodes), zoo.info({SMALL!r}).transforms()(np.zeros((1, 1, 8, 8), np.uint8)).shape)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(maxsplit=1)[1].strip() == "(1, 1, 28, 28)"


def test_list_by_task_and_unknown_names():
    assert {e.task for e in zoo.list("detection")} == {"detection"}
    with pytest.raises(zoo.ZooError, match=f"no zoo entry '{SMALL}x'; did you mean '{SMALL}'"):
        zoo.info(SMALL + "x")
    with pytest.raises(zoo.ZooError, match="task must be one of classification, detection; got 'segmentation'"):
        zoo.list("segmentation")
    with pytest.raises(zoo.ZooError, match="framework must be one of torch, ir, onnx, keras; got 'jax'"):
        zoo.load(SMALL, framework="jax")


# --- fetching ------------------------------------------------------------------------------------

def test_fetch_bundled_then_from_file_url(home, tmp_path):
    assert zoo.fetch(SMALL) == _bundled(SMALL) and _cache_files(home) == []
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(_bundled(SMALL), mirror)
    path = zoo.fetch(SMALL, url=mirror.as_uri())
    assert path == str(home / os.path.basename(_bundled(SMALL))) and _cache_files(home) == [os.path.basename(path)]
    assert store.sha256_file(path) == zoo.info(SMALL).files[0]["sha256"]


def test_fetch_wrong_hash_names_both_and_leaves_nothing(home, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    name = os.path.basename(_bundled(SMALL))
    data = bytearray(open(_bundled(SMALL), "rb").read())
    data[-1] ^= 1
    (mirror / name).write_bytes(bytes(data))
    expected = zoo.info(SMALL).files[0]["sha256"]
    with pytest.raises(zoo.IntegrityError) as err:
        zoo.fetch(SMALL, url=mirror.as_uri() + "/")
    message = str(err.value)
    assert name in message and expected in message and hashlib.sha256(data).hexdigest() in message
    assert _cache_files(home) == []


def test_a_corrupted_cached_file_is_caught_at_load(home, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(_bundled(SMALL), mirror)
    path = zoo.fetch(SMALL, url=mirror.as_uri())
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    spec = dict(zoo.info(SMALL).files[0], bundled=False)
    with pytest.raises(zoo.IntegrityError, match="does not match the index's"):
        store.fetch_file(SMALL, spec)
    assert store.fetch_file(SMALL, spec, url=mirror.as_uri()) == path  # a mirror repairs it


def test_no_mirror_and_no_network_say_what_to_do(home):
    spec = dict(zoo.info(SMALL).files[0], bundled=False)
    with pytest.raises(zoo.DownloadError, match="neither bundled nor in the cache .* set PRUNEKIT_ZOO_URL"):
        store.fetch_file(SMALL, spec)
    with pytest.raises(zoo.DownloadError, match=r"downloading http://127\.0\.0\.1:9/zoo/.* failed .*PRUNEKIT_ZOO_URL"):
        store.fetch_file(SMALL, spec, url="http://127.0.0.1:9/zoo/")
    with pytest.raises(zoo.DownloadError, match="scheme must be one of http, https, file"):
        store.fetch_file(SMALL, spec, url="ftp://example.org/zoo/")
    assert _cache_files(home) == []


class _Mirror(http.server.BaseHTTPRequestHandler):
    files, truncate = {}, False

    def do_GET(self):
        data = self.files.get(self.path.rsplit("/", 1)[-1])
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2] if self.truncate else data)
        if self.truncate:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/zoo/"
    httpd.shutdown()
    httpd.server_close()
    _Mirror.files, _Mirror.truncate = {}, False


def test_fetch_over_http_from_the_mirror_variable(home, server, monkeypatch):
    httpd, url = server
    name = os.path.basename(_bundled(SMALL))
    good = open(_bundled(SMALL), "rb").read()
    spec = dict(zoo.info(SMALL).files[0], bundled=False)
    _Mirror.files = {name: good[:-10]}  # a mirror holding a shortened copy: the hash check catches it
    with pytest.raises(zoo.IntegrityError, match=f"{name} downloaded from {url}{name}: sha256 .*nothing was kept"):
        store.fetch_file(SMALL, spec, url=url)
    assert _cache_files(home) == []
    _Mirror.files, _Mirror.truncate = {name: good}, True  # the connection drops halfway
    with pytest.raises((zoo.DownloadError, zoo.IntegrityError)):
        store.fetch_file(SMALL, spec, url=url)
    assert _cache_files(home) == []
    _Mirror.truncate = False
    monkeypatch.setenv("PRUNEKIT_ZOO_URL", url)
    path = store.fetch_file(SMALL, spec)
    assert open(path, "rb").read() == good and _cache_files(home) == [name]


# --- what is in the files ------------------------------------------------------------------------

def _banks_equal(weight, bank, keep=None):
    rows = np.moveaxis(weight, 1, -1).reshape(-1, weight.shape[1] // bank, bank)
    counts = np.count_nonzero(rows, axis=-1)
    return (counts == counts.flat[0]).all() and (keep is None or (counts == keep).all())


@pytest.mark.parametrize("entry", TRAINED, ids=[e.name for e in TRAINED])
def test_loaded_entry_has_exactly_its_claimed_sparsity_and_pattern(entry):
    graph = zoo.load_graph(entry.name)
    zeros, total = zoo.sparsity(graph, entry.pruned) if entry.pruned else (0, 1)
    assert zeros / total == entry.sparsity
    if entry.sparsity:
        assert entry.pruned and all((graph.weights[n] == 0).any() for n in entry.pruned)
    for n in entry.pruned:
        if entry.pattern == "bank64":
            assert _banks_equal(graph.weights[n], 64, keep=64 - round(0.95 * 64)), n
        if entry.pattern == "2:4":
            assert _banks_equal(graph.weights[n], 4, keep=2), n


def test_zoo_files_are_prunekit_sparse_files():
    torch = pytest.importorskip("torch")
    from prunekit.torch import load_sparse
    state = load_sparse(_bundled(SMALL))
    graph = zoo.load_graph(SMALL)
    assert set(state) == set(graph.weights)
    assert all(torch.equal(state[k], torch.from_numpy(v)) for k, v in graph.weights.items())


def test_pack_unpack_round_trip_is_exact(tmp_path):
    import prunekit.ir as ir
    graph = zoo.load_graph(SMALL)
    graph.weights["conv2_weight"].flat[:5] = [-0.0, np.nan, 0.0, 1.5, -0.0]
    zoo.pack(graph, tmp_path / "x.safetensors", {"name": "x"})
    document, weights, description = zoo.unpack(tmp_path / "x.safetensors")
    assert description == {"name": "x"} and set(weights) == set(graph.weights)
    for k, v in graph.weights.items():
        assert v.tobytes() == weights[k].tobytes(), k  # bit for bit: NaN and -0.0 included
    assert ir.load(document, weights=weights).outputs == graph.outputs


def test_transforms_numpy_and_torch_agree_and_reject_bad_input():
    torch = pytest.importorskip("torch")
    t = zoo.Transform((28, 28), channels=3, mean=[0.5] * 3, std=[0.2] * 3)
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 17, 40)).astype(np.uint8)
    np.testing.assert_allclose(t(x), t(torch.from_numpy(x)).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="takes a batch"):
        t(x[0])
    with pytest.raises(ValueError, match="an NHWC batch"):
        t(np.zeros((2, 28, 28, 1), np.uint8))


@needs_fmnist
@pytest.mark.parametrize("entry", TRAINED, ids=[e.name for e in TRAINED])
def test_transforms_and_model_reproduce_the_claimed_metric_on_a_slice(entry):
    pytest.importorskip("torch")
    if entry.task == "detection":
        pytest.importorskip("pycocotools")
    measured = zoo.evaluate(entry.name, limit=entry.check["first"])
    assert measured["examples"] == entry.check["first"]
    keys = [k for k in ("top1", "map", "map50") if k in entry.check]
    assert keys and set(keys) == set(entry.metrics)
    for key in keys:  # one image's worth for accuracy; AP is re-measured on the same canvases, deterministically
        tolerance = 1.01 / entry.check["first"] if key == "top1" else 2e-3
        assert measured[key] == pytest.approx(entry.check[key], abs=tolerance), key


def test_onnx_build_matches_torch():
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    proto = zoo.load(SMALL, framework="onnx")
    model = zoo.load(SMALL).eval()
    x = zoo.info(SMALL).transforms()(np.random.default_rng(1).integers(0, 256, (3, 1, 28, 28)).astype(np.uint8))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_published_entries_need_the_users_weights(tmp_path):
    name = "resnet50v1d-imagenet-95-original"
    with pytest.raises(zoo.ZooError, match="pass weights=PATH"):
        zoo.load(name)
    import prunekit.ir as ir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = ir.load(zoo.fetch(name), weights="random")
    np.savez(tmp_path / "w.npz", **graph.weights)
    loaded = zoo.load(name, framework="ir", weights=str(tmp_path / "w.npz"))
    assert len(loaded.nodes) == 187 and loaded.weights.keys() == graph.weights.keys()
    with pytest.raises(zoo.ZooError, match="ships its own weights"):
        zoo.load(SMALL, weights=str(tmp_path / "w.npz"))
    with pytest.raises(zoo.ZooError, match="cannot be re-measured here"):
        zoo.evaluate(name)


# --- the command line ----------------------------------------------------------------------------

def _cli(*args, env=None):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "prunekit", "zoo", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)


def test_cli_list_info_fetch(tmp_path):
    out = _cli("list")
    assert out.returncode == 0 and SMALL in out.stdout and "published by the original" in out.stdout
    out = _cli("info", SMALL)
    assert out.returncode == 0 and "sha256" in out.stdout and "Transform(size=(28, 28)" in out.stdout
    out = _cli("info", "seed-cnn-fashion-mnist-96")
    assert out.returncode == 2 and "did you mean" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = _cli("verify", "resnet50v1d-imagenet-95-original")
    assert out.returncode == 2 and "published by the original tool" in out.stderr
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(_bundled(SMALL), mirror)
    out = _cli("fetch", SMALL, "--url", mirror.as_uri(), env={"PRUNEKIT_HOME": str(tmp_path / "home")})
    assert out.returncode == 0 and out.stdout.strip() == str(tmp_path / "home" / "zoo" / os.path.basename(_bundled(SMALL)))


@needs_fmnist
def test_cli_verify_quick():
    out = _cli("verify", SMALL, "--quick")
    assert out.returncode == 0, out.stderr
    assert "MISMATCH" not in out.stdout and ": OK" in out.stdout


@needs_fmnist
def test_cli_verify_exits_1_when_the_claim_is_off(monkeypatch, capsys):
    import dataclasses

    from prunekit.cli import main
    entry = zoo.info(SMALL)
    wrong = dataclasses.replace(entry, check=dict(entry.check, top1=entry.check["top1"] - 0.006))
    monkeypatch.setattr(registry, "find", lambda name: wrong)
    monkeypatch.setattr(zoo, "find", lambda name: wrong)
    assert main(["zoo", "verify", SMALL, "--quick"]) == 1
    assert "OFF by 0.60 points" in capsys.readouterr().out


# --- sparse transfer -----------------------------------------------------------------------------

def _classify():
    spec = importlib.util.spec_from_file_location("classify", os.path.join(ROOT, "examples", "transfer", "classify.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source", ["zoo", "ir", "pt"])
def test_transfer_example_keeps_the_backbones_zeros(tmp_path, source):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    classify = _classify()
    backbone = "seed-cnn-fashion-mnist-0to4-95"
    args = ["--backbone", backbone]
    if source == "ir":
        import prunekit.ir as ir
        ir.save(zoo.load_graph(backbone), tmp_path / "b.json", tmp_path / "b.safetensors")
        args = ["--backbone", str(tmp_path / "b.json"), "--weights", str(tmp_path / "b.safetensors")]
    if source == "pt":  # a `prunekit train` checkpoint, half of conv2 zeroed
        from prunekit.torch.models import SeedCNN
        model = SeedCNN(classes=5)
        with torch.no_grad():
            model.conv2.weight[::2] = 0
        torch.save({"model": model.state_dict(), "recipe": {"model": "seed-cnn"}}, tmp_path / "b.pt")
        args = ["--backbone", str(tmp_path / "b.pt")]
    out = tmp_path / "summary.json"
    assert classify.main(args + ["--dataset", "digits", "--epochs", "1", "--max-steps", "4", "--batch-size", "32",
                                 "--test-subset", "64", "--json", str(out), "--quiet"]) == 0
    summary = json.loads(out.read_text())
    assert summary["steps"] == 4 and summary["classes"] == 10 and summary["input_size"] == 28
    assert summary["same_zeros"] and summary["backbone_zeros_after"] == summary["backbone_zeros_before"] > 0


def test_readme_fine_tuning_keeps_every_zero():
    torch = pytest.importorskip("torch")
    import prunekit.torch as pruning
    backbone = zoo.load(SMALL, features_only=True)
    assert backbone.num_features == 1024
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, 5))
    zeros = {n: p.detach() == 0 for n, p in model.named_parameters()}
    optimizer = pruning.SGDSparse(model.named_parameters(), lr=0.05, momentum=0.9,
                                  restore_sparsity=True, fix_sparsity=True)
    images = np.random.default_rng(0).integers(0, 256, (16, 1, 28, 28)).astype(np.uint8)
    x, y = zoo.info(SMALL).transforms()(torch.from_numpy(images)), torch.arange(16) % 5
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert all(torch.equal(p.detach() == 0, zeros[n]) for n, p in model.named_parameters())
    with pytest.raises(zoo.ZooError, match="features_only=True builds a torch module"):
        zoo.load(SMALL, framework="onnx", features_only=True)


def test_transfer_example_names_an_input_size_the_backbone_cannot_take(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    args = ["--backbone", "seed-cnn-fashion-mnist-0to4-95", "--dataset", "digits", "--input-size", "32", "--quiet"]
    assert _classify().main(args) == 2
    assert "does not run on 32x32 input (--input-size)" in capsys.readouterr().err
