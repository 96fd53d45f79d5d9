// Torch-free launcher of the attention block's middle: rotary embedding of this
// token's query and key, the KV-cache append, and decode attention over the
// cached positions 0..position, in one kernel. Plain CUDA runtime types in, a cudaError_t out.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "clusterfusion/scalar_kind.h"
#include "clusterfusion/stages/attention_terms.h"

namespace clusterfusion::attention_block {

// Positions one CTA scores per pass (one per thread).
constexpr int kChunk = 64;

using stages::AttentionTerms;
using stages::MaskKind;

// Everything the two kernels need. Element pointers are of the op's element
// type T (fp16 or bf16); caches [heads, max_len, head_dim] contiguous, 16-byte aligned.
struct DecodeAttentionParams {
  const void* qkv;          // [heads, 3, head_dim]: this token's projections, bias added
  AttentionTerms terms;     // rotary tables, mask, scale
  void* key_cache;          // the new key is written at `position`
  void* value_cache;
  const int64_t* position;  // device scalar, written before the op's first kernel; outside [0, max_len): a device-side assert
  float* partials;          // [heads, workers, head_dim + 2]: each worker's unnormalized output, max, sum
  int* arrivals;            // [heads], zero at launch: workers of each head done so far
  void* out;                // [heads * head_dim]: softmax(q k^T * scale + mask) v
  int heads;
  int head_dim;
  int max_len;
  int workers;              // CTAs per head; worker w scores chunks w, w + workers, ...
};

bool head_dim_supported(int head_dim);

// CTAs per head for a cache of `max_len` positions on a device of `sm_count` SMs.
int attention_workers(int heads, int max_len, int sm_count);

// Launches the attention kernel in stream order (it lets the next kernel
// launch early once it has its input).
cudaError_t launch_decode_attention(ScalarKind kind, const DecodeAttentionParams& params, cudaStream_t stream);

}  // namespace clusterfusion::attention_block
