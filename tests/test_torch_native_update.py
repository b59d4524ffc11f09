"""The native updates behind the default SGDSparse / AdamSparse / AdamWSparse step on CPU (``pk_sgd``,
``pk_adam``): SGD equals torch's single-tensor SGD bit for bit in every configuration and at every tail
size; with a mask, weights and state come out +0.0 wherever it prunes whatever went in (NaN, -0.0, a
value never zeroed), and the gradient too only when asked; bad arrays are refused by name."""

import itertools

import numpy as np
import pytest
import torch

from prunekit.core import native

pytestmark = pytest.mark.skipif(native.kernels() is None,
                                reason="no AVX2/FMA CPU or C compiler here (or PRUNEKIT_NATIVE=0)")

SIZES = (1, 7, 63, 64, 65, 1000, (1 << 20) + 37)  # tails of every length, and a tensor split into two jobs
SGD_CONFIGS = [dict(weight_decay=wd, momentum=mom, dampening=damp, nesterov=nest, maximize=maxi)
               for wd, mom, damp, nest, maxi in itertools.product((0.0, 1e-3), (0.0, 0.9), (0.0, 0.1), (False, True),
                                                                  (False, True))
               if not (nest and (mom == 0 or damp != 0))]  # torch refuses Nesterov without momentum or with dampening


def _bits(t):
    return t.detach().contiguous().view(torch.int32)


def _zeroed(t, keep):
    """``t`` with +0.0 wherever ``keep`` is False, every other bit unchanged."""
    out = t.detach().clone()
    out.view(torch.int32)[~keep] = 0
    return out


def _hyper(config, lr):
    return dict(config, lr=lr)


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_equals_torch_single_tensor_sgd_bit_for_bit(config):
    for n in SIZES:
        g = torch.Generator().manual_seed(n)
        p = torch.nn.Parameter(torch.randn(n, generator=g))
        opt = torch.optim.SGD([p], lr=0.05, foreach=False, **config)
        p.grad = torch.randn(n, generator=g)
        opt.step()  # the first step makes the buffer (a copy of the gradient): torch's own
        w = p.detach().clone()
        buf = opt.state[p].get("momentum_buffer")
        buf = None if buf is None else buf.clone()
        for _ in range(2):
            p.grad = torch.randn(n, generator=g)
            grad = p.grad.clone()
            opt.step()
            native.sgd_steps([(w.numpy(), grad.numpy(), None if buf is None else buf.numpy(), None, False)],
                             [_hyper(config, 0.05)], threads=2)
            assert torch.equal(_bits(w), _bits(p)), (n, config)
            if buf is not None:
                assert torch.equal(_bits(buf), _bits(opt.state[p]["momentum_buffer"])), (n, config)


@pytest.mark.parametrize("zero_grad", [False, True])
@pytest.mark.parametrize("kind", ["sgd", "sgd-nesterov-decay", "adam", "adamw"])
def test_a_mask_writes_plus_zero_wherever_it_prunes(kind, zero_grad):
    """Kept entries as without a mask, bit for bit; pruned ones +0.0 in weights and state whatever they held
    (NaN, inf, -0.0, any value), and in the gradient only with ``zero_grad``."""
    n = 4099
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(n, generator=g) > 0.4
    keep[:64] = True  # a chunk with nothing pruned
    tensors = [torch.randn(n, generator=g) for _ in range(4)]
    tensors[3].abs_()  # a second moment
    pruned = (~keep).nonzero().view(-1)
    for t, value in zip(tensors, (float("nan"), float("inf"), -0.0, 5.0)):
        t[pruned[::3]] = value
    tensors[1][pruned[1::3]] = -0.0  # a gradient whose pruned entry is -0.0 (not +0.0: rewritten)
    plain = [t.clone() for t in tensors]
    masked = [t.clone() for t in tensors]
    mask = keep.to(torch.uint8).numpy()
    if kind.startswith("sgd"):
        config = dict(weight_decay=1e-3, momentum=0.9, dampening=0.0, nesterov=True, maximize=False) \
            if kind == "sgd-nesterov-decay" else dict(weight_decay=0.0, momentum=0.9, dampening=0.1, nesterov=False,
                                                      maximize=True)
        for ts, m, zg in ((plain, None, False), (masked, mask, zero_grad)):
            native.sgd_steps([(ts[0].numpy(), ts[1].numpy(), ts[2].numpy(), m, zg)], [_hyper(config, 0.1)])
        state = (2,)
    else:
        hyper = dict(decay_mul=0.999 if kind == "adamw" else 1.0, l2=0.0 if kind == "adamw" else 0.01, beta1=0.9,
                     beta2=0.999, neg_step=-0.01, bc2_sqrt=0.05, eps=1e-8, maximize=False)
        for ts, m, zg in ((plain, None, False), (masked, mask, zero_grad)):
            native.adam_steps([(ts[0].numpy(), ts[1].numpy(), ts[2].numpy(), ts[3].numpy(), m, zg)], [hyper])
        state = (2, 3)
    for i in (0,) + state:
        assert torch.equal(_bits(masked[i]), _bits(_zeroed(plain[i], keep))), i
    expected_grad = _zeroed(tensors[1], keep) if zero_grad else tensors[1]
    assert torch.equal(_bits(masked[1]), _bits(expected_grad))


def test_bad_arrays_are_refused_by_name():
    w = np.zeros(10, np.float32)
    config = _hyper(dict(weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=False, maximize=False), 0.1)
    with pytest.raises(ValueError, match="float64"):
        native.sgd_steps([(w, np.zeros(10), w.copy(), None, False)], [config])
    with pytest.raises(ValueError, match="mask #0"):
        native.sgd_steps([(w, w.copy(), w.copy(), np.ones(9, np.uint8), False)], [config])
    with pytest.raises(ValueError, match="momentum buffer"):
        native.sgd_steps([(w, w.copy(), None, None, False)], [config])
    read_only = w.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        native.adam_steps([(read_only, w.copy(), w.copy(), w.copy(), None, False)], [{}])


def test_without_momentum_an_existing_buffer_is_only_masked():
    """A schedule may take momentum to 0: torch then leaves the buffer as it is, and so does the kernel,
    except that a mask writes +0.0 into it wherever it prunes."""
    n = 1000
    g = torch.Generator().manual_seed(2)
    w, grad, buf = (torch.randn(n, generator=g) for _ in range(3))
    keep = torch.rand(n, generator=g) > 0.5
    config = _hyper(dict(weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False, maximize=False), 0.1)
    for mask in (None, keep.to(torch.uint8).numpy()):
        b = buf.clone()
        native.sgd_steps([(w.clone().numpy(), grad.numpy(), b.numpy(), mask, False)], [config])
        assert torch.equal(_bits(b), _bits(buf if mask is None else _zeroed(buf, keep)))
