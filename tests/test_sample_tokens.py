"""clusterfusion.sample_tokens: the kept set and the draw against a float64
reference, the frequencies it samples, the CUDA kernel against the CPU backend
(the same tokens, bit for bit), CUDA graphs, the op contract and bad input."""

from __future__ import annotations

import pytest
import torch

import clusterfusion
from conftest import gpu

OP = torch.ops.clusterfusion.sample_tokens
PROBS = [0.05, 0.5, 0.3, 0.15]


def _devices():
    return ["cpu", pytest.param("cuda", marks=gpu)]


def _settings(rows, device, temperature=1.0, top_k=0, top_p=1.0, uniform=None):
    def full(value, dtype):
        return torch.as_tensor(value, dtype=dtype, device=device).reshape(-1).expand(rows).contiguous()

    uniform = torch.rand(rows, device=device) if uniform is None else full(uniform, torch.float32)
    return uniform, full(temperature, torch.float32), full(top_k, torch.long), full(top_p, torch.float32)


def _reference(logits, uniform, temperature, top_k, top_p):
    """The rule in float64 per row, and how far each row's thresholds lie from
    a probability boundary (where rounding may decide)."""
    tokens, margins = [], []
    for row in range(logits.shape[0]):
        scores = logits[row].double() / float(temperature[row])
        order = torch.sort(scores, descending=True, stable=True).indices
        probs = torch.softmax(scores[order], 0)
        cumulative = probs.cumsum(0)
        k = int(top_k[row]) if int(top_k[row]) > 0 else len(order)
        by_mass = int((cumulative < float(top_p[row])).sum()) + 1
        kept = max(1, min(k, by_mass, len(order)))
        target = float(uniform[row]) * float(cumulative[kept - 1])
        choice = min(int((cumulative[:kept] <= target).sum()), kept - 1)
        tokens.append(int(order[choice]))
        # Only the cumulatives that can end the kept prefix or the draw decide.
        margins.append(min((cumulative[: k + 1] - float(top_p[row])).abs().min(), (cumulative[:kept] - target).abs().min()))
    return torch.tensor(tokens), torch.tensor(margins)


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("vocab", [1, 7, 1000, 50304])
def test_matches_float64_reference(device, dtype, vocab):
    rows = 24
    logits = (torch.randn(rows, vocab) * 3).to(dtype)
    settings = _settings(rows, "cpu", temperature=torch.rand(rows) * 1.5 + 0.3,
                         top_k=torch.randint(0, 60, (rows,)), top_p=torch.rand(rows) * 0.9 + 0.1)
    expected, margins = _reference(logits, *settings)
    got = OP(logits.to(device), *(s.to(device) for s in settings)).cpu()
    checked = margins > 1e-5  # closer, the op's float32 scores and fixed point may round apart
    assert checked.float().mean() >= 0.75
    assert torch.equal(got[checked], expected[checked])


@pytest.mark.parametrize("device", _devices())
def test_samples_the_distribution(device):
    n = 4000
    logits = torch.log(torch.tensor([PROBS])).expand(n, 4).to(device)
    tokens = clusterfusion.sample_tokens(logits, generator=torch.Generator(device).manual_seed(11)).cpu()
    freq = torch.bincount(tokens, minlength=4).double() / n
    assert (freq - torch.tensor(PROBS, dtype=torch.double)).abs().max() < 0.03
    assert set(clusterfusion.sample_tokens(logits[:300], top_p=0.75).tolist()) == {1, 2}  # 0.5 + 0.3 reach it
    assert set(clusterfusion.sample_tokens(logits[:300], top_k=3).tolist()) == {1, 2, 3}


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize(
    "top_k, top_p, expected",
    [
        (0, 1.0, PROBS),
        (0, 0.75, [0.0, 0.5 / 0.8, 0.3 / 0.8, 0.0]),  # renormalized over the nucleus
        (3, 1.0, [0.0, 0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95]),
        (1, 0.75, [0.0, 1.0, 0.0, 0.0]),
        (0, 0.01, [0.0, 1.0, 0.0, 0.0]),  # the most likely token is always kept
    ],
)
def test_inverts_the_kept_distribution(device, top_k, top_p, expected):
    n = 2000
    uniform = ((torch.arange(n) + 0.5) / n).to(device)  # evenly spaced: the frequencies are exact to 1 / n
    logits = torch.log(torch.tensor([PROBS])).expand(n, 4).to(device)
    tokens = clusterfusion.sample_tokens(logits, uniform, top_k=top_k, top_p=top_p).cpu()
    freq = torch.bincount(tokens, minlength=4).double() / n
    assert (freq - torch.tensor(expected, dtype=torch.double)).abs().max() <= 2 / n


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_top_k_1_and_non_positive_temperature_pick_the_first_maximum(device, dtype):
    rows, vocab = 16, 5000
    logits = torch.randint(-3, 3, (rows, vocab)).to(dtype).to(device)  # many tied maxima: the first wins
    first_max = logits.float().argmax(-1).cpu()
    assert torch.equal(clusterfusion.sample_tokens(logits, top_k=1).cpu(), first_max)
    settings = _settings(rows, device, temperature=torch.tensor([0.0, -1.0, float("nan"), 0.0]).repeat(4))
    assert torch.equal(OP(logits, *settings).cpu(), first_max)


