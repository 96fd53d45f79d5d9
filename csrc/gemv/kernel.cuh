// The split-K GEMV kernel every weight-streaming op is built on:
//   y[m, n] = sum_k x[m, k] * W[n, k], then the op's epilogue on y.
//
// Decoding is memory-bound: W is streamed from device memory once and the
// kernel is built around keeping that stream saturated.
//  * grid = (cluster_size, n_tiles). A cluster owns `block_n` outputs (rows of
//    W); its CTAs split the reduction into contiguous runs of 64-wide chunks.
//  * Producer (produce_stages; warp 0, one lane): TMA copies of each [block_n x 64]
//    weight tile and the matching [m x 64] input tile into a StageRing.
//  * Mainloop (consume_stages; warps 1..): a SwizzledGemvWarp per 16 outputs on the tensor
//    cores, fp32 accumulators in registers; each warp releases a stage as soon
//    as its fragments are in registers.
//  * Epilogue (a template parameter): a ClusterInbox brings the split-K partials
//    of each output to the CTA that owns it; the epilogue reads the terms the
//    owner adds to them while the weights stream, and writes the results.
#pragma once

#include <cooperative_groups.h>
#include <cuda.h>

#include "clusterfusion/device/cluster.cuh"
#include "clusterfusion/device/cluster_reduce.cuh"
#include "clusterfusion/device/gemv_mma.cuh"
#include "clusterfusion/device/numeric.cuh"
#include "clusterfusion/device/pdl.cuh"
#include "clusterfusion/device/stage_ring.cuh"
#include "clusterfusion/device/tma.cuh"
#include "config.h"
#include "smem_layout.h"

