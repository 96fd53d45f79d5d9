// The one-launch GPT-NeoX layer for one new token:
//   out = x + dense(attention(qkv(ln1(x)))) + down(gelu(up(ln2(x)))) (+ biases)
// grid = ctas (every CTA resident at once), clusters of cluster_size; each CTA
// does the work its CtaWork entry deals it (clusterfusion/_layer_plan.py).
//
//  * Producer (warp 0, one lane): TMA copies of the CTA's weight tiles, in the
//    order the consumers use them, into a StageRing: the head's q, k, v rows over
//    the rank's share of the reduction, the head's dense columns for the rank's
//    outputs, the MLP slice's up rows, its down columns. Weights do not depend on
//    activations, so the ring stays full across every wait below: the MLP's tiles
//    stream while the head attends.
//  * Consumers (warps 1..): both LayerNorms (the norm row stage), then the GEMV
//    tiles on the tensor cores with the input from shared memory:
//    - q, k, v partials go to every rank of the cluster (st.async);
//    - the head: the ranks' q, k, v partials summed in rank order, the rotary
//      embedding, the KV append (one rank), attention over the positions in
//      passes dealt to the ranks round robin (the attention worker stage), the
//      running softmaxes exchanged and merged in rank order, then the dense
//      columns for this rank's outputs, the start of its partial sum;
//    - the slice's GELU(up) stays in shared memory and feeds its down columns,
//      added to the partial sum of every output.
//  * The sum: every CTA publishes its partial sum and counts itself in (the one
//    wait across clusters, device/counter.cuh); then each CTA adds up its range
//    of outputs: x + biases + every CTA's partial, in a fixed order.
// Every sum runs in a fixed order: bitwise reproducible. No torch headers.
#pragma once

#include <cooperative_groups.h>
#include <cuda.h>

#include "clusterfusion/device/assert.cuh"
#include "clusterfusion/device/cluster.cuh"
#include "clusterfusion/device/counter.cuh"
#include "clusterfusion/device/gemv_mma.cuh"
#include "clusterfusion/device/numeric.cuh"
#include "clusterfusion/device/reduce.cuh"
#include "clusterfusion/device/stage_ring.cuh"
#include "clusterfusion/device/tma.cuh"
#include "clusterfusion/stages/attention_worker.cuh"
#include "clusterfusion/stages/norm_row.cuh"
#include "gemv/bias_epilogue.cuh"
#include "layer_kernel.h"
#include "layer_smem.h"

