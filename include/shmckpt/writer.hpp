// shmckpt/writer.hpp — persisting a state dict durably.
//
// `write_safetensors` is the storage primitive: it writes one state dict as one safetensors file
// (layout in docs/format.md) such that the file at `file` is, at every instant, either the
// previous complete file or the new complete file — never a torn mix. It writes to a temporary
// file in the same directory, fsyncs it, renames it over `file`, and fsyncs the directory. Any
// failure (full disk, I/O error, cancellation) removes the temporary file and leaves an earlier
// checkpoint at `file` untouched.
//
// `checkpoint_writer` is the interface the checkpoint child calls for each WRITE_CHECKPOINT
// request; `make_default_writer` builds the default one, which writes
// `<path>/checkpoint_<rank>.safetensors`. Custom writers are registered by name in worker.hpp.
//
// Thread safety: write_safetensors is safe to call concurrently for different files.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>

#include "shmckpt/layout.hpp"  // checkpoint_file_path
#include "shmckpt/state_dict.hpp"
#include "shmckpt/types.hpp"

namespace shmckpt {

/// How write_safetensors moves tensor bytes to the file.
enum class write_io {
  /// O_DIRECT straight from the tensors' memory where the filesystem supports it (no copy into
  /// the page cache, no write-back competing with the trainer); buffered where it does not
  /// (memory filesystems such as tmpfs, filesystems that refuse O_DIRECT).
  automatic,
  /// Always through the page cache (pwritev, write-back started per chunk, fsync).
  buffered,
};

/// The path a write took.
enum class write_path { direct, buffered };

struct safetensors_write_options {
  /// Record an XXH3-64 checksum of every tensor in the header (verified by the reader on request
  /// and by `ckpt-inspect verify`). Computed while writing, in the same pass over the bytes.
  bool checksums = true;
  /// See write_io. Durability is the same either way.
  write_io io = write_io::automatic;
  /// When non-null and it becomes true, the write stops at the next chunk, removes the temporary
  /// file and throws error(errc::closed). Lets the child abandon a write when its parent dies.
  const std::atomic<bool>* cancel = nullptr;
};

/// What write_safetensors did, for diagnostics and tests.
struct safetensors_write_result {
  /// direct: the data section went out with O_DIRECT; buffered: through the page cache.
  write_path path = write_path::buffered;
  /// Data-section bytes written straight from the tensors' memory (O_DIRECT only).
  std::uint64_t direct_bytes = 0;
  /// Data-section bytes that went through the small aligned bounce buffer (O_DIRECT only):
  /// tensors whose address is not aligned like their file offset, block-sized pieces shared
  /// by two tensors, and the padded last block.
  std::uint64_t bounced_bytes = 0;
  /// The file's size.
  std::uint64_t file_bytes = 0;
};

/// Writes `sd` to `file` atomically and durably (see above). The parent directory must exist.
/// The data section starts at a multiple of 4096 (the header is padded with spaces).
/// Throws error(invalid_argument) for a tree that cannot be represented (two tensors flattening
/// to the same name), error(no_space) when the filesystem is full (naming bytes needed and free),
/// error(io_error) for other OS failures, error(closed) when cancelled.
safetensors_write_result write_safetensors(const std::filesystem::path& file,
                                           const state_dict& sd,
                                           const safetensors_write_options& options = {});

/// What the checkpoint child calls to persist one request. Implementations run in the child; the
/// state dict's tensors are views into the shared segment, valid only during the call.
class checkpoint_writer {
 public:
  virtual ~checkpoint_writer() = default;
  /// Persists `sd` at `path` with the request's `kw`. Throwing fails that write's future in the
  /// parent with the exception's message.
  virtual void write(const state_dict& sd, const std::filesystem::path& path,
                     const kwargs& kw) = 0;
};

/// The default writer: creates `path` (a directory) if needed and writes
/// `checkpoint_file_path(path, rank)` with write_safetensors, then commits it across ranks
/// (commit.hpp). `args` are the writer-factory arguments; "rank" and "world_size" are always
/// present (added by the parent); "commit_timeout_ms", "hook", "overwrite", "io" ("auto",
/// the default, or "buffered": safetensors_write_options::io) and "checksums" ("true", the
/// default, or "false": safetensors_write_options::checksums; the child then never reads the
/// tensors' bytes itself, and readers cannot verify them) are optional.
/// A `path` that already holds a complete checkpoint is refused with error(invalid_argument)
/// before anything on disk changes, unless "overwrite" is "true" (writer argument, or the
/// request's kwarg): then rank 0 retires the old manifest when the save starts. Each rank also
/// removes the stale temporary files of its own file in `path`, rank 0 also the manifest's
/// (commit.hpp).
std::unique_ptr<checkpoint_writer> make_default_writer(const kwargs& args,
                                                       const std::atomic<bool>* cancel = nullptr);

}  // namespace shmckpt
