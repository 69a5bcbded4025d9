// shmckpt/commit.hpp — how a checkpoint becomes complete: the commit across ranks.
//
// For writer authors (a custom checkpoint_writer, a barrier over another engine, a hook around
// the commit). Trainers and tools that only find, verify or prune checkpoints need
// checkpoint_dir.hpp, which this header includes; the manifest and its rank_file entries are
// described there.
//
// The commit sequence, run in each rank's checkpoint child after its file is durable:
//   pre_commit hook → barrier (every rank's file durable) → rank 0 publishes the manifest →
//   every rank waits for the manifest → post_commit hook.
// The write future of every rank therefore resolves only when the whole checkpoint is complete.
//
// The barrier is a `barrier` implementation; `file_barrier` needs only a filesystem shared by all
// ranks (a local disk for one machine, NFS or Lustre across machines): each rank creates
// `<dir>/.commit/<rank>` durably and polls for the others. A rank that never arrives makes the
// others fail after the timeout with an error naming the missing ranks; no manifest is published.
//
// Rounds. Every save of a directory is a commit *round*. Each rank picks a random round token
// (new_round_token) when its save starts; its arrival and its manifest entry carry it. A rank
// reports success only when it sees a manifest whose entry for itself carries its own token, so a
// manifest of an earlier round (or one listing a file this rank did not write in this round)
// never counts. Rank 0 clears arrivals left by earlier rounds before it writes its own file
// (barrier::begin); ranks that arrived before that re-create their arrival while they wait; and
// rank 0 lists an arrival only after checking it against the file on disk (name, size, header
// checksum). A round must not overlap an earlier round into the same directory that is still
// waiting at the barrier (in practice: a failed save's ranks have all given up, or their
// processes are gone, before that directory is saved again).
//
// Re-saving. A directory that already holds a complete checkpoint is not saved into again unless
// the save asks to overwrite it (writer argument or save kwarg `overwrite=true`): the old
// checkpoint is retired when the save starts, so it is lost if the new save fails.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shmckpt/checkpoint_dir.hpp"  // rank_file, manifest, verify_checkpoint, ...
#include "shmckpt/types.hpp"

namespace shmckpt {

/// A fresh round token: 128 random bits (getrandom) as 32 lowercase hex digits. Throws
/// error(unsupported) when the kernel gives no randomness.
std::string new_round_token();

/// Synchronises the ranks of one checkpoint. `arrive` records that `me` is durable and returns
/// once all ranks have arrived, with every rank's entry (rank 0 needs them for the manifest;
/// other ranks may get an empty list when rank 0 has already completed the round). It throws
/// error(timeout) naming the ranks that did not arrive. `me.round` identifies this rank's round;
/// an implementation must only hand rank 0 entries of the round being committed (for a barrier
/// over a distributed store, the round travels inside each rank_file).
class barrier {
 public:
  virtual ~barrier() = default;
  /// Called by every rank when its save of `dir` starts, before it writes its file. The file
  /// barrier's rank 0 clears the arrivals earlier rounds left in `dir`.
  virtual void begin(const std::filesystem::path& dir, rank_info rank) { (void)dir, (void)rank; }
  virtual std::vector<rank_file> arrive(const std::filesystem::path& dir, const rank_file& me,
                                        rank_info rank, std::chrono::milliseconds timeout) = 0;
};

/// The barrier over a shared filesystem described above.
std::unique_ptr<barrier> make_file_barrier();

/// Runs in the child around the barrier; throwing fails the write (and, before the barrier,
/// keeps this rank from arriving, so no manifest is published).
class writer_hook {
 public:
  virtual ~writer_hook() = default;
  virtual void pre_commit(const std::filesystem::path& dir, const kwargs& kw) { (void)dir, (void)kw; }
  virtual void post_commit(const std::filesystem::path& dir, const kwargs& kw) { (void)dir, (void)kw; }
};

/// Registers a hook factory under `name`; the default writer uses the one named by its writer
/// argument "hook". Register in the trainer binary before run_worker_if_requested.
void register_writer_hook(std::string name,
                          std::function<std::unique_ptr<writer_hook>(const kwargs& args)> factory);
std::unique_ptr<writer_hook> make_writer_hook(const std::string& name, const kwargs& args);

/// Describes `checkpoint_<rank>.safetensors` in `dir` for the manifest: name, size, and the
/// XXH3-64 of its header (which records every tensor's checksum). `round` is left empty.
rank_file describe_rank_file(const std::filesystem::path& dir, int rank);

/// Runs the commit sequence for `me` in `dir` (see above); `me.round` must be this save's round
/// token. Rank 0 writes the manifest atomically (temporary file, fsync, rename, directory fsync).
/// Errors: timeout naming the missing ranks; no_space when the disk is full; io_error.
void commit_checkpoint(const std::filesystem::path& dir, const rank_file& me, rank_info rank,
                       barrier& b, writer_hook* hook, const kwargs& kw,
                       std::chrono::milliseconds timeout);

}  // namespace shmckpt
