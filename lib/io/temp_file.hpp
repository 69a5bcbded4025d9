// Private: the temporary files every durable write goes through, and telling stale ones apart.
//
// A writer creates `.<final name>.tmp.<pid>.<n>` beside its target (O_EXCL) and, before writing a
// byte, takes an open-file-description write lock (F_OFD_SETLK) on the whole file. The lock lives
// as long as the open file description, i.e. until the writer closes its last descriptor of it or
// dies, whatever kills it; NFS and Lustre forward it to their lock managers, so it is seen from
// every host (a pid is not: on a shared filesystem it may be another host's). A temporary file
// whose lock can be taken therefore belongs to a writer that is gone.
//
// Removal races with creation: between a writer's open and its lock, a cleaner could take the
// lock and unlink the file. The writer closes that window by checking, once it holds the lock,
// that its path still names its inode (a cleaner unlinks only while holding the lock), and starts
// over with the next name if not. A cleaner, symmetrically, unlinks only when the path still
// names the inode it locked.
//
// Filesystems without locks (the lock call fails with ENOLCK, EINVAL, ENOTSUP): the writer goes
// on unlocked and cleaners never remove anything there.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/util.hpp"
#include "format/layout.hpp"  // temp_prefix, temp_file_name, is_temp_name

namespace shmckpt::detail {

inline std::atomic<std::uint64_t> temp_counter{0};

inline flock whole_file_lock(short type) {
  flock l{};
  l.l_type = type;
  l.l_whence = SEEK_SET;
  l.l_start = 0;
  l.l_len = 0;
  return l;
}

inline bool same_inode(int fd, const std::filesystem::path& p) {
  struct stat a {}, b {};
  return ::fstat(fd, &a) == 0 && ::lstat(p.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

/// Creates and locks a fresh temporary file for `name` in `dir`. On failure returns an invalid
/// fd with errno set; `path` then names the file that could not be created.
inline unique_fd create_locked_temp(const std::filesystem::path& dir, std::string_view name,
                                    std::filesystem::path& path) {
  for (int attempt = 0;; ++attempt) {
    path = dir / temp_file_name(name, ::getpid(), temp_counter.fetch_add(1));
    unique_fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd) return fd;
    flock l = whole_file_lock(F_WRLCK);
    if (::fcntl(fd.get(), F_OFD_SETLK, &l) != 0) {
      if ((errno == EAGAIN || errno == EACCES) && attempt < 100) continue;  // a cleaner has it
      if (errno == EAGAIN || errno == EACCES) return unique_fd();
      return fd;  // no locks on this filesystem: go on unlocked
    }
    if (same_inode(fd.get(), path)) return fd;
    if (attempt >= 100) {
      errno = EBUSY;
      return unique_fd();
    }
    // Unlinked by a cleaner between our open and our lock: take the next name.
  }
}

/// What a probe found out about a temporary file.
enum class temp_owner { alive, gone, unknown };

/// Whether the writer of `p` still holds its lock; takes no lock itself.
inline temp_owner probe_temp(const std::filesystem::path& p) {
  unique_fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) return temp_owner::unknown;
  flock l = whole_file_lock(F_WRLCK);
  if (::fcntl(fd.get(), F_OFD_GETLK, &l) != 0) return temp_owner::unknown;
  return l.l_type == F_UNLCK ? temp_owner::gone : temp_owner::alive;
}

/// Removes `p` if its writer is gone (see above). True when it was removed.
inline bool remove_if_stale(const std::filesystem::path& p) {
  unique_fd fd(::open(p.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) return false;
  flock l = whole_file_lock(F_WRLCK);
  if (::fcntl(fd.get(), F_OFD_SETLK, &l) != 0) return false;  // alive, or no locks here
  if (!same_inode(fd.get(), p)) return false;
  return ::unlink(p.c_str()) == 0;  // while holding the lock: see the race note above
}

/// Removes the stale temporary files of `name` (`.<name>.tmp.*`) in `dir`; returns how many.
inline std::size_t remove_stale_temps_of(const std::filesystem::path& dir, std::string_view name) {
  const std::string prefix = temp_prefix(name);
  std::size_t removed = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.path().filename().string().starts_with(prefix) && remove_if_stale(e.path())) ++removed;
  return removed;
}

}  // namespace shmckpt::detail
