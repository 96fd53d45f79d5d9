// CUDA backend of clusterfusion::attention_block: four chained launches.
// The LayerNorm writes the normalized input; the QKV projection (the split-K
// GEMV kernel with a bias epilogue) writes this token's q, k, v; the decode
// attention kernel rotates q and k, appends k and v to the caches at the
// position and attends over positions 0..position (workers per head, merged in
// order); the output projection writes the result. Scratch comes from
// PyTorch's allocator. With programmatic dependent launch the projections
// launch early and stream their first weight tiles before waiting for their
// input (the attention kernel itself starts in stream order).
// The position is read on the device only: no host synchronization, safe
// inside CUDA-graph capture and replayed across positions.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "../../host/backend.h"
#include "../../host/device_model.h"
#include "../../host/dtype.h"
#include "../../host/flat_kernel.h"
#include "../../host/tensors.h"
#include "checks.h"
#include "decode_attention.h"
#include "gemv/bias_projection.h"
#include "gemv/operands.h"
#include "layer_norm/launch.h"
#include "layer_norm/run.h"

namespace clusterfusion::attention_block {
namespace {

using gemv::Activation;

gemv::PlanPair parse_pins(c10::string_view plan) {
  return gemv::parse_plan_pair(kOp, std::string(plan.data(), plan.size()), "QKV", "DENSE");
}

// What the projections need of the weights: CUDA fp16/bf16 matrices they can stream.
void check_streamable(const at::Tensor& qkv_weight, const at::Tensor& dense_weight) {
  TORCH_CHECK_VALUE(qkv_weight.dim() == 2 && dense_weight.dim() == 2, kOp,
                    ": arguments 'qkv_weight' and 'dense_weight' must be 2-D; got shapes ", qkv_weight.sizes(), " and ",
                    dense_weight.sizes());
  TORCH_CHECK_VALUE(qkv_weight.is_cuda(), kOp, ": argument 'qkv_weight' must be a CUDA tensor; got ",
                    qkv_weight.device());
  check_dtype_allowed(kOp, "qkv_weight", qkv_weight, kCudaDtypes, "CUDA");
  check_like(kOp, {"qkv_weight", &qkv_weight}, {{"dense_weight", &dense_weight}});
  check_tma_streamable(kOp, "qkv_weight", qkv_weight, "hidden");
  check_tma_streamable(kOp, "dense_weight", dense_weight, "hidden");
}

// What the kernels need of the weights and the head size alone.
void check_weights(const at::Tensor& qkv_weight, const at::Tensor& dense_weight, int64_t head_dim) {
  check_streamable(qkv_weight, dense_weight);
  TORCH_CHECK_VALUE(qkv_weight.size(1) <= layer_norm::max_features(), kOp,
                    ": hidden = qkv_weight.shape[1] must be at most ", layer_norm::max_features(),
                    " (the LayerNorm kernel's row); got ", qkv_weight.size(1));
  TORCH_CHECK_VALUE(head_dim_supported(static_cast<int>(head_dim)), kOp,
                    ": head_dim = key_cache.shape[3] must be 64, 80, 96 or 128 (the Pythia family's); got ", head_dim);
}

std::string unsupported_reason_cuda(const at::Tensor& qkv_weight, const at::Tensor& dense_weight, int64_t head_dim) {
  return failure_message([&] {
    check_weights(qkv_weight, dense_weight, head_dim);
    const c10::cuda::CUDAGuard guard(qkv_weight.device());
    const DeviceModel& device = device_model(qkv_weight.device().index());
    check_device_supported(kOp, device,
                           gemv::bias_projection_queries(Activation::kNone)
                               .configure(scalar_kind(qkv_weight), 1, device.smem_per_block_optin));
  });
}

// The QKV projection's plan fields, then the output projection's (see gemv::plan_fields).
std::vector<int64_t> plan_cuda(const at::Tensor& qkv_weight, const at::Tensor& dense_weight, c10::string_view plan) {
  check_streamable(qkv_weight, dense_weight);
  const gemv::PlanPair pins = parse_pins(plan);
  const c10::cuda::CUDAGuard guard(qkv_weight.device());
  std::vector<int64_t> fields =
      gemv::plan_fields(gemv::projection_plan(kOp, Activation::kNone, qkv_weight, 1, pins.first));
  const std::vector<int64_t> dense =
      gemv::plan_fields(gemv::projection_plan(kOp, Activation::kNone, dense_weight, 1, pins.second));
  fields.insert(fields.end(), dense.begin(), dense.end());
  return fields;
}


at::Tensor attention_block_cuda(const Args& a) {
  const Shape shape = check_args(a);
  check_weights(a.qkv_weight, a.dense_weight, shape.head_dim);
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(a.key_cache.data_ptr()) % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(a.value_cache.data_ptr()) % 16 == 0,
                    kOp, ": arguments 'key_cache' and 'value_cache' must start at 16-byte aligned addresses; got ",
                    a.key_cache.data_ptr(), " and ", a.value_cache.data_ptr());
  const gemv::PlanPair pins = parse_pins(a.plan);
  const c10::cuda::CUDAGuard guard(a.qkv_weight.device());

