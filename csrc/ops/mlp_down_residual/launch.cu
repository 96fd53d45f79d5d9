// Instantiations and launch of the fused MLP-down + residual kernel.
#include "epilogue.cuh"
#include "gemv/launch.cuh"
#include "launch.h"

namespace clusterfusion::mlp_down_residual {
namespace {

using Kernels = gemv::Kernels<ResidualEpilogue>;

template <typename T>
cudaError_t launch_typed(int m_tiles, const CUtensorMap& weight_map, const CUtensorMap& input_map,
                         const Params& params, const ResidualArgs& a, const LaunchPlan& plan, bool programmatic,
                         cudaStream_t stream) {
  const ResidualEpilogue<T> epilogue{static_cast<const T*>(a.hidden_states), static_cast<const T*>(a.attn_output),
                                     static_cast<const T*>(a.bias), static_cast<T*>(a.out), params.n};
  return Kernels::launch(m_tiles, weight_map, input_map, params, epilogue, plan, programmatic, stream);
}

}  // namespace

const gemv::KernelQueries& kernel_queries() { return Kernels::queries(); }

cudaError_t launch(ScalarKind kind, int m_tiles, const CUtensorMap& weight_map,
                   const CUtensorMap& input_map, const Params& params, const ResidualArgs& residual,
                   const LaunchPlan& plan, bool programmatic, cudaStream_t stream) {
  return kind == ScalarKind::kHalf
             ? launch_typed<__half>(m_tiles, weight_map, input_map, params, residual, plan, programmatic, stream)
             : launch_typed<__nv_bfloat16>(m_tiles, weight_map, input_map, params, residual, plan, programmatic,
                                           stream);
}

}  // namespace clusterfusion::mlp_down_residual
