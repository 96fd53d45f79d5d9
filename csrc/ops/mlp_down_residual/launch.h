// Torch-free launcher of the fused MLP-down + residual kernel: plain CUDA
// runtime types in and a cudaError_t out, so the backend decides how errors surface.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "gemv/config.h"
#include "gemv/plan.h"

namespace clusterfusion::mlp_down_residual {

using gemv::LaunchPlan;
using gemv::Params;
using gemv::Tile;

// The residual epilogue's operands: row-major [m, n] with row stride n.
struct ResidualArgs {
  const void* hidden_states;  // [m, n]
  const void* attn_output;    // [m, n]
  const void* bias;           // [n] or nullptr
  void* out;                  // [m, n]
};

// The planner's questions about this op's kernel instantiations. Configuring
// fails with cudaErrorNoKernelImageForDevice when the build carries no code for
// the current GPU.
const gemv::KernelQueries& kernel_queries();

// Launches on `stream`. `programmatic` lets the kernel overlap its weight
// prefetch with the tail of the previous kernel in the stream.
cudaError_t launch(ScalarKind kind, int m_tiles, const CUtensorMap& weight_map,
                   const CUtensorMap& input_map, const Params& params, const ResidualArgs& residual,
                   const LaunchPlan& plan, bool programmatic, cudaStream_t stream);

}  // namespace clusterfusion::mlp_down_residual
