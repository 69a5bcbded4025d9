// shmckpt/checkpoint_dir.hpp — finding, verifying and pruning complete checkpoints.
//
// What a trainer, a loader or a tool needs to know about checkpoint directories; how they come
// to be complete is commit.hpp's subject, and only writer authors need it.
//
// A checkpoint directory holds one `checkpoint_<rank>.safetensors` per rank (names in
// layout.hpp). It counts only once its manifest `checkpoint.json` exists: the manifest lists the
// world size and every rank's file with its size and a checksum, and is published atomically by
// rank 0 after every rank's file is durable. A directory without a manifest is incomplete (a
// crash or a failed rank): `load` refuses it unless told otherwise, and `latest_checkpoint`
// skips it. Nothing here ever blocks on what it finds: a FIFO or a device named like a
// checkpoint file is an error, never a hang.
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

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "shmckpt/layout.hpp"  // manifest_name, rank_file_name

namespace shmckpt {

/// One rank's contribution to a checkpoint, as its manifest lists it.
struct rank_file {
  int rank = 0;
  std::string file;        // name inside the checkpoint directory
  std::uint64_t bytes = 0; // file size
  std::string checksum;    // "xxh3:<16 hex>" of the file's header (which holds every tensor's)
  /// The commit round the file was written in (commit.hpp, new_round_token); empty in manifests
  /// written before rounds existed, which still load.
  std::string round;
};

struct manifest {
  int format_version = 1;
  int world_size = 1;
  std::vector<rank_file> ranks;  // ordered by rank
};

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