namespace clusterfusion::gpt_neox_layer {

using Consumers = device::WarpGroup<1, kConsumerWarps, 1>;
static_assert(kMaxHidden == 8 * stages::kNormVectorsPerThread * Consumers::kThreads,
              "the consumers normalize rows of up to kMaxHidden features");
using device::from_float;
using device::to_float;

static_assert((kTileRows >> (kBoxHeights - 1)) == kBoxRows, "the smallest box is the row step");

// Rows [row_begin, row_begin + rows) of a weight over the reduction range
// [k_begin, k_begin + k_size). Its chunks are 64 wide; with `tails` (the 32- and
// 16-wide maps), the last k_size % 64 elements, rounded up to 16, are one or two
// narrower chunks instead of a whole one.
struct WeightItem {
  const WeightMaps* maps;
  const WeightMaps* tails;  // [2] or null
  int row_begin;
  int rows;
  int k_begin;
  int k_size;
};

// One chunk: its offset in the item's reduction range and its width in bytes per row.
struct Chunk {
  int k;
  int span;
};

// Elements of the last, partial chunk: none when k_size is whole 64s; with tails,
// the rest rounded up to 16 (16, 32, 48 or 64); without, a whole chunk.
__device__ __forceinline__ int tail_elements(const WeightItem& item) {
  const int rest = item.k_size % kChunkK;
  if (rest == 0) return 0;
  return item.tails == nullptr ? kChunkK : (rest + 15) / 16 * 16;
}

__device__ __forceinline__ int chunk_count(const WeightItem& item) {
  const int tail = tail_elements(item);
  return item.k_size / kChunkK + (tail == 0 ? 0 : tail == 48 ? 2 : 1);
}

// Chunk i: whole ones, then the tail as one chunk of 64, 32 or 16, or as 32 + 16.
__device__ __forceinline__ Chunk chunk_at(const WeightItem& item, int i) {
  const int whole = item.k_size / kChunkK;
  if (i < whole) return {i * kChunkK, 128};
  const int tail = tail_elements(item);
  if (tail == 48) return i == whole ? Chunk{whole * kChunkK, 64} : Chunk{whole * kChunkK + 32, 32};
  return {whole * kChunkK, 2 * tail};
}

__device__ __forceinline__ const WeightMaps& maps_for(const WeightItem& item, int span) {
  return span == 128 ? *item.maps : item.tails[span == 64 ? 0 : 1];
}

// The tiles of an item in the order both sides walk them: row tiles of at most
// kTileRows, each over every chunk. on_chunk(row_tile, rows, chunk) for each
// stage; on_row_tile(row_tile, rows) after a row tile's last chunk.
template <typename OnChunk, typename OnRowTile>
__device__ __forceinline__ void walk(const WeightItem& item, OnChunk&& on_chunk, OnRowTile&& on_row_tile) {
  const int chunks = chunk_count(item);
  for (int row_tile = 0; row_tile < item.rows; row_tile += kTileRows) {
    const int rows = min(kTileRows, item.rows - row_tile);
    for (int i = 0; i < chunks; ++i) on_chunk(row_tile, rows, chunk_at(item, i));
    on_row_tile(row_tile, rows);
  }
}

__device__ void produce(const device::StageRing& ring, const WeightItem (&items)[4]) {
  const uint64_t stream_once = device::l2_policy_evict_first();
  device::RingPosition put = ring.start();
  for (const WeightItem& item : items) {
    walk(
        item,
        [&](int row_tile, int rows, Chunk chunk) {
          // rows: a multiple of kBoxRows, at most kTileRows.
          ring.acquire(put, static_cast<uint32_t>(rows * chunk.span));
          const WeightMaps& maps = maps_for(item, chunk.span);
          int loaded = 0;
          for (int i = 0; i < kBoxHeights; ++i) {
            const int height = kTileRows >> i;
            if (rows - loaded < height) continue;
            device::tma_load_2d(ring.stage(put) + loaded * chunk.span, &maps.box[i], ring.full_barrier(put),
                                item.k_begin + chunk.k, item.row_begin + row_tile + loaded, stream_once);
            loaded += height;
          }
          put.advance();
        },
        [](int, int) {});
  }
}

// One consumer warp's share of the GEMV tiles: 16 rows of each stage.
template <typename T>
class ConsumerGemv {
 public:
  using Warp = device::SwizzledGemvWarp<T, 1>;

  __device__ ConsumerGemv(const device::StageRing& ring, int consumer_warp, int lane)
      : ring_(ring), gemv_(consumer_warp * Warp::kOutputs, lane), first_row_(consumer_warp * Warp::kOutputs),
        lane_(lane), at_(ring.start()) {}

  // y[r] = W[item.row_begin + r, k range] . input[0, k_size) for every row r of the
  // item (input zero up to k_size rounded up to 64); emit(r, y) once per row, from
  // one lane of the warp that holds it.
  template <typename Emit>
  __device__ void run(const WeightItem& item, const T* input, Emit&& emit) {
    typename Warp::Accumulators acc = {};
    walk(
        item,
        [&](int, int rows, Chunk chunk) {
          ring_.wait_full(at_);
          if (first_row_ < rows) {
            typename Warp::Fragments fragments;
            gemv_.load_one_token(device::smem_address(ring_.stage(at_)), input + chunk.k, fragments, chunk.span);
            __syncwarp();
            if (lane_ == 0) ring_.release(at_);
            gemv_.accumulate(fragments, acc);
          } else {
            __syncwarp();
            if (lane_ == 0) ring_.release(at_);
          }
          at_.advance();
        },
        [&](int row_tile, int rows) {
          Warp::combine_chains(acc);
          gemv_.for_each_result(acc, [&](int m, int n, float value) {
            if (m == 0 && n < rows) emit(row_tile + n, value);
          });
          for (auto& chain : acc) {
            for (auto& tile : chain) {
              for (float& value : tile) value = 0.f;
            }
          }
        });
  }

