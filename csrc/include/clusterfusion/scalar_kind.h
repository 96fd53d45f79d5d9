// The 16-bit element types the kernels are built for, shared by host and
// device code (no torch headers), and a qualifier for helpers both sides call.
#pragma once

#if defined(__CUDACC__)
#define CLUSTERFUSION_HOST_DEVICE __host__ __device__
#else
#define CLUSTERFUSION_HOST_DEVICE
#endif

namespace clusterfusion {

enum class ScalarKind { kHalf, kBFloat16 };

}  // namespace clusterfusion
