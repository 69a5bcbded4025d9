// lib/ipc/segment.hpp — the shared-memory segment between a trainer and its checkpoint child.
//
// The segment is an anonymous memory file (memfd_create, owner-only by construction) mapped
// MAP_SHARED by both processes. It has no name: nothing appears in /dev/shm, nothing is left
// behind when either process is SIGKILLed (the kernel frees the memory with the last fd and
// mapping), and the 64 MiB /dev/shm limit of containers does not apply. The child receives the
// file descriptor at spawn.
//
// The parent creates the segment and is the only process that allocates or frees in it: a
// Boost.Interprocess `managed_external_buffer` (best-fit allocator, 64-byte-aligned blocks) lives
// at the start of the mapping. The child attaches to the same fd without the allocator and only
// resolves (offset, length) pairs, each checked against the mapping's bounds.
//
// Memory is made real when the segment is created or grows: by default allocated and faulted
// into the parent's page tables for writing (MADV_POPULATE_WRITE, split across the CPUs; where
// the kernel lacks it, fallocate and MAP_POPULATE), otherwise only reserved (fallocate). A
// shortage fails at once with a clear error (never a SIGBUS later), and copies into the segment
// run at memcpy speed. Buffers freed back to
// the allocator keep their pages: later checkpoints reuse them without new faults.
//
// Growth. A segment may grow, up to `segment_options::max_bytes` (0: as far as memory allows):
// when an allocation does not fit, the parent extends the memory file by what is missing and maps
// the new tail right after the old one inside an address range it reserved at creation, so no
// address and no offset ever moves. The child maps the tail the first time it resolves an offset
// in it, after checking the file is that large. Nothing has to be announced over the socket.
//
// Lifetime: a `segment` is a handle to shared state; tensors made by `make_tensor` keep the
// mapping alive, so they stay valid after the segment handle is gone.
//
// Thread safety: allocation and deallocation are internally synchronised; all other members are
// read-only after creation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "shmckpt/state_dict.hpp"

namespace shmckpt {

struct segment_options {
  /// Bytes created (and reserved, and prefaulted) up front.
  std::size_t initial_bytes = std::size_t{64} << 20;
  /// The most the segment may grow to; 0 means no cap but the memory available. Equal to
  /// initial_bytes (or smaller) for a segment of fixed size.
  std::size_t max_bytes = 0;
  /// Fault pages into the parent's page tables when they are added (see above).
  bool prefault = true;
};

class segment {
 public:
  /// Creates an anonymous segment of `bytes` bytes (rounded up to the page size) in the calling
  /// (parent) process. Throws error(no_space) naming the bytes asked and the memory available,
  /// error(unsupported) when memfd_create is missing, error(io_error) for other failures.
  static segment create(std::size_t bytes, bool prefault = true);
  /// A segment that grows on demand (see segment_options); same errors.
  static segment create(const segment_options& options);

  /// Maps an existing segment from an inherited fd (the child). Takes ownership of `fd`. The
  /// result resolves offsets but cannot allocate. Throws error(io_error) when the fd is not a
  /// memory file of at least `bytes` bytes.
  static segment attach(int fd, std::size_t bytes);

  segment(segment&&) noexcept;
  segment& operator=(segment&&) noexcept;
  ~segment();

  std::byte* base() const noexcept;
  /// Bytes mapped now (grows; never shrinks).
  std::size_t size() const noexcept;
  /// The most it may grow to (parent; == size() for a fixed segment).
  std::size_t max_size() const noexcept;
  /// The memory file's descriptor (close-on-exec; the launcher passes it to the child).
  int fd() const noexcept;

  /// Allocates `n` bytes aligned to 64 (to 4096 from 64 KiB up, for the writer's O_DIRECT path;
  /// parent only), growing the segment when they do not fit.
  /// The memory returns to the segment when the last copy of the returned pointer is destroyed;
  /// it keeps the mapping alive. Throws error(no_space) naming `n`, the free bytes and the cap,
  /// or the memory available when growing failed.
  std::shared_ptr<std::byte> allocate(std::size_t n);

  /// A zero-filled tensor in the segment (parent only).
  tensor make_tensor(dtype type, std::vector<std::int64_t> shape);

  /// A tensor in the segment holding a copy of `src` (parent only).
  tensor copy_in(const tensor& src);

  /// Bytes not allocated (parent only; 0 in an attached segment).
  std::size_t free_bytes() const;

  /// Whether [p, p + n) lies inside the mapping.
  bool contains(const void* p, std::size_t n) const noexcept;

  /// Offset of `p` from the base; `p` must satisfy contains(p, 0).
  std::uint64_t offset_of(const void* p) const noexcept;

  /// The bytes at [offset, offset + length), after checking they lie inside the mapping (in an
  /// attached segment, after mapping what the parent has grown). Throws error(protocol_error)
  /// naming the range and the segment size otherwise.
  std::span<std::byte> resolve(std::uint64_t offset, std::uint64_t length) const;

 private:
  bool grow_for(std::size_t n);
  std::size_t map_grown_tail(std::uint64_t offset, std::uint64_t length) const;

  struct impl;
  explicit segment(std::shared_ptr<impl> p) noexcept;
  std::shared_ptr<impl> impl_;
};

/// Memory the system can still give us, in bytes: the smaller of MemAvailable and the room left
/// under this process's cgroup memory limit.
std::uint64_t available_memory_bytes() noexcept;

}  // namespace shmckpt
