// Grid emulator: runs a kernel body of csrc/include/agd_kernels/grid on CPU memory, compiled by g++, so CI
// executes the CUDA kernels' own source (test-only; never part of agd_kernels._C).
//
// Model. Blocks run one after another, in index order. The threads of a block are fibers (ucontext) on one
// OS thread, each with its own stack, so a body's locals are per-thread exactly as in CUDA. A fiber runs
// until it reaches sync() or returns; when every fiber of the block has reached the barrier, all resume, in
// thread order. Why fibers rather than OS threads or phase-split bodies: the body is the unmodified CUDA
// source (no rewriting into phases between barriers), the interleaving is deterministic (the same run
// every time), 256 threads cost 256 small stacks instead of 256 OS threads contending for 2 cores at every
// barrier, and barrier misuse becomes detectable: a thread that returns while others wait at a barrier is
// reported (undefined behaviour on a GPU, a hang or a silent skip there).
// Shared memory is poisoned (0xFF bytes: NaN floats, -1 integers) before each block, as CUDA leaves it
// uninitialised. Atomics and fences are plain operations: nothing runs concurrently.
//
// What it cannot show (README, "What the grid emulator proves"): timing and coalescing, races between
// threads of a block that the sequential fiber order happens to hide (a thread reading shared memory
// another thread writes in the same phase sees it written or not depending on thread order), races between
// blocks (they never overlap here), and the GPU's own rounding where it differs from IEEE (none of the
// kernels use fast-math intrinsics, and csrc/cuda is compiled with -fmad=false for this reason).
#pragma once
#include <c10/util/Exception.h>
#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace agd_kernels::emulator {

class FiberBlock;

// The block context of grid/block.h for an emulated thread.
struct EmuContext {
  FiberBlock* fibers;
  int64_t block_index, block_count;
  int thread_index, thread_count;

  int64_t block() const { return block_index; }
  int64_t blocks() const { return block_count; }
  int thread() const { return thread_index; }
  int threads() const { return thread_count; }
  inline void sync();
  void fence() {}
  int32_t atomic_add(int32_t* p, int32_t v) {
    const int32_t old = *p;
    *p = old + v;
    return old;
  }
};

class FiberBlock {
 public:
  // 64 KiB per fiber: a body's frame is a few hundred bytes of registers-to-be plus libm's frames.
  static constexpr size_t kStackBytes = 64 * 1024;

  // getcontext once per fiber (a system call, to save the signal mask); each block only re-makes them.
  explicit FiberBlock(int threads) : fibers_(threads), stacks_(new char[kStackBytes * threads]) {
    for (Fiber& f : fibers_) getcontext(&f.uc);
  }

  // Runs body(ctx) for every thread of block `block` to completion under the barrier model above.
  template <class Body>
  void run(int64_t block, int64_t blocks, Body& body) {
    const int n = static_cast<int>(fibers_.size());
    body_ = &body;
    call_ = [](void* b, EmuContext& ctx) { (*static_cast<Body*>(b))(ctx); };
    for (int t = 0; t < n; ++t) {
      Fiber& f = fibers_[t];
      f.ctx = EmuContext{this, block, blocks, t, n};
      f.state = kRunnable;
      f.uc.uc_stack.ss_sp = stacks_.get() + kStackBytes * t;
      f.uc.uc_stack.ss_size = kStackBytes;
      f.uc.uc_link = &scheduler_;
      // makecontext passes int arguments only: the fiber's index finds everything else through `this`,
      // which the static trampoline reads from current_block_ (one emulation at a time per OS thread).
      makecontext(&f.uc, reinterpret_cast<void (*)()>(&FiberBlock::trampoline), 1, t);
    }
    current_block_ = this;
    for (int64_t barriers = 0;; ++barriers) {
      for (int t = 0; t < n; ++t) {
        current_ = t;
        swapcontext(&scheduler_, &fibers_[t].uc);
      }
      int done = 0;
      for (const Fiber& f : fibers_) done += f.state == kDone;
      if (done == n) break;
      if (done != 0) current_block_ = nullptr;
      TORCH_CHECK(done == 0, "grid emulator: block ", block, ": ", done, " of ", n, " threads returned while ",
                  n - done, " wait at barrier ", barriers, " (a barrier inside divergent control flow)");
      for (Fiber& f : fibers_) f.state = kRunnable;
    }
    current_block_ = nullptr;
  }

  void sync() {
    Fiber& f = fibers_[current_];
    f.state = kAtBarrier;
    swapcontext(&f.uc, &scheduler_);
  }

 private:
  enum State { kRunnable, kAtBarrier, kDone };
  struct Fiber {
    ucontext_t uc;
    EmuContext ctx;
    State state;
  };

  static void trampoline(int t) {
    FiberBlock* self = current_block_;
    Fiber& f = self->fibers_[t];
    self->call_(self->body_, f.ctx);
    f.state = kDone;  // returning resumes uc_link, the scheduler
  }

  static inline thread_local FiberBlock* current_block_ = nullptr;
  std::vector<Fiber> fibers_;
  std::unique_ptr<char[]> stacks_;
  ucontext_t scheduler_;
  int current_ = 0;
  void* body_ = nullptr;
  void (*call_)(void*, EmuContext&) = nullptr;
};

inline void EmuContext::sync() { fibers->sync(); }

// Launches kernel body K on `blocks` blocks of K::kThreads emulated threads.
template <class K>
void launch(int64_t blocks, const typename K::Args& args) {
  FiberBlock fibers(K::kThreads);
  typename K::Shared shared;
  auto body = [&](EmuContext& ctx) { K::run(ctx, shared, args); };
  for (int64_t b = 0; b < blocks; ++b) {
    std::memset(static_cast<void*>(&shared), 0xFF, sizeof(shared));
    fibers.run(b, blocks, body);
  }
}

}  // namespace agd_kernels::emulator
