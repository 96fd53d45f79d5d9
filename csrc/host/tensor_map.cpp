#include "tensor_map.h"

#include <c10/util/Exception.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cstring>
#include <functional>
#include <mutex>
#include <unordered_map>

namespace clusterfusion {
namespace {

// Descriptors only hold addresses and sizes, so an entry stays valid for any
// tensor that later occupies the same memory with the same layout; the bound
// only keeps a long-running process with ever-new addresses from growing it.
constexpr size_t kMaxCachedMaps = 4096;

struct SpecHash {
  size_t operator()(const TiledMapSpec& s) const {
    size_t h = std::hash<const void*>()(s.base);
    for (uint64_t v : {uint64_t(s.dtype), s.inner, s.outer, s.row_stride_bytes, uint64_t(s.box_inner),
                       uint64_t(s.box_outer), uint64_t(s.swizzle)}) {
      h ^= std::hash<uint64_t>()(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    }
    return h;
  }
};

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled_entry_point() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000,
                                                             cudaEnableDefault, &status);
    TORCH_CHECK(err == cudaSuccess && status == cudaDriverEntryPointSuccess && ptr != nullptr,
                "clusterfusion: could not load cuTensorMapEncodeTiled from the CUDA driver (",
                cudaGetErrorString(err), ", query status ", static_cast<int>(status),
                "); a driver for CUDA 12.0 or newer is required");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// L2 fills stay at the 128 bytes a box row asks for: 256-byte promotion, which
// also fetches the neighbouring 128 bytes of each row segment, streamed the
// weights slower (docs/performance.md).
CUtensorMap encode(const TiledMapSpec& s) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {s.inner, s.outer};
  const cuuint64_t strides[1] = {s.row_stride_bytes};
  const cuuint32_t box[2] = {s.box_inner, s.box_outer};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult res = encode_tiled_entry_point()(
      &map, s.dtype, 2, const_cast<void*>(s.base), dims, strides, box, element_strides,
      CU_TENSOR_MAP_INTERLEAVE_NONE, s.swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(res == CUDA_SUCCESS, "clusterfusion: cuTensorMapEncodeTiled failed with CUresult ",
              static_cast<int>(res), " for a [", s.outer, ", ", s.inner, "] tensor with row stride ",
              s.row_stride_bytes, " bytes and box [", s.box_outer, ", ", s.box_inner, "]");
  return map;
}

}  // namespace

bool TiledMapSpec::operator==(const TiledMapSpec& o) const {
  return base == o.base && dtype == o.dtype && inner == o.inner && outer == o.outer &&
         row_stride_bytes == o.row_stride_bytes && box_inner == o.box_inner &&
         box_outer == o.box_outer && swizzle == o.swizzle;
}

CUtensorMap tiled_tensor_map(const TiledMapSpec& spec) {
  static std::mutex mutex;
  static std::unordered_map<TiledMapSpec, CUtensorMap, SpecHash> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(spec);
  if (it != cache.end()) return it->second;
  if (cache.size() >= kMaxCachedMaps) cache.clear();
  return cache.emplace(spec, encode(spec)).first->second;
}

}  // namespace clusterfusion
