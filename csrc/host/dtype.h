// Mapping torch dtypes onto the kernels' element kinds and TMA element types.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda.h>

#include "clusterfusion/scalar_kind.h"

namespace clusterfusion {

// For fp16 and bf16 tensors (the CUDA backends check the dtype first).
inline ScalarKind scalar_kind(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16;
}

inline CUtensorMapDataType tma_dtype(ScalarKind kind) {
  return kind == ScalarKind::kHalf ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
}

}  // namespace clusterfusion
