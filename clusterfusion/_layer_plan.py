"""The plan of the one-launch GPT-NeoX layer (issue #24): how one decode layer's work is
dealt to the CTAs of one launch, and a CPU interpreter that computes the layer by it.

The layer is ``x + dense(attention(qkv(ln1(x)))) + down(gelu(up(ln2(x))))`` for one new
token. Every CTA normalizes x itself, so no work waits for another CTA's LayerNorm. The
work, and the only places where CTAs wait for each other:

* **A head** (one cluster of ``cluster_size`` CTAs): head h's q, k and v are the rows
  ``[3 * head_dim * h, 3 * head_dim * (h + 1))`` of the QKV weight. Each rank reduces a
  contiguous range of the hidden features; the partials meet in the head's owner in rank
  order (the cluster's inbox, as the GEMV kernel does today). Then the rotary
  embedding, the cache append, and attention over positions 0..p: 64-position chunks
  dealt to the ranks round robin (the kernel deals passes of 256), each rank's running
  softmax merged in rank order. Last,
  the head's columns of the dense weight, each rank a range of output rows. A head
  leaves a partial sum of every output.
* **An MLP slice** ``[j0, j1)`` of the intermediate features (one CTA, no wait): rows
  j0..j1 of the up weight over the whole reduction, GELU, then columns j0..j1 of the down
  weight. A slice leaves a partial sum of every output.
* **The sum** (every CTA a range of outputs, once every partial is in: the one wait
  across clusters): ``x + dense_bias + down_bias``, then the heads' partials in head
  order, then the slices' partials in slice order.

Slices are dealt so that every CTA streams about the same number of weight bytes
(heads' CTAs take fewer MLP rows), which holds when a cluster's heads fit in its CTAs'
fair share: the cluster size is chosen per shape (Pythia-1b's 8 heads of 256 need
clusters of 8; in clusters of 4 its head CTAs stream 1.37x the mean). The interpreter rounds to the weights' dtype where
the kernel will hold a value in it (the normalized inputs, q, k and v after the rotary
embedding, the attention output, the GELU output, the result) and accumulates in
float32 (float64 for float64 inputs); the kernel and this interpreter read the same plan,
so the CPU tests check the decomposition itself against HuggingFace's layer. Within a
work item the interpreter's sums need not meet in the kernel's order (its attention
chunks, where the QKV bias is added): the two agree to rounding, not bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CHUNK_K = 64  # reduction elements per weight tile (the GEMV kernel's stage)
CHUNK_POSITIONS = 64  # positions per attention chunk
OUTPUT_STEP = 8  # outputs come in steps of 8 (an MMA tile's rows)
MLP_ROW_STEP = 8  # MLP slices come in steps of 8 intermediate features (the GEMV's block_n step)


@dataclass(frozen=True)
class LayerShape:
    """One GPT-NeoX layer's sizes."""

    hidden: int
    heads: int
    ffn: int
    rotary_dims: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def weight_elements(self) -> int:
        return 4 * self.hidden * self.hidden + 2 * self.hidden * self.ffn


def split(n: int, parts: int, step: int) -> list[range]:
    """[0, n) cut into `parts` contiguous ranges of whole `step`s (the last may end at n), as even as can be."""
    return split_by(n, [1.0] * parts, step)


def split_by(n: int, wants: list[float], step: int) -> list[range]:
    """[0, n) cut into contiguous ranges in proportion to `wants` (>= 0), at whole
    `step`s (the last may end at n): the boundaries are the running total rounded, so
    no range is off its share by more than one step."""
    total = 0.0
    for want in wants:  # in order, as the C++ dealing adds them (sum() compensates from Python 3.12 on)
        total += want
    if total <= 0:
        wants, total = [1.0] * len(wants), float(len(wants))
    bounds, running = [0], 0.0
    for want in wants[:-1]:
        running += want * n / total
        bounds.append(min(n, max(bounds[-1], round(running / step) * step)))
    bounds.append(n)
    return [range(bounds[p], bounds[p + 1]) for p in range(len(wants))]


