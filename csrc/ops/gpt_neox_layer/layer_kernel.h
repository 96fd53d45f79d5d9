// Torch-free launcher of the one-launch GPT-NeoX layer (issue #24): both
// LayerNorms, the QKV projection, rotary embedding, KV append and attention, the
// dense projection, the MLP (up, GELU, down) and the residual sum for one new
// token, in one launch of clusters that stay resident together. Plain CUDA
// runtime types in, a cudaError_t out.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "clusterfusion/scalar_kind.h"
#include "clusterfusion/stages/attention_terms.h"

namespace clusterfusion::gpt_neox_layer {

// One CTA's share of the layer (clusterfusion/_layer_plan.py); ranges are [begin, end).
struct CtaWork {
  int head;                    // the head its cluster does, or -1
  int qkv_begin, qkv_end;      // hidden features it reduces the head's q, k, v over (whole 64-element chunks)
  int mlp_begin, mlp_end;      // its slice of the intermediate features (may be empty)
  int dense_begin, dense_end;  // outputs of the head's dense columns it computes
  int sum_begin, sum_end;      // outputs it adds up at the end
};

constexpr int kMaxCtas = 256;  // CTAs of one launch (one per SM; more SMs stay unused)

// Every CTA's work, passed by value as a kernel parameter (no allocation, nothing
// to copy before a launch, graph-safe).
struct WorkTable {
  CtaWork cta[kMaxCtas];
};

// TMA descriptors of one weight for one chunk width: boxes of `width` reduction
// elements x kTileRows >> i rows (128, 64, 32, 16, 8), with the swizzle of the
// width's bytes. A stage of r rows (a multiple of 8) is loaded as r's binary
// decomposition: one copy for a whole tile, at most five.
constexpr int kBoxHeights = 5;
struct WeightMaps {
  CUtensorMap box[kBoxHeights];
};

// The chunk widths: 64 reduction elements (128-byte rows), and for the reduction's
// last chunk of the dense and down weights, whose slices need not be whole 64s,
// 32 and 16 (tails[0], tails[1]), so no stage streams columns that only multiply zeros.
constexpr int kTailWidths[2] = {32, 16};
struct LayerMaps {
  WeightMaps qkv;
  WeightMaps dense;
  WeightMaps up;
  WeightMaps down;
  WeightMaps dense_tails[2];
  WeightMaps down_tails[2];
};

// Element pointers are of the op's element type T (fp16 or bf16) and 16-byte aligned;
// biases may be null; caches [heads, max_len, head_dim] contiguous.
struct LayerParams {
  const void* x;  // [hidden]: the layer's input
  const void* attn_ln_weight;
  const void* attn_ln_bias;
  const void* mlp_ln_weight;
  const void* mlp_ln_bias;
  const void* qkv_bias;
  const void* dense_bias;
  const void* up_bias;
  const void* down_bias;
  stages::AttentionTerms terms;
  void* key_cache;
  void* value_cache;
  const int64_t* position;  // device scalar; outside [0, max_len): a device-side assert
  float* partials;          // [ctas, hidden]: each CTA's partial sum of every output
  unsigned int* counts;     // [2]: zero at launch, left zero (device/counter.cuh)
  void* out;                // [hidden]
  int hidden;
  int max_len;
  int ctas;
  int stages;        // weight tiles in flight per CTA
  int mlp_capacity;  // the largest MLP slice, rounded up to 64
  float eps;
};

constexpr int kConsumerWarps = 8;
constexpr int kTileRows = 16 * kConsumerWarps;  // weight rows per stage: 16 per consumer warp
constexpr int kThreads = 32 * (1 + kConsumerWarps);
constexpr int kBoxRows = 8;                     // rows of the smallest TMA box (the step of every row count)
constexpr int kChunkK = 64;                     // reduction elements per stage
constexpr int kStageBytes = kTileRows * 128;
constexpr int kMinStages = 2;
constexpr int kMaxStages = 16;
constexpr int kMaxHidden = 8 * 4 * 32 * kConsumerWarps;  // the norm row stage's row over the consumer warps

bool head_dim_supported(int head_dim);

// Dynamic shared memory of one CTA for these sizes (including the alignment slack).
size_t layer_smem_bytes(int head_dim, int hidden, int mlp_capacity, int cluster_size, int stages);

// Shared memory the kernel declares statically (the attention worker's).
cudaError_t layer_static_smem_bytes(ScalarKind kind, int head_dim, size_t* bytes);

// Clusters of `cluster_size` that fit on the current device at once with `smem_bytes` of dynamic shared memory.
cudaError_t max_layer_clusters(ScalarKind kind, int head_dim, int cluster_size, size_t smem_bytes, int* clusters);

// Launches p.ctas CTAs in clusters of `cluster_size`, in stream order. Every CTA must
// be resident at once: p.ctas / cluster_size <= max_layer_clusters (then a kernel
// sharing the GPU can only delay CTAs, never keep one from starting for good).
cudaError_t launch_layer(ScalarKind kind, int head_dim, const LayerMaps& maps, const LayerParams& p,
                         const WorkTable& work, int cluster_size, size_t smem_bytes, cudaStream_t stream);

}  // namespace clusterfusion::gpt_neox_layer
