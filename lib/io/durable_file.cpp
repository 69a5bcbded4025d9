// durable_file.cpp — see durable_file.hpp for the sequence and its guarantees.
#include "io/durable_file.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/stat.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "io/temp_file.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt::detail {
namespace fs = std::filesystem;

namespace {

std::string os_message(int err) { return std::system_category().message(err); }

fs::path directory_of(const fs::path& target) {
  fs::path dir = target.parent_path();
  return dir.empty() ? fs::path(".") : dir;
}

bool is_power_of_two(std::size_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Memory filesystems: O_DIRECT there (where accepted at all) is a copy into the same page cache.
bool memory_filesystem(int fd) {
  struct statfs st {};
  if (::fstatfs(fd, &st) != 0) return false;
  switch (static_cast<unsigned long>(st.f_type)) {
    case TMPFS_MAGIC:
    case RAMFS_MAGIC:
      return true;
    default:
      return false;
  }
}

}  // namespace

durable_file::durable_file(const fs::path& target, std::uint64_t size, std::string label)
    : target_(target), size_(size), label_(std::move(label)) {
  fd_ = create_locked_temp(directory_of(target), target.filename().string(), temp_);
  if (!fd_) os_failure("cannot create the temporary file", errno);
  lock_.reset(::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0));
  if (!lock_) {
    int err = errno;
    ::unlink(temp_.c_str());
    fd_.reset();
    os_failure("cannot duplicate the temporary file's descriptor", err);
  }
  if (size > 0 && ::fallocate(fd_.get(), 0, 0, static_cast<off_t>(size)) != 0) {
    int err = errno;
    // Filesystems without fallocate still get the data; they just fail later when full.
    if (err != EOPNOTSUPP && err != ENOSYS) {
      ::unlink(temp_.c_str());
      fd_.reset();
      lock_.reset();
      os_failure("cannot reserve space", err);
    }
  }
}

durable_file::~durable_file() {
  if (!committed_) ::unlink(temp_.c_str());  // while still holding the lock
  fd_.reset();
  lock_.reset();
}

void durable_file::os_failure(const char* what, int err) const {
  if (err == ENOSPC || err == EDQUOT) {
    std::string free_text = "an unknown number of";
    struct statvfs st {};
    if (::statvfs(directory_of(target_).c_str(), &st) == 0)
      free_text = std::to_string(static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize);
    throw_error(errc::no_space, label_ + ": not enough disk space: the file needs " +
                                    std::to_string(size_) + " bytes, the filesystem has " +
                                    free_text + " bytes free (" + what + ")");
  }
  throw_error(errc::io_error, label_ + ": " + what + ": " + os_message(err));
}

bool durable_file::enable_direct(direct_alignment& out, std::size_t max_alignment) {
  if (memory_filesystem(fd_.get())) return false;
  direct_alignment a{4096, 4096};  // what every filesystem that supports O_DIRECT accepts
#ifdef STATX_DIOALIGN
  struct statx sx {};
  if (::statx(fd_.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN)) {
    if (sx.stx_dio_offset_align == 0) return false;  // the filesystem says: no O_DIRECT here
    a.memory = sx.stx_dio_mem_align;
    a.offset = sx.stx_dio_offset_align;
  }
#endif
  // Without STATX_DIOALIGN (kernels before 6.1, filesystems that do not report it) 4096 is tried;
  // a refusal shows up as EINVAL here or at the first write.
  if (!is_power_of_two(a.memory) || !is_power_of_two(a.offset) || a.memory > max_alignment ||
      a.offset > max_alignment)
    return false;
  int flags = ::fcntl(fd_.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd_.get(), F_SETFL, flags | O_DIRECT) != 0) return false;
  out = a;
  return true;
}

void durable_file::disable_direct() {
  int flags = ::fcntl(fd_.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd_.get(), F_SETFL, flags & ~O_DIRECT) != 0)
    os_failure("cannot switch the temporary file back to buffered I/O", errno);
}

void durable_file::pwrite_all(const void* data, std::size_t n, std::uint64_t off) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t r = ::pwrite(fd_.get(), p, n, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      os_failure("write failed", errno);
    }
    if (r == 0) os_failure("write made no progress", EIO);
    p += r;
    n -= static_cast<std::size_t>(r);
    off += static_cast<std::uint64_t>(r);
  }
}

int durable_file::pwritev_all(std::vector<iovec>& iov, std::uint64_t off, bool refusable) {
  std::size_t i = 0;
  bool first = true;
  while (i < iov.size()) {
    ssize_t r = ::pwritev(fd_.get(), iov.data() + i, static_cast<int>(iov.size() - i),
                          static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (refusable && first && errno == EINVAL) return EINVAL;
      os_failure("write failed", errno);
    }
    if (r == 0) os_failure("write made no progress", EIO);
    first = false;
    off += static_cast<std::uint64_t>(r);
    auto left = static_cast<std::size_t>(r);
    while (i < iov.size() && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (left > 0) {
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + left;
      iov[i].iov_len -= left;
    }
  }
  return 0;
}

void durable_file::truncate(std::uint64_t size) {
  if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0)
    os_failure("cannot set the file's size", errno);
}

void durable_file::commit() {
  if (::fsync(fd_.get()) != 0) os_failure("fsync failed", errno);
  if (::close(fd_.release()) != 0) os_failure("close failed", errno);
  if (::rename(temp_.c_str(), target_.c_str()) != 0)
    os_failure("cannot rename the temporary file over the target", errno);
  committed_ = true;
  const fs::path dir = directory_of(target_);
  unique_fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d || ::fsync(d.get()) != 0)
    throw_error(errc::io_error,
                label_ + ": the new file is in place, but syncing directory '" + dir.string() +
                    "' failed (" + os_message(errno) + "), so it may not survive a crash");
}

bool write_file_durably(const fs::path& target, std::string_view bytes, const std::string& label,
                        const durable_write_options& options) {
  auto directory_gone = [&] {
    std::error_code ec;
    return options.missing_directory_ok && !fs::is_directory(directory_of(target), ec);
  };
  try {
    durable_file f(target, 0, label);
    f.pwrite_all(bytes.data(), bytes.size(), 0);
    f.commit();
  } catch (const error&) {
    if (directory_gone()) return false;
    throw;
  }
  return true;
}

}  // namespace shmckpt::detail
