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
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shmckpt/types.hpp"

namespace shmckpt {

/// Name of the manifest file inside a checkpoint directory.
inline constexpr const char* manifest_name = "checkpoint.json";

/// One rank's contribution to a checkpoint.
struct rank_file {
  int rank = 0;
  std::string file;        // name inside the checkpoint directory
  std::uint64_t bytes = 0; // file size
  std::string checksum;    // "xxh3:<16 hex>" of the file's header (which holds every tensor's)
};

struct manifest {
  int format_version = 1;
  int world_size = 1;
  std::vector<rank_file> ranks;  // ordered by rank
};

/// Synchronises the ranks of one checkpoint. `arrive` records that `me` is durable and returns
/// once all ranks have arrived, with every rank's entry (rank 0 needs them for the manifest;
/// other ranks may get an empty list when rank 0 has already completed the round). It throws
/// error(timeout) naming the ranks that did not arrive.
class barrier {
 public:
  virtual ~barrier() = default;
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
/// XXH3-64 of its header (which records every tensor's checksum).
rank_file describe_rank_file(const std::filesystem::path& dir, int rank);

/// Runs the commit sequence for `me` in `dir` (see above). Rank 0 writes the manifest
/// atomically (temporary file, fsync, rename, directory fsync).
void commit_checkpoint(const std::filesystem::path& dir, const rank_file& me, rank_info rank,
                       barrier& b, writer_hook* hook, const kwargs& kw,
                       std::chrono::milliseconds timeout);

/// The manifest of `dir`, or nullopt when it has none (incomplete). Throws error(corrupt_data)
/// for a manifest that does not parse or disagrees with itself.
std::optional<manifest> read_manifest(const std::filesystem::path& dir);

/// Whether `dir` holds a published manifest whose files all exist with the recorded sizes.
bool is_complete(const std::filesystem::path& dir);

/// The complete checkpoint directory directly under `root` with the newest manifest, or nullopt.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& root);

/// Deletes all but the `keep` newest complete checkpoints under `root`, and incomplete ones
/// older than the newest complete one. Never deletes the newest complete checkpoint. Returns the
/// directories removed.
std::vector<std::filesystem::path> keep_last(const std::filesystem::path& root, std::size_t keep);

}  // namespace shmckpt
