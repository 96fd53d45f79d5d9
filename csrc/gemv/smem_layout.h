// The shared-memory layout of the split-K GEMV kernel, the one description both
// the kernel (offsets) and the planner (sizes) use:
//
//   [stage 0 .. stage S-1]        weight tile [block_n x 64] + input tile [padded m x 64] each
//   [inbox slots]                 fp32 partial sums, [cluster][padded m][share]
//   [epilogue terms]              fp32, [padded m][share]: what the owner adds to each output
//   [full x S][empty x S][inbox]  mbarriers
//
// The base is aligned up to 1024 bytes at run time; the request includes that slack.
#pragma once

#include <cstddef>
#include <cstdint>

#include "config.h"

namespace clusterfusion::gemv {

// Outputs of a cluster's tile that each of its CTAs finishes (reduces and writes).
constexpr int outputs_per_rank(int block_n, int cluster_size) {
  return (block_n + cluster_size - 1) / cluster_size;
}

struct SmemLayout {
  uint32_t weight_tile_bytes;
  uint32_t stage_bytes;
  uint32_t inbox_offset;
  uint32_t terms_offset;
  uint32_t full_offset;
  uint32_t empty_offset;
  uint32_t inbox_barrier_offset;
  uint32_t end;

  CLUSTERFUSION_HOST_DEVICE constexpr SmemLayout(int block_n, int m_tiles, int cluster_size, int stages)
      : weight_tile_bytes(static_cast<uint32_t>(block_n) * Tile::kChunkBytes),
        stage_bytes(static_cast<uint32_t>(block_n + m_tiles * Tile::kMPerTile) * Tile::kChunkBytes),
        inbox_offset(static_cast<uint32_t>(stages) * stage_bytes),
        terms_offset(inbox_offset + static_cast<uint32_t>(cluster_size * m_tiles * Tile::kMPerTile *
                                                          outputs_per_rank(block_n, cluster_size)) *
                                        sizeof(float)),
        full_offset(terms_offset + static_cast<uint32_t>(m_tiles * Tile::kMPerTile *
                                                         outputs_per_rank(block_n, cluster_size)) *
                                       sizeof(float)),
        empty_offset(full_offset + static_cast<uint32_t>(stages) * sizeof(uint64_t)),
        inbox_barrier_offset(empty_offset + static_cast<uint32_t>(stages) * sizeof(uint64_t)),
        end(inbox_barrier_offset + sizeof(uint64_t)) {}

  // Dynamic shared memory to ask for: the layout plus the alignment slack.
  CLUSTERFUSION_HOST_DEVICE constexpr size_t request_bytes() const {
    return static_cast<size_t>(end) + Tile::kSmemAlignment;
  }
};

// Every tile must start on the swizzle's 1024-byte boundary: weight tiles come
// in steps of kBlockNStep rows and input tiles in steps of kMPerTile rows.
static_assert(Tile::kBlockNStep * Tile::kChunkBytes % Tile::kSmemAlignment == 0,
              "weight tiles must keep stages 1024-byte aligned");
static_assert(Tile::kMPerTile * Tile::kChunkBytes % Tile::kSmemAlignment == 0,
              "input tiles must keep stages 1024-byte aligned");
// The fp32 arrays hold multiples of kMPerTile floats, so the mbarriers after them stay 8-byte aligned.
static_assert(Tile::kMPerTile * sizeof(float) % alignof(uint64_t) == 0,
              "mbarriers must be 8-byte aligned");
static_assert(SmemLayout(Tile::kMaxBlockN, Tile::kMaxMTiles, Tile::kMaxClusterSize, Tile::kMaxStages).end <
                  (1u << 31),
              "offsets fit in 32 bits");
static_assert(SmemLayout(184, 1, 8, 8).request_bytes() ==
                  8 * (184 + 8) * 128 + (8 + 1) * 8 * 23 * 4 + (2 * 8 + 1) * 8 + 1024,
              "layout of the 2.8B plan: 8 stages, inbox, terms, barriers, slack");

}  // namespace clusterfusion::gemv
