// Host side of launching kernels with the CUDA runtime: the cluster shape,
// optional programmatic stream serialization (see pdl.cuh), and the residency
// query the planners use. No torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

namespace clusterfusion {

struct ClusterLaunch {
  dim3 grid;
  dim3 block;
  int cluster_size;  // CTAs along grid.x per cluster
  size_t smem_bytes;
  bool programmatic;  // may start before the previous kernel in the stream finishes
  cudaStream_t stream;
};

inline cudaLaunchAttribute cluster_dimension(int cluster_size) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = cluster_size;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  return attr;
}

// Lets the kernel start before the previous kernel in the stream finishes (see pdl.cuh).
inline cudaLaunchAttribute programmatic_serialization() {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  return attr;
}

template <typename... Params, typename... Args>
cudaError_t launch_cluster_kernel(const ClusterLaunch& l, void (*kernel)(Params...), Args&&... args) {
  cudaLaunchAttribute attrs[2] = {cluster_dimension(l.cluster_size), programmatic_serialization()};
  cudaLaunchConfig_t config{};
  config.gridDim = l.grid;
  config.blockDim = l.block;
  config.dynamicSmemBytes = l.smem_bytes;
  config.stream = l.stream;
  config.attrs = attrs;
  config.numAttrs = l.programmatic ? 2 : 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// A launch without clusters or dynamic shared memory; `programmatic` as in ClusterLaunch.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(dim3 grid, dim3 block, bool programmatic, cudaStream_t stream, void (*kernel)(Params...),
                          Args&&... args) {
  cudaLaunchAttribute attr = programmatic_serialization();
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.stream = stream;
  config.attrs = &attr;
  config.numAttrs = programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// Lets `kernel` use `smem_bytes` of dynamic shared memory.
template <typename... Params>
cudaError_t configure_dynamic_smem(void (*kernel)(Params...), size_t smem_bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes));
}

// How many clusters of `cluster_size` CTAs of `kernel` fit on the current device at once.
template <typename... Params>
cudaError_t max_resident_clusters(void (*kernel)(Params...), int cluster_size, int threads,
                                size_t smem_bytes, int* clusters) {
  cudaLaunchAttribute attr = cluster_dimension(cluster_size);
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(cluster_size, 1, 1);
  config.blockDim = dim3(threads, 1, 1);
  config.dynamicSmemBytes = smem_bytes;
  config.attrs = &attr;
  config.numAttrs = 1;
  return cudaOccupancyMaxActiveClusters(clusters, kernel, &config);
}

}  // namespace clusterfusion