@pytest.mark.parametrize("device", _devices())
def test_ties_rank_by_index_and_dead_rows_pick_the_first_token(device):
    # Four tokens of equal probability, then nothing: top_p = 0.5 keeps the first two by index.
    logits = torch.full((3, 64), float("-inf"))
    logits[:2, [40, 3, 17, 9]] = 0.0
    uniform = torch.tensor([0.1, 0.9, 0.5])
    tokens = clusterfusion.sample_tokens(logits.to(device), uniform.to(device), top_p=0.5).cpu()
    assert tokens.tolist() == [3, 9, 0]  # the third row has no probability anywhere


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("vocab", [1, 50, 4097, 50304, 50432, 262144])
@pytest.mark.parametrize("spread", ["normal", "ties"])
def test_cuda_picks_the_cpu_backends_tokens(dtype, vocab, spread):
    rows = 32
    if spread == "ties":  # few distinct values: ties at the boundaries, the slice scan for ranks above 1
        logits = torch.randint(-4, 4, (rows, vocab)).to(dtype)
    else:
        logits = (torch.randn(rows, vocab) * torch.rand(rows, 1) * 8).to(dtype)
        logits[0, : vocab // 2] = float("-inf")
    settings = _settings(rows, "cpu", temperature=torch.rand(rows) * 2 + 0.05,
                         top_k=torch.randint(0, 3, (rows,)) * torch.randint(0, 100, (rows,)),
                         top_p=torch.where(torch.rand(rows) < 0.3, torch.ones(rows), torch.rand(rows)))
    expected = OP(logits, *settings)
    got = OP(logits.cuda(), *(s.cuda() for s in settings))
    assert torch.equal(got.cpu(), expected)
    assert torch.equal(OP(logits.cuda(), *(s.cuda() for s in settings)), got)  # run to run


@gpu
def test_rows_too_long_for_shared_memory_are_read_from_global_memory():
    # 600k fp32 logits: each CTA's slice (300 KB) exceeds any GPU's shared memory.
    logits = torch.randn(2, 600_001) * 3
    settings = _settings(2, "cpu", top_k=torch.tensor([0, 40]), top_p=torch.tensor([0.9, 1.0]))
    got = OP(logits.cuda(), *(s.cuda() for s in settings))
    assert torch.equal(got.cpu(), OP(logits, *settings))


@gpu
def test_settings_are_read_on_the_device_inside_a_cuda_graph():
    logits = torch.randn(1, 50304, device="cuda", dtype=torch.float16) * 4
    settings = _settings(1, "cuda", temperature=1.0, top_k=0, top_p=0.9, uniform=0.5)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        OP(logits, *settings)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = OP(logits, *settings)
    for _ in range(5):
        for s, value in zip(settings, (torch.rand(()), torch.rand(()) + 0.2, torch.randint(0, 50, ()), torch.rand(()))):
            s.fill_(value)
        logits.normal_().mul_(4)
        out.fill_(-1)
        graph.replay()
        assert torch.equal(out.cpu(), OP(logits.cpu(), *(s.cpu() for s in settings)))


@pytest.mark.parametrize("device", _devices())
def test_opcheck_and_compile(device):
    logits = torch.randn(3, 2, 500, device=device)
    settings = _settings(6, device, top_p=0.8)
    torch.library.opcheck(OP, (logits, *settings))
    compiled = torch.compile(lambda x: clusterfusion.sample_tokens(x, settings[0], top_p=settings[3]), fullgraph=True)
    assert torch.equal(compiled(logits), OP(logits, *settings).view(3, 2))


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(logits=torch.zeros(3, 0)), ValueError, r"'logits' must be \[..., vocab\] with vocab >= 1"),
        (dict(logits=torch.zeros(3, 10, dtype=torch.int32)), TypeError, "'logits' has dtype Int"),
        (dict(uniform=torch.zeros(2)), ValueError, r"'uniform' must hold one value or one per row \(3\)"),
        (dict(temperature=torch.ones(1, dtype=torch.float64)), TypeError, "'temperature' must be Float"),
        (dict(top_k=torch.ones(1)), TypeError, "'top_k' must be Long"),
        (dict(top_p=torch.ones(3, 1, 2)), ValueError, "'top_p' must hold one value or one per row"),
    ],
)
def test_bad_arguments_name_the_argument(change, error, message):
    args = dict(logits=torch.zeros(3, 10), uniform=torch.zeros(1), temperature=torch.ones(1),
                top_k=torch.zeros(1, dtype=torch.long), top_p=torch.ones(1))
    args.update(change)
    with pytest.raises(error, match=message):
        OP(*args.values())


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(temperature=0.0), ValueError, "'temperature' must be > 0"),
        (dict(top_p=0.0), ValueError, "'top_p' must be > 0"),
        (dict(top_p=1.5), ValueError, r"'top_p' must be in \(0, 1\]"),
        (dict(top_k=2.0), TypeError, "'top_k' must be an int or a tensor"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, error, message):
    with pytest.raises(error, match=message):
        clusterfusion.sample_tokens(torch.zeros(2, 10), **kwargs)


@gpu
def test_settings_on_another_device_are_refused():
    logits = torch.zeros(2, 10, device="cuda")
    with pytest.raises(ValueError, match="'top_p' is on cpu; expected cuda:0 like 'logits'"):
        OP(logits, torch.zeros(1, device="cuda"), torch.ones(1, device="cuda"),
           torch.zeros(1, dtype=torch.long, device="cuda"), torch.ones(1))
