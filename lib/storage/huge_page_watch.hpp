// lib/storage/huge_page_watch.hpp — when a copying read stops asking for huge pages. Private.
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <span>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace shmckpt::detail {

// Huge pages while they come quickly. On a virtual machine that hands free memory back to its
// host (free page reporting), a huge page made of returned memory can take ten times as long to
// fault in as the same bytes in 4 KiB pages, and the first few huge pages of an allocation say
// nothing about the rest (docs/benchmarks.md, "Copying loads from memory handed back to the
// host"). So each share is faulted in and read in chunks, each chunk's fault-in timed; from the
// first chunk slower than `slow_huge_rate`, every share's rest is read into 4 KiB pages.
class huge_page_watch {
 public:
  static constexpr std::size_t chunk = std::size_t{4} << 20;
  // Bytes/s: huge pages of returned memory faulted in at 0.2-0.6 GB/s here, others at 3.4-9.
  static constexpr double slow_huge_rate = 1e9;

  /// `huge`: the memory was advised for huge pages (otherwise nothing is watched).
  /// `slow_rate`: bytes/s below which a chunk's fault-in counts as slow (tests set it).
  explicit huge_page_watch(bool huge, double slow_rate = slow_huge_rate) noexcept
      : state_(huge ? watching : off), slow_rate_(slow_rate) {}

  /// Makes [p, p + n) (at most `chunk`, part of one share) real before it is read; returns 0 or
  /// ENOMEM. `rest` is the share's part after it, advised for 4 KiB pages once huge pages turn
  /// out slow.
  int fault_in(std::byte* p, std::size_t n, std::span<std::byte> rest, bool& share_switched) {
    if (state_.load(std::memory_order_relaxed) == watching) {
      const auto t0 = std::chrono::steady_clock::now();
      if (::madvise(p, n, MADV_POPULATE_WRITE) != 0) {
        if (errno == ENOMEM) return ENOMEM;
        int expected = watching;  // no MADV_POPULATE_WRITE here: huge pages, unwatched
        state_.compare_exchange_strong(expected, off, std::memory_order_relaxed);
        return 0;
      }
      const std::chrono::duration<double> took = std::chrono::steady_clock::now() - t0;
      if (static_cast<double>(n) < slow_rate_ * took.count()) {
        int expected = watching;
        state_.compare_exchange_strong(expected, small_pages, std::memory_order_relaxed);
      }
    }
    if (!share_switched && state_.load(std::memory_order_relaxed) == small_pages) {
      share_switched = true;
      if (!rest.empty()) ::madvise(rest.data(), rest.size(), MADV_NOHUGEPAGE);
    }
    return 0;
  }

  /// Whether a share may be read in one piece now (nothing is watched any more).
  bool settled() const noexcept { return state_.load(std::memory_order_relaxed) != watching; }
  /// Whether huge pages turned out slow (the rest of every share gets 4 KiB pages).
  bool switched_to_small_pages() const noexcept {
    return state_.load(std::memory_order_relaxed) == small_pages;
  }

 private:
  enum { watching, small_pages, off };
  std::atomic<int> state_;
  double slow_rate_;
};

}  // namespace shmckpt::detail
