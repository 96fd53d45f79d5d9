// Torch-free launcher of the fused MLP-down + residual kernel: plain CUDA
// runtime types in and a cudaError_t out, so the backend decides how errors surface.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "config.h"

namespace clusterfusion::mlp_down {

// Lets the instantiation for (kind, m_tiles) use `smem_bytes` of dynamic shared
// memory on the current device. Fails with cudaErrorNoKernelImageForDevice when
// the build carries no code for the current GPU.
cudaError_t configure_kernel(ScalarKind kind, int m_tiles, size_t smem_bytes);

// How many clusters of `cluster_size` CTAs (each `threads` threads and
// `smem_bytes` shared memory) the current device holds at once.
cudaError_t max_active_clusters(ScalarKind kind, int m_tiles, int cluster_size, int threads,
                                size_t smem_bytes, int* clusters);

// Launches on `stream`. `programmatic` lets the kernel overlap its weight
// prefetch with the tail of the previous kernel in the stream.
cudaError_t launch(ScalarKind kind, int m_tiles, const CUtensorMap& weight_map,
                   const CUtensorMap& input_map, const Params& params, const ResidualArgs& residual,
                   const LaunchPlan& plan, bool programmatic, cudaStream_t stream);

}  // namespace clusterfusion::mlp_down
