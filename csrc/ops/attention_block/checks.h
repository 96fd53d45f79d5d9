// Argument checks of clusterfusion.attention_block shared by its backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <optional>

#include "../../host/checks.h"
#include "clusterfusion/stages/attention_terms.h"
#include "op.h"

namespace clusterfusion::attention_block {

constexpr const char* kOp = "clusterfusion.attention_block";

struct Shape {
  int64_t hidden;
  int64_t heads;
  int64_t head_dim;
  int64_t max_len;      // positions the caches hold
  int64_t rotary_dims;  // leading dims of each head that get the rotary embedding
};

inline void check_caches(const at::Tensor& key_cache, const at::Tensor& value_cache, int64_t hidden) {
  TORCH_CHECK_VALUE(key_cache.dim() == 4 && key_cache.size(0) == 1, kOp,
                    ": argument 'key_cache' must have shape [1, heads, max_len, head_dim] (HuggingFace's StaticCache "
                    "layout, batch 1); got shape ",
                    key_cache.sizes());
  TORCH_CHECK_VALUE(key_cache.size(1) * key_cache.size(3) == hidden && key_cache.size(2) >= 1, kOp,
                    ": argument 'key_cache' must have shape [1, heads, max_len, head_dim] with heads * head_dim = "
                    "hidden = ",
                    hidden, " and max_len >= 1; got shape ", key_cache.sizes());
  TORCH_CHECK_VALUE(value_cache.sizes() == key_cache.sizes(), kOp,
                    ": argument 'value_cache' must have the shape of key_cache ", key_cache.sizes(), "; got shape ",
                    value_cache.sizes());
  TORCH_CHECK_VALUE(key_cache.is_contiguous() && value_cache.is_contiguous(), kOp,
                    ": arguments 'key_cache' and 'value_cache' must be contiguous (they are written in place); got "
                    "strides ",
                    key_cache.strides(), " and ", value_cache.strides());
}

inline void check_rotary(const at::Tensor& cos, const at::Tensor& sin, int64_t head_dim) {
  TORCH_CHECK_VALUE(cos.dim() >= 1 && cos.numel() == cos.size(-1), kOp,
                    ": argument 'cos' must hold one row [..., rotary_dims] (this token's position, batch 1); got "
                    "shape ",
                    cos.sizes());
  const int64_t rotary = cos.size(-1);
  TORCH_CHECK_VALUE(rotary >= 2 && rotary % 2 == 0 && rotary <= head_dim, kOp,
                    ": rotary_dims = cos.shape[-1] must be even and in [2, head_dim = ", head_dim, "]; got ", rotary);
  TORCH_CHECK_VALUE(sin.sizes() == cos.sizes(), kOp, ": argument 'sin' must have the shape of cos ", cos.sizes(),
                    "; got shape ", sin.sizes());
}

inline void check_position_and_mask(const at::Tensor& cache_position, const std::optional<at::Tensor>& mask,
                                    const at::Tensor& like, int64_t max_len) {
  TORCH_CHECK_VALUE(cache_position.numel() == 1, kOp,
                    ": argument 'cache_position' must hold one position (a 0-d or [1] tensor); got shape ",
                    cache_position.sizes());
  TORCH_CHECK_TYPE(cache_position.scalar_type() == at::kLong, kOp,
                   ": argument 'cache_position' must be int64 (like HuggingFace's cache positions); got ",
                   cache_position.scalar_type());
  TORCH_CHECK_VALUE(cache_position.device() == like.device(), kOp, ": argument 'cache_position' is on ",
                    cache_position.device(), "; expected ", like.device(), " like 'qkv_weight'");
  if (!mask.has_value()) return;
  TORCH_CHECK_VALUE(mask->dim() >= 1 && mask->size(-1) == max_len && mask->numel() == max_len, kOp,
                    ": argument 'attention_mask' must be one row over the cache, [..., max_len = ", max_len,
                    "] (HuggingFace's mask for one new token, batch 1); got shape ", mask->sizes());
  const at::ScalarType dtype = mask->scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kBool || dtype == like.scalar_type() || dtype == at::kFloat, kOp,
                   ": argument 'attention_mask' must be bool (true: attend) or additive in ", like.scalar_type(),
                   " or float32; got ", dtype);
  TORCH_CHECK_VALUE(mask->device() == like.device(), kOp, ": argument 'attention_mask' is on ", mask->device(),
                    "; expected ", like.device(), " like 'qkv_weight'");
}

