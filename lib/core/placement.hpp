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
#include <cstddef>
#include <cstdint>
#include <memory>

#include "shmckpt/state_dict.hpp"

namespace shmckpt {
class checkpoint_process;
}

namespace shmckpt::detail {

/// A marked tree's descriptor (protocol::encode_tree) in the segment the mark names: `bytes`
/// bytes at `offset`, kept allocated by `block` as long as a copy of the tree holds it.
struct placed_tree {
  std::shared_ptr<std::byte> block;
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
};

struct dict_placement {
  static std::uint64_t get(const dict& d) noexcept { return d.placement_mark_; }
  /// Marks `d` without a descriptor (a tree write() will encode when it is sent).
  static void set(dict& d, std::uint64_t segment_number) noexcept {
    d.placement_mark_ = segment_number;
    d.placement_tree_.reset();
  }
  /// Marks `d` with its descriptor, placed in the same segment.
  static void set(dict& d, std::uint64_t segment_number,
                  std::shared_ptr<const placed_tree> tree) noexcept {
    d.placement_mark_ = segment_number;
    d.placement_tree_ = std::move(tree);
  }
  /// The descriptor of a marked `d`, or null.
  static const placed_tree* tree(const dict& d) noexcept {
    return d.placement_mark_ == 0 ? nullptr
                                  : static_cast<const placed_tree*>(d.placement_tree_.get());
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
