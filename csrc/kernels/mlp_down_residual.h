// Host entry points of the fused MLP-down + residual kernel. Plain CUDA runtime
// types only, so the dispatch layer decides how errors surface.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "mlp_down_residual_config.h"

namespace clusterfusion::mlp_down {

// Number of mma N-tiles (8 input rows each) the kernel instantiation handles.
inline int mma_tiles_for_rows(int rows) {
  return (rows + Tile::kRowsPerMmaTile - 1) / Tile::kRowsPerMmaTile;
}

// Lets the kernel instantiation use `smem_bytes` of dynamic shared memory on the
// current device. Fails with cudaErrorNoKernelImageForDevice when the build
// carries no code for the current GPU.
cudaError_t configure_kernel(ScalarKind kind, int mma_tiles, size_t smem_bytes);

// How many clusters of `cluster_size` CTAs (each `threads` threads and
// `smem_bytes` shared memory) can be resident on the current device at once.
cudaError_t max_active_clusters(ScalarKind kind, int mma_tiles, int cluster_size, int threads,
                                size_t smem_bytes, int* clusters);

// Launches on `stream`. `programmatic` lets the kernel overlap its weight
// prefetch with the tail of the previous kernel in the stream.
cudaError_t launch(ScalarKind kind, int mma_tiles, const CUtensorMap& weight_map,
                   const CUtensorMap& input_map, const Params& params, const LaunchPlan& plan,
                   bool programmatic, cudaStream_t stream);

}  // namespace clusterfusion::mlp_down
