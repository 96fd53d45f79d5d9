// Fused MLP down projection + bias + parallel residual:
//   out[m, n] = hidden[m, n] + attn[m, n] + sum_k x[m, k] * W[n, k] + bias[n]
//
// Decoding is memory-bound: W is streamed from device memory once and the
// kernel is built around keeping that stream saturated.
//  * grid = (cluster_size, row_tiles). A cluster owns `block_n` rows of W; its
//    CTAs split the reduction dimension, each streaming a contiguous run of
//    64-wide chunks.
//  * Warp 0 is the producer: one lane issues TMA copies of each [block_n x 64]
//    weight tile and the matching [rows x 64] input tile into a ring of stages,
//    completing on a "full" mbarrier per stage.
//  * Warps 1.. are consumers, 16 weight rows each (the last one may own only 8
//    and drop the other half of its results): ldmatrix + m16n8k16 MMA with
//    W as the A operand and the input rows as B (rows padded to 8 or 16 by the
//    TMA's zero fill), fp32 accumulators in registers (two sets, so that the
//    MMAs of a stage form two independent chains); each warp frees a stage
//    on its "empty" mbarrier as soon as its fragments are in registers.
//  * Every CTA owns a share of the cluster's rows. While the weights stream,
//    the consumers add up the owner's residual terms (bias + attn + hidden);
//    at the end each CTA sends its partial sums straight into the owners'
//    shared memory with asynchronous stores that complete on the owner's
//    "inbox" mbarrier. Each owner waits for exactly the bytes it expects (no
//    cluster barrier, no fence), adds the slots in rank order (deterministic,
//    no atomics) to its residual terms and writes the output once.
#pragma once

#include <cooperative_groups.h>
#include <cuda.h>

#include "clusterfusion/device/cluster.cuh"
#include "clusterfusion/device/mma.cuh"
#include "clusterfusion/device/numeric.cuh"
#include "clusterfusion/device/tma.cuh"
#include "mlp_down_residual_config.h"

