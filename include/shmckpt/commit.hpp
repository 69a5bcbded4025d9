// shmckpt/commit.hpp — committing a checkpoint across ranks, and finding complete ones.
//
// A checkpoint directory holds one `checkpoint_<rank>.safetensors` per rank. It counts only once
// its manifest `checkpoint.json` exists: the manifest lists the world size and every rank's file
// with its size and a checksum, and is published atomically by rank 0 after every rank's file is
// durable. A directory without a manifest is incomplete (a crash or a failed rank): `load`
// refuses it unless told otherwise, and `latest_checkpoint` skips it.
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
//
// Temporary files. A writer holds an open-file-description lock (F_OFD_SETLK, which NFS and
// Lustre forward to their lock managers) on its `.<name>.tmp.<pid>.<n>` file for as long as it
// writes it. A temporary file whose lock can be taken belongs to a writer that is gone (killed,
// crashed, its host dead): remove_stale_temp_files, keep_last and the next save into the
// directory (each rank its own file's, rank 0 also the manifest's) remove it. The lock, not the
// pid, decides: on a shared filesystem the pid may be another host's. Where locks are local to
// each host (NFS mounted `nolock`, Lustre `localflock`) a live writer on another host looks
// dead; saves therefore only clean their own names, and keep_last only directories it would
// otherwise keep complete or delete as old.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shmckpt/layout.hpp"  // manifest_name, rank_file_name
#include "shmckpt/types.hpp"

namespace shmckpt {

/// One rank's contribution to a checkpoint.
struct rank_file {
  int rank = 0;
  std::string file;        // name inside the checkpoint directory
  std::uint64_t bytes = 0; // file size
  std::string checksum;    // "xxh3:<16 hex>" of the file's header (which holds every tensor's)
  /// The commit round the file was written in (new_round_token); empty in manifests written
  /// before rounds existed, which still load.
  std::string round;
};

struct manifest {
  int format_version = 1;
  int world_size = 1;
  std::vector<rank_file> ranks;  // ordered by rank
};

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

/// The manifest of `dir`, or nullopt when it has none (incomplete). Throws error(corrupt_data)
/// for a manifest that does not parse or disagrees with itself (it does not look at the rank
/// files; verify_checkpoint does).
std::optional<manifest> read_manifest(const std::filesystem::path& dir);

/// Checks that `dir` is a complete checkpoint and returns its manifest: the manifest parses, and
/// every rank's file is `checkpoint_<rank>.safetensors` and exists with the recorded size and
/// header checksum (the header only is read, never the tensor bytes). Errors: not_found when
/// `dir` has no manifest; corrupt_data naming the rank and both values on any mismatch;
/// io_error for OS failures.
manifest verify_checkpoint(const std::filesystem::path& dir);

/// Whether verify_checkpoint(dir) succeeds.
bool is_complete(const std::filesystem::path& dir);

/// A writer's temporary file in a checkpoint directory (`.<name>.tmp.<...>`).
struct temp_file_state {
  std::filesystem::path path;
  std::uint64_t bytes = 0;
  /// Its writer is gone (its lock can be taken): the file is garbage.
  bool stale = false;
};

/// The temporary files directly in `dir`, by name. Takes no lock and removes nothing.
std::vector<temp_file_state> temp_files(const std::filesystem::path& dir);

/// Removes the stale temporary files directly in `dir` (see "Temporary files" above) and returns
/// their paths. Files of live writers, and files on filesystems without locks, are left alone.
/// Never throws for a file that vanishes meanwhile.
std::vector<std::filesystem::path> remove_stale_temp_files(const std::filesystem::path& dir);

/// The complete checkpoint directory directly under `root` with the newest manifest, or nullopt.
/// Never blocks on what it finds (a FIFO named checkpoint.json is io_error, not a hang): a
/// directory whose manifest cannot be read or does not match its files is skipped, and its
/// reason appended to `skipped` when given.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& root,
                                                       std::vector<std::string>* skipped = nullptr);

/// Deletes all but the `keep` newest complete checkpoints under `root`, and incomplete ones
/// (holding rank files or stale temporary files) older than the newest complete one, and stale
/// temporary files in the directories it keeps. Never deletes the newest complete checkpoint.
/// Returns the directories removed. Directories it cannot judge are skipped (never removed) and
/// reported in `skipped`, as for latest_checkpoint.
std::vector<std::filesystem::path> keep_last(const std::filesystem::path& root, std::size_t keep,
                                             std::vector<std::string>* skipped = nullptr);

}  // namespace shmckpt
