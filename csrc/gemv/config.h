// Compile-time tile constants and the run-time parameter blocks of the split-K
// GEMV kernel every weight-streaming op is built on: y[m, n] = sum_k x[m, k] *
// W[n, k] with m the tokens, n the outputs and k the reduction, then an op's
// epilogue. Shared by host and device code: no torch headers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "clusterfusion/scalar_kind.h"

namespace clusterfusion::gemv {

// One pipeline stage holds a [block_n x kChunkK] weight tile and, unless the
// input is resident (computed into shared memory before the mainloop), the
// matching [padded m x kChunkK] slice of the input. kChunkK * 2 bytes = 128 bytes is the
// span of the TMA 128-byte swizzle, which makes the ldmatrix reads of both
// tiles bank-conflict free.
struct Tile {
  static constexpr int kChunkK = 64;          // reduction elements per stage
  static constexpr int kChunkBytes = 128;     // kChunkK 16-bit elements
  static constexpr int kWarpN = 16;           // outputs per consumer warp (mma M)
  // block_n comes in steps of 8 outputs, so the grid can match the SM count
  // closely. When block_n is an odd multiple of 8, the last warp's mma also
  // reads the 8 rows after the weight tile (the start of the stage's input
  // tile) and drops those results.
  static constexpr int kBlockNStep = 8;
  static constexpr int kMinBlockN = kBlockNStep;
  static constexpr int kMaxBlockN = 256;      // TMA box dimensions are at most 256
  static constexpr int kMPerTile = 8;         // tokens per mma N-tile
  static constexpr int kMaxMTiles = 2;
  static constexpr int kMaxM = kMPerTile * kMaxMTiles;  // more tokens go to cuBLAS
  static constexpr int kMaxClusterSize = 8;   // portable cluster size
  static constexpr int kMinStages = 2;
  static constexpr int kMaxStages = 32;
  static constexpr int kMaxConsumerWarps = kMaxBlockN / kWarpN;
  static constexpr int kMaxThreads = 32 * (1 + kMaxConsumerWarps);  // producer + consumers
  static constexpr int kSmemAlignment = 1024;  // required by the 128-byte swizzle
};

static_assert(Tile::kChunkBytes == 128 && Tile::kChunkK * 2 == Tile::kChunkBytes,
              "a chunk row is one 128-byte swizzle span of 16-bit elements");
static_assert(Tile::kMaxThreads <= 1024, "one CTA holds at most 1024 threads");
static_assert(Tile::kMaxBlockN % Tile::kBlockNStep == 0 && Tile::kWarpN % Tile::kBlockNStep == 0,
              "block_n steps must tile the warps' outputs");

// Everything the kernel needs besides the tensor maps and the epilogue.
struct Params {
  int m;                    // tokens (1..Tile::kMaxM)
  int n;                    // outputs (hidden size)
  int k_chunks;             // ceil(k / kChunkK)
  int chunks_per_cta;       // reduction chunks owned by each CTA of a cluster
  int block_n;              // outputs per cluster (multiple of kBlockNStep)
  int stages;               // pipeline depth
  int trigger_chunks_left;  // chunks a CTA has left to consume when it lets the next grid launch
};

// How one problem is laid out on the GPU. grid = (cluster_size, n_tiles).
struct LaunchPlan {
  int block_n = 0;
  int cluster_size = 0;
  int n_tiles = 0;
  int chunks_per_cta = 0;
  int stages = 0;
  int trigger_chunks_left = 0;  // see Params
  int threads = 0;
  size_t smem_bytes = 0;
  int resident_clusters = 0;  // clusters of this plan the device holds at once
};

constexpr int m_tiles_for(int m) { return (m + Tile::kMPerTile - 1) / Tile::kMPerTile; }

// Consumer warps of a CTA, kWarpN outputs each (the last may have only 8).
constexpr int consumer_warps(int block_n) { return (block_n + Tile::kWarpN - 1) / Tile::kWarpN; }

constexpr int threads_for(int block_n) { return 32 * (1 + consumer_warps(block_n)); }

}  // namespace clusterfusion::gemv
