// Programmatic dependent launch (sm_90+): waiting for the grid this one depends
// on, and the point at which a CTA lets the next grid in the stream launch.
// Plain inline PTX; no torch headers.
#pragma once

namespace clusterfusion::device {

// Blocks until the grids this one depends on have finished and their writes are
// visible; a no-op when the kernel was launched without programmatic serialization.
__device__ __forceinline__ void grid_dependency_wait() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}

// Lets the next grid in the stream start its prologue early.
__device__ __forceinline__ void grid_dependency_launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// When a producer that streams `chunks` chunks through a ring of `stages` lets
// the next grid launch: once `chunks_left` of them are left to consume (issuing
// chunk i tells that chunk i - stages has been consumed), and never before its
// own grid_dependency_wait has returned. The next grid waits for this one to
// finish before it reads anything this one writes; launching it early only
// lets its CTAs take over the SMs this grid's first CTAs leave.
class DependentLaunchTrigger {
 public:
  // `issued_before_wait` chunks were put in flight before the wait.
  __device__ DependentLaunchTrigger(int chunks, int stages, int chunks_left, int issued_before_wait)
      : issued_before_wait_(issued_before_wait),
        after_(max(issued_before_wait - 1, min(chunks - 1, chunks - 1 - chunks_left + stages))) {}

  // Waits for the previous grid, then launches the next one if its point has passed.
  __device__ void wait_for_previous_grid() const {
    grid_dependency_wait();
    if (after_ < issued_before_wait_) grid_dependency_launch_dependents();
  }

  // Called after issuing chunk `chunk` (past those issued before the wait).
  __device__ void chunk_issued(int chunk) const {
    if (chunk == after_) grid_dependency_launch_dependents();
  }

 private:
  int issued_before_wait_;
  int after_;
};

}  // namespace clusterfusion::device