// hidden, from qkv_weight [3 * hidden, hidden]; `op` names the op that checks.
inline int64_t check_qkv_weight(const char* op, const at::Tensor& qkv_weight) {
  TORCH_CHECK_VALUE(qkv_weight.dim() == 2 && qkv_weight.size(1) > 0 && qkv_weight.size(0) == 3 * qkv_weight.size(1),
                    op,
                    ": argument 'qkv_weight' must be [3 * hidden, hidden] (HuggingFace's query_key_value.weight); "
                    "got shape ",
                    qkv_weight.sizes());
  return qkv_weight.size(1);
}

// How the kernels read a checked mask row (none, bool, additive in the element type, fp32).
inline stages::MaskKind mask_kind(const std::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return stages::MaskKind::kNone;
  if (mask->scalar_type() == at::kBool) return stages::MaskKind::kBool;
  return mask->scalar_type() == at::kFloat ? stages::MaskKind::kFloat : stages::MaskKind::kAdditive;
}

inline Shape check_args(const Args& a) {
  const at::Tensor& qkv_weight = a.qkv_weight;
  const at::Tensor& dense_weight = a.dense_weight;
  const at::Tensor& key_cache = a.key_cache;
  const int64_t hidden = check_qkv_weight(kOp, qkv_weight);
  TORCH_CHECK_VALUE(dense_weight.dim() == 2 && dense_weight.size(0) == hidden && dense_weight.size(1) == hidden, kOp,
                    ": argument 'dense_weight' must have shape [", hidden, ", ", hidden,
                    "] (HuggingFace's dense.weight); got shape ", dense_weight.sizes());
  TORCH_CHECK_VALUE(
      a.hidden_states.dim() >= 1 && a.hidden_states.size(-1) == hidden && a.hidden_states.numel() == hidden, kOp,
      ": argument 'hidden_states' must hold one token, [..., ", hidden,
      "] with every other dimension 1 (the op decodes one new token of one sequence); got shape ",
      a.hidden_states.sizes());
  check_vector(kOp, "ln_weight", a.ln_weight, hidden, "hidden");
  check_vector(kOp, "ln_bias", a.ln_bias, hidden, "hidden");
  check_vector(kOp, "qkv_bias", a.qkv_bias, 3 * hidden, "3 * hidden");
  check_vector(kOp, "dense_bias", a.dense_bias, hidden, "hidden");
  check_caches(key_cache, a.value_cache, hidden);
  const int64_t head_dim = key_cache.size(3);
  check_rotary(a.cos, a.sin, head_dim);
  TORCH_CHECK_VALUE(std::isfinite(a.eps) && a.eps >= 0, kOp, ": argument 'eps' must be finite and >= 0; got ", a.eps);
  auto optional = [](const std::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; };
  check_like(kOp, {"qkv_weight", &qkv_weight},
             {{"hidden_states", &a.hidden_states},
              {"ln_weight", &a.ln_weight},
              {"ln_bias", optional(a.ln_bias)},
              {"qkv_bias", optional(a.qkv_bias)},
              {"dense_weight", &dense_weight},
              {"dense_bias", optional(a.dense_bias)},
              {"cos", &a.cos},
              {"sin", &a.sin},
              {"key_cache", &key_cache},
              {"value_cache", &a.value_cache}});
  check_position_and_mask(a.cache_position, a.attention_mask, qkv_weight, key_cache.size(2));
  return {hidden, key_cache.size(1), head_dim, key_cache.size(2), a.cos.size(-1)};
}

}  // namespace clusterfusion::attention_block
