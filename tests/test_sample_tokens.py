"""clusterfusion.sample_tokens: the kept set and the draw against a float64
reference, the frequencies it samples, the CUDA kernel against the CPU backend
(the same tokens, bit for bit), CUDA graphs, the op contract, bad input and rows
that cannot be sampled (CUDA: token -1, CPU: ValueError)."""

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
    settings = _settings(rows, device, temperature=torch.tensor([0.0, -1.0, float("-inf"), 0.0]).repeat(4))
    assert torch.equal(OP(logits, *settings).cpu(), first_max)


@pytest.mark.parametrize("device", _devices())
def test_ties_rank_by_index(device):
    # Four tokens of equal probability, then nothing: top_p = 0.5 keeps the first two by index.
    logits = torch.full((2, 64), float("-inf"))
    logits[:, [40, 3, 17, 9]] = 0.0
    uniform = torch.tensor([0.1, 0.9])
    tokens = clusterfusion.sample_tokens(logits.to(device), uniform.to(device), top_p=0.5).cpu()
    assert tokens.tolist() == [3, 9]


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
                         top_p=torch.where(torch.rand(rows) < 0.3, torch.ones(rows), 1 - torch.rand(rows)))
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
        for s, value in zip(settings, (torch.rand(()), torch.rand(()) + 0.2, torch.randint(0, 50, ()), 1 - torch.rand(()))):
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
        (dict(uniform=1.0), ValueError, r"'uniform' must be in \[0, 1\) as float32; got 1.0"),
        (dict(uniform=1 - 2**-26), ValueError, r"'uniform' must be in \[0, 1\) as float32; got 0.99999998"),
        (dict(uniform=-0.25), ValueError, r"'uniform' must be in \[0, 1\) as float32; got -0.25"),
        (dict(uniform=float("nan")), ValueError, r"'uniform' must be in \[0, 1\) as float32; got nan"),
        (dict(temperature=-1.0), ValueError, "'temperature' must be > 0 as float32; got -1.0"),
        (dict(temperature=float("nan")), ValueError, "'temperature' must be > 0 as float32; got nan"),
        (dict(top_p=1e-50), ValueError, "'top_p' must be > 0 as float32; got 1e-50"),
        (dict(top_p=float("nan")), ValueError, "'top_p' must be > 0 as float32; got nan"),
        (dict(top_p=float("inf")), ValueError, r"'top_p' must be in \(0, 1\]; got inf"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, error, message):
    # The op itself would refuse these logits ("holds a NaN"): the wrapper checks its numbers first.
    with pytest.raises(error, match=message):
        clusterfusion.sample_tokens(torch.full((2, 10), float("nan")), **kwargs)


@gpu
def test_settings_on_another_device_are_refused():
    logits = torch.zeros(2, 10, device="cuda")
    with pytest.raises(ValueError, match="'top_p' is on cpu; expected cuda:0 like 'logits'"):
        OP(logits, torch.zeros(1, device="cuda"), torch.ones(1, device="cuda"),
           torch.zeros(1, dtype=torch.long, device="cuda"), torch.ones(1))


# Rows that cannot be sampled. Each logit fault: where in a row of `vocab` tokens, the
# value it writes there (for the row's dtype) and the CPU backend's reason.
NAN = float("nan")
INF = float("inf")
NEGATIVE_NAN_BITS = {torch.float16: (torch.int16, 0xFE00), torch.bfloat16: (torch.int16, 0xFFC0),
                     torch.float32: (torch.int32, 0xFFC00000), torch.float64: (torch.int64, 0xFFF8000000000000)}


def _negative_nan(dtype):
    """A NaN with the sign bit set: its order key lies below -inf's, where a maximum misses it."""
    int_dtype, bits = NEGATIVE_NAN_BITS[dtype]
    width = torch.iinfo(int_dtype).bits
    return torch.tensor(bits - (1 << width), dtype=int_dtype).view(dtype)


