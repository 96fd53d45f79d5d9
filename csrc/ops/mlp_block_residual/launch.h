// Torch-free launchers of the MLP block's first two kernels: the LayerNorm of
// the layer's input, and the up projection with its bias and GELU (the split-K
// GEMV kernel with BiasGeluEpilogue). The block's third kernel is the MLP-down
// op's (ops/mlp_down_residual). Plain CUDA runtime types in, a cudaError_t out.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "gemv/config.h"
#include "gemv/plan.h"

namespace clusterfusion::mlp_block {

// The largest hidden size the LayerNorm kernel normalizes.
int max_layer_norm_features();

// out[m, k] = layer_norm(x[m, k]) * weight + bias; every pointer 16-byte
// aligned, k a multiple of 8 and at most max_layer_norm_features(), bias may be null.
cudaError_t launch_layer_norm(ScalarKind kind, const void* x, const void* weight, const void* bias, void* out, int m,
                              int k, float eps, bool programmatic, cudaStream_t stream);

struct UpArgs {
  const void* bias;    // [ffn] or nullptr
  void* intermediate;  // [m, ffn]: gelu(up(normalized) + bias)
};

// The planner's questions about the up kernel's instantiations.
const gemv::KernelQueries& up_kernel_queries();

// Launches the up projection on `stream`; `programmatic` as in the MLP-down launcher.
cudaError_t launch_up(ScalarKind kind, int m_tiles, const CUtensorMap& weight_map, const CUtensorMap& input_map,
                      const gemv::Params& params, const UpArgs& args, const gemv::LaunchPlan& plan,
                      bool programmatic, cudaStream_t stream);

}  // namespace clusterfusion::mlp_block
