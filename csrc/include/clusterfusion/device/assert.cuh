// A device-side error for a value only the device sees (checking it on the host
// would need a synchronization): the kernel stops as a failed CUDA assert does,
// whatever NDEBUG says, and the CUDA context reports "device-side assert
// triggered" at the next synchronizing call, as PyTorch's own kernels do for an
// out-of-range index. No torch headers.
#pragma once

#include <cassert>

namespace clusterfusion::device {

#define CLUSTERFUSION_DEVICE_CHECK(condition, message)                            \
  do {                                                                            \
    if (!(condition)) __assert_fail(message, __FILE__, __LINE__, __func__);       \
  } while (0)

}  // namespace clusterfusion::device
