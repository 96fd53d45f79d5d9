// Instantiations and launches of the decode-attention kernels, one per element
// type and head size of the Pythia family.
#include <algorithm>

#include "clusterfusion/cluster_launch.h"
#include "decode_attention.cuh"

namespace clusterfusion::attention_block {
namespace {

// Worker CTAs per SM the grid aims at when the context fills the cache: one
// chunk per worker up to long caches (a worker's latency is one chunk's),
// without waves of workers that find no chunk at short contexts.
constexpr int kWorkersPerSm = 8;

// In stream order after the QKV projection: launched as its programmatic
// dependent, the kernel measurably corrupted a few projection outputs (see
// docs/history.md), so it never is. It still lets the output projection
// launch early.
template <typename T, int kHeadDim>
cudaError_t launch_typed(const DecodeAttentionParams& p, cudaStream_t stream) {
  return launch_kernel(dim3(p.heads, p.workers, 1), dim3(kChunk, 1, 1), false, stream,
                       decode_attention_kernel<T, kHeadDim>, p);
}

template <typename T>
cudaError_t launch_for_head_dim(const DecodeAttentionParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64:
      return launch_typed<T, 64>(p, stream);
    case 80:
      return launch_typed<T, 80>(p, stream);
    case 96:
      return launch_typed<T, 96>(p, stream);
    case 128:
      return launch_typed<T, 128>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

bool head_dim_supported(int head_dim) {
  return head_dim == 64 || head_dim == 80 || head_dim == 96 || head_dim == 128;
}

int attention_workers(int heads, int max_len, int sm_count) {
  const int chunks = (max_len + kChunk - 1) / kChunk;
  const int target = (kWorkersPerSm * sm_count + heads - 1) / heads;
  return std::clamp(target, 1, std::max(chunks, 1));
}

cudaError_t launch_decode_attention(ScalarKind kind, const DecodeAttentionParams& params, cudaStream_t stream) {
  return kind == ScalarKind::kHalf ? launch_for_head_dim<__half>(params, stream)
                                   : launch_for_head_dim<__nv_bfloat16>(params, stream);
}

}  // namespace clusterfusion::attention_block
