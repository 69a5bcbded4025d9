// shmckpt/reader.hpp — loading checkpoints back.
//
// `read` opens a safetensors file written by shmckpt (or by any conforming writer), validates it
// as untrusted input (docs/format.md lists every check) and rebuilds the state dict. By default
// the tensors are views into a private, copy-on-write memory map of the file: opening is O(header)
// and bytes are faulted in only when touched; writing into a loaded tensor changes only this
// process's copy. The map stays alive as long as any tensor from it does.
//
// Files not written by shmckpt (no tree metadata) load as a flat dict of name → tensor.
//
// Thread safety: independent calls are safe concurrently.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "shmckpt/state_dict.hpp"

namespace shmckpt {

struct read_options {
  /// Copy tensor bytes into private memory instead of viewing the file's mapping.
  bool copy = false;
  /// Recompute every tensor's recorded checksum and fail with error(corrupt_data) naming the
  /// first tensor that does not match.
  bool verify_checksums = false;
};

/// Reads a checkpoint file, or `checkpoint_<rank>.safetensors` inside a directory (rank 0 unless
/// `rank` is given). Errors: not_found naming the file; corrupt_data naming the field that failed
/// validation; io_error for OS failures.
state_dict read(const std::filesystem::path& file_or_dir, const read_options& options = {},
                int rank = 0);

/// One entry of a checkpoint file's header, for listing without touching tensor bytes.
struct tensor_entry {
  std::string name;                  // flattened key path
  dtype type;                        //
  std::vector<std::int64_t> shape;   //
  std::uint64_t offset = 0;          // start of the bytes within the data section
  std::uint64_t nbytes = 0;          //
  std::string checksum;              // "xxh3:<16 hex digits>", or empty when not recorded
};

/// The validated header of a checkpoint file: its tensor entries in file order (ascending
/// offset). Validates exactly what `read` validates except the tensor bytes, which it never
/// touches. A directory means its checkpoint_0.safetensors. Errors as for `read`.
std::vector<tensor_entry> list_entries(const std::filesystem::path& file);

/// One tensor's recorded checksum next to the checksum of its bytes (see check_checksums).
struct checksum_check {
  std::string name;      // flattened key path
  std::string recorded;  // "xxh3:<16 hex digits>" from the header, or empty when not recorded
  std::string actual;    // "xxh3:<16 hex digits>" computed from the bytes in the file
  bool ok() const noexcept { return recorded.empty() || recorded == actual; }
};

/// Validates the file like `read` (same path rules and errors), then hashes every tensor and
/// reports all of them in file order; a mismatch is a result here, not an exception.
std::vector<checksum_check> check_checksums(const std::filesystem::path& file_or_dir,
                                            int rank = 0);

/// The shmckpt library version, e.g. "0.1.0".
std::string_view library_version() noexcept;

}  // namespace shmckpt