 private:
  const device::StageRing& ring_;
  Warp gemv_;
  int first_row_;
  int lane_;
  device::RingPosition at_;
};

// Sends `value` to element `index` of `slots` in every rank's shared memory,
// completing 4 bytes on each rank's `barrier`.
__device__ __forceinline__ void send_to_cluster(float* slots, int index, float value, uint64_t* barrier,
                                                int cluster_size) {
  const uint32_t slot = device::smem_address(slots + index);
  const uint32_t bar = device::smem_address(barrier);
  for (int rank = 0; rank < cluster_size; ++rank) {
    device::st_async_f32(device::map_to_rank(slot, rank), value, device::map_to_rank(bar, rank));
  }
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads, 1)
    gpt_neox_layer_kernel(const __grid_constant__ LayerMaps maps, const __grid_constant__ LayerParams p,
                          const __grid_constant__ WorkTable work) {
  using namespace clusterfusion::device;
  namespace cg = cooperative_groups;
  constexpr int kPass = Consumers::kThreads;  // positions per attention pass
  constexpr int kQkvRows = 3 * kHeadDim;
  constexpr int kPartialFloats = kHeadDim + 2;
  __shared__ stages::WorkerSmem<T, kHeadDim, kPass> worker;
  __shared__ float reduce[kConsumerWarps + 1];
  __shared__ float warp_sums[kConsumerWarps][32];

  const cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int cluster_size = static_cast<int>(cluster.num_blocks());
  const int cta = blockIdx.x;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const CtaWork& w = work.cta[cta];
  const bool has_head = w.head >= 0;
  const int mlp_rows = w.mlp_end - w.mlp_begin;

  const LayerSmemLayout layout(kHeadDim, p.hidden, p.mlp_capacity, cluster_size, p.stages, kStageBytes);
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((kSmemAlignment - smem_address(smem_raw) % kSmemAlignment) % kSmemAlignment);
  const StageRing ring(smem, kStageBytes, p.stages, reinterpret_cast<uint64_t*>(smem + layout.full),
                       reinterpret_cast<uint64_t*>(smem + layout.empty));
  uint64_t* qkv_barrier = reinterpret_cast<uint64_t*>(smem + layout.qkv_barrier);
  uint64_t* attention_barrier = reinterpret_cast<uint64_t*>(smem + layout.attention_barrier);

  const WeightItem items[4] = {
      {&maps.qkv, nullptr, kQkvRows * w.head, has_head ? kQkvRows : 0, w.qkv_begin, w.qkv_end - w.qkv_begin},
      {&maps.dense, maps.dense_tails, w.dense_begin, has_head ? w.dense_end - w.dense_begin : 0, kHeadDim * w.head,
       kHeadDim},
      {&maps.up, nullptr, w.mlp_begin, mlp_rows, 0, p.hidden},
      {&maps.down, maps.down_tails, 0, mlp_rows > 0 ? p.hidden : 0, w.mlp_begin, mlp_rows},
  };

  if (threadIdx.x == 0) {
    ring.init(kConsumerWarps);
    // Every rank of a head's cluster sends each rank its q, k, v partial and its running softmax.
    mbarrier_init(qkv_barrier, 1);
    mbarrier_arrive_expect_tx(qkv_barrier, has_head ? cluster_size * kQkvRows * 4 : 0);
    mbarrier_init(attention_barrier, 1);
    mbarrier_arrive_expect_tx(attention_barrier, has_head ? cluster_size * kPartialFloats * 4 : 0);
    fence_mbarrier_init();
    for (const WeightMaps* weight : {&maps.qkv, &maps.up, &maps.down, &maps.dense, &maps.dense_tails[0],
                                     &maps.dense_tails[1], &maps.down_tails[0], &maps.down_tails[1]}) {
      for (const CUtensorMap& box : weight->box) prefetch_tensor_map(&box);
    }
  }
  __syncthreads();
  cluster_arrive_relaxed();  // waited on before the first store into a peer

  if (warp == 0) {
    if (lane == 0) produce(ring, items);
    __syncwarp();
    cluster_wait();
    return;
  }

  const int thread = Consumers::thread();
  const T* x = static_cast<const T*>(p.x);
  T* ln1 = reinterpret_cast<T*>(smem + layout.ln1);
  T* ln2 = reinterpret_cast<T*>(smem + layout.ln2);
  T* mlp_input = reinterpret_cast<T*>(smem + layout.mlp_input);
  T* attention_output = reinterpret_cast<T*>(smem + layout.attention_output);
  T* qkv = reinterpret_cast<T*>(smem + layout.qkv);
  float* partial = reinterpret_cast<float*>(smem + layout.partial);
  float* qkv_slots = reinterpret_cast<float*>(smem + layout.qkv_slots);
  float* attention_slots = reinterpret_cast<float*>(smem + layout.attention_slots);
  float* attention_local = reinterpret_cast<float*>(smem + layout.attention_local);

  const int64_t last = *p.position;
  CLUSTERFUSION_DEVICE_CHECK(last >= 0 && last < p.max_len,
                             "clusterfusion.gpt_neox_layer: cache_position within [0, key_cache.shape[2])");
  for (int i = thread; i < p.hidden; i += Consumers::kThreads) partial[i] = 0.f;
  for (int i = thread; i < p.mlp_capacity; i += Consumers::kThreads) mlp_input[i] = from_float<T>(0.f);
  for (int i = thread; i < static_cast<int>(round_up(kHeadDim, kChunkK)); i += Consumers::kThreads) {
    attention_output[i] = from_float<T>(0.f);
  }
  stages::layer_norm_row<T, Consumers>(x, static_cast<const T*>(p.attn_ln_weight),
                                       static_cast<const T*>(p.attn_ln_bias), ln1, p.hidden, p.eps, reduce);
  stages::layer_norm_row<T, Consumers>(x, static_cast<const T*>(p.mlp_ln_weight),
                                       static_cast<const T*>(p.mlp_ln_bias), ln2, p.hidden, p.eps, reduce);
  Consumers::sync();
  cluster_wait();  // every peer has started: its barriers exist

  ConsumerGemv<T> gemv(ring, warp - 1, lane);
  gemv.run(items[0], ln1 + w.qkv_begin, [&](int row, float value) {
    send_to_cluster(qkv_slots, rank * kQkvRows + row, value, qkv_barrier, cluster_size);
  });
  if (has_head) {
    mbarrier_wait(qkv_barrier, 0);
    const T* qkv_bias = static_cast<const T*>(p.qkv_bias);
    for (int i = thread; i < kQkvRows; i += Consumers::kThreads) {
      float sum = qkv_bias != nullptr ? to_float(qkv_bias[kQkvRows * w.head + i]) : 0.f;
      for (int r = 0; r < cluster_size; ++r) sum += qkv_slots[r * kQkvRows + i];
      qkv[i] = from_float<T>(sum);
    }
    Consumers::sync();
    stages::load_query<T, kHeadDim, kPass, Consumers>(worker, qkv, p.terms);
    const size_t head_offset = static_cast<size_t>(w.head) * p.max_len * kHeadDim;
    T* keys = static_cast<T*>(p.key_cache) + head_offset;
    T* values = static_cast<T*>(p.value_cache) + head_offset;
    if ((last / kPass) % cluster_size == rank) {  // this rank's passes hold the new row
      for (int d = thread; d < kHeadDim; d += Consumers::kThreads) {
        keys[last * kHeadDim + d] = worker.new_key[d];
        values[last * kHeadDim + d] = worker.new_value[d];
      }
    }
    Consumers::sync();
    const int64_t first = static_cast<int64_t>(rank) * kPass;
    if (first <= last) {
      stages::PassRows<T, kHeadDim, Consumers> rows;
      rows.load(keys, values, first, last);
      stages::attend(worker, rows, keys, values, first, static_cast<int64_t>(cluster_size) * kPass, last, p.terms)
          .store(attention_local);
    } else {
      stages::RunningSoftmax<kHeadDim, Consumers>().store(attention_local);
    }
    Consumers::sync();
    for (int i = thread; i < kPartialFloats; i += Consumers::kThreads) {
      send_to_cluster(attention_slots, rank * kPartialFloats + i, attention_local[i], attention_barrier,
                      cluster_size);
    }
    mbarrier_wait(attention_barrier, 0);
    const int used = static_cast<int>(min(static_cast<int64_t>(cluster_size), last / kPass + 1));
    stages::merge_partials<T, kHeadDim, Consumers>(
        [&](int r) { return attention_slots + r * kPartialFloats; }, used, [](const float* f) { return *f; },
        attention_output);
    Consumers::sync();  // the attention output is complete
    gemv.run(items[1], attention_output, [&](int row, float value) { partial[w.dense_begin + row] += value; });
    Consumers::sync();  // the dense columns' partial sums are in
  }
  const T* up_bias = static_cast<const T*>(p.up_bias);
  gemv.run(items[2], ln2, [&](int row, float value) {
    const float bias = up_bias != nullptr ? to_float(up_bias[w.mlp_begin + row]) : 0.f;
    mlp_input[row] = from_float<T>(gemv::activate<gemv::Activation::kExactGelu>(value + bias));
  });
  Consumers::sync();  // the slice's GELU(up) is complete
  gemv.run(items[3], mlp_input, [&](int row, float value) { partial[row] += value; });

  Consumers::sync();

  // The sum: publish this CTA's partial, wait for every CTA's, add up this CTA's outputs.
  float* published = p.partials + static_cast<size_t>(cta) * p.hidden;
  for (int i = 4 * thread; i < p.hidden; i += 4 * Consumers::kThreads) {
    *reinterpret_cast<float4*>(published + i) = *reinterpret_cast<const float4*>(partial + i);
  }
  Consumers::sync();
  const GridCounter counter(p.counts, static_cast<unsigned int>(p.ctas));
  if (thread == 0) {
    counter.arrive();
    counter.wait_all();
    __threadfence();
  }
  Consumers::sync();
  // Lanes take consecutive outputs (each CTA's row of partials is read coalesced), warps
  // take every kConsumerWarps-th CTA; the warps' sums meet in warp order.
  const T* dense_bias = static_cast<const T*>(p.dense_bias);
  const T* down_bias = static_cast<const T*>(p.down_bias);
  for (int first = w.sum_begin; first < w.sum_end; first += 32) {
    const int i = first + lane;
    float sum = 0.f;
    if (i < w.sum_end) {
#pragma unroll 8
      for (int c = warp - 1; c < p.ctas; c += kConsumerWarps) {
        sum += __ldcg(p.partials + static_cast<size_t>(c) * p.hidden + i);
      }
    }
    warp_sums[warp - 1][lane] = sum;
    Consumers::sync();
    if (warp == 1 && i < w.sum_end) {
      float total = to_float(x[i]);
      if (dense_bias != nullptr) total += to_float(dense_bias[i]);
      if (down_bias != nullptr) total += to_float(down_bias[i]);
      float partials_sum = 0.f;
      for (int g = 0; g < kConsumerWarps; ++g) partials_sum += warp_sums[g][lane];
      static_cast<T*>(p.out)[i] = from_float<T>(total + partials_sum);
    }
    Consumers::sync();
  }
  Consumers::sync();
  if (thread == 0) counter.leave();
}

}  // namespace clusterfusion::gpt_neox_layer
