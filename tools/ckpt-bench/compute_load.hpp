// compute_load — a stand-in for a trainer's compute: threads doing dense float math on data that
// stays in L1, counting how much they got done. The interference figure compares its rate while
// the checkpoint child persists with its rate while nothing else runs.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

namespace ckpt_bench {

class compute_load {
 public:
  /// Starts `threads` threads spinning on the kernel at once.
  explicit compute_load(unsigned threads) : counts_(threads) {
    start_ = std::chrono::steady_clock::now();
    for (unsigned i = 0; i < threads; ++i)
      workers_.emplace_back([this, i] { counts_[i].blocks = run(); });
  }
  compute_load(const compute_load&) = delete;
  compute_load& operator=(const compute_load&) = delete;
  ~compute_load() { stop(); }

  /// Stops the threads; returns blocks of work per second over the whole run, all threads.
  double stop() {
    if (!workers_.empty()) {
      stop_.store(true, std::memory_order_relaxed);
      for (auto& w : workers_) w.join();
      workers_.clear();
      elapsed_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }
    std::uint64_t total = 0;
    for (const auto& c : counts_) total += c.blocks;
    return elapsed_ > 0 ? static_cast<double>(total) / elapsed_ : 0;
  }

  /// Floating-point operations in one block (for the unit printed).
  static constexpr double flops_per_block = 2.0 * 64 * 1024;

 private:
  struct alignas(64) counter {
    std::uint64_t blocks = 0;
  };

  std::uint64_t run() {
    alignas(64) float x[1024], y[1024];
    for (int i = 0; i < 1024; ++i) x[i] = 1e-3f * static_cast<float>(i), y[i] = 0;
    std::uint64_t blocks = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      for (int r = 0; r < 64; ++r)
        for (int i = 0; i < 1024; ++i) y[i] = y[i] * 0.999f + x[i];
      ++blocks;
    }
    volatile float sink = y[blocks % 1024];  // keeps the loop from being optimised away
    (void)sink;
    return blocks;
  }

  std::vector<counter> counts_;
  std::vector<std::thread> workers_;
  std::atomic<bool> stop_{false};
  std::chrono::steady_clock::time_point start_;
  double elapsed_ = 0;
};

}  // namespace ckpt_bench
