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

#include "../../host/backend.h"
#include "../../host/device_model.h"
#include "../../host/dtype.h"
#include "../../host/flat_kernel.h"
#include "../../host/tensors.h"
#include "../mlp_down_residual/run.h"
#include "checks.h"
#include "gemv/bias_projection.h"
#include "gemv/operands.h"
#include "layer_norm/launch.h"
#include "layer_norm/run.h"
#include "reference.h"

namespace clusterfusion::mlp_block_residual {
namespace {

using gemv::Activation;
using gemv::LaunchPlan;
using gemv::PlanOverride;
using gemv::Tile;

gemv::PlanPair parse_pins(c10::string_view plan) {
  return gemv::parse_plan_pair(kOp, std::string(plan.data(), plan.size()), "UP", "DOWN");
}

// What the kernels need of the weights alone: CUDA fp16/bf16 matrices they can stream.
void check_weights(const at::Tensor& up_weight, const at::Tensor& down_weight) {
  TORCH_CHECK_VALUE(up_weight.dim() == 2 && down_weight.dim() == 2, kOp,
                    ": arguments 'up_weight' and 'down_weight' must be 2-D; got shapes ", up_weight.sizes(), " and ",
                    down_weight.sizes());
  TORCH_CHECK_VALUE(up_weight.is_cuda(), kOp, ": argument 'up_weight' must be a CUDA tensor; got ", up_weight.device());
  check_dtype_allowed(kOp, "up_weight", up_weight, kCudaDtypes, "CUDA");
  check_like(kOp, {"up_weight", &up_weight}, {{"down_weight", &down_weight}});
  check_tma_streamable(kOp, "up_weight", up_weight, "hidden");
  check_tma_streamable(kOp, "down_weight", down_weight, "ffn");
  TORCH_CHECK_VALUE(up_weight.size(1) <= layer_norm::max_features(), kOp,
                    ": hidden = up_weight.shape[1] must be at most ", layer_norm::max_features(),
                    " (the LayerNorm kernel's row); got ", up_weight.size(1));
}

std::string unsupported_reason_cuda(const at::Tensor& up_weight, const at::Tensor& down_weight) {
  return failure_message([&] {
    check_weights(up_weight, down_weight);
    const c10::cuda::CUDAGuard guard(up_weight.device());
    const DeviceModel& device = device_model(up_weight.device().index());
    check_device_supported(kOp, device,
                           gemv::bias_projection_queries(Activation::kExactGelu)
                               .configure(scalar_kind(up_weight), 1, device.smem_per_block_optin));
  });
}

// The up projection's plan fields, then the down projection's (see gemv::plan_fields).
std::vector<int64_t> plan_cuda(const at::Tensor& up_weight, const at::Tensor& down_weight, int64_t m,
                               c10::string_view plan) {
  check_weights(up_weight, down_weight);
  TORCH_CHECK_VALUE(m >= 1 && m <= Tile::kMaxM, kOp, ": argument 'm' must be in [1, ", Tile::kMaxM,
                    "] (tokens served by the fused kernels); got ", m);
  const gemv::PlanPair pins = parse_pins(plan);
  const c10::cuda::CUDAGuard guard(up_weight.device());
  std::vector<int64_t> fields =
      gemv::plan_fields(gemv::projection_plan(kOp, Activation::kExactGelu, up_weight, m, pins.first));
  const std::vector<int64_t> down = gemv::plan_fields(mlp_down_residual::plan_of(kOp, down_weight, m, pins.second));
  fields.insert(fields.end(), down.begin(), down.end());
  return fields;
}

at::Tensor mlp_block_residual_cuda(const Args& a) {
  const Shape shape = check_args(a);
  check_weights(a.up_weight, a.down_weight);
  const gemv::PlanPair pins = parse_pins(a.plan);
  const c10::cuda::CUDAGuard guard(a.up_weight.device());

  if (shape.m > Tile::kMaxM) {
    return reference(a, a.up_weight.scalar_type());
  }
  at::Tensor out = at::empty_like(a.hidden_states, at::MemoryFormat::Contiguous);
  if (shape.m == 0) return out;

  const at::Tensor hidden = contiguous_aligned(a.hidden_states.reshape({shape.m, shape.hidden}));
  const at::Tensor attn = a.attn_output.reshape({shape.m, shape.hidden}).contiguous();
  const std::optional<at::Tensor> b_up =
      a.up_bias.has_value() ? std::optional<at::Tensor>(a.up_bias->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> b_down =
      a.down_bias.has_value() ? std::optional<at::Tensor>(a.down_bias->contiguous()) : std::nullopt;
  const at::Tensor normalized = at::empty({shape.m, shape.hidden}, hidden.options());
  const at::Tensor intermediate = at::empty({shape.m, shape.ffn}, hidden.options());
  layer_norm::run(hidden, a.ln_weight, a.ln_bias, normalized, a.eps, a.pdl);
  gemv::run_bias_projection(kOp, Activation::kExactGelu, normalized, a.up_weight, b_up, intermediate, pins.first,
                            a.pdl);
  mlp_down_residual::run_down(kOp, hidden, attn, intermediate, a.down_weight, b_down, out.view({shape.m, shape.hidden}),
                              pins.second, a.pdl);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CUDA, m) {
  impl_op(m, "mlp_block_residual", &FlatKernel<OpSignature>::of<Args, &mlp_block_residual_cuda>,
          &unsupported_reason_cuda, &plan_cuda);
}

}  // namespace clusterfusion::mlp_block_residual
