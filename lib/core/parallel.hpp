// Splitting one large memory-bound job over the CPUs: populating new segment memory, reading a
// file into a private copy. Private to the library.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <thread>

namespace shmckpt::detail {

/// The transparent huge page size the library aligns memory to: the PMD size of x86-64, and of
/// arm64 with 4 KiB pages.
inline constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

/// Runs `work(from, to)` over [0, n) in shares aligned to 2 MiB (the huge-page size, so that no
/// two threads fault the same huge page), one share per CPU and at most four; the caller's
/// thread takes the first. Below `parallel_from` bytes the caller's thread does it all: starting
/// threads costs more than they save. `work` returns 0 or an error code; the first non-zero code
/// of any share is returned once every share has finished. If no thread can be started, the
/// caller's thread does the rest. Allocates nothing and never throws.
template <class Work>
int run_in_shares(std::size_t n, std::size_t parallel_from, Work&& work) noexcept {
  constexpr std::size_t max_threads = 4;
  constexpr std::size_t align = huge_page_bytes;
  if (n == 0) return 0;
  std::size_t threads = 1;
  if (n >= parallel_from)
    threads = std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, max_threads);
  if (threads == 1) return work(std::size_t{0}, n);
  const std::size_t share = (n / threads + align - 1) / align * align;
  std::array<int, max_threads> result{};
  std::array<std::thread, max_threads - 1> helpers;
  std::size_t started = 0;
  try {
    for (std::size_t i = 1; i < threads && i * share < n; ++i, ++started)
      helpers[i - 1] = std::thread([&, i] {
        result[i] = work(i * share, std::min(n, (i + 1) * share));
      });
  } catch (...) {
    // No thread to be had: the caller's thread does the rest below.
  }
  const std::size_t covered = std::min(n, (started + 1) * share);
  result[0] = work(std::size_t{0}, std::min(share, n));
  if (covered < n && result[0] == 0) result[0] = work(covered, n);
  for (std::size_t i = 0; i < started; ++i) helpers[i].join();
  for (int r : result)
    if (r != 0) return r;
  return 0;
}

}  // namespace shmckpt::detail