namespace clusterfusion::mlp_down {

template <typename T, int kMmaTiles>
__global__ void __launch_bounds__(Tile::kMaxThreads, 1)
    mlp_down_residual_kernel(const __grid_constant__ CUtensorMap weight_map,
                             const __grid_constant__ CUtensorMap input_map, const Params p) {
  using namespace clusterfusion::device;
  namespace cg = cooperative_groups;
  constexpr int kInputRows = kMmaTiles * Tile::kRowsPerMmaTile;
  constexpr uint32_t kInputTileBytes = kInputRows * Tile::kChunkBytes;
  constexpr int kStepsPerChunk = Tile::kChunkK / 16;

  const cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int cluster_size = static_cast<int>(cluster.num_blocks());
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int row0 = blockIdx.y * p.block_n;

  const uint32_t weight_tile_bytes = p.block_n * Tile::kChunkBytes;
  const uint32_t stage_bytes = weight_tile_bytes + kInputTileBytes;

  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((Tile::kSmemAlignment - smem_address(smem_raw) % Tile::kSmemAlignment) %
                              Tile::kSmemAlignment);
  // This rank finishes rows [first, first + count) of the cluster's tile, whose
  // last may overhang the matrix.
  const int valid_rows = min(p.block_n, p.n - row0);
  const int share = rows_per_rank(p.block_n, cluster_size);
  const int first = rank * share;
  const int count = max(0, min(valid_rows - first, share));
  float* inbox = reinterpret_cast<float*>(smem + p.stages * stage_bytes);  // [cluster][kInputRows][share]
  float* residual = inbox + cluster_size * kInputRows * share;            // [kInputRows][share]
  uint64_t* full = reinterpret_cast<uint64_t*>(residual + kInputRows * share);
  uint64_t* empty = full + p.stages;
  uint64_t* inbox_full = empty + p.stages;

  const int chunk_begin = rank * p.chunks_per_cta;
  const int chunk_count = max(0, min(p.k_chunks - chunk_begin, p.chunks_per_cta));
  const int warps_consuming = consumer_warps(p.block_n);

  if (threadIdx.x == 0) {
    for (int s = 0; s < p.stages; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], warps_consuming);
    }
    // Every peer sends one fp32 per owned row and input row.
    mbarrier_init(inbox_full, 1);
    mbarrier_arrive_expect_tx(inbox_full, cluster_size * p.rows * count * sizeof(float));
    fence_mbarrier_init();
    prefetch_tensor_map(&weight_map);
    prefetch_tensor_map(&input_map);
  }
  __syncthreads();
  cluster_arrive_relaxed();  // waited on before the first store into a peer

  if (warp == 0) {
    if (lane == 0) {
      const uint64_t stream_once = l2_policy_evict_first();
      const uint64_t keep = l2_policy_evict_last();
      auto stage_ptr = [&](int s) { return smem + s * stage_bytes; };
      auto chunk_k = [&](int i) { return (chunk_begin + i) * Tile::kChunkK; };
      // The weights do not depend on earlier kernels: put the first stages in
      // flight before waiting for the grid this one depends on.
      const int prologue = min(chunk_count, p.stages);
      for (int i = 0; i < prologue; ++i) {
        mbarrier_arrive_expect_tx(&full[i], stage_bytes);
        tma_load_2d(stage_ptr(i), &weight_map, &full[i], chunk_k(i), row0, stream_once);
      }
      grid_dependency_wait();
      // The next grid may launch (it waits for this one to finish before
      // reading anything we write) once p.trigger_chunks_left chunks are left
      // to consume, and never before the grid we depend on has finished.
      // Issuing chunk i tells that chunk i - stages has been consumed.
      const int trigger_after =
          max(prologue - 1, min(chunk_count - 1, chunk_count - 1 - p.trigger_chunks_left + p.stages));
      if (trigger_after < prologue) grid_dependency_launch_dependents();
      for (int i = 0; i < prologue; ++i) {
        tma_load_2d(stage_ptr(i) + weight_tile_bytes, &input_map, &full[i], chunk_k(i), 0, keep);
      }
      for (int i = prologue; i < chunk_count; ++i) {
        const int s = i % p.stages;
        mbarrier_wait(&empty[s], ((i / p.stages) - 1) & 1);
        mbarrier_arrive_expect_tx(&full[s], stage_bytes);
        tma_load_2d(stage_ptr(s), &weight_map, &full[s], chunk_k(i), row0, stream_once);
        tma_load_2d(stage_ptr(s) + weight_tile_bytes, &input_map, &full[s], chunk_k(i), 0, keep);
        if (i == trigger_after) grid_dependency_launch_dependents();
      }
    }
    __syncwarp();
    cluster_wait();
  } else {
    // Calls f(m, j) for every (input row m, owned row j) this consumer thread
    // finishes. The residual pass and the epilogue walk the same pairs, so each
    // thread only reads back residual terms it wrote itself: no barrier between.
    auto for_each_owned = [&](auto&& f) {
      for (int idx = threadIdx.x - 32; idx < count * p.rows; idx += blockDim.x - 32) {
        f(idx / count, idx % count);
      }
    };
    // The residual terms of the owned rows, read while the first tiles are in
    // flight (they may come from the previous kernel: wait for it first).
    grid_dependency_wait();
    const T* hidden = static_cast<const T*>(p.hidden_states);
    const T* attn = static_cast<const T*>(p.attn_output);
    const T* bias = static_cast<const T*>(p.bias);
    for_each_owned([&](int m, int j) {
      const int n = row0 + first + j;
      const size_t at = static_cast<size_t>(m) * p.n + n;
      float r = bias != nullptr ? to_float(bias[n]) : 0.f;
      r += to_float(attn[at]);
      r += to_float(hidden[at]);
      residual[m * share + j] = r;
    });

    const int warp_row = (warp - 1) * Tile::kWarpRows;
    // Even and odd k-steps accumulate separately: two independent MMA chains
    // per chunk instead of one of four, so a warp gets through small stages faster.
    float acc[2][kMmaTiles][4] = {};
    // ldmatrix lane -> (row, 16-byte chunk) of the 8x8 matrix it addresses.
    const int a_row = warp_row + (lane & 7) + ((lane >> 3) & 1) * 8;
    const int a_half = lane >> 4;
    const int b_row = (lane & 7) + (kMmaTiles == 2 ? (lane >> 4) * 8 : 0);
    const int b_half = (lane >> 3) & 1;

    for (int i = 0; i < chunk_count; ++i) {
      const int s = i % p.stages;
      mbarrier_wait(&full[s], (i / p.stages) & 1);
      const uint32_t weight_tile = smem_address(smem + s * stage_bytes);
      const uint32_t input_tile = weight_tile + weight_tile_bytes;

      uint32_t a[kStepsPerChunk][4];
      uint32_t b[kStepsPerChunk][kMmaTiles][2];
#pragma unroll
      for (int step = 0; step < kStepsPerChunk; ++step) {
        ldmatrix_x4(a[step], weight_tile + swizzle_128b(a_row, 2 * step + a_half));
        const uint32_t b_addr = input_tile + swizzle_128b(b_row, 2 * step + b_half);
        if constexpr (kMmaTiles == 1) {
          ldmatrix_x2(b[step][0], b_addr);
        } else {
          uint32_t r[4];
          ldmatrix_x4(r, b_addr);
          b[step][0][0] = r[0];
          b[step][0][1] = r[1];
          b[step][1][0] = r[2];
          b[step][1][1] = r[3];
        }
      }
      __syncwarp();
      if (lane == 0) mbarrier_arrive(&empty[s]);
#pragma unroll
      for (int step = 0; step < kStepsPerChunk; ++step) {
#pragma unroll
        for (int t = 0; t < kMmaTiles; ++t) mma_m16n8k16<T>(acc[step & 1][t], a[step], b[step][t]);
      }
    }

    // Accumulator fragment: rows (lane / 4) and (lane / 4 + 8) of the warp's
    // weight rows, input rows 2 * (lane % 4) and 2 * (lane % 4) + 1 of tile t.
    // Each value goes to the inbox of the rank that owns its row; rows beyond
    // the batch or the matrix are sent nowhere (the owners expect none).
    const uint32_t inbox_addr = smem_address(inbox);
    const uint32_t inbox_full_addr = smem_address(inbox_full);
    auto send = [&](int m, int n_local, float value) {
      if (m >= p.rows || n_local >= valid_rows) return;
      const int owner = n_local / share;
      const int j = n_local - owner * share;
      const uint32_t slot = inbox_addr + ((rank * kInputRows + m) * share + j) * sizeof(float);
      st_async_f32(map_to_rank(slot, owner), value, map_to_rank(inbox_full_addr, owner));
    };
    const int n_local = warp_row + lane / 4;
#pragma unroll
    for (int t = 0; t < kMmaTiles; ++t) {
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[0][t][r] += acc[1][t][r];
    }
    cluster_wait();  // every peer has started: its inbox and inbox barrier exist
#pragma unroll
    for (int t = 0; t < kMmaTiles; ++t) {
      const int m = t * Tile::kRowsPerMmaTile + 2 * (lane % 4);
      send(m, n_local, acc[0][t][0]);
      send(m + 1, n_local, acc[0][t][1]);
      send(m, n_local + 8, acc[0][t][2]);
      send(m + 1, n_local + 8, acc[0][t][3]);
    }

    // Once every peer's bytes have landed, nobody touches this CTA's shared
    // memory again, so it may exit without a cluster barrier. Each thread
    // finishes the rows whose residual terms it summed above.
    mbarrier_wait(inbox_full, 0);
    T* out = static_cast<T*>(p.out);
    for_each_owned([&](int m, int j) {
      float sum = 0.f;
#pragma unroll
      for (int q = 0; q < Tile::kMaxClusterSize; ++q) {
        if (q < cluster_size) sum += inbox[(q * kInputRows + m) * share + j];
      }
      out[static_cast<size_t>(m) * p.n + row0 + first + j] = from_float<T>(sum + residual[m * share + j]);
    });
  }
}

}  // namespace clusterfusion::mlp_down
