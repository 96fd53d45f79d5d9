// Instantiations and launch of the token sampler.
#include "clusterfusion/cluster_launch.h"
#include "kernel.cuh"
#include "launch.h"

namespace clusterfusion::sample_tokens {
namespace {

// The slice's bytes in shared memory, or 0 where the device's per-block limit leaves no room for them.
template <typename Logit>
cudaError_t staged_bytes(int vocab, size_t* bytes) {
  const auto kernel = sample_tokens_kernel<Logit>;
  int device = 0;
  int optin = 0;
  cudaFuncAttributes attributes{};
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, kernel);
  if (status != cudaSuccess) return status;
  const size_t slice = static_cast<size_t>(slice_tokens<Logit>(vocab, kClusterCtas)) * sizeof(Logit);
  *bytes = attributes.sharedSizeBytes + slice <= static_cast<size_t>(optin) ? slice : 0;
  return *bytes > 0 ? configure_dynamic_smem(kernel, *bytes) : cudaSuccess;
}

template <typename Logit>
cudaError_t launch_typed(SampleParams params, cudaStream_t stream) {
  size_t bytes = 0;
  const cudaError_t status = staged_bytes<Logit>(params.vocab, &bytes);
  if (status != cudaSuccess) return status;
  params.staged = bytes > 0;
  const ClusterLaunch shape{dim3(kClusterCtas, params.rows, 1), dim3(kThreads, 1, 1), kClusterCtas, bytes, false,
                            stream};
  return launch_cluster_kernel(shape, sample_tokens_kernel<Logit>, params);
}

}  // namespace

cudaError_t launch(LogitKind kind, const SampleParams& params, cudaStream_t stream) {
  switch (kind) {
    case LogitKind::kHalf:
      return launch_typed<__half>(params, stream);
    case LogitKind::kBFloat16:
      return launch_typed<__nv_bfloat16>(params, stream);
    case LogitKind::kFloat:
      return launch_typed<float>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace clusterfusion::sample_tokens
