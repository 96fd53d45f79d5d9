// CUDA backend of clusterfusion::mlp_block_residual: three chained launches.
// The LayerNorm writes the normalized input; the up projection (the split-K GEMV
// kernel with a bias + GELU epilogue) writes the intermediate; the MLP-down +
// residual kernel writes the result. Both scratch tensors come from PyTorch's
// allocator. With programmatic dependent launch each kernel lets the next one
// launch early, and the GEMVs stream their first weight tiles before waiting
// for their input: the LayerNorm runs under the up projection's weight
// prefetch. No host synchronization: safe inside CUDA-graph capture.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string>

#include "../../host/device_model.h"
#include "../../host/dtype.h"
#include "../../host/tensors.h"
#include "../mlp_down_residual/run.h"
#include "checks.h"
#include "gemv/operands.h"
#include "launch.h"
#include "pins.h"
#include "reference.h"

namespace clusterfusion::mlp_block {
namespace {

using gemv::LaunchPlan;
using gemv::PlanOverride;
using gemv::Tile;

const std::initializer_list<at::ScalarType> kCudaDtypes = {at::kHalf, at::kBFloat16};

// What the kernels need of the weights alone: CUDA fp16/bf16 matrices they can stream.
void check_weights(const at::Tensor& up_weight, const at::Tensor& down_weight) {
  TORCH_CHECK_VALUE(up_weight.dim() == 2 && down_weight.dim() == 2, kOp,
                    ": arguments 'up_weight' and 'down_weight' must be 2-D; got shapes ", up_weight.sizes(), " and ",
                    down_weight.sizes());
  TORCH_CHECK_VALUE(up_weight.is_cuda(), kOp, ": argument 'up_weight' must be a CUDA tensor; got ",
                    up_weight.device());
  check_dtype_allowed(kOp, "up_weight", up_weight, kCudaDtypes, "CUDA");
  check_like(kOp, {"up_weight", &up_weight}, {{"down_weight", &down_weight}});
  check_tma_streamable(kOp, "up_weight", up_weight, "hidden");
  check_tma_streamable(kOp, "down_weight", down_weight, "ffn");
  TORCH_CHECK_VALUE(up_weight.size(1) <= max_layer_norm_features(), kOp, ": hidden = up_weight.shape[1] must be at most ",
                    max_layer_norm_features(), " (the LayerNorm kernel's row); got ", up_weight.size(1));
}

const LaunchPlan& up_plan(const at::Tensor& up_weight, int64_t m, const PlanOverride& pin) {
  const gemv::Problem problem{scalar_kind(up_weight), gemv::m_tiles_for(static_cast<int>(m)), up_weight.size(0),
                              up_weight.size(1)};
  return gemv::plan_for(kOp, up_kernel_queries(), device_model(up_weight.device().index()), problem, pin);
}

std::string unsupported_reason_cuda(const at::Tensor& up_weight, const at::Tensor& down_weight) {
  return failure_message([&] {
    check_weights(up_weight, down_weight);
    const c10::cuda::CUDAGuard guard(up_weight.device());
    const DeviceModel& device = device_model(up_weight.device().index());
    check_device_supported(kOp, device,
                           up_kernel_queries().configure(scalar_kind(up_weight), 1, device.smem_per_block_optin));
  });
}

// The up projection's plan fields, then the down projection's (see gemv::plan_fields).
std::vector<int64_t> plan_cuda(const at::Tensor& up_weight, const at::Tensor& down_weight, int64_t m,
                               c10::string_view plan) {
  check_weights(up_weight, down_weight);
  TORCH_CHECK_VALUE(m >= 1 && m <= Tile::kMaxM, kOp, ": argument 'm' must be in [1, ", Tile::kMaxM,
                    "] (tokens served by the fused kernels); got ", m);
  const Pins pins = parse_pins(plan);
  const c10::cuda::CUDAGuard guard(up_weight.device());
  std::vector<int64_t> fields = gemv::plan_fields(up_plan(up_weight, m, pins.up));
  const std::vector<int64_t> down =
      gemv::plan_fields(mlp_down::plan_of(kOp, down_weight, m, pins.down));
  fields.insert(fields.end(), down.begin(), down.end());
  return fields;
}

at::Tensor mlp_block_residual_cuda(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                                   const at::Tensor& ln_weight, const std::optional<at::Tensor>& ln_bias,
                                   const at::Tensor& up_weight, const std::optional<at::Tensor>& up_bias,
                                   const at::Tensor& down_weight, const std::optional<at::Tensor>& down_bias,
                                   double eps, c10::string_view plan, bool pdl) {
  const Shape shape =
      check_args(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias, eps);
  check_weights(up_weight, down_weight);
  const Pins pins = parse_pins(plan);
  const c10::cuda::CUDAGuard guard(up_weight.device());

  if (shape.m > Tile::kMaxM) {
    return reference(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias, eps);
  }
  at::Tensor out = at::empty_like(hidden_states, at::MemoryFormat::Contiguous);
  if (shape.m == 0) return out;

  const at::Tensor hidden = contiguous_aligned(hidden_states.reshape({shape.m, shape.hidden}));
  const at::Tensor attn = attn_output.reshape({shape.m, shape.hidden}).contiguous();
  const at::Tensor gamma = contiguous_aligned(ln_weight);
  const std::optional<at::Tensor> beta =
      ln_bias.has_value() ? std::optional<at::Tensor>(contiguous_aligned(*ln_bias)) : std::nullopt;
  const std::optional<at::Tensor> b_up =
      up_bias.has_value() ? std::optional<at::Tensor>(up_bias->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> b_down =
      down_bias.has_value() ? std::optional<at::Tensor>(down_bias->contiguous()) : std::nullopt;
  const at::Tensor normalized = at::empty({shape.m, shape.hidden}, hidden.options());
  const at::Tensor intermediate = at::empty({shape.m, shape.ffn}, hidden.options());
  const ScalarKind kind = scalar_kind(up_weight);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  C10_CUDA_CHECK(launch_layer_norm(kind, hidden.data_ptr(), gamma.data_ptr(),
                                   beta.has_value() ? beta->data_ptr() : nullptr, normalized.data_ptr(),
                                   static_cast<int>(shape.m), static_cast<int>(shape.hidden), static_cast<float>(eps),
                                   pdl, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const LaunchPlan& plan_up = up_plan(up_weight, shape.m, pins.up);
  C10_CUDA_CHECK(launch_up(kind, gemv::m_tiles_for(static_cast<int>(shape.m)),
                           gemv::weight_tensor_map(up_weight, plan_up), gemv::input_tensor_map(normalized),
                           gemv::params_for(shape.m, shape.ffn, shape.hidden, plan_up),
                           UpArgs{b_up.has_value() ? b_up->data_ptr() : nullptr, intermediate.data_ptr()}, plan_up,
                           pdl, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  mlp_down::run_down(kOp, hidden, attn, intermediate, down_weight, b_down, out.view({shape.m, shape.hidden}),
                     pins.down, pdl);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CUDA, m) {
  m.impl("mlp_block_residual", &mlp_block_residual_cuda);
  m.impl("mlp_block_residual_unsupported_reason", &unsupported_reason_cuda);
  m.impl("mlp_block_residual_plan", &plan_cuda);
}

}  // namespace clusterfusion::mlp_block
