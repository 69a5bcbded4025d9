// Private helpers shared by the library's sources: an owning file descriptor and byte formatting.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>

#include "shmckpt/error.hpp"

namespace shmckpt {

/// A move-only owning file descriptor; closes on destruction.
class unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~unique_fd() { reset(); }
  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

/// `n` in the largest binary unit it reaches: (value, "KiB" ... "TiB"), or (n, nullptr) below
/// 1 KiB.
inline std::pair<double, const char*> scaled_bytes(std::uint64_t n) {
  const char* units[] = {nullptr, "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return {v, units[u]};
}

/// "256 MiB (268435456 bytes)": readable and exact.
inline std::string format_bytes(std::uint64_t n) {
  auto [v, unit] = scaled_bytes(n);
  if (!unit) return std::to_string(n) + " bytes";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f %s (%llu bytes)", v, unit,
                static_cast<unsigned long long>(n));
  return buf;
}

/// A path for an error message: control bytes (NUL among them, which would end what()) appear
/// as \xNN, so the message shows the whole path.
inline std::string printable_path(const std::filesystem::path& p) {
  std::string out;
  for (char c : p.native()) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

/// Throws error(invalid_argument) for a path holding a NUL byte: the OS would see only the part
/// before it, a different path.
inline void reject_nul(const std::filesystem::path& p, const char* what) {
  if (p.native().find('\0') != std::string::npos)
    throw_error(errc::invalid_argument, std::string(what) + " '" + printable_path(p) +
                                            "' holds a NUL byte, which no file name can hold");
}

}  // namespace shmckpt
