// The instantiations of the split-K GEMV kernel for one epilogue template (per
// element type and M tile count), the planner's questions about them, and their
// launch. Each op's launch.cu uses it with its own epilogue. CUDA sources only;
// no torch headers.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "clusterfusion/cluster_launch.h"
#include "kernel.cuh"
#include "plan.h"

namespace clusterfusion::gemv {

template <template <typename> class Epilogue>
struct Kernels {
  template <typename T>
  using Kernel = void (*)(CUtensorMap, CUtensorMap, Params, Epilogue<T>);

  template <typename T>
  static Kernel<T> for_tiles(int m_tiles) {
    return m_tiles == 1 ? split_k_gemv_kernel<T, 1, Epilogue<T>> : split_k_gemv_kernel<T, 2, Epilogue<T>>;
  }

  // Calls f(kernel) with the instantiation for (kind, m_tiles).
  template <typename F>
  static cudaError_t with(ScalarKind kind, int m_tiles, F&& f) {
    return kind == ScalarKind::kHalf ? f(for_tiles<__half>(m_tiles)) : f(for_tiles<__nv_bfloat16>(m_tiles));
  }

  static cudaError_t configure(ScalarKind kind, int m_tiles, size_t smem_bytes) {
    return with(kind, m_tiles, [&](auto kernel) { return configure_dynamic_smem(kernel, smem_bytes); });
  }

  static cudaError_t active_clusters(ScalarKind kind, int m_tiles, int cluster_size, int threads, size_t smem_bytes,
                                     int* clusters) {
    return with(kind, m_tiles, [&](auto kernel) {
      return max_resident_clusters(kernel, cluster_size, threads, smem_bytes, clusters);
    });
  }

  static const KernelQueries& queries() {
    static const KernelQueries q{&configure, &active_clusters};
    return q;
  }

  // Launches on `stream`; `programmatic` lets the kernel stream its first weight
  // tiles while the previous kernel in the stream finishes.
  template <typename T>
  static cudaError_t launch(int m_tiles, const CUtensorMap& weight_map, const CUtensorMap& input_map,
                            const Params& params, const Epilogue<T>& epilogue, const LaunchPlan& plan,
                            bool programmatic, cudaStream_t stream) {
    const ClusterLaunch shape{dim3(plan.cluster_size, plan.n_tiles, 1), dim3(plan.threads, 1, 1), plan.cluster_size,
                              plan.smem_bytes, programmatic, stream};
    return launch_cluster_kernel(shape, for_tiles<T>(m_tiles), weight_map, input_map, params, epilogue);
  }
};

}  // namespace clusterfusion::gemv
