// Host-side TMA descriptors: cuTensorMapEncodeTiled reached through the runtime's
// driver entry point (no -lcuda, so the extension imports without a GPU driver),
// with a cache so a weight's descriptor is encoded once.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace clusterfusion {

struct TiledMapSpec {
  const void* base;                // 16-byte aligned
  CUtensorMapDataType dtype;
  uint64_t inner;                  // elements per row (contiguous dimension)
  uint64_t outer;                  // rows
  uint64_t row_stride_bytes;       // multiple of 16
  uint32_t box_inner;              // elements
  uint32_t box_outer;              // rows
  CUtensorMapSwizzle swizzle;

  bool operator==(const TiledMapSpec& other) const;
};

// Returns the encoded descriptor for `spec`, from the cache when the same
// address, shape, stride and box were seen before. Throws on failure.
CUtensorMap tiled_tensor_map(const TiledMapSpec& spec);

}  // namespace clusterfusion
