// Instantiations and launches of the projection kernels (bias_projection_kernels.h).
#include "bias_epilogue.cuh"
#include "bias_projection_kernels.h"
#include "launch.cuh"

namespace clusterfusion::gemv {
namespace {

template <Activation kActivation>
struct Projection {
  using Kernels = gemv::Kernels<BiasEpilogueOf<kActivation>::template Epilogue>;

  template <typename T>
  static cudaError_t launch(int m_tiles, const CUtensorMap& weight_map, const CUtensorMap& input_map,
                            const Params& params, const BiasProjectionArgs& args, const LaunchPlan& plan,
                            bool programmatic, cudaStream_t stream) {
    const typename BiasEpilogueOf<kActivation>::template Epilogue<T> epilogue{
        static_cast<const T*>(args.bias), static_cast<T*>(args.out), params.n};
    return Kernels::launch(m_tiles, weight_map, input_map, params, epilogue, plan, programmatic, stream);
  }

  static cudaError_t launch(ScalarKind kind, int m_tiles, const CUtensorMap& weight_map, const CUtensorMap& input_map,
                            const Params& params, const BiasProjectionArgs& args, const LaunchPlan& plan,
                            bool programmatic, cudaStream_t stream) {
    return kind == ScalarKind::kHalf
               ? launch<__half>(m_tiles, weight_map, input_map, params, args, plan, programmatic, stream)
               : launch<__nv_bfloat16>(m_tiles, weight_map, input_map, params, args, plan, programmatic, stream);
  }
};

}  // namespace

const KernelQueries& bias_projection_queries(Activation activation) {
  return activation == Activation::kExactGelu ? Projection<Activation::kExactGelu>::Kernels::queries()
                                              : Projection<Activation::kNone>::Kernels::queries();
}

cudaError_t launch_bias_projection(Activation activation, ScalarKind kind, int m_tiles, const CUtensorMap& weight_map,
                                   const CUtensorMap& input_map, const Params& params, const BiasProjectionArgs& args,
                                   const LaunchPlan& plan, bool programmatic, cudaStream_t stream) {
  return activation == Activation::kExactGelu
             ? Projection<Activation::kExactGelu>::launch(kind, m_tiles, weight_map, input_map, params, args, plan,
                                                          programmatic, stream)
             : Projection<Activation::kNone>::launch(kind, m_tiles, weight_map, input_map, params, args, plan,
                                                     programmatic, stream);
}

}  // namespace clusterfusion::gemv
