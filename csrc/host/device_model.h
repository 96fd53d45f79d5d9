// What the planners know about a GPU, read from the device (never from a table
// for one card), and the checks that a GPU can run a kernel of this build.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace clusterfusion {

struct DeviceModel {
  int index = 0;
  std::string name;
  int major = 0;
  int minor = 0;
  int sm_count = 0;
  size_t smem_per_block_optin = 0;  // the most one CTA may ask for
  // The least a CTA must ask for so that no second CTA of the kernel fits on its SM.
  size_t smem_exclusive = 0;
  double peak_bytes_per_second = 0;  // from the memory clock and bus width
  double sm_cycles_per_second = 0;

  double sm_bytes_per_second() const { return peak_bytes_per_second / sm_count; }
};

// The model of CUDA device `device`, read once per process.
const DeviceModel& device_model(int device);

// The build's GPU targets, e.g. "sm_90a/sm_120a".
const char* build_archs();

// Raises RuntimeError unless `device` has compute capability 9.0 or newer (TMA
// and thread-block clusters) and `configure_result`, the status of configuring
// one of `op`'s kernels on it, says this build carries code for it.
void check_device_supported(const char* op, const DeviceModel& device, cudaError_t configure_result);

}  // namespace clusterfusion
