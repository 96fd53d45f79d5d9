// A dependency between CTAs of one launch as a counter in global memory: each
// producer CTA publishes its writes and arrives (release, gpu scope); a consumer
// waits until every producer has arrived (acquire, gpu scope) and then reads
// them. Every CTA that waits must be resident at once (the launcher guarantees
// it), or the wait would never end. The counter returns to zero within the
// launch: the last CTA to leave resets it, so a CUDA graph can replay the
// launch. No torch headers.
#pragma once

#include <cstdint>

namespace clusterfusion::device {

__device__ __forceinline__ void red_release_gpu_add(unsigned int* address, unsigned int value) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(address), "r"(value) : "memory");
}

__device__ __forceinline__ unsigned int ld_acquire_gpu(const unsigned int* address) {
  unsigned int value;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(value) : "l"(address) : "memory");
  return value;
}

// counts[0]: CTAs that have published; counts[1]: CTAs done reading. Both zero at launch.
class GridCounter {
 public:
  __device__ GridCounter(unsigned int* counts, unsigned int ctas) : counts_(counts), ctas_(ctas) {}

  // One thread per CTA, after the CTA's writes (a barrier orders the other threads' writes before it).
  __device__ void arrive() const {
    __threadfence();
    red_release_gpu_add(&counts_[0], 1u);
  }

  // One thread per CTA; a barrier after it lets the CTA's other threads read what was published.
  __device__ void wait_all() const {
    while (ld_acquire_gpu(&counts_[0]) < ctas_) __nanosleep(32);
  }

  // One thread per CTA, after the CTA's last read of what was published: the
  // last to leave resets both counts for the next launch.
  __device__ void leave() const {
    if (atomicAdd(&counts_[1], 1u) == ctas_ - 1) {
      counts_[0] = 0;
      counts_[1] = 0;
    }
  }

 private:
  unsigned int* counts_;
  unsigned int ctas_;
};

}  // namespace clusterfusion::device
