// shmckpt/stager.hpp — snapshotting private tensors into reused shared buffers.
//
// A trainer's tensors live in its private memory and change every step. To checkpoint without
// stopping, the stager copies them into buffers inside the checkpoint process's shared segment
// (a snapshot), so the trainer may go on mutating its own tensors while the child writes the
// snapshot. Tensors already in the segment are not copied.
//
// Buffers are pooled per *generation*: one arena in the segment laid out by tensor name and
// size. The first snapshot allocates it (from a prefaulted segment, so even that copy runs at
// memcpy speed) and later snapshots with the same names and sizes reuse it, at the same
// addresses; a changed layout gets a fresh arena. Copies of tensors that are contiguous in the
// trainer's memory merge into large copies. With `generations` = 2 (double
// buffering) snapshot N+1 can be taken while snapshot N is still being written.
//
// Ownership, no torn snapshots: a staged state dict's tensors hold a lease on their generation.
// The generation becomes free again only when every tensor of the snapshot is gone — in the
// normal flow, when the checkpoint child has answered the write that carried it (the checkpoint
// process drops its copy of the state dict then). Staging while every generation is leased waits
// up to `acquire_timeout`, then fails with error(timeout); it never overwrites a snapshot in use.
//
// Thread safety: all members may be called from any thread; snapshots are taken in call order.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <future>
#include <memory>
#include <string>

#include "shmckpt/checkpoint_process.hpp"
#include "shmckpt/state_dict.hpp"

namespace shmckpt {

/// How the stager copies tensors of 256 KiB and more (smaller ones always use memcpy). Both
/// strategies produce the same bytes; they differ only in speed, which depends on the CPU.
enum class copy_strategy : std::uint8_t {
  /// Measured once per process: the first staging copies of 16 MiB or more are made half with
  /// each strategy and timed; streaming is kept only when it was at least 1.05x faster (see
  /// automatic_copy_strategy). Until then, memcpy. The environment variable
  /// SHMCKPT_COPY_STRATEGY=memcpy|streaming|auto overrides this choice for the whole process.
  automatic,
  /// The C library's memcpy (which itself may switch to non-temporal stores for huge calls).
  memcpy,
  /// Non-temporal (streaming) stores: the destination bypasses the cache and is not read first.
  streaming,
};

/// What copy_strategy::automatic uses in this process, and why.
struct copy_strategy_choice {
  /// copy_strategy::memcpy or copy_strategy::streaming.
  copy_strategy strategy = copy_strategy::memcpy;
  /// False while still measuring (memcpy is used until then).
  bool decided = false;
  /// Both throughputs and their ratio, or that SHMCKPT_COPY_STRATEGY forced it.
  std::string reason;
  /// What the measurement found, in bytes per second (0 when not measured).
  double memcpy_bytes_per_second = 0;
  double streaming_bytes_per_second = 0;
};

/// The process-wide automatic choice (thread-safe).
copy_strategy_choice automatic_copy_strategy();

/// The copy threads a stager uses when stager_options::threads is 0: one per available core, at
/// most 4 (copies are memory-bound; more threads than memory channels only contend).
std::size_t default_copy_threads() noexcept;

struct stager_options {
  /// Copy threads. 0: default_copy_threads().
  std::size_t threads = 0;
  /// Snapshots that may be in use at once (2: stage N+1 while N is written).
  std::size_t generations = 2;
  /// How long stage() waits for a free generation before failing with error(timeout).
  std::chrono::milliseconds acquire_timeout{std::chrono::seconds(600)};
  /// How large copies are made (automatic: measured, see copy_strategy).
  copy_strategy copy = copy_strategy::automatic;
};

class stager {
 public:
  /// Stages into `process`'s segment, which must outlive every staged state dict's use by the
  /// caller (the buffers themselves keep the mapping alive). Throws error(invalid_argument) when
  /// generations is 0 or SHMCKPT_COPY_STRATEGY holds anything but memcpy, streaming or auto.
  explicit stager(checkpoint_process& process, stager_options options = {});
  ~stager();
  stager(const stager&) = delete;
  stager& operator=(const stager&) = delete;

  /// Copies every private tensor of `sd` into the next free generation and returns the snapshot:
  /// the same tree, with private tensors replaced by shared copies. Blocks until the copy is done.
  /// Throws error(timeout) when no generation frees up within acquire_timeout, error(no_space)
  /// when the segment cannot hold a generation, error(closed) after close(). The snapshot
  /// carries the placement mark of checkpoint_process::mark_shared: write() of it takes
  /// constant time whatever its tensor count.
  state_dict stage(const state_dict& sd);

  struct staging {
    /// The snapshot, for checkpoint_process::write. Holds the generation's lease: drop every
    /// copy of it once handed over, or the generation is never reused.
    std::shared_future<state_dict> snapshot;
    /// Ready when the copy is complete (the trainer may change its tensors again); holds no
    /// lease, so callers may keep it as long as they like.
    std::shared_future<void> done;
  };

  /// As stage(), on a background thread, in call order. `sd`'s private tensors must not change
  /// until `done` is ready.
  staging stage_async(state_dict sd);

  /// Snapshots per generation currently leased (for tests and diagnostics).
  std::size_t generations_in_use() const;

  /// Bytes of segment memory held in the pools of all generations.
  std::size_t pooled_bytes() const;

  /// Waits for pending stage_async calls, then releases every pooled buffer not leased by a
  /// live snapshot. Idempotent; the destructor calls it.
  void close() noexcept;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace shmckpt
