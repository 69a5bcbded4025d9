// config — ckpt-bench's settings (from the command line, main.cpp) and the writer set-ups the
// interference section compares.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "shmckpt/checkpoint_process.hpp"

namespace ckpt_bench {

struct config {
  std::vector<std::uint64_t> sizes;  // state-dict sizes, ascending
  int reps = 5;                      // repetitions of every heavy measurement
  std::filesystem::path dir;         // scratch root (a private subdirectory is made in it)
  bool smoke = false;
  bool json = false;
  std::size_t threads = 0;  // stager threads (0: the library default)
  std::uint64_t few_tensors = 256;
  std::uint64_t many_tensors = 65536;
  int latency_samples = 400;      // PING-equivalent and raw round trips per repetition batch
  std::vector<std::string> only;  // sections to run (empty: all), for profiling one figure
  // Writer set-ups the interference section compares, interleaved (see parse_variant).
  std::vector<std::string> variants{"buffered", "default"};
  bool wants(const std::string& section) const {
    return only.empty() || std::find(only.begin(), only.end(), section) != only.end();
  }
};

/// "64M", "1G", "4096", "512KiB" in bytes. Throws std::invalid_argument otherwise.
std::uint64_t parse_size(const std::string& text);

/// A writer set-up for the interference section: "default" (the library's defaults: O_DIRECT
/// where possible, the default child priority) or "buffered" / "direct" with no priority change,
/// followed by "+"-separated changes: nice<N>, batch, idle (SCHED_IDLE), normal, ioidle,
/// iobe<L>, cpu<N>. E.g. "direct+batch+nice10", "buffered+idle+ioidle".
struct writer_variant {
  std::string name;
  shmckpt::kwargs writer_args;
  shmckpt::child_priority priority;
};

/// Throws std::invalid_argument naming the part it cannot read.
writer_variant parse_variant(const std::string& text);

}  // namespace ckpt_bench
