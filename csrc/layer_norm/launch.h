// Torch-free launcher of the LayerNorm that opens the block ops (kernel.cuh).
#pragma once

#include <cuda_runtime.h>

#include "clusterfusion/scalar_kind.h"

namespace clusterfusion::layer_norm {

// The largest row (features) the kernel normalizes.
int max_features();

// out[m, k] = layer_norm(x[m, k]) * weight + bias; every pointer 16-byte
// aligned, k a multiple of 8 and at most max_features(), bias may be null.
// Also zeroes clear[0, clear_count) (clear may be null with a count of 0): the
// counters a later kernel of the op needs zeroed. `programmatic` lets it launch
// while the previous kernel in the stream runs.
cudaError_t launch(ScalarKind kind, const void* x, const void* weight, const void* bias, void* out, int m, int k,
                   float eps, int* clear, int clear_count, bool programmatic, cudaStream_t stream);

}  // namespace clusterfusion::layer_norm
