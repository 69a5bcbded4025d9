// Private: the placement mark of a state dict (state_dict.hpp, dict::placement_mark_).
//
// A mark says "every tensor of this tree lies in the shared segment numbered `n`", recorded by
// the code that built the tree knowing it (the stager's snapshot, checkpoint_process::mark_shared
// after one walk). checkpoint_process::write() trusts a mark equal to its own segment's number
// instead of walking the tree, so a snapshot of any tensor count is handed over in constant
// time. The dict clears its mark on every non-const access, so a mark never outlives a change.
// Segment numbers are unique for the life of the process (never reused, 0 means "unmarked").
#pragma once

#include <atomic>
#include <cstdint>

#include "shmckpt/state_dict.hpp"

namespace shmckpt {
class checkpoint_process;
}

namespace shmckpt::detail {

struct dict_placement {
  static std::uint64_t get(const dict& d) noexcept { return d.placement_mark_; }
  static void set(dict& d, std::uint64_t segment_number) noexcept {
    d.placement_mark_ = segment_number;
  }
};

struct process_placement {
  /// The number of `p`'s segment, for marks on trees built in it (defined beside the process).
  static std::uint64_t segment_number(const checkpoint_process& p) noexcept;
};

/// A new segment number, never 0, never handed out twice in this process.
inline std::uint64_t next_segment_number() noexcept {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace shmckpt::detail
