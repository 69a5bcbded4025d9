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
// `read_into` is the partial read: the caller passes a template state dict (typically the live
// model and optimizer state, possibly in a shared segment) and only the keys it names are read,
// straight into the template's own tensor memory, with dtypes and shapes checked.
//
// Thread safety: independent calls are safe concurrently.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "shmckpt/state_dict.hpp"
#include "shmckpt/tensor_entry.hpp"

namespace shmckpt {

/// How to read a checkpoint: one set of options for `read`, `read_into` and the checkpointers'
/// `load` (checkpointer.hpp), each field meaning the same wherever it is used. The fields keep
/// the order of the earlier read_options (new ones last), so designated initialisers written for
/// it still compile.
struct read_options {
  /// Tensors handed out (by `read`, and by `read_into` for placeholders) own private copies of
  /// their bytes instead of viewing the file's mapping. `read` reads the file's whole data
  /// section into one private allocation (in huge pages while the system gives them quickly, on
  /// one thread per CPU from 32 MiB) that all its tensors share: it is freed when the last of
  /// them goes.
  bool copy = false;
  /// Hash the bytes of every tensor that is read and compare them with the recorded checksum
  /// (error(corrupt_data) naming the first tensor that does not match); `read_into` does so
  /// before anything is written into the template. Files without checksums pass.
  bool verify_checksums = false;
  /// Read a checkpoint directory that has no manifest (commit.hpp): an incomplete checkpoint,
  /// or files written without the commit protocol. Off: such a directory is error(not_found).
  bool allow_incomplete = false;
  /// With a template (`read_into`, `load` with a template): fail with error(not_found) naming
  /// every template key the file lacks, instead of listing them in read_result::missing.
  /// Checked before anything is written into the template. Without a template it has no effect.
  bool strict = false;
  /// Given a directory, read its checkpoint_<rank>.safetensors. The checkpointers' `load`
  /// always reads its own rank's file and ignores this.
  int rank = 0;
};

/// The former name of read_options for `read_into` (kept so that existing code compiles).
using read_into_options = read_options;

/// Reads a checkpoint file, or `checkpoint_<rank>.safetensors` inside a checkpoint directory
/// (options.rank). A directory must be complete — hold its manifest — unless
/// `allow_incomplete` is set; a single file is read as it is. Errors: not_found naming the file
/// or the incomplete directory; corrupt_data naming the field that failed validation; io_error
/// for OS failures.
state_dict read(const std::filesystem::path& file_or_dir, const read_options& options = {});

/// `read` with the rank given apart, as before read_options held it: reads rank `rank`'s file,
/// whatever options.rank says.
state_dict read(const std::filesystem::path& file_or_dir, const read_options& options, int rank);

/// What `read_into` did.
struct read_result {
  /// The filled template: a copy of the dict passed in, sharing its tensors' memory.
  state_dict state;
  /// Flattened keys of template leaves the file does not hold, in template order.
  std::vector<std::string> missing;
  /// Flattened keys of file leaves (tensors and non-tensor values) the template does not ask
  /// for, in the file's tree order. Never an error; for callers that want to warn.
  std::vector<std::string> unexpected;
};

/// Partial read into a template: reads only the keys present in `template_`, matched by
/// flattened key path (dict keys and list indexes joined by '.', as for_each_tensor names them;
/// so {"model": {"w": t}} matches a file entry "model.w" whether or not the file nests it).
///
/// For each leaf of the template:
///  - a tensor with memory (data() != nullptr) must have the file's dtype and shape; the file's
///    bytes are copied into the tensor's own memory, wherever it lives (private, a shared
///    segment, a caller's buffer), so its address does not change;
///  - a tensor without memory (a default-constructed `tensor{}`) is a placeholder: it is
///    replaced by the file's tensor, whatever its dtype and shape, viewing the file's private
///    mapping as `read` would;
///  - a non-tensor value (none, bool, int, float, string) is replaced by the file's non-tensor
///    value at that path, whatever its kind;
///  - empty dicts and lists ask for nothing.
/// Keys the file lacks are reported in read_result::missing (or are an error with `strict`).
///
/// Nothing is written into the template until the whole request has been checked: on any
/// error the template is unchanged. Errors: not_found naming the file when it does not exist,
/// or (strict) naming the missing keys; invalid_argument naming the key and both values on a
/// dtype, shape or kind mismatch ("tensor 'model.w': checkpoint has F32 [4, 4], template has
/// F32 [4, 5]") or when two template leaves flatten to the same key; corrupt_data as for
/// `read` (the whole header and tree are validated, not only the requested keys); io_error
/// for OS failures.
///
/// Thread safety: safe concurrently with other calls as long as no one else touches the
/// template's tensors while it runs.
read_result read_into(const std::filesystem::path& file_or_dir, state_dict& template_,
                      const read_options& options = {});

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

/// Options of the progress-reporting `check_checksums`.
struct check_checksums_options {
  /// Given a directory, check its checkpoint_<rank>.safetensors.
  int rank = 0;
  /// When set, called with (bytes hashed so far, total tensor bytes of the file) after every
  /// tensor and at least every 64 MiB within a large one, from the calling thread; the last
  /// call has done == total. Exceptions it throws propagate.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
};

/// `check_checksums` with options (a rank and a progress callback); same checks and errors.
std::vector<checksum_check> check_checksums(const std::filesystem::path& file_or_dir,
                                            const check_checksums_options& options);

/// The shmckpt library version, e.g. "0.1.0".
std::string_view library_version() noexcept;

}  // namespace shmckpt
