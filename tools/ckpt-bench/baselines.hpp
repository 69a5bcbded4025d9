// baselines — what each shmckpt figure is measured against: plain memcpy, first writes into
// fresh shared memory, raw durable writes, plain read(), and a raw unix-socket round trip.
// Each returns seconds (or bytes per second where the name says so); none uses the library.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace ckpt_bench {

/// Page-aligned private memory (usable as an O_DIRECT source), every page written.
std::shared_ptr<std::byte> private_buffer(std::size_t n, std::uint8_t pattern);

/// memcpy of n bytes split evenly over `threads` threads (the caller is one of them).
double parallel_memcpy(std::byte* dst, const std::byte* src, std::size_t n, std::size_t threads);

/// A memory file of n bytes mapped shared and never touched: the first write into it faults.
class fresh_shm {
 public:
  explicit fresh_shm(std::size_t bytes);
  ~fresh_shm();
  fresh_shm(const fresh_shm&) = delete;
  fresh_shm& operator=(const fresh_shm&) = delete;
  std::byte* data() const noexcept { return p_; }

 private:
  int fd_ = -1;
  std::byte* p_ = nullptr;
  std::size_t n_ = 0;
};

/// How the raw durable write opens its file.
enum class raw_io { buffered, direct };

/// Raw durable write: open, write in 64 MiB chunks, fsync, close (the file is removed after the
/// timing). `direct` needs a page-aligned source and n a multiple of 4096.
double raw_durable_write(const std::filesystem::path& file, const std::byte* src, std::size_t n,
                         raw_io io);

/// The same for `pieces` written back to back (pwritev, up to 64 MiB a call), straight from
/// their memory. Nothing (no time) where `direct` is asked and a piece's address or size is not
/// a multiple of 4096.
std::optional<double> raw_durable_writev(const std::filesystem::path& file,
                                         const std::vector<std::span<const std::byte>>& pieces,
                                         raw_io io);

/// read() of a whole file into fresh anonymous memory.
double raw_read_file(const std::filesystem::path& file);

/// read() of a whole safetensors file the way a plain loader would: the header, then every
/// tensor of `per` bytes into its own `new std::byte[]` (the allocation the library's copying
/// read uses, so both pay the same allocator and first-touch costs).
double raw_read_tensors(const std::filesystem::path& file, std::size_t per);

/// A forked echo process on a socket pair: the raw unix-socket round trip between two
/// processes. Must be made before any thread exists (it forks).
class echo_peer {
 public:
  echo_peer();
  ~echo_peer();
  echo_peer(const echo_peer&) = delete;
  echo_peer& operator=(const echo_peer&) = delete;

  /// One 64-byte round trip, seconds.
  double round_trip();

 private:
  int fd_ = -1;
  pid_t pid_ = -1;
};

}  // namespace ckpt_bench