@dataclass(frozen=True)
class LayerPlan:
    """Which CTA does what. CTAs ``[c * cluster_size, (c + 1) * cluster_size)`` form cluster c."""

    shape: LayerShape
    ctas: int
    cluster_size: int
    head_cluster: tuple[int, ...]  # head -> the cluster that does it
    mlp_slices: tuple[range, ...]  # CTA -> its intermediate features (possibly none), in order
    dense_splits: tuple[tuple[range, ...], ...]  # cluster -> each rank's outputs of its heads' dense columns

    @property
    def clusters(self) -> int:
        return self.ctas // self.cluster_size

    def qkv_reduction(self, rank: int) -> range:
        """The hidden features rank `rank` of a head's cluster reduces q, k and v over."""
        return split(self.shape.hidden, self.cluster_size, CHUNK_K)[rank]

    def dense_rows(self, cluster: int, rank: int) -> range:
        """The outputs whose share of its heads' dense columns rank `rank` of cluster `cluster` computes."""
        return self.dense_splits[cluster][rank]

    def attention_rank(self, chunk: int) -> int:
        """The rank of a head's cluster that attends over position chunk `chunk`."""
        return chunk % self.cluster_size

    def sum_rows(self, cta: int) -> range:
        """The outputs CTA `cta` adds up at the end."""
        return split(self.shape.hidden, self.ctas, OUTPUT_STEP)[cta]

    def weight_elements_per_cta(self) -> list[int]:
        """Weight elements each CTA streams (QKV rows, dense columns, up rows and down columns)."""
        s = self.shape
        per_cta = [len(rows) * 2 * s.hidden for rows in self.mlp_slices]
        for cluster in self.head_cluster:
            for rank in range(self.cluster_size):
                cta = cluster * self.cluster_size + rank
                per_cta[cta] += s.head_dim * (3 * len(self.qkv_reduction(rank)) + len(self.dense_rows(cluster, rank)))
        return per_cta


def deal(shape: LayerShape, ctas: int, cluster_size: int) -> LayerPlan:
    """The plan for `ctas` CTAs (one per SM: the device's multiprocessor count, or the
    co-resident clusters' CTAs) in clusters of `cluster_size`."""
    for name, value in (("ctas", ctas), ("cluster_size", cluster_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"clusterfusion layer plan: {name} must be a positive int; got {value!r}")
    if ctas % cluster_size:
        raise ValueError(f"clusterfusion layer plan: ctas ({ctas}) must be a multiple of cluster_size ({cluster_size})")
    if shape.hidden % shape.heads or shape.ffn < 1:
        raise ValueError(f"clusterfusion layer plan: hidden must split into heads and ffn be positive; got {shape}")
    clusters = ctas // cluster_size
    head_cluster = tuple(h % clusters for h in range(shape.heads))
    even_dense = tuple(split(shape.hidden, cluster_size, OUTPUT_STEP))
    nothing = tuple(range(0) for _ in range(ctas))
    heads_only = LayerPlan(shape, ctas, cluster_size, head_cluster, nothing, (even_dense,) * clusters)
    # MLP rows in proportion to what each CTA lacks of its fair share once its heads are streamed.
    fair = shape.weight_elements() / ctas
    lacks = [max(0.0, fair - elements) for elements in heads_only.weight_elements_per_cta()]
    slices = tuple(split_by(shape.ffn, lacks, MLP_ROW_STEP))
    # Rows come in whole steps: each head cluster evens out its ranks by how it shares the dense outputs.
    with_mlp = LayerPlan(shape, ctas, cluster_size, head_cluster, slices, (even_dense,) * clusters)
    per_cta = with_mlp.weight_elements_per_cta()
    dense_splits = []
    for cluster in range(clusters):
        heads = head_cluster.count(cluster)
        ranks = range(cluster * cluster_size, (cluster + 1) * cluster_size)
        if heads == 0:
            dense_splits.append(even_dense)
            continue
        per_row = heads * shape.head_dim
        others = [per_cta[cta] - per_row * len(even_dense[cta - ranks.start]) for cta in ranks]
        level = (sum(others) + per_row * shape.hidden) / cluster_size
        dense_splits.append(tuple(split_by(shape.hidden, [max(0.0, level - o) for o in others], OUTPUT_STEP)))
    return LayerPlan(shape, ctas, cluster_size, head_cluster, slices, tuple(dense_splits))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dims: int) -> torch.Tensor:
    """HuggingFace's rotate_half rotary embedding on the first rotary_dims elements of x [head_dim]."""
    half = rotary_dims // 2
    r = x[:rotary_dims]
    rotated_half = torch.cat([-r[half:], r[:half]])
    return torch.cat([r * cos + rotated_half * sin, x[rotary_dims:]])


