// Instantiations and the launch of the layer kernel, one per element type and head size.
#include "layer_kernel.cuh"

#include "clusterfusion/cluster_launch.h"

namespace clusterfusion::gpt_neox_layer {
namespace {

// Calls f(kernel) with the instantiation for (kind, head_dim).
template <typename F>
cudaError_t with_kernel(ScalarKind kind, int head_dim, F&& f) {
  auto by_head_dim = [&](auto type_tag) -> cudaError_t {
    using T = decltype(type_tag);
    switch (head_dim) {
      case 64:
        return f(gpt_neox_layer_kernel<T, 64>);
      case 80:
        return f(gpt_neox_layer_kernel<T, 80>);
      case 96:
        return f(gpt_neox_layer_kernel<T, 96>);
      case 128:
        return f(gpt_neox_layer_kernel<T, 128>);
      default:
        return cudaErrorInvalidValue;
    }
  };
  return kind == ScalarKind::kHalf ? by_head_dim(__half{}) : by_head_dim(__nv_bfloat16{});
}

}  // namespace

bool head_dim_supported(int head_dim) {
  return head_dim == 64 || head_dim == 80 || head_dim == 96 || head_dim == 128;
}

size_t layer_smem_bytes(int head_dim, int hidden, int mlp_capacity, int cluster_size, int stages) {
  return LayerSmemLayout(head_dim, hidden, mlp_capacity, cluster_size, stages, kStageBytes).request_bytes();
}

cudaError_t layer_static_smem_bytes(ScalarKind kind, int head_dim, size_t* bytes) {
  return with_kernel(kind, head_dim, [&](auto kernel) {
    cudaFuncAttributes attributes{};
    const cudaError_t error = cudaFuncGetAttributes(&attributes, kernel);
    *bytes = attributes.sharedSizeBytes;
    return error;
  });
}

cudaError_t max_layer_clusters(ScalarKind kind, int head_dim, int cluster_size, size_t smem_bytes, int* clusters) {
  return with_kernel(kind, head_dim, [&](auto kernel) {
    const cudaError_t error = configure_dynamic_smem(kernel, smem_bytes);
    if (error != cudaSuccess) return error;
    return max_resident_clusters(kernel, cluster_size, kThreads, smem_bytes, clusters);
  });
}

cudaError_t launch_layer(ScalarKind kind, int head_dim, const LayerMaps& maps, const LayerParams& p,
                         const WorkTable& work, int cluster_size, size_t smem_bytes, cudaStream_t stream) {
  return with_kernel(kind, head_dim, [&](auto kernel) {
    const cudaError_t error = configure_dynamic_smem(kernel, smem_bytes);
    if (error != cudaSuccess) return error;
    const ClusterLaunch launch{dim3(p.ctas, 1, 1), dim3(kThreads, 1, 1), cluster_size, smem_bytes, false, stream};
    return launch_cluster_kernel(launch, kernel, maps, p, work);
  });
}

}  // namespace clusterfusion::gpt_neox_layer
