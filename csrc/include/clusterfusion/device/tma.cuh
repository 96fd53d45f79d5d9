// Tensor Memory Accelerator copies and L2 eviction policies (sm_90+). Plain
// inline PTX; no torch headers.
#pragma once

#include <cuda.h>
#include <cstdint>

#include "mbarrier.cuh"

namespace clusterfusion::device {

// For data read exactly once (streamed weights): leave L2 to everything else.
__device__ __forceinline__ uint64_t l2_policy_evict_first() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// For small data every CTA reads (the activation rows).
__device__ __forceinline__ uint64_t l2_policy_evict_last() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Copies the box at (inner, outer) of a 2-D tensor map into shared memory and
// signals `bar` with the bytes delivered (out-of-bounds elements arrive as zeros).
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int inner, int outer, uint64_t l2_policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(inner), "r"(outer), "r"(smem_address(bar)),
      "l"(l2_policy)
      : "memory");
}

// Byte offset of the 16-byte chunk `chunk` of row `row` in a tile of `span`-byte
// rows (32, 64 or 128) written by TMA with the swizzle of that span
// (CU_TENSOR_MAP_SWIZZLE_32B, _64B, _128B; the tile aligned to 8 * span bytes): the
// chunk index is XORed with the row offset's bits from bit 7 up.
__device__ __forceinline__ uint32_t swizzle_span(int row, int chunk, int span) {
  return static_cast<uint32_t>(row * span + ((chunk ^ ((row * span >> 7) & (span / 16 - 1))) << 4));
}

// The 128-byte case (1024-byte aligned tile).
__device__ __forceinline__ uint32_t swizzle_128b(int row, int chunk) { return swizzle_span(row, chunk, 128); }

}  // namespace clusterfusion::device
