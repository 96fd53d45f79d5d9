// Compile-time tile constants and the run-time parameter block of the fused
// MLP-down + residual kernel. Shared by host dispatch and device code, so it
// includes nothing from torch.
#pragma once

#include <cstddef>
#include <cstdint>

namespace clusterfusion::mlp_down {

// One pipeline stage holds a [block_n x kChunkK] weight tile and the matching
// [rows x kChunkK] slice of the input rows. kChunkK * 2 bytes = 128 bytes is the
// span of the TMA 128-byte swizzle, which makes the ldmatrix reads of both tiles
// bank-conflict free.
struct Tile {
  static constexpr int kChunkK = 64;             // reduction elements per stage
  static constexpr int kChunkBytes = 128;        // kChunkK 16-bit elements
  static constexpr int kWarpRows = 16;           // weight rows per consumer warp (mma M)
  // Tiles come in steps of 8 rows, so the grid can match the SM count more
  // closely. When block_n is an odd multiple of 8, the last warp's mma also reads
  // 8 rows past the weight tile (the start of the stage's input tile) and its
  // results for those rows are dropped.
  static constexpr int kRowStep = 8;
  static constexpr int kMinBlockN = kRowStep;
  static constexpr int kMaxBlockN = 256;         // TMA box dimensions are at most 256
  static constexpr int kRowsPerMmaTile = 8;      // input rows per mma N-tile
  static constexpr int kMaxInputRows = 16;       // two mma N-tiles; more rows go to cuBLAS
  static constexpr int kMaxClusterSize = 8;      // portable cluster size
  static constexpr int kMinStages = 2;
  static constexpr int kMaxStages = 32;
  static constexpr int kMaxThreads = 32 * (1 + kMaxBlockN / kWarpRows);  // producer + consumers
  static constexpr int kSmemAlignment = 1024;    // required by the 128-byte swizzle
};

enum class ScalarKind { kHalf, kBFloat16 };

// Everything the kernel needs besides the two tensor maps. Row-major [rows, n]
// buffers with row stride n.
struct Params {
  const void* hidden_states;   // [rows, n]
  const void* attn_output;     // [rows, n]
  const void* bias;            // [n] or nullptr
  void* out;                   // [rows, n]
  int rows;                    // decoded rows M (1..Tile::kMaxInputRows)
  int n;                       // hidden size: output features
  int k_chunks;                // ceil(ffn / kChunkK)
  int chunks_per_cta;          // reduction chunks owned by each CTA of a cluster
  int block_n;                 // weight rows per CTA (multiple of kRowStep)
  int stages;                  // pipeline depth
  int trigger_chunks_left;     // chunks a CTA has left to consume when it lets the next grid launch
};

// How one problem is laid out on the GPU. grid = (cluster_size, row_tiles).
struct LaunchPlan {
  int block_n = 0;
  int cluster_size = 0;
  int row_tiles = 0;
  int chunks_per_cta = 0;
  int stages = 0;
  int trigger_chunks_left = 0;  // see Params
  int threads = 0;
  size_t smem_bytes = 0;
  int resident_clusters = 0;  // clusters of this plan the device holds at once
};

inline int input_rows_padded(int mma_tiles) { return mma_tiles * Tile::kRowsPerMmaTile; }

// Consumer warps of a CTA, 16 weight rows each (the last may have only 8).
constexpr int consumer_warps(int block_n) { return (block_n + Tile::kWarpRows - 1) / Tile::kWarpRows; }

inline size_t stage_bytes(int block_n, int mma_tiles) {
  return static_cast<size_t>(block_n + input_rows_padded(mma_tiles)) * Tile::kChunkBytes;
}

// Rows of a cluster's tile that each of its CTAs finishes (reduces and writes).
// constexpr so that device code can call it too.
constexpr int rows_per_rank(int block_n, int cluster_size) {
  return (block_n + cluster_size - 1) / cluster_size;
}

// Fixed shared memory besides the stages: the inbox of fp32 partial sums the
// cluster's CTAs send to the owner of each row, the owner's residual terms,
// two mbarriers per stage and one for the inbox, and slack to align the base
// to 1024 bytes.
inline size_t fixed_smem_bytes(int block_n, int mma_tiles, int cluster_size, int stages) {
  const size_t owned = static_cast<size_t>(input_rows_padded(mma_tiles)) *
                       rows_per_rank(block_n, cluster_size);
  const size_t barriers = 2 * static_cast<size_t>(stages) + 1;
  return (cluster_size + 1) * owned * sizeof(float) + barriers * sizeof(uint64_t) + Tile::kSmemAlignment;
}

inline size_t smem_bytes(int block_n, int mma_tiles, int cluster_size, int stages) {
  return stages * stage_bytes(block_n, mma_tiles) +
         fixed_smem_bytes(block_n, mma_tiles, cluster_size, stages);
}

}  // namespace clusterfusion::mlp_down
