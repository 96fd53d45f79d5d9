// CUDA backend of clusterfusion::mlp_down_residual: argument checks, the launch
// plan, cached tensor maps, and the launch on PyTorch's current stream (no host
// synchronization, no allocation besides the output through PyTorch, so it is
// safe inside CUDA-graph capture).
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
#include "checks.h"
#include "gemv/operands.h"
#include "launch.h"
#include "reference.h"
#include "run.h"

namespace clusterfusion::mlp_down_residual {
namespace {

// What the kernel needs of the weight alone: a CUDA fp16/bf16 matrix it can stream.
void check_weight(const at::Tensor& weight) {
  TORCH_CHECK_VALUE(weight.is_cuda(), kOp, ": argument 'weight' must be a CUDA tensor; got ", weight.device());
  check_dtype_allowed(kOp, "weight", weight, kCudaDtypes, "CUDA");
  check_tma_streamable(kOp, "weight", weight, "ffn");
}

std::string unsupported_reason_cuda(const at::Tensor& weight) {
  return failure_message([&] {
    TORCH_CHECK_VALUE(weight.dim() == 2, kOp, ": argument 'weight' must be 2-D [hidden, ffn]; got shape ",
                      weight.sizes());
    check_weight(weight);
    const c10::cuda::CUDAGuard guard(weight.device());
    const DeviceModel& device = device_model(weight.device().index());
    check_device_supported(kOp, device,
                           kernel_queries().configure(scalar_kind(weight), 1, device.smem_per_block_optin));
  });
}

// [block_n, cluster_size, stages, n_tiles, chunks_per_cta, trigger_chunks_left,
//  threads, smem_bytes, resident_clusters]: the Python API names the fields.
std::vector<int64_t> plan_cuda(const at::Tensor& weight, int64_t m, c10::string_view plan) {
  TORCH_CHECK_VALUE(weight.dim() == 2, kOp, ": argument 'weight' must be 2-D [hidden, ffn]; got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(m >= 1 && m <= Tile::kMaxM, kOp, ": argument 'm' must be in [1, ", Tile::kMaxM,
                    "] (tokens served by the fused kernel); got ", m);
  check_weight(weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  return gemv::plan_fields(plan_of(kOp, weight, m, gemv::parse_plan(kOp, std::string(plan.data(), plan.size()))));
}

at::Tensor mlp_down_residual_cuda(const Args& a) {
  const Shape shape = check_args(a);
  check_weight(a.weight);
  const gemv::PlanOverride pin = gemv::parse_plan(kOp, std::string(a.plan.data(), a.plan.size()));
  const c10::cuda::CUDAGuard guard(a.weight.device());

  if (shape.m > Tile::kMaxM) return reference(a);
  at::Tensor out = at::empty_like(a.hidden_states, at::MemoryFormat::Contiguous);
  if (shape.m == 0) return out;

  const at::Tensor hidden = a.hidden_states.contiguous();
  const at::Tensor attn = a.attn_output.contiguous();
  const at::Tensor x = contiguous_aligned(a.mlp_intermediate.reshape({shape.m, shape.k}));
  const std::optional<at::Tensor> b =
      a.bias.has_value() ? std::optional<at::Tensor>(a.bias->contiguous()) : std::nullopt;

  run_down(kOp, hidden, attn, x, a.weight, b, out, pin, a.pdl);
  return out;
}

}  // namespace

const LaunchPlan& plan_of(const char* op, const at::Tensor& weight, int64_t m, const gemv::PlanOverride& pin) {
  const gemv::Problem problem{scalar_kind(weight), gemv::m_tiles_for(static_cast<int>(m)), weight.size(0),
                              weight.size(1)};
  return gemv::plan_for(op, kernel_queries(), device_model(weight.device().index()), problem, pin);
}

void run_down(const char* op, const at::Tensor& hidden, const at::Tensor& attn, const at::Tensor& x,
              const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& out,
              const gemv::PlanOverride& pin, bool pdl) {
  const int64_t m = x.size(0);
  const LaunchPlan& plan = plan_of(op, weight, m, pin);
  const ResidualArgs residual{hidden.data_ptr(), attn.data_ptr(), bias.has_value() ? bias->data_ptr() : nullptr,
                              out.data_ptr()};
  C10_CUDA_CHECK(launch(scalar_kind(weight), gemv::m_tiles_for(static_cast<int>(m)),
                        gemv::weight_tensor_map(weight, plan), gemv::input_tensor_map(x),
                        gemv::params_for(m, weight.size(0), weight.size(1), plan), residual, plan, pdl,
                        at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TORCH_LIBRARY_IMPL(clusterfusion, CUDA, m) {
  impl_op(m, "mlp_down_residual", &FlatKernel<OpSignature>::of<Args, &mlp_down_residual_cuda>, &unsupported_reason_cuda,
          &plan_cuda);
}

}  // namespace clusterfusion::mlp_down_residual
