// shmckpt/checkpointer.hpp — the facade trainers call: save, load, close.
//
// `async_checkpointer` owns a checkpoint_process and a stager. `save()` snapshots the state dict
// into shared buffers on a background thread (double-buffered by default) and queues the write;
// it returns two futures: `staging` (the trainer may change its tensors again) and `write` (the
// checkpoint is durable and committed across ranks). Training continues while the child writes,
// and even the next save may be staged meanwhile; a third save while two are still being written
// waits for a free buffer generation (bounded), never overwriting a snapshot in use.
//
// Saves are written strictly in order. A write that failed is reported by its own future and
// again by the next save() (which throws it) or, for the last saves, by close() — so a failure
// cannot go unnoticed by a trainer that never looks at the futures. The checkpointer survives
// its child: when the child dies or hangs (checkpoint_process_options::progress_timeout), the
// save it was writing fails and the next save starts a new child.
//
// `sync_checkpointer` writes in the calling process: simpler, and the trainer waits for the disk.
//
// Both write `<path>/checkpoint_<rank>.safetensors` and commit the checkpoint across ranks with
// a manifest (commit.hpp); `load` refuses a directory without one unless told otherwise.
//
// Thread safety: one thread at a time per checkpointer (like the trainer loop that owns it).
#pragma once

#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shmckpt/checkpoint_process.hpp"
#include "shmckpt/commit.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/stager.hpp"
#include "shmckpt/state_dict.hpp"
#include "shmckpt/types.hpp"

namespace shmckpt {

/// What a save does when its directory already holds a complete checkpoint.
enum class existing_checkpoint {
  refuse,     // fail with error(invalid_argument) before touching anything (the default)
  overwrite,  // retire the old checkpoint when the save starts (lost if the new save fails)
};

struct checkpointer_config {
  /// The checkpoint child (async only). Its `rank` is overwritten by the checkpointer's rank.
  checkpoint_process_options process;
  /// Snapshot threads, generations and the wait for a free generation (async only).
  stager_options staging;
  /// How long a rank waits at the commit barrier for the others (default 600 s).
  std::chrono::milliseconds commit_timeout{std::chrono::seconds(600)};
  /// Saving into a directory that already holds a complete checkpoint. A save's kwarg
  /// overwrite="true" allows it for that save alone.
  existing_checkpoint on_existing = existing_checkpoint::refuse;
  /// Commit through the job's distributed engine instead of the file barrier (commit_store.hpp):
  /// the commit runs in this process on a thread of the library. Null: the file barrier.
  std::shared_ptr<commit_store> store;
  /// With a store: names this checkpointer's rounds in it, the same on every rank (empty:
  /// next_store_scope(), which counts the checkpointers with a store made in this process).
  std::string store_scope;
};

/// Rank and world size from the launcher's environment: RANK/WORLD_SIZE (torchrun),
/// OMPI_COMM_WORLD_RANK/SIZE (Open MPI), PMI_RANK/SIZE (MPICH, Intel MPI),
/// SLURM_PROCID/SLURM_NTASKS (Slurm), in that order; rank 0 of 1 when none is set. Throws
/// error(invalid_argument) for values that are not integers or a rank outside the world.
rank_info detect_rank_info();

/// The options of `load` are those of every read (reader.hpp); `rank` is the checkpointer's.
using load_options = read_options;

struct load_result {
  state_dict state;
  /// Keys of the template that the checkpoint lacks (empty without a template).
  std::vector<std::string> missing;
};

class async_checkpointer {
 public:
  explicit async_checkpointer(checkpointer_config config = {}, rank_info rank = {});
  ~async_checkpointer();

  struct save_futures {
    std::shared_future<void> staging;  // ready: the snapshot is taken
    std::shared_future<void> write;    // ready: durable and committed
  };

  /// Snapshots `sd` and queues its write to directory `path`. Throws the error of an earlier
  /// write that failed (once), error(closed) after close().
  save_futures save(std::filesystem::path path, state_dict sd, kwargs kw = {});

  /// Loads this rank's file of the checkpoint at `path` (see load_options).
  load_result load(const std::filesystem::path& path, const load_options& options = {}) const;
  /// Loads into `template_`'s tensors (partial load: only its keys).
  load_result load(const std::filesystem::path& path, state_dict& template_,
                   const load_options& options = {}) const;

  /// Waits for every queued write (bounded by shutdown_timeout), then stops the child. Throws the
  /// first failure of a save that no save() has thrown yet (even if its future was looked at),
  /// including a write cut short by the shutdown. Idempotent: a second call does nothing. The
  /// destructor closes too but cannot throw: call close() to learn of a last failure.
  void close();

  checkpoint_process& process();
  stager& staging_area();
  rank_info rank() const noexcept { return rank_; }

 private:
  rank_info rank_;
  std::unique_ptr<checkpoint_process> process_;
  std::unique_ptr<stager> stager_;
  std::vector<std::shared_future<void>> outstanding_;
  bool closed_ = false;
};

class sync_checkpointer {
 public:
  explicit sync_checkpointer(checkpointer_config config = {}, rank_info rank = {});

  /// Writes `sd` to directory `path` and commits it; returns when durable and committed.
  void save(const std::filesystem::path& path, const state_dict& sd, const kwargs& kw = {});

  load_result load(const std::filesystem::path& path, const load_options& options = {}) const;
  load_result load(const std::filesystem::path& path, state_dict& template_,
                   const load_options& options = {}) const;

  void close() noexcept {}
  rank_info rank() const noexcept { return rank_; }

 private:
  checkpointer_config config_;
  rank_info rank_;
  // With a store: saves per directory (their rounds), the previous round, the hook.
  std::map<std::string, std::uint64_t> attempts_;
  std::string previous_round_;
  std::shared_ptr<writer_hook> hook_;
};

/// Factories; `rank` defaults to detect_rank_info().
std::unique_ptr<async_checkpointer> make_async_checkpointer(
    checkpointer_config config = {}, std::optional<rank_info> rank = std::nullopt);
std::unique_ptr<sync_checkpointer> make_sync_checkpointer(
    checkpointer_config config = {}, std::optional<rank_info> rank = std::nullopt);

}  // namespace shmckpt
