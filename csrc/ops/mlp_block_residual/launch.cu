// Instantiations and launches of the MLP block's LayerNorm and up-projection kernels.
#include <algorithm>

#include "epilogue.cuh"
#include "gemv/launch.cuh"
#include "launch.h"
#include "layer_norm.cuh"

namespace clusterfusion::mlp_block {
namespace {

using UpKernels = gemv::Kernels<BiasGeluEpilogue>;

template <typename T>
cudaError_t launch_up_typed(int m_tiles, const CUtensorMap& weight_map, const CUtensorMap& input_map,
                            const gemv::Params& params, const UpArgs& args, const gemv::LaunchPlan& plan,
                            bool programmatic, cudaStream_t stream) {
  const BiasGeluEpilogue<T> epilogue{static_cast<const T*>(args.bias), static_cast<T*>(args.intermediate), params.n};
  return UpKernels::launch(m_tiles, weight_map, input_map, params, epilogue, plan, programmatic, stream);
}

template <typename T>
cudaError_t launch_layer_norm_typed(const void* x, const void* weight, const void* bias, void* out, int m, int k,
                                    float eps, bool programmatic, cudaStream_t stream) {
  const int per_thread = 8 * kLayerNormVectorsPerThread;
  const int threads = std::clamp((k + per_thread - 1) / per_thread, 1, kMaxLayerNormThreads / 32 * 32);
  return launch_kernel(dim3(m, 1, 1), dim3((threads + 31) / 32 * 32, 1, 1), programmatic, stream, layer_norm_kernel<T>,
                       static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<const T*>(bias),
                       static_cast<T*>(out), k, eps);
}

}  // namespace

int max_layer_norm_features() { return kMaxLayerNormFeatures; }

cudaError_t launch_layer_norm(ScalarKind kind, const void* x, const void* weight, const void* bias, void* out, int m,
                              int k, float eps, bool programmatic, cudaStream_t stream) {
  return kind == ScalarKind::kHalf
             ? launch_layer_norm_typed<__half>(x, weight, bias, out, m, k, eps, programmatic, stream)
             : launch_layer_norm_typed<__nv_bfloat16>(x, weight, bias, out, m, k, eps, programmatic, stream);
}

const gemv::KernelQueries& up_kernel_queries() { return UpKernels::queries(); }

cudaError_t launch_up(ScalarKind kind, int m_tiles, const CUtensorMap& weight_map, const CUtensorMap& input_map,
                      const gemv::Params& params, const UpArgs& args, const gemv::LaunchPlan& plan,
                      bool programmatic, cudaStream_t stream) {
  return kind == ScalarKind::kHalf
             ? launch_up_typed<__half>(m_tiles, weight_map, input_map, params, args, plan, programmatic, stream)
             : launch_up_typed<__nv_bfloat16>(m_tiles, weight_map, input_map, params, args, plan, programmatic,
                                              stream);
}

}  // namespace clusterfusion::mlp_block
