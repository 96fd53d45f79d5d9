// Torch-free launcher of the token sampler (kernel.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace clusterfusion::sample_tokens {

enum class LogitKind { kHalf, kBFloat16, kFloat };

// One setting per row, or one for every row (stride 0).
template <typename T>
struct RowSetting {
  const T* values;
  int stride;  // 0 or 1
};

struct SampleParams {
  const void* logits;  // [rows, vocab], unit stride along vocab
  int64_t row_stride;
  int rows;  // at most 65535 (grid.y)
  int vocab;  // at most kMaxVocab (rules.h)
  RowSetting<float> uniform;
  RowSetting<float> temperature;
  RowSetting<int64_t> top_k;
  RowSetting<float> top_p;
  int64_t* tokens;  // [rows]; -1 for a row that cannot be sampled (rules.h: row_fault)
  bool staged;      // the launcher's: the row is copied to shared memory
};

// A cluster of CTAs per row, each over a slice; reads the settings on the
// device (no host synchronization). Copies each slice to shared memory when it
// fits the device's per-block limit.
cudaError_t launch(LogitKind kind, const SampleParams& params, cudaStream_t stream);

}  // namespace clusterfusion::sample_tokens
