// Torch-free launcher of the split-K GEMV kernel as a plain projection:
//   out[m, n] = activation(x[m, k] @ W[n, k].T + bias[n])
// (the MLP block's up projection with the exact GELU; the attention block's QKV
// and output projections without activation).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "config.h"
#include "plan.h"

namespace clusterfusion::gemv {

enum class Activation { kNone, kExactGelu };

struct BiasProjectionArgs {
  const void* bias;  // [n] or nullptr
  void* out;         // [m, n]
};

// The planner's questions about the instantiations for `activation`.
const KernelQueries& bias_projection_queries(Activation activation);

// Launches on `stream`; `programmatic` lets the kernel stream its first weight
// tiles while the previous kernel in the stream finishes.
cudaError_t launch_bias_projection(Activation activation, ScalarKind kind, int m_tiles, const CUtensorMap& weight_map,
                                   const CUtensorMap& input_map, const Params& params, const BiasProjectionArgs& args,
                                   const LaunchPlan& plan, bool programmatic, cudaStream_t stream);

}  // namespace clusterfusion::gemv
