// Instantiations and launch of the LayerNorm kernel.
#include <algorithm>

#include "clusterfusion/cluster_launch.h"
#include "kernel.cuh"
#include "launch.h"

namespace clusterfusion::layer_norm {
namespace {

template <typename T>
cudaError_t launch_typed(const void* x, const void* weight, const void* bias, void* out, int m, int k, float eps,
                         int* clear, int clear_count, bool programmatic, cudaStream_t stream) {
  const int per_thread = 8 * kLayerNormVectorsPerThread;
  const int threads = std::clamp((k + per_thread - 1) / per_thread, 1, kMaxLayerNormThreads / 32 * 32);
  return launch_kernel(dim3(m, 1, 1), dim3((threads + 31) / 32 * 32, 1, 1), programmatic, stream, layer_norm_kernel<T>,
                       static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<const T*>(bias),
                       static_cast<T*>(out), k, eps, clear, clear_count);
}

}  // namespace

int max_features() { return kMaxLayerNormFeatures; }

cudaError_t launch(ScalarKind kind, const void* x, const void* weight, const void* bias, void* out, int m, int k,
                   float eps, int* clear, int clear_count, bool programmatic, cudaStream_t stream) {
  return kind == ScalarKind::kHalf
             ? launch_typed<__half>(x, weight, bias, out, m, k, eps, clear, clear_count, programmatic, stream)
             : launch_typed<__nv_bfloat16>(x, weight, bias, out, m, k, eps, clear, clear_count, programmatic, stream);
}

}  // namespace clusterfusion::layer_norm
