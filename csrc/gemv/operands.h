// Host side of one split-K GEMV launch: the weight's and the input's TMA
// descriptors and the kernel's parameters, from tensors and a plan. Every op
// built on the kernel sets up its launch through these.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda.h>

#include <vector>

#include "config.h"

namespace clusterfusion::gemv {

// weight: [n, k] with unit stride along k (checked by the op), streamed in
// [block_n x kChunkK] tiles.
CUtensorMap weight_tensor_map(const at::Tensor& weight, const LaunchPlan& plan);

// input: [m, k] contiguous and 16-byte aligned, read in [padded m x kChunkK] tiles.
CUtensorMap input_tensor_map(const at::Tensor& input);

Params params_for(int64_t m, int64_t n, int64_t k, const LaunchPlan& plan);

// The plan as the ops' `*_plan` queries return it: [block_n, cluster_size,
// stages, n_tiles, chunks_per_cta, trigger_chunks_left, threads, smem_bytes,
// resident_clusters] (the Python API names the fields).
std::vector<int64_t> plan_fields(const LaunchPlan& plan);

}  // namespace clusterfusion::gemv
