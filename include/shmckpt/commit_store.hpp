// shmckpt/commit_store.hpp — committing across ranks through the job's own distributed engine.
//
// The file barrier (commit.hpp) finds the other ranks by looking at files on the shared
// filesystem, and so waits as long as the filesystem clients of the hosts cache what they saw
// (NFS: 30–60 s by default). A job that already runs a distributed engine — torch.distributed's
// TCPStore, MPI, etcd — can commit through it instead: give the checkpointer a `commit_store`.
//
// What a trainer implements is the lowest common denominator of those engines: a key/value store
// shared by all ranks, with `set` and a `get` that waits for a key up to a deadline. The barrier
// algorithm on top is the library's (commit_through_store), the same for every engine:
//
//   every rank r ≠ 0:  set("<round>/arrive/<r>", its rank file: name, size, header checksum,
//                       round token, directory, world size)
//   rank 0:            get every arrival (deadline: commit_timeout), check each against the
//                       file on disk (as the file barrier does), publish checkpoint.json, then
//                       set("<round>/outcome", "ok" + the manifest) — or "failed" + why
//   every rank r ≠ 0:  get the outcome, check that the manifest lists its own file and round
//                       token; then its write future resolves
//
// Rounds. A round is named by the checkpointer's scope, the directory and how many times this
// checkpointer has saved into it (store_round_key); every rank computes it alone (no extra
// communication), so ranks must make the same saves, and create their checkpointers in the same
// order (the default scope counts them per process). A failed round's keys are never read again; an arrival naming another directory or world size fails the round ("saves out of
// step"); the round tokens are verified as for the file barrier. Rank 0 removes the previous
// round's outcome once every rank has arrived in the next one, and ranks remove their own
// arrival once the round is over, where the store supports `remove`.
//
// Where it runs. With a store, the checkpoint child stops once its file is durable and reports
// the file to its parent; the commit runs in the trainer process on a thread of the library
// (never the trainer's own thread, so never inside its collectives), and the write future
// resolves after it, as with the file barrier. The writer hook (commit.hpp) then runs there too:
// it must be registered in the trainer process. The progress watchdog watches the child only,
// which no longer waits: a slow barrier is bounded by commit_timeout alone.
//
// Thread safety: a commit_store is called from one library thread per checkpointer; an
// implementation shared by several checkpointers (or threads acting as ranks) must be
// thread-safe, as make_memory_store's is.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "shmckpt/commit.hpp"
#include "shmckpt/types.hpp"

namespace shmckpt {

/// A key/value store shared by all ranks of a job (see above). Errors are exceptions; a
/// shmckpt::error keeps its code, anything else fails the commit as io_error.
class commit_store {
 public:
  virtual ~commit_store() = default;
  /// Stores `value` under `key`, for every rank to see; replaces an earlier value.
  virtual void set(const std::string& key, const std::string& value) = 0;
  /// The value of `key` once some rank has set it, waiting until `deadline` at most; nullopt if
  /// it is still absent then. A deadline already past asks without waiting. May return early
  /// with nullopt (the caller asks again while time is left).
  virtual std::optional<std::string> get(const std::string& key,
                                         std::chrono::steady_clock::time_point deadline) = 0;
  /// Forgets `key`; best effort (the default keeps it: the store then grows by one small
  /// outcome per round).
  virtual void remove(const std::string& key) { (void)key; }
};

/// A store inside this process (threads standing for ranks, tests). Thread-safe.
std::shared_ptr<commit_store> make_memory_store();

/// One commit round in a store.
struct store_round {
  /// Names the round: its keys are "<key>/arrive/<rank>" and "<key>/outcome". The same on every
  /// rank for the same save, and never used for another save (see store_round_key).
  std::string key;
  /// The key of the same checkpointer's previous round, or empty: rank 0 removes that round's
  /// outcome once every rank has arrived in this one (every rank has read it by then).
  std::string previous;
};

/// The key of the `attempt`-th save (from 1) into `dir` by the checkpointer named `scope`:
/// "<scope>/<XXH3 of dir>.<attempt>". Counting per directory keeps ranks in step after a save
/// that failed on one rank before it was counted there: only that directory's rounds disagree.
std::string store_round_key(const std::string& scope, const std::filesystem::path& dir,
                            std::uint64_t attempt);

struct store_commit_options {
  /// How long a rank waits for the others (and for rank 0's outcome).
  std::chrono::milliseconds timeout{std::chrono::seconds(600)};
  /// Runs pre_commit before this rank arrives and post_commit after the round succeeded.
  writer_hook* hook = nullptr;
  /// The save's kwargs, handed to the hook.
  kwargs kw;
  /// When it becomes true, the commit stops within about 100 ms with error(closed).
  const std::atomic<bool>* cancel = nullptr;
};

/// Commits `me` (this rank's durable file in `dir`, with its round token) through `store` as
/// described above. Rank 0 writes the manifest atomically (commit.hpp). Errors: timeout naming
/// the ranks that did not arrive (rank 0) or saying that rank 0 published nothing (others);
/// child_failed carrying rank 0's reason when rank 0 failed the round; corrupt_data for an
/// arrival that does not match its file on disk; invalid_argument for saves out of step
/// (another directory or world size in the same round); no_space, io_error from the manifest.
/// No manifest is ever published without every rank's file. Callable from any thread.
void commit_through_store(commit_store& store, const store_round& round,
                          const std::filesystem::path& dir, const rank_file& me, rank_info rank,
                          const store_commit_options& options = {});

/// The default scope of the next checkpointer with a store in this process: "ckpt<k>" for the
/// k-th one (the same on every rank when ranks create their checkpointers in the same order).
std::string next_store_scope();

}  // namespace shmckpt