def run_layer_plan(plan: LayerPlan, hidden_states, attn_ln_weight, attn_ln_bias, qkv_weight, qkv_bias, dense_weight,
                   dense_bias, mlp_ln_weight, mlp_ln_bias, up_weight, up_bias, down_weight, down_bias, cos, sin,
                   key_cache, value_cache, position: int, attention_mask=None, eps: float = 1e-5) -> torch.Tensor:
    """The layer for one new token computed by `plan`, work item by work item, on the
    CPU; appends this token's key and value to the caches at `position` like the op."""
    s = plan.shape
    dtype = qkv_weight.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    hd, rot = s.head_dim, s.rotary_dims

    def a(t):
        return None if t is None else t.to(acc)

    def held(t):  # a value the kernel holds in the weights' dtype
        return t.to(dtype).to(acc)

    x = a(hidden_states).reshape(s.hidden)
    ln1 = held(F.layer_norm(x, (s.hidden,), a(attn_ln_weight), a(attn_ln_bias), eps))
    ln2 = held(F.layer_norm(x, (s.hidden,), a(mlp_ln_weight), a(mlp_ln_bias), eps))
    c, sn = a(cos).reshape(-1)[:rot], a(sin).reshape(-1)[:rot]
    mask = None if attention_mask is None else attention_mask.reshape(-1)

    head_partials = []
    for head in range(s.heads):
        rows = slice(3 * hd * head, 3 * hd * (head + 1))
        qkv = torch.zeros(3 * hd, dtype=acc)
        for rank in range(plan.cluster_size):  # the cluster's split-K partials, in rank order
            k = plan.qkv_reduction(rank)
            qkv = qkv + a(qkv_weight[rows, k.start:k.stop]) @ ln1[k.start:k.stop]
        if qkv_bias is not None:
            qkv = qkv + a(qkv_bias[rows])
        qkv = held(qkv)
        query = held(_rotate(qkv[:hd], c, sn, rot))
        key = _rotate(qkv[hd:2 * hd], c, sn, rot).to(dtype)
        key_cache[0, head, position] = key
        value_cache[0, head, position] = qkv[2 * hd:].to(dtype)
        keys, values = a(key_cache[0, head, :position + 1]), a(value_cache[0, head, :position + 1])

        partials = []  # (max, sum, unnormalized output) of each rank that has a chunk
        for rank in range(plan.cluster_size):
            chunks = [ch for ch in range(position // CHUNK_POSITIONS + 1) if plan.attention_rank(ch) == rank]
            if not chunks:
                continue
            at = torch.cat([torch.arange(ch * CHUNK_POSITIONS, min((ch + 1) * CHUNK_POSITIONS, position + 1))
                            for ch in chunks])
            scores = keys[at] @ query * hd**-0.5
            if mask is not None:
                row = mask[at]
                scores = scores.masked_fill(~row, -math.inf) if row.dtype == torch.bool else scores + a(row)
            top = scores.max()
            if top == -math.inf:  # every position of this rank's chunks is masked: it adds nothing
                continue
            weights = torch.exp(scores - top)
            partials.append((top, weights.sum(), weights @ values[at]))
        top = max(p[0] for p in partials)  # position p itself is always attended
        total = sum(p[1] * torch.exp(p[0] - top) for p in partials)
        attn = held(sum(p[2] * torch.exp(p[0] - top) for p in partials) / total)

        partial = torch.zeros(s.hidden, dtype=acc)
        for rank in range(plan.cluster_size):
            r = plan.dense_rows(plan.head_cluster[head], rank)
            partial[r.start:r.stop] = a(dense_weight[r.start:r.stop, hd * head:hd * (head + 1)]) @ attn
        head_partials.append(partial)

    slice_partials = []
    for rows in plan.mlp_slices:
        if not len(rows):
            continue
        up = a(up_weight[rows.start:rows.stop]) @ ln2
        if up_bias is not None:
            up = up + a(up_bias[rows.start:rows.stop])
        slice_partials.append(a(down_weight[:, rows.start:rows.stop]) @ held(F.gelu(up)))

    out = torch.empty(s.hidden, dtype=acc)
    for cta in range(plan.ctas):  # each CTA's outputs, every term in the fixed order
        r = slice(plan.sum_rows(cta).start, plan.sum_rows(cta).stop)
        total = x[r].clone()
        for bias in (dense_bias, down_bias):
            if bias is not None:
                total = total + a(bias[r])
        for partial in head_partials + slice_partials:
            total = total + partial[r]
        out[r] = total
    return out.to(dtype).reshape(hidden_states.shape)
