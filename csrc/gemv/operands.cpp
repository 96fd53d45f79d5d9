#include "operands.h"

#include "../host/dtype.h"
#include "../host/tensor_map.h"

namespace clusterfusion::gemv {

CUtensorMap weight_tensor_map(const at::Tensor& weight, const LaunchPlan& plan) {
  return tiled_tensor_map({weight.data_ptr(), tma_dtype(scalar_kind(weight)), static_cast<uint64_t>(weight.size(1)),
                           static_cast<uint64_t>(weight.size(0)),
                           static_cast<uint64_t>(weight.stride(0) * weight.element_size()), Tile::kChunkK,
                           static_cast<uint32_t>(plan.block_n), CU_TENSOR_MAP_SWIZZLE_128B});
}

CUtensorMap input_tensor_map(const at::Tensor& input) {
  const int m_tiles = m_tiles_for(static_cast<int>(input.size(0)));
  return tiled_tensor_map({input.data_ptr(), tma_dtype(scalar_kind(input)), static_cast<uint64_t>(input.size(1)),
                           static_cast<uint64_t>(input.size(0)),
                           static_cast<uint64_t>(input.size(1) * input.element_size()), Tile::kChunkK,
                           static_cast<uint32_t>(m_tiles * Tile::kMPerTile), CU_TENSOR_MAP_SWIZZLE_128B});
}

Params params_for(int64_t m, int64_t n, int64_t k, const LaunchPlan& plan) {
  Params p{};
  p.m = static_cast<int>(m);
  p.n = static_cast<int>(n);
  p.k_chunks = static_cast<int>((k + Tile::kChunkK - 1) / Tile::kChunkK);
  p.chunks_per_cta = plan.chunks_per_cta;
  p.block_n = plan.block_n;
  p.stages = plan.stages;
  p.trigger_chunks_left = plan.trigger_chunks_left;
  return p;
}

std::vector<int64_t> plan_fields(const LaunchPlan& p) {
  return {p.block_n, p.cluster_size, p.stages, p.n_tiles, p.chunks_per_cta, p.trigger_chunks_left,
          p.threads, static_cast<int64_t>(p.smem_bytes), p.resident_clusters};
}

}  // namespace clusterfusion::gemv
