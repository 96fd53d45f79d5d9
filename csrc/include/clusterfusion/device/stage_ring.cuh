// A ring of shared-memory stages that one producer thread fills with TMA copies
// and consumer warps drain. Each stage has a "full" mbarrier (the producer's
// arrival plus the bytes of its copies) and an "empty" one (one arrival per
// consumer warp). A RingPosition carries the stage index together with the
// parity of its lap, so call sites never derive a barrier phase from a counter.
// No torch headers.
#pragma once

#include <cstdint>

#include "mbarrier.cuh"

namespace clusterfusion::device {

class RingPosition {
 public:
  __device__ explicit RingPosition(int stages) : stages_(stages) {}

  __device__ int stage() const { return stage_; }
  __device__ uint32_t lap_parity() const { return parity_; }

  __device__ void advance() {
    if (++stage_ == stages_) {
      stage_ = 0;
      parity_ ^= 1u;
    }
  }

 private:
  int stages_;
  int stage_ = 0;
  uint32_t parity_ = 0;
};

class StageRing {
 public:
  // `full` and `empty` point at `stages` mbarriers each.
  __device__ StageRing(uint8_t* base, uint32_t stage_bytes, int stages, uint64_t* full,
                       uint64_t* empty)
      : base_(base), stage_bytes_(stage_bytes), stages_(stages), full_(full), empty_(empty) {}

  // One thread, before the CTA's first barrier.
  __device__ void init(uint32_t consumer_warps) const {
    for (int s = 0; s < stages_; ++s) {
      mbarrier_init(&full_[s], 1);
      mbarrier_init(&empty_[s], consumer_warps);
    }
  }

  __device__ RingPosition start() const { return RingPosition(stages_); }
  __device__ uint8_t* stage(const RingPosition& at) const { return base_ + at.stage() * stage_bytes_; }
  __device__ uint64_t* full_barrier(const RingPosition& at) const { return &full_[at.stage()]; }

  // Producer: waits until the consumers have released the stage's previous lap
  // (at once on the first lap), then arms it for `bytes` of copies.
  __device__ void acquire(const RingPosition& at, uint32_t bytes) const {
    mbarrier_wait(&empty_[at.stage()], at.lap_parity() ^ 1u);
    mbarrier_arrive_expect_tx(&full_[at.stage()], bytes);
  }

  // Consumer: waits until every byte of the stage has landed.
  __device__ void wait_full(const RingPosition& at) const {
    mbarrier_wait(&full_[at.stage()], at.lap_parity());
  }

  // Consumer warp (one lane): done reading the stage.
  __device__ void release(const RingPosition& at) const { mbarrier_arrive(&empty_[at.stage()]); }

 private:
  uint8_t* base_;
  uint32_t stage_bytes_;
  int stages_;
  uint64_t* full_;
  uint64_t* empty_;
};

}  // namespace clusterfusion::device