LOGIT_FAULTS = {
    "nan-first": (lambda vocab: 0, lambda dtype: NAN, "holds a NaN"),
    "nan-middle": (lambda vocab: vocab // 2, lambda dtype: NAN, "holds a NaN"),
    "nan-last": (lambda vocab: vocab - 1, lambda dtype: NAN, "holds a NaN"),
    "negative-nan": (lambda vocab: vocab // 2, _negative_nan, "holds a NaN"),
    "plus-inf": (lambda vocab: vocab // 3, lambda dtype: INF, r"holds \+inf"),
    "all-minus-inf": (lambda vocab: slice(None), lambda dtype: -INF, "has no finite logit"),
}

# Each settings fault: the setting, its value in the bad row, the CPU backend's message.
SETTING_FAULTS = {
    "uniform-1": ("uniform", 1.0, r"argument 'uniform' must be in \[0, 1\); got 1 for row {row}"),
    "uniform-negative": ("uniform", -0.25, r"argument 'uniform' must be in \[0, 1\); got -0.25 for row {row}"),
    "uniform-nan": ("uniform", NAN, r"argument 'uniform' must be in \[0, 1\); got nan for row {row}"),
    "temperature-nan": ("temperature", NAN, r"argument 'temperature' must not be NaN; got nan for row {row}"),
    "top_p-0": ("top_p", 0.0, r"argument 'top_p' must be in \(0, 1\]; got 0 for row {row}"),
    "top_p-negative": ("top_p", -0.5, r"argument 'top_p' must be in \(0, 1\]; got -0.5 for row {row}"),
    "top_p-above-1": ("top_p", 1.5, r"argument 'top_p' must be in \(0, 1\]; got 1.5 for row {row}"),
    "top_p-nan": ("top_p", NAN, r"argument 'top_p' must be in \(0, 1\]; got nan for row {row}"),
}
SETTING_INDEX = {"uniform": 0, "temperature": 1, "top_p": 3}


def _sampleable(rows, vocab, dtype):
    """Logits and per-row settings (tensors on the CPU) of rows that can all be sampled."""
    logits = (torch.randn(rows, vocab) * 3).to(dtype)
    settings = _settings(rows, "cpu", temperature=torch.rand(rows) + 0.3, top_k=torch.randint(0, 40, (rows,)),
                         top_p=1 - torch.rand(rows) * 0.5)
    return logits, settings


def _spoil_logits(logits, row, fault):
    where, value, _ = LOGIT_FAULTS[fault]
    logits[row, where(logits.shape[-1])] = value(logits.dtype)


def _spoil_setting(settings, row, fault):
    name, value, _ = SETTING_FAULTS[fault]
    settings[SETTING_INDEX[name]][row] = value


def test_the_negative_nan_helper_sets_the_sign_bit():
    for dtype, (int_dtype, bits) in NEGATIVE_NAN_BITS.items():
        value = _negative_nan(dtype)
        assert torch.isnan(value) and value.view(int_dtype).item() % (1 << torch.iinfo(int_dtype).bits) == bits


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("fault", list(LOGIT_FAULTS))
def test_cpu_raises_for_logits_that_cannot_be_sampled(dtype, fault):
    logits, settings = _sampleable(5, 1000, dtype)
    _spoil_logits(logits, 3, fault)
    with pytest.raises(ValueError, match=rf"clusterfusion.sample_tokens: row 3 of 'logits' {LOGIT_FAULTS[fault][2]}"):
        OP(logits, *settings)
    _spoil_logits(logits, 1, fault)  # the first such row is named
    with pytest.raises(ValueError, match=f"row 1 of 'logits' {LOGIT_FAULTS[fault][2]}"):
        OP(logits, *settings)


@pytest.mark.parametrize("fault", list(SETTING_FAULTS))
def test_cpu_raises_for_settings_out_of_range(fault):
    logits, settings = _sampleable(5, 1000, torch.float32)
    _spoil_setting(settings, 3, fault)
    with pytest.raises(ValueError, match="clusterfusion.sample_tokens: " + SETTING_FAULTS[fault][2].format(row=3)):
        OP(logits, *settings)
    name, value, _ = SETTING_FAULTS[fault]
    one = [s[:1].clone() for s in settings]  # one value for every row: the first row is named
    one[SETTING_INDEX[name]].fill_(value)
    with pytest.raises(ValueError, match=SETTING_FAULTS[fault][2].format(row=0)):
        OP(logits, *one)


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_finite_logit_among_minus_inf_is_the_token(device, dtype, where):
    rows, vocab = 4, 4097
    index = {"first": 0, "middle": vocab // 2, "last": vocab - 1}[where]
    logits = torch.full((rows, vocab), -INF, dtype=dtype)
    logits[:, index] = -5.0
    settings = _settings(rows, device, temperature=torch.tensor([1.0, 0.0, 0.7, 2.0]),
                         top_k=torch.tensor([0, 0, 3, 1]), top_p=torch.tensor([1.0, 0.5, 0.9, 1e-3]))
    assert OP(logits.to(device), *settings).tolist() == [index] * rows


def _assert_no_token_for(bad, logits, settings):
    """On CUDA the rows in `bad` get -1 and the others the CPU backend's tokens."""
    good = [row for row in range(logits.shape[0]) if row not in bad]
    expected = OP(logits[good], *(s[good] for s in settings))
    got = OP(logits.cuda(), *(s.cuda() for s in settings)).cpu()
    assert got[bad].tolist() == [-1] * len(bad)
    assert torch.equal(got[good], expected)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("vocab", [7, 50304])
@pytest.mark.parametrize("fault", list(LOGIT_FAULTS))
def test_cuda_returns_no_token_for_logits_that_cannot_be_sampled(dtype, vocab, fault):
    # At 50304 tokens a NaN first, in the middle and last lands in the first, a middle and
    # the last CTA's slice; at 7 every token is in the first CTA's slice, the others are empty.
    rows, bad = 6, [2, 5]
    logits, settings = _sampleable(rows, vocab, dtype)
    for row in bad:
        _spoil_logits(logits, row, fault)
    _assert_no_token_for(bad, logits, settings)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fault", list(SETTING_FAULTS))
def test_cuda_returns_no_token_for_settings_out_of_range(dtype, fault):
    rows, bad = 6, [0, 3]
    logits, settings = _sampleable(rows, 50304, dtype)
    for row in bad:
        _spoil_setting(settings, row, fault)
    _assert_no_token_for(bad, logits, settings)


@gpu
def test_rows_that_cannot_be_sampled_inside_a_cuda_graph():
    logits, settings = _sampleable(3, 50304, torch.float16)
    logits, settings = logits.cuda(), [s.cuda() for s in settings]
    OP(logits, *settings)  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = OP(logits, *settings)
    for row, fault in [(0, "nan-middle"), (1, "uniform-1"), (2, "negative-nan"), (None, None)]:
        fresh, fresh_settings = _sampleable(3, 50304, torch.float16)
        if fault in LOGIT_FAULTS:
            _spoil_logits(fresh, row, fault)
        elif fault in SETTING_FAULTS:
            _spoil_setting(fresh_settings, row, fault)
        logits.copy_(fresh)
        for s, value in zip(settings, fresh_settings):
            s.copy_(value)
        out.fill_(-2)
        graph.replay()
        good = [r for r in range(3) if r != row]
        assert torch.equal(out.cpu()[good], OP(fresh[good], *(s[good] for s in fresh_settings)))
        if row is not None:
            assert out[row].item() == -1


@gpu
@pytest.mark.parametrize("fault", list(SETTING_FAULTS))
def test_cuda_returns_no_token_for_every_row_of_a_shared_bad_setting(fault):
    logits, settings = _sampleable(4, 1000, torch.float16)
    name, value, _ = SETTING_FAULTS[fault]
    one = [s[:1].clone().cuda() for s in settings]
    one[SETTING_INDEX[name]].fill_(value)
    assert OP(logits.cuda(), *one).tolist() == [-1] * 4


@pytest.mark.parametrize("device", _devices())
def test_python_settings_at_the_float32_edges_are_sampled(device):
    logits = torch.randn(3, 1000, device=device) * 3
    edges = dict(uniform=1 - 2**-24, temperature=2**-149, top_p=2**-149)  # float32's last values in range
    settings = [torch.tensor([edges[name]], device=device) for name in ("uniform", "temperature")]
    settings += [torch.zeros(1, dtype=torch.long, device=device), torch.tensor([edges["top_p"]], device=device)]
    got = clusterfusion.sample_tokens(logits, edges["uniform"], temperature=edges["temperature"], top_p=edges["top_p"])
    assert got.min() >= 0
    assert torch.equal(got, OP(logits, *settings))
