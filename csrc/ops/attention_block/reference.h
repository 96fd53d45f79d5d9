// The op computed with ATen, as HuggingFace's GPT-NeoX attention does it for
// one new token: LayerNorm, query_key_value, rotary embedding (rotate_half),
// the cache append at the position, softmax attention over positions
// 0..position, dense. Serves the CPU backend and gradients.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <optional>

#include "checks.h"

namespace clusterfusion::attention_block {

// Reads the position on the host; the kernels never do.
inline at::Tensor reference(const Args& a, const Shape& s, at::ScalarType compute) {
  const int64_t position = a.cache_position.item<int64_t>();
  TORCH_CHECK_VALUE(position >= 0 && position < s.max_len, kOp, ": argument 'cache_position' holds ", position,
                    "; the caches hold positions [0, ", s.max_len, ")");
  auto in = [&](const at::Tensor& t) { return t.to(compute); };
  auto in_opt = [&](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->to(compute)) : std::nullopt;
  };
  const int64_t d = s.head_dim;
  const int64_t half = s.rotary_dims / 2;
  const at::Tensor c = in(a.cos).reshape({1, s.rotary_dims});
  const at::Tensor sn = in(a.sin).reshape({1, s.rotary_dims});
  auto rotary = [&](const at::Tensor& x) {  // x: [heads, head_dim]
    const at::Tensor r = x.narrow(1, 0, s.rotary_dims);
    const at::Tensor rotated_half = at::cat({-r.narrow(1, half, half), r.narrow(1, 0, half)}, 1);
    return at::cat({r * c + rotated_half * sn, x.narrow(1, s.rotary_dims, d - s.rotary_dims)}, 1);
  };

  const at::Tensor normalized =
      at::layer_norm(in(a.hidden_states).reshape({1, s.hidden}), {s.hidden}, in(a.ln_weight), in_opt(a.ln_bias), a.eps);
  const at::Tensor qkv = at::linear(normalized, in(a.qkv_weight), in_opt(a.qkv_bias)).view({s.heads, 3 * d});
  const at::Tensor query = rotary(qkv.narrow(1, 0, d));
  a.key_cache.select(0, 0).select(1, position).copy_(rotary(qkv.narrow(1, d, d)));
  a.value_cache.select(0, 0).select(1, position).copy_(qkv.narrow(1, 2 * d, d));

  const at::Tensor keys = in(a.key_cache.select(0, 0).narrow(1, 0, position + 1));  // [heads, position + 1, head_dim]
  const at::Tensor values = in(a.value_cache.select(0, 0).narrow(1, 0, position + 1));
  at::Tensor scores = at::matmul(query.unsqueeze(1), keys.transpose(1, 2)).squeeze(1) * std::pow(d, -0.5);
  if (a.attention_mask.has_value()) {
    const at::Tensor row = a.attention_mask->reshape({-1}).narrow(0, 0, position + 1);
    scores = row.scalar_type() == at::kBool
                 ? scores.masked_fill(row.logical_not(), -std::numeric_limits<double>::infinity())
                 : scores + in(row);
  }
  const at::Tensor attn = at::matmul(at::softmax(scores, -1).unsqueeze(1), values).reshape({1, s.hidden});
  return at::linear(attn, in(a.dense_weight), in_opt(a.dense_bias))
      .reshape(a.hidden_states.sizes())
      .to(a.hidden_states.scalar_type());
}

// The composite every gradient runs: checked, computed in the weights' dtype.
inline at::Tensor composite(const Args& a) { return reference(a, check_args(a), a.qkv_weight.scalar_type()); }

}  // namespace clusterfusion::attention_block
