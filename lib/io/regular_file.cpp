#include "io/regular_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>

#include "shmckpt/error.hpp"

namespace shmckpt::detail {
namespace {

std::string os_message(int err) { return std::system_category().message(err); }

[[noreturn]] void not_regular(const std::string& label, mode_t mode) {
  throw_error(errc::io_error, label + ": is " + std::string(file_type_name(mode)) +
                                  ", not a regular file; only regular files are read");
}

}  // namespace

std::string_view file_type_name(mode_t mode) noexcept {
  switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFIFO: return "a FIFO";
    case S_IFSOCK: return "a socket";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    case S_IFLNK: return "a symbolic link";
  }
  return "a file of unknown type";
}

regular_file open_regular_file(const std::filesystem::path& path, const std::string& label) {
  auto fail_open = [&](int err) {
    if (err == ENOENT) throw_error(errc::not_found, label + ": no such file");
    throw_error(errc::io_error, label + ": cannot open: " + os_message(err));
  };
  // O_PATH opens nothing (no FIFO rendezvous, no device open): it only names the inode.
  {
    unique_fd probe(::open(path.c_str(), O_PATH | O_CLOEXEC));
    if (!probe) fail_open(errno);
    struct stat st {};
    if (::fstat(probe.get(), &st) != 0)
      throw_error(errc::io_error, label + ": cannot stat: " + os_message(errno));
    if (!S_ISREG(st.st_mode)) not_regular(label, st.st_mode);
  }
  // O_NONBLOCK: should the path have become a FIFO meanwhile, open returns instead of waiting.
  regular_file f;
  f.fd.reset(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!f.fd) fail_open(errno);
  struct stat st {};
  if (::fstat(f.fd.get(), &st) != 0)
    throw_error(errc::io_error, label + ": cannot stat: " + os_message(errno));
  if (!S_ISREG(st.st_mode)) not_regular(label, st.st_mode);
  int flags = ::fcntl(f.fd.get(), F_GETFL);
  if (flags >= 0) ::fcntl(f.fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  f.size = static_cast<std::uint64_t>(st.st_size);
  return f;
}

std::optional<std::string> read_small_regular_file(const std::filesystem::path& p, std::uint64_t cap,
                                                   const char* what) {
  // Never a blocking open: a FIFO named like a manifest must not hang a scan.
  regular_file f;
  try {
    f = open_regular_file(p, std::string(what) + " '" + p.string() + "'");
  } catch (const error& e) {
    if (e.kind() == errc::not_found) return std::nullopt;
    throw;
  }
  if (f.size > cap)
    throw_error(errc::corrupt_data, std::string(what) + " '" + p.string() + "' is " +
                                        std::to_string(f.size) + " bytes, more than the " +
                                        std::to_string(cap) + " bytes one can be");
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(f.fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      throw_error(errc::io_error, std::string("cannot read ") + what + " '" + p.string() +
                                      "': " + os_message(errno));
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > cap)  // grew while read
      throw_error(errc::corrupt_data, std::string(what) + " '" + p.string() +
                                          "' grew past " + std::to_string(cap) + " bytes");
  }
  return text;
}

}  // namespace shmckpt::detail
