// CUDA backend of clusterfusion::sample_tokens: one launch, the settings read on
// the device, so it runs inside CUDA-graph capture and replays with new values.
// Nothing is checked against the values: a row that cannot be sampled
// (rules.h) gets token -1 from the kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "launch.h"

namespace clusterfusion::sample_tokens {
namespace {

LogitKind logit_kind(const at::Tensor& logits) {
  check_dtype_allowed(kOp, "logits", logits, {at::kHalf, at::kBFloat16, at::kFloat}, "CUDA");
  if (logits.scalar_type() == at::kHalf) return LogitKind::kHalf;
  return logits.scalar_type() == at::kBFloat16 ? LogitKind::kBFloat16 : LogitKind::kFloat;
}

template <typename T>
RowSetting<T> row_setting(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.numel() == 1 ? 0 : 1};
}

at::Tensor sample_tokens_cuda(const at::Tensor& logits, const at::Tensor& uniform, const at::Tensor& temperature,
                              const at::Tensor& top_k, const at::Tensor& top_p) {
  const Shape shape = check_args(logits, uniform, temperature, top_k, top_p);
  const LogitKind kind = logit_kind(logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor tokens = at::empty(logits.sizes().slice(0, logits.dim() - 1), logits.options().dtype(at::kLong));
  if (shape.rows == 0) return tokens;
  const at::Tensor rows = logits.reshape({shape.rows, shape.vocab});
  const at::Tensor unit = rows.stride(1) == 1 ? rows : rows.contiguous();
  const SettingTensors settings = flat_settings(uniform, temperature, top_k, top_p);
  SampleParams params{};
  params.logits = unit.data_ptr();
  params.row_stride = unit.stride(0);
  params.rows = static_cast<int>(shape.rows);
  params.vocab = static_cast<int>(shape.vocab);
  params.uniform = row_setting<float>(settings.uniform);
  params.temperature = row_setting<float>(settings.temperature);
  params.top_k = row_setting<int64_t>(settings.top_k);
  params.top_p = row_setting<float>(settings.top_p);
  params.tokens = tokens.data_ptr<int64_t>();
  C10_CUDA_CHECK(launch(kind, params, at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return tokens;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CUDA, m) { m.impl("sample_tokens", &sample_tokens_cuda); }

}  // namespace clusterfusion::sample_tokens
