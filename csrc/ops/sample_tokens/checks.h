// Argument checks of clusterfusion.sample_tokens shared by its backends.
#pragma once

#include <ATen/core/Tensor.h>

#include "../../host/checks.h"
#include "rules.h"

namespace clusterfusion::sample_tokens {

constexpr const char* kOp = "clusterfusion.sample_tokens";
constexpr int64_t kMaxRows = 65535;  // the CUDA kernel's grid.y

struct Shape {
  int64_t rows;
  int64_t vocab;
};

// A per-row setting: one value for every row, or one per row.
inline void check_setting(const char* arg, const at::Tensor& t, at::ScalarType dtype, const at::Tensor& logits,
                          int64_t rows) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, kOp, ": argument '", arg, "' must be ", dtype, "; got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.numel() == 1 || t.numel() == rows, kOp, ": argument '", arg,
                    "' must hold one value or one per row (", rows, "); got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == logits.device(), kOp, ": argument '", arg, "' is on ", t.device(), "; expected ",
                    logits.device(), " like 'logits'");
}

inline Shape check_args(const at::Tensor& logits, const at::Tensor& uniform, const at::Tensor& temperature,
                        const at::Tensor& top_k, const at::Tensor& top_p) {
  TORCH_CHECK_VALUE(logits.dim() >= 1 && logits.size(-1) >= 1, kOp,
                    ": argument 'logits' must be [..., vocab] with vocab >= 1; got shape ", logits.sizes());
  const int64_t vocab = logits.size(-1);
  TORCH_CHECK_VALUE(vocab <= kMaxVocab, kOp, ": vocab = logits.shape[-1] must be at most ", kMaxVocab, "; got ",
                    vocab);
  const int64_t rows = logits.numel() / vocab;
  TORCH_CHECK_VALUE(rows <= kMaxRows, kOp, ": logits must have at most ", kMaxRows, " rows; got ", rows);
  check_setting("uniform", uniform, at::kFloat, logits, rows);
  check_setting("temperature", temperature, at::kFloat, logits, rows);
  check_setting("top_k", top_k, at::kLong, logits, rows);
  check_setting("top_p", top_p, at::kFloat, logits, rows);
  return {rows, vocab};
}

// The settings, each flattened to one value or one per row, contiguous.
struct SettingTensors {
  at::Tensor uniform;
  at::Tensor temperature;
  at::Tensor top_k;
  at::Tensor top_p;
};

inline SettingTensors flat_settings(const at::Tensor& uniform, const at::Tensor& temperature,
                                    const at::Tensor& top_k, const at::Tensor& top_p) {
  auto flat = [](const at::Tensor& t) { return t.reshape({-1}).contiguous(); };
  return {flat(uniform), flat(temperature), flat(top_k), flat(top_p)};
}

}  // namespace clusterfusion::sample_tokens
