// Instantiations and launch of the fused MLP-down + residual kernel.
#include "clusterfusion/cluster_launch.h"
#include "kernel.cuh"
#include "launch.h"

namespace clusterfusion::mlp_down {
namespace {

template <typename T>
using Kernel = void (*)(CUtensorMap, CUtensorMap, Params, ResidualEpilogue<T>);

template <typename T>
Kernel<T> kernel_for(int m_tiles) {
  return m_tiles == 1 ? mlp_down_residual_kernel<T, 1, ResidualEpilogue<T>>
                      : mlp_down_residual_kernel<T, 2, ResidualEpilogue<T>>;
}

// Calls f(kernel) with the instantiation for (kind, m_tiles).
template <typename F>
cudaError_t with_kernel(ScalarKind kind, int m_tiles, F&& f) {
  return kind == ScalarKind::kHalf ? f(kernel_for<__half>(m_tiles))
                                   : f(kernel_for<__nv_bfloat16>(m_tiles));
}

template <typename T>
ResidualEpilogue<T> epilogue_for(const ResidualArgs& a, int n) {
  return {static_cast<const T*>(a.hidden_states), static_cast<const T*>(a.attn_output),
          static_cast<const T*>(a.bias), static_cast<T*>(a.out), n};
}

}  // namespace

cudaError_t configure_kernel(ScalarKind kind, int m_tiles, size_t smem_bytes) {
  return with_kernel(kind, m_tiles, [&](auto kernel) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(smem_bytes));
  });
}

cudaError_t max_active_clusters(ScalarKind kind, int m_tiles, int cluster_size, int threads,
                                size_t smem_bytes, int* clusters) {
  return with_kernel(kind, m_tiles, [&](auto kernel) {
    return max_resident_clusters(kernel, cluster_size, threads, smem_bytes, clusters);
  });
}

cudaError_t launch(ScalarKind kind, int m_tiles, const CUtensorMap& weight_map,
                   const CUtensorMap& input_map, const Params& params, const ResidualArgs& residual,
                   const LaunchPlan& plan, bool programmatic, cudaStream_t stream) {
  const ClusterLaunch shape{dim3(plan.cluster_size, plan.n_tiles, 1), dim3(plan.threads, 1, 1),
                                    plan.cluster_size, plan.smem_bytes, programmatic, stream};
  if (kind == ScalarKind::kHalf) {
    return launch_cluster_kernel(shape, kernel_for<__half>(m_tiles), weight_map, input_map,
                                         params, epilogue_for<__half>(residual, params.n));
  }
  return launch_cluster_kernel(shape, kernel_for<__nv_bfloat16>(m_tiles), weight_map,
                                       input_map, params, epilogue_for<__nv_bfloat16>(residual, params.n));
}

}  // namespace clusterfusion::mlp_down
