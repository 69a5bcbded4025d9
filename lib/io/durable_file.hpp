// Private: the one way the library puts a file on disk durably and atomically.
//
// A `durable_file` is the temporary file of one target: `.<name>.tmp.<pid>.<n>` beside it,
// created with O_EXCL (never clobbering a file someone else is writing) and locked with an
// open-file-description lock (temp_file.hpp: the lock tells cleaners its writer is alive, and it
// is held through a second descriptor until the object is destroyed, so it covers the rename even
// after close() has reported the first descriptor's close errors). The caller writes with
// pwrite_all / pwritev_all, then `commit()` does the rest of the classic sequence:
//
//   fsync the file → close it (checked: NFS reports write-back errors there) → rename over the
//   target → fsync the directory (which makes the rename durable).
//
// Until the rename the target is untouched; on any failure before it (and on destruction without
// commit) the temporary file is removed. After the rename only the directory fsync can fail; the
// new file is then in place but its durability unknown, and the error says so.
//
// O_DIRECT: `enable_direct()` switches the descriptor to O_DIRECT where the filesystem supports it
// (it reports the alignment it needs; memory filesystems, which gain nothing from it, are left
// buffered) and `disable_direct()` switches back, e.g. when the first direct write is refused.
//
// `write_file_durably` is the whole sequence for a small buffer (a manifest, an arrival file).
//
// Errors: error(no_space) naming the bytes needed and free for ENOSPC/EDQUOT, error(io_error)
// with the OS reason otherwise; every message starts with the caller's label.
// Thread safety: one object per thread; distinct objects are independent.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "core/util.hpp"

namespace shmckpt::detail {

/// What O_DIRECT needs on a file: the alignment of memory addresses, and of file offsets and
/// lengths (both powers of two).
struct direct_alignment {
  std::size_t memory = 0;
  std::size_t offset = 0;
};

class durable_file {
 public:
  /// Creates and locks the temporary file of `target` in `target`'s directory. `size` (the final
  /// size, 0 when unknown) is reserved with fallocate so a full disk fails at once, naming the
  /// bytes needed and free. `label` starts every error message ("writing checkpoint 'x'").
  durable_file(const std::filesystem::path& target, std::uint64_t size, std::string label);
  durable_file(const durable_file&) = delete;
  durable_file& operator=(const durable_file&) = delete;
  /// Removes the temporary file unless committed; never throws.
  ~durable_file();

  int fd() const noexcept { return fd_.get(); }
  const std::filesystem::path& temp_path() const noexcept { return temp_; }
  const std::string& label() const noexcept { return label_; }

  /// Switches the descriptor to O_DIRECT. Returns the alignment it needs, or nothing (the file
  /// stays buffered) when the filesystem does not support O_DIRECT, is a memory filesystem, or
  /// needs an alignment coarser than `max_alignment`.
  bool enable_direct(direct_alignment& out, std::size_t max_alignment);
  /// Back to buffered I/O (after a refused direct write). Throws error(io_error) on failure.
  void disable_direct();

  /// Writes all of `p[0, n)` at `off`, resuming after short writes and EINTR.
  void pwrite_all(const void* p, std::size_t n, std::uint64_t off);
  /// Writes all of `iov` at `off` (the entries are consumed). Returns 0, or the errno of a
  /// failed first call when `refusable` and it is EINVAL (O_DIRECT refused; nothing written).
  int pwritev_all(std::vector<iovec>& iov, std::uint64_t off, bool refusable = false);
  /// Sets the file's size (after a padded last block).
  void truncate(std::uint64_t size);

  /// fsync, close, rename over the target, fsync the directory (see above).
  void commit();

  [[noreturn]] void os_failure(const char* what, int err) const;

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  std::uint64_t size_;
  std::string label_;
  unique_fd fd_;
  unique_fd lock_;
  bool committed_ = false;
};

/// Options of write_file_durably.
struct durable_write_options {
  /// When the target's directory does not exist (or vanishes before the rename), return false
  /// instead of throwing.
  bool missing_directory_ok = false;
};

/// Writes `bytes` to `target` atomically and durably with a durable_file. Returns true, or false
/// for a missing directory with missing_directory_ok. `label` starts error messages.
bool write_file_durably(const std::filesystem::path& target, std::string_view bytes,
                        const std::string& label, const durable_write_options& options = {});

}  // namespace shmckpt::detail
