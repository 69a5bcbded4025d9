// state — the trainer-like state dicts every section saves, stages and loads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "shmckpt/checkpoint_process.hpp"
#include "shmckpt/state_dict.hpp"

namespace ckpt_bench {

/// A state dict in the trainer's private memory: one contiguous page-aligned block.
struct private_state {
  std::shared_ptr<std::byte> mem;
  shmckpt::state_dict sd;
};

/// {"model": {"layer<i>": {"weight", "bias", "norm", "extra"}}, "step", "lr"} with `count` F32
/// tensors of equal size summing to `bytes`, in private memory. Throws std::invalid_argument
/// when `bytes` cannot be split so.
private_state make_private_state(std::uint64_t bytes, std::uint64_t count);

/// The same tree with every tensor allocated in `p`'s segment (make_tensor).
shmckpt::state_dict make_shared_state(shmckpt::checkpoint_process& p, std::uint64_t bytes,
                                      std::uint64_t count);

/// Segment room for `copies` generations of `bytes` of tensors in `count` allocations
/// (allocator headers, alignment).
std::size_t segment_for(std::uint64_t bytes, std::uint64_t count, std::size_t copies = 1);

}  // namespace ckpt_bench
