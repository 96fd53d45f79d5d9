// Eight 16-bit values moved as one 16-byte access. No torch headers.
#pragma once

#include <cstdint>

namespace clusterfusion::device {

template <typename T>
union Vector8 {
  uint4 raw;
  T v[8];
};

// p: 16-byte aligned.
template <typename T>
__device__ __forceinline__ Vector8<T> load_vector(const T* p) {
  Vector8<T> v;
  v.raw = *reinterpret_cast<const uint4*>(p);
  return v;
}

template <typename T>
__device__ __forceinline__ void store_vector(T* p, const Vector8<T>& v) {
  *reinterpret_cast<uint4*>(p) = v.raw;
}

}  // namespace clusterfusion::device
