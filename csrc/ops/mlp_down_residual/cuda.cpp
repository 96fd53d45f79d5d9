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

#include "../../host/device_model.h"
#include "../../host/dtype.h"
#include "../../host/tensor_map.h"
#include "checks.h"
#include "launch.h"
#include "plan.h"
#include "reference.h"

namespace clusterfusion::mlp_down {
namespace {

const std::initializer_list<at::ScalarType> kCudaDtypes = {at::kHalf, at::kBFloat16};

// What the kernel needs of the weight alone: a CUDA fp16/bf16 matrix it can stream.
void check_weight(const at::Tensor& weight) {
  TORCH_CHECK_VALUE(weight.is_cuda(), kOp, ": argument 'weight' must be a CUDA tensor; got ", weight.device());
  check_dtype_allowed(kOp, "weight", weight, kCudaDtypes, "CUDA");
  check_tma_streamable(kOp, "weight", weight, "ffn");
}

const LaunchPlan& plan_of(const at::Tensor& weight, int64_t m, c10::string_view plan) {
  const Problem problem{scalar_kind(weight), m_tiles_for(static_cast<int>(m)), weight.size(0), weight.size(1)};
  return plan_for(kOp, device_model(weight.device().index()), problem,
                  parse_plan(kOp, std::string(plan.data(), plan.size())));
}

std::string unsupported_reason_cuda(const at::Tensor& weight) {
  return failure_message([&] {
    TORCH_CHECK_VALUE(weight.dim() == 2, kOp, ": argument 'weight' must be 2-D [hidden, ffn]; got shape ",
                      weight.sizes());
    check_weight(weight);
    const c10::cuda::CUDAGuard guard(weight.device());
    const DeviceModel& device = device_model(weight.device().index());
    check_device_supported(kOp, device, configure_kernel(scalar_kind(weight), 1, device.smem_per_block_optin));
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
  const LaunchPlan& p = plan_of(weight, m, plan);
  return {p.block_n, p.cluster_size, p.stages, p.n_tiles, p.chunks_per_cta, p.trigger_chunks_left,
          p.threads, static_cast<int64_t>(p.smem_bytes), p.resident_clusters};
}

at::Tensor mlp_down_residual_cuda(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                                  const at::Tensor& mlp_intermediate, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, c10::string_view plan, bool pdl) {
  const Shape shape = check_args(hidden_states, attn_output, mlp_intermediate, weight, bias);
  check_weight(weight);
  const PlanOverride pin = parse_plan(kOp, std::string(plan.data(), plan.size()));
  const c10::cuda::CUDAGuard guard(weight.device());

  if (shape.m > Tile::kMaxM) return reference(hidden_states, attn_output, mlp_intermediate, weight, bias);
  at::Tensor out = at::empty_like(hidden_states, at::MemoryFormat::Contiguous);
  if (shape.m == 0) return out;

  const at::Tensor hidden = hidden_states.contiguous();
  const at::Tensor attn = attn_output.contiguous();
  at::Tensor x = mlp_intermediate.reshape({shape.m, shape.k}).contiguous();
  if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) x = x.clone();  // TMA needs 16-byte alignment
  const std::optional<at::Tensor> b =
      bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;

  const ScalarKind kind = scalar_kind(weight);
  const int m_tiles = m_tiles_for(static_cast<int>(shape.m));
  const LaunchPlan& launch_plan =
      plan_for(kOp, device_model(weight.device().index()), Problem{kind, m_tiles, shape.n, shape.k}, pin);

  const int64_t elem = weight.element_size();
  const CUtensorMap weight_map = tiled_tensor_map(
      {weight.data_ptr(), tma_dtype(kind), static_cast<uint64_t>(shape.k), static_cast<uint64_t>(shape.n),
       static_cast<uint64_t>(weight.stride(0) * elem), Tile::kChunkK,
       static_cast<uint32_t>(launch_plan.block_n), CU_TENSOR_MAP_SWIZZLE_128B});
  const CUtensorMap input_map = tiled_tensor_map(
      {x.data_ptr(), tma_dtype(kind), static_cast<uint64_t>(shape.k), static_cast<uint64_t>(shape.m),
       static_cast<uint64_t>(shape.k * elem), Tile::kChunkK, static_cast<uint32_t>(m_tiles * Tile::kMPerTile),
       CU_TENSOR_MAP_SWIZZLE_128B});

  Params params{};
  params.m = static_cast<int>(shape.m);
  params.n = static_cast<int>(shape.n);
  params.k_chunks = static_cast<int>((shape.k + Tile::kChunkK - 1) / Tile::kChunkK);
  params.chunks_per_cta = launch_plan.chunks_per_cta;
  params.block_n = launch_plan.block_n;
  params.stages = launch_plan.stages;
  params.trigger_chunks_left = launch_plan.trigger_chunks_left;
  const ResidualArgs residual{hidden.data_ptr(), attn.data_ptr(), b.has_value() ? b->data_ptr() : nullptr,
                              out.data_ptr()};

  C10_CUDA_CHECK(launch(kind, m_tiles, weight_map, input_map, params, residual, launch_plan, pdl,
                        at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CUDA, m) {
  m.impl("mlp_down_residual", &mlp_down_residual_cuda);
  m.impl("mlp_down_residual_unsupported_reason", &unsupported_reason_cuda);
  m.impl("mlp_down_residual_plan", &plan_cuda);
}

}  // namespace clusterfusion::mlp_down
