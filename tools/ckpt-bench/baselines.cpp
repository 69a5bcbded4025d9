// baselines.cpp — see baselines.hpp.
#include "baselines.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/util.hpp"  // the library's unique_fd (private header)
#include "stats.hpp"

namespace fs = std::filesystem;

namespace ckpt_bench {

namespace {

// Raw-write chunk: the direct writer's largest batch. On an AMD EPYC guest, 8 MiB O_DIRECT writes
// ran at 0.85-0.9x of 64 MiB ones (each call drains the queue), so the baseline takes the larger.
constexpr std::size_t io_chunk = 64 * MiB;

void check_io(bool ok, const char* what, const fs::path& p) {
  if (!ok)
    throw std::runtime_error(std::string(what) + " '" + p.string() + "': " + std::strerror(errno));
}

shmckpt::unique_fd open_checked(const fs::path& p, int flags) {
  shmckpt::unique_fd fd(::open(p.c_str(), flags | O_CLOEXEC, 0644));
  check_io(static_cast<bool>(fd), "open", p);
  return fd;
}

// Writes all of p[0, n) at `off` in io_chunk pieces, resuming after short writes and EINTR. The
// library's loop (detail::durable_file::pwrite_all) belongs to its temporary-file sequence
// (O_EXCL temp file, lock, fallocate, rename, directory fsync); the baseline is deliberately
// the plain open + write + fsync, so it keeps its own loop.
void pwrite_all(int fd, const std::byte* p, std::size_t n, std::uint64_t off,
                const fs::path& path) {
  while (n > 0) {
    ssize_t r = ::pwrite(fd, p, std::min(n, io_chunk), static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    check_io(r > 0, "write", path);
    p += r;
    n -= static_cast<std::size_t>(r);
    off += static_cast<std::uint64_t>(r);
  }
}

// Reads exactly n bytes (at most 1 GiB a call), resuming after short reads and EINTR.
void read_full(int fd, void* dst, std::size_t n, const fs::path& path) {
  auto* p = static_cast<char*>(dst);
  std::size_t done = 0;
  while (done < n) {
    ssize_t r = ::read(fd, p + done, std::min<std::size_t>(n - done, 1u << 30));
    if (r < 0 && errno == EINTR) continue;
    check_io(r > 0, "read", path);
    done += static_cast<std::size_t>(r);
  }
}

std::size_t file_size(int fd) {
  struct stat st {};
  ::fstat(fd, &st);
  return static_cast<std::size_t>(st.st_size);
}

}  // namespace

std::shared_ptr<std::byte> private_buffer(std::size_t n, std::uint8_t pattern) {
  void* p = nullptr;
  if (::posix_memalign(&p, 4096, std::max<std::size_t>(n, 4096)) != 0) throw std::bad_alloc();
  std::memset(p, pattern, n);
  return {static_cast<std::byte*>(p), [](std::byte* q) { std::free(q); }};
}

double parallel_memcpy(std::byte* dst, const std::byte* src, std::size_t n, std::size_t threads) {
  threads = std::max<std::size_t>(threads, 1);
  std::size_t part = (n / threads + 4095) / 4096 * 4096;
  auto t0 = mono_ns();
  std::vector<std::thread> helpers;
  for (std::size_t i = 1; i < threads; ++i) {
    std::size_t off = std::min(n, i * part), len = std::min(part, n - off);
    helpers.emplace_back([=] { std::memcpy(dst + off, src + off, len); });
  }
  std::memcpy(dst, src, std::min(part, n));
  for (auto& h : helpers) h.join();
  return seconds_since(t0);
}

fresh_shm::fresh_shm(std::size_t bytes) : n_(bytes) {
  fd_ = ::memfd_create("ckpt-bench-fresh", MFD_CLOEXEC);
  if (fd_ < 0 || ::ftruncate(fd_, static_cast<off_t>(n_)) != 0) {
    std::string why = std::strerror(errno);
    if (fd_ >= 0) ::close(fd_);
    throw std::runtime_error("memfd for the fresh-pages baseline: " + why);
  }
  void* a = ::mmap(nullptr, n_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (a == MAP_FAILED) {
    ::close(fd_);
    throw std::runtime_error("mmap for the fresh-pages baseline failed");
  }
  p_ = static_cast<std::byte*>(a);
}

fresh_shm::~fresh_shm() {
  if (p_) ::munmap(p_, n_);
  if (fd_ >= 0) ::close(fd_);
}

std::optional<double> raw_durable_writev(const fs::path& file,
                                         const std::vector<std::span<const std::byte>>& pieces,
                                         raw_io io) {
  if (io == raw_io::direct)
    for (const auto& p : pieces)
      if (reinterpret_cast<std::uintptr_t>(p.data()) % 4096 != 0 || p.size() % 4096 != 0)
        return std::nullopt;
  auto t0 = mono_ns();
  {
    auto fd =
        open_checked(file, O_WRONLY | O_CREAT | O_TRUNC | (io == raw_io::direct ? O_DIRECT : 0));
    std::vector<iovec> iov;
    std::uint64_t off = 0;
    std::size_t batch = 0;
    auto flush = [&] {
      // pwritev of whole pieces; a short write (rare) finishes with pwrite_all, piece by piece.
      ssize_t r = iov.empty() ? 0 : ::pwritev(fd.get(), iov.data(), static_cast<int>(iov.size()),
                                               static_cast<off_t>(off));
      check_io(r >= 0, "write", file);
      std::size_t done = static_cast<std::size_t>(r);
      for (const auto& v : iov) {
        std::size_t skip = std::min(done, v.iov_len);
        done -= skip;
        if (skip < v.iov_len)
          pwrite_all(fd.get(), static_cast<const std::byte*>(v.iov_base) + skip, v.iov_len - skip,
                     off + skip, file);
        off += v.iov_len;
      }
      iov.clear();
      batch = 0;
    };
    for (const auto& p : pieces) {
      if (p.empty()) continue;
      if (batch + p.size() > io_chunk || iov.size() == IOV_MAX) flush();
      iov.push_back({const_cast<std::byte*>(p.data()), p.size()});
      batch += p.size();
    }
    flush();
    check_io(::fsync(fd.get()) == 0, "fsync", file);
  }
  double t = seconds_since(t0);
  fs::remove(file);
  return t;
}

double raw_durable_write(const fs::path& file, const std::byte* src, std::size_t n, raw_io io) {
  auto t = raw_durable_writev(file, {{src, n}}, io);
  if (!t)
    throw std::invalid_argument("raw O_DIRECT write of " + std::to_string(n) +
                                " bytes: needs a page-aligned source and a multiple of 4096 bytes");
  return *t;
}

double raw_read_file(const fs::path& file) {
  auto t0 = mono_ns();
  std::size_t n = 0;
  void* a = MAP_FAILED;
  {
    auto fd = open_checked(file, O_RDONLY);
    n = file_size(fd.get());
    a = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) throw std::bad_alloc();
    try {
      read_full(fd.get(), a, n, file);
    } catch (...) {
      ::munmap(a, n);
      throw;
    }
  }
  double t = seconds_since(t0);
  ::munmap(a, n);
  return t;
}

double raw_read_tensors(const fs::path& file, std::size_t per) {
  auto t0 = mono_ns();
  std::vector<std::unique_ptr<std::byte[]>> tensors;
  {
    auto fd = open_checked(file, O_RDONLY);
    std::uint64_t header = 0;
    read_full(fd.get(), &header, sizeof header, file);
    std::string text(static_cast<std::size_t>(header), '\0');
    read_full(fd.get(), text.data(), text.size(), file);
    std::size_t left = file_size(fd.get()) - 8 - text.size();
    while (left > 0) {
      std::size_t n = std::min(per, left);
      tensors.emplace_back(new std::byte[n]);
      read_full(fd.get(), tensors.back().get(), n, file);
      left -= n;
    }
  }
  return seconds_since(t0);
}

echo_peer::echo_peer() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw std::runtime_error("socketpair failed");
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    ::close(sv[0]);
    char buf[64];
    for (;;) {
      std::size_t got = 0;
      while (got < sizeof buf) {
        ssize_t r = ::read(sv[1], buf + got, sizeof buf - got);
        if (r <= 0) ::_exit(0);
        got += static_cast<std::size_t>(r);
      }
      if (::write(sv[1], buf, sizeof buf) != static_cast<ssize_t>(sizeof buf)) ::_exit(0);
    }
  }
  ::close(sv[1]);
  fd_ = sv[0];
}

echo_peer::~echo_peer() {
  ::close(fd_);
  int st;
  ::waitpid(pid_, &st, 0);
}

double echo_peer::round_trip() {
  char buf[64] = {1};
  auto t0 = mono_ns();
  if (::write(fd_, buf, sizeof buf) != static_cast<ssize_t>(sizeof buf))
    throw std::runtime_error("echo write failed");
  std::size_t got = 0;
  while (got < sizeof buf) {
    ssize_t r = ::read(fd_, buf + got, sizeof buf - got);
    if (r <= 0) throw std::runtime_error("echo read failed");
    got += static_cast<std::size_t>(r);
  }
  return seconds_since(t0);
}

}  // namespace ckpt_bench
