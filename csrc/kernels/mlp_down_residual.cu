// Instantiations and launch of the fused MLP-down + residual kernel.
#include "mlp_down_residual.h"
#include "mlp_down_residual_kernel.cuh"

namespace clusterfusion::mlp_down {
namespace {

using KernelFn = void (*)(CUtensorMap, CUtensorMap, Params);

KernelFn kernel_for(ScalarKind kind, int mma_tiles) {
  const bool half = kind == ScalarKind::kHalf;
  if (mma_tiles == 1) {
    return half ? mlp_down_residual_kernel<__half, 1> : mlp_down_residual_kernel<__nv_bfloat16, 1>;
  }
  return half ? mlp_down_residual_kernel<__half, 2> : mlp_down_residual_kernel<__nv_bfloat16, 2>;
}

cudaLaunchAttribute cluster_attribute(int cluster_size) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = cluster_size;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  return attr;
}

}  // namespace

cudaError_t configure_kernel(ScalarKind kind, int mma_tiles, size_t smem_bytes) {
  return cudaFuncSetAttribute(kernel_for(kind, mma_tiles),
                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(smem_bytes));
}

cudaError_t max_active_clusters(ScalarKind kind, int mma_tiles, int cluster_size, int threads,
                                size_t smem_bytes, int* clusters) {
  cudaLaunchAttribute attr = cluster_attribute(cluster_size);
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(cluster_size, 1, 1);
  config.blockDim = dim3(threads, 1, 1);
  config.dynamicSmemBytes = smem_bytes;
  config.attrs = &attr;
  config.numAttrs = 1;
  return cudaOccupancyMaxActiveClusters(clusters, kernel_for(kind, mma_tiles), &config);
}

cudaError_t launch(ScalarKind kind, int mma_tiles, const CUtensorMap& weight_map,
                   const CUtensorMap& input_map, const Params& params, const LaunchPlan& plan,
                   bool programmatic, cudaStream_t stream) {
  cudaLaunchAttribute attrs[2] = {cluster_attribute(plan.cluster_size), {}};
  attrs[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[1].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(plan.cluster_size, plan.row_tiles, 1);
  config.blockDim = dim3(plan.threads, 1, 1);
  config.dynamicSmemBytes = plan.smem_bytes;
  config.stream = stream;
  config.attrs = attrs;
  config.numAttrs = programmatic ? 2 : 1;
  return cudaLaunchKernelEx(&config, kernel_for(kind, mma_tiles), weight_map, input_map, params);
}

}  // namespace clusterfusion::mlp_down