  // The result first: it takes the block a caller just freed (scratch after it).
  at::Tensor out = at::empty_like(a.hidden_states, at::MemoryFormat::Contiguous);
  const at::TensorOptions options = a.hidden_states.options();
  const at::Tensor x = contiguous_aligned(a.hidden_states.reshape({1, shape.hidden}));
  const at::Tensor normalized = at::empty({1, shape.hidden}, options);
  const at::Tensor qkv = at::empty({1, 3 * shape.hidden}, options);
  const at::Tensor attn = at::empty({1, shape.hidden}, options);
  const int workers = attention_workers(static_cast<int>(shape.heads), static_cast<int>(shape.max_len),
                                        device_model(a.qkv_weight.device().index()).sm_count);
  const at::Tensor partials = at::empty({shape.heads * workers * (shape.head_dim + 2)}, options.dtype(at::kFloat));
  const at::Tensor arrivals = at::empty({shape.heads}, options.dtype(at::kInt));  // zeroed by the LayerNorm
  const at::Tensor c = a.cos.reshape({-1}).contiguous();
  const at::Tensor s = a.sin.reshape({-1}).contiguous();
  const at::Tensor position = a.cache_position.reshape({-1});
  const std::optional<at::Tensor> mask = a.attention_mask.has_value()
                                             ? std::optional<at::Tensor>(a.attention_mask->reshape({-1}).contiguous())
                                             : std::nullopt;
  auto contiguous = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
  };

  layer_norm::run(x, a.ln_weight, a.ln_bias, normalized, a.eps, a.pdl, arrivals);
  gemv::run_bias_projection(kOp, Activation::kNone, normalized, a.qkv_weight, contiguous(a.qkv_bias), qkv, pins.first,
                            a.pdl);
  DecodeAttentionParams params{};
  params.qkv = qkv.data_ptr();
  params.terms.cos = c.data_ptr();
  params.terms.sin = s.data_ptr();
  params.key_cache = a.key_cache.data_ptr();
  params.value_cache = a.value_cache.data_ptr();
  params.position = position.data_ptr<int64_t>();
  params.terms.mask = mask.has_value() ? mask->data_ptr() : nullptr;
  params.terms.mask_kind = mask_kind(mask);
  params.partials = partials.data_ptr<float>();
  params.arrivals = arrivals.data_ptr<int>();
  params.out = attn.data_ptr();
  params.heads = static_cast<int>(shape.heads);
  params.head_dim = static_cast<int>(shape.head_dim);
  params.terms.rotary_dims = static_cast<int>(shape.rotary_dims);
  params.max_len = static_cast<int>(shape.max_len);
  params.workers = workers;
  params.terms.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
  C10_CUDA_CHECK(launch_decode_attention(scalar_kind(a.qkv_weight), params, at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gemv::run_bias_projection(kOp, Activation::kNone, attn, a.dense_weight, contiguous(a.dense_bias),
                            out.view({1, shape.hidden}), pins.second, a.pdl);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CUDA, m) {
  impl_op(m, "attention_block", &FlatKernel<OpSignature>::of<Args, &attention_block_cuda>, &unsupported_reason_cuda,
          &plan_cuda);
}

}  // namespace clusterfusion::attention_block
