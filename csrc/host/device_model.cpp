#include "device_model.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <map>
#include <mutex>

#ifndef CLUSTERFUSION_CUDA_ARCHS
#define CLUSTERFUSION_CUDA_ARCHS unknown
#endif
#define CLUSTERFUSION_STRINGIFY_(x) #x
#define CLUSTERFUSION_STRINGIFY(x) CLUSTERFUSION_STRINGIFY_(x)

namespace clusterfusion {
namespace {

DeviceModel read_device(int device) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
  int memory_khz = 0;
  int bus_bits = 0;
  int sm_khz = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&memory_khz, cudaDevAttrMemoryClockRate, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, device));
  DeviceModel d;
  d.index = device;
  d.name = prop->name;
  d.major = prop->major;
  d.minor = prop->minor;
  d.sm_count = prop->multiProcessorCount;
  d.smem_per_block_optin = prop->sharedMemPerBlockOptin;
  // Two CTAs fit on an SM when both requests plus the per-block reservation do.
  d.smem_exclusive = std::min<size_t>(
      d.smem_per_block_optin, prop->sharedMemPerMultiprocessor / 2 - prop->reservedSharedMemPerBlock + 1);
  d.peak_bytes_per_second = 2.0 * memory_khz * 1e3 * bus_bits / 8.0;  // double data rate
  d.sm_cycles_per_second = sm_khz * 1e3;
  return d;
}

}  // namespace

const DeviceModel& device_model(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceModel> models;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = models.find(device);
  if (it == models.end()) it = models.emplace(device, read_device(device)).first;
  return it->second;
}

const char* build_archs() { return CLUSTERFUSION_STRINGIFY(CLUSTERFUSION_CUDA_ARCHS); }

void check_device_supported(const char* op, const DeviceModel& d, cudaError_t configure_result) {
  TORCH_CHECK(d.major >= 9, op, ": cuda:", d.index, " (", d.name, ") has compute capability ", d.major,
              ".", d.minor,
              "; the kernel needs TMA and thread-block clusters (9.0 or newer). This build targets: ",
              build_archs());
  if (configure_result == cudaErrorNoKernelImageForDevice ||
      configure_result == cudaErrorInvalidDeviceFunction) {
    (void)cudaGetLastError();
    TORCH_CHECK(false, op, ": this build of clusterfusion has no code for cuda:", d.index, " (", d.name,
                ", compute capability ", d.major, ".", d.minor, "); it targets ", build_archs(),
                ". Rebuild with CLUSTERFUSION_CUDA_ARCHS naming this GPU (e.g. \"", d.major, d.minor,
                "a\").");
  }
  C10_CUDA_CHECK(configure_result);
}

}  // namespace clusterfusion