namespace clusterfusion::gemv {

// The producer: weight tiles of the first stages go out before the grid
// dependency wait (weights do not depend on earlier kernels), input tiles after it.
__device__ __forceinline__ void produce_stages(const device::StageRing& ring,
                                               const CUtensorMap* weight_map,
                                               const CUtensorMap* input_map, const Params& p,
                                               int chunk_begin, int chunk_count, int n0,
                                               uint32_t weight_tile_bytes, uint32_t stage_bytes) {
  using namespace clusterfusion::device;
  const uint64_t stream_once = l2_policy_evict_first();
  const uint64_t keep = l2_policy_evict_last();
  auto chunk_k = [&](int i) { return (chunk_begin + i) * Tile::kChunkK; };
  auto load_input = [&](RingPosition at, int i) {
    tma_load_2d(ring.stage(at) + weight_tile_bytes, input_map, ring.full_barrier(at), chunk_k(i), 0, keep);
  };

  const int prologue = min(chunk_count, p.stages);
  RingPosition put = ring.start();
  for (int i = 0; i < prologue; ++i, put.advance()) {
    ring.acquire(put, stage_bytes);
    tma_load_2d(ring.stage(put), weight_map, ring.full_barrier(put), chunk_k(i), n0, stream_once);
  }
  const DependentLaunchTrigger trigger(chunk_count, p.stages, p.trigger_chunks_left, prologue);
  trigger.wait_for_previous_grid();
  RingPosition early = ring.start();
  for (int i = 0; i < prologue; ++i, early.advance()) load_input(early, i);
  for (int i = prologue; i < chunk_count; ++i, put.advance()) {
    ring.acquire(put, stage_bytes);
    tma_load_2d(ring.stage(put), weight_map, ring.full_barrier(put), chunk_k(i), n0, stream_once);
    load_input(put, i);
    trigger.chunk_issued(i);
  }
}

// The mainloop of one consumer warp: each stage's fragments go to registers,
// the stage is released at once, then the MMAs run.
template <typename Warp>
__device__ __forceinline__ void consume_stages(const device::StageRing& ring, const Warp& gemv,
                                               int chunk_count, uint32_t weight_tile_bytes, int lane,
                                               typename Warp::Accumulators& acc) {
  using namespace clusterfusion::device;
  RingPosition get = ring.start();
  for (int i = 0; i < chunk_count; ++i, get.advance()) {
    ring.wait_full(get);
    const uint32_t weight_tile = smem_address(ring.stage(get));
    typename Warp::Fragments fragments;
    gemv.load(weight_tile, weight_tile + weight_tile_bytes, fragments);
    __syncwarp();
    if (lane == 0) ring.release(get);
    gemv.accumulate(fragments, acc);
  }
}

// The epilogue has float terms(m, col), read (after the grid dependency wait)
// while the weights stream, and store(m, col, y + terms).
template <typename T, int kMTiles, typename Epilogue>
__global__ void __launch_bounds__(Tile::kMaxThreads, 1)
    split_k_gemv_kernel(const __grid_constant__ CUtensorMap weight_map,
                        const __grid_constant__ CUtensorMap input_map, const Params p,
                        const Epilogue epilogue) {
  using namespace clusterfusion::device;
  namespace cg = cooperative_groups;
  using Warp = SwizzledGemvWarp<T, kMTiles>;
  constexpr int kM = kMTiles * Tile::kMPerTile;
  static_assert(Warp::kChunkK == Tile::kChunkK && Warp::kOutputs == Tile::kWarpN);

  const cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int cluster_size = static_cast<int>(cluster.num_blocks());
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int n0 = blockIdx.y * p.block_n;

  const int chunk_begin = rank * p.chunks_per_cta;
  const int chunk_count = max(0, min(p.k_chunks - chunk_begin, p.chunks_per_cta));
  const SmemLayout layout(p.block_n, kMTiles, cluster_size, p.stages);
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((Tile::kSmemAlignment - smem_address(smem_raw) % Tile::kSmemAlignment) %
                              Tile::kSmemAlignment);
  const StageRing ring(smem, layout.stage_bytes, p.stages,
                       reinterpret_cast<uint64_t*>(smem + layout.full_offset),
                       reinterpret_cast<uint64_t*>(smem + layout.empty_offset));
  // The cluster's last tile may overhang the matrix: this rank finishes the
  // outputs [first, first + owned) of the tile that exist.
  const int valid_n = min(p.block_n, p.n - n0);
  const int share = outputs_per_rank(p.block_n, cluster_size);
  const int owned = max(0, min(valid_n - rank * share, share));
  const ClusterInbox<kM, Tile::kMaxClusterSize> inbox(
      reinterpret_cast<float*>(smem + layout.inbox_offset),
      reinterpret_cast<uint64_t*>(smem + layout.inbox_barrier_offset), rank, cluster_size, share, owned);
  float* terms = reinterpret_cast<float*>(smem + layout.terms_offset);  // [kM][share]

  if (threadIdx.x == 0) {
    ring.init(consumer_warps(p.block_n));
    inbox.init(p.m);
    fence_mbarrier_init();
    prefetch_tensor_map(&weight_map);
    prefetch_tensor_map(&input_map);
  }
  __syncthreads();
  cluster_arrive_relaxed();  // waited on before the first store into a peer

  if (warp == 0) {
    if (lane == 0) {
      produce_stages(ring, &weight_map, &input_map, p, chunk_begin, chunk_count, n0, layout.weight_tile_bytes,
                     layout.stage_bytes);
    }
    __syncwarp();
    cluster_wait();
    return;
  }

  // The owner's terms, read while the first tiles are in flight (they may come
  // from the previous kernel: wait for it first). The epilogue walks the same
  // pairs, so each thread reads back only terms it wrote: no barrier between.
  const int consumer_thread = threadIdx.x - 32;
  const int consumer_threads = blockDim.x - 32;
  grid_dependency_wait();
  inbox.for_each_owned(p.m, consumer_thread, consumer_threads, [&](int m, int j) {
    terms[m * share + j] = epilogue.terms(m, n0 + inbox.first_owned() + j);
  });

  const Warp gemv((warp - 1) * Tile::kWarpN, lane);
  typename Warp::Accumulators acc = {};
  consume_stages(ring, gemv, chunk_count, layout.weight_tile_bytes, lane, acc);

  // Tokens beyond m and outputs beyond the matrix are sent nowhere (the owners expect none).
  Warp::combine_chains(acc);
  cluster_wait();  // every peer has started: its inbox and inbox barrier exist
  gemv.for_each_result(acc, [&](int m, int n_local, float value) {
    if (m < p.m && n_local < valid_n) inbox.send(m, n_local, value);
  });

  inbox.wait();
  inbox.for_each_owned(p.m, consumer_thread, consumer_threads, [&](int m, int j) {
    epilogue.store(m, n0 + inbox.first_owned() + j, inbox.total(m, j) + terms[m * share + j]);
  });
}

}  // namespace clusterfusion::gemv
