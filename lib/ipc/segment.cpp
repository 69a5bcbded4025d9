#include "ipc/segment.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/managed_external_buffer.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>

#include "shmckpt/error.hpp"
#include "core/parallel.hpp"
#include "core/util.hpp"

namespace shmckpt {

namespace bip = boost::interprocess;

// The allocator's metadata lives at the start of the mapping. It uses null_mutex_family (no
// process-shared mutex that a dying process could leave locked); `lock` serialises the parent's
// threads, and the child never touches the metadata.
//
// Growth. Each process reserves an address range of `reserved` bytes (PROT_NONE, no memory
// behind it) and maps the memory file at its start; growing the file and mapping the new tail
// MAP_FIXED right after the old one keeps every address and every offset valid, so tensors
// already handed out, the allocator's metadata and the offsets in descriptors never move. The
// parent grows the file and makes the new pages real memory (add_memory: populated on several
// threads, or fallocate'd, so a shortage fails at once as no_space) and then the allocator;
// the child maps the tail when it first resolves an offset beyond what it has mapped, after
// checking the file really is that large.
struct segment::impl {
  unique_fd fd;
  std::byte* base = nullptr;
  std::atomic<std::size_t> size{0};  // bytes mapped (and in the file) so far
  std::size_t reserved = 0;          // the address range held for growth
  std::size_t max_size = 0;          // growth stops here (== size for a fixed segment)
  bool prefault = true;
  std::optional<bip::managed_external_buffer> allocator;  // parent only
  mutable std::mutex lock;       // allocator and growth (parent), tail mapping (child)

  ~impl() {
    allocator.reset();
    if (base) ::munmap(base, reserved);
  }
};

namespace {

// Allocations at least this large are page aligned (see segment::allocate).
constexpr std::size_t page_aligned_from = std::size_t{64} << 10;

std::size_t page_size() {
  static const std::size_t p = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return p;
}

std::optional<std::uint64_t> read_number(const char* path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return std::nullopt;
  try {
    return std::stoull(s);
  } catch (...) {
    return std::nullopt;
  }
}

}  // namespace

std::uint64_t available_memory_bytes() noexcept {
  std::uint64_t avail = UINT64_MAX;
  {
    std::ifstream in("/proc/meminfo");
    std::string key;
    std::uint64_t kb = 0;
    std::string unit;
    while (in >> key >> kb) {
      std::getline(in, unit);
      if (key == "MemAvailable:") {
        avail = kb * 1024;
        break;
      }
    }
  }
  // cgroup v2: room left under this process's memory limit.
  std::ifstream cg("/proc/self/cgroup");
  std::string line;
  while (std::getline(cg, line)) {
    if (line.rfind("0::", 0) != 0) continue;
    std::string dir = "/sys/fs/cgroup" + line.substr(3);
    auto max = read_number((dir + "/memory.max").c_str());
    auto cur = read_number((dir + "/memory.current").c_str());
    if (max && cur) avail = std::min(avail, *max > *cur ? *max - *cur : 0);
  }
  return avail;
}

segment::segment(std::shared_ptr<impl> p) noexcept : impl_(std::move(p)) {}
segment::segment(segment&&) noexcept = default;
segment& segment::operator=(segment&&) noexcept = default;
segment::~segment() = default;

namespace {

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

// The address range a process holds for a segment that may grow to `max_size`: the whole of
// physical memory when unbounded (the memory itself can never exceed it). Costs no memory.
std::size_t reservation_for(std::size_t max_size, std::size_t at_least) {
  std::size_t phys = static_cast<std::size_t>(::sysconf(_SC_PHYS_PAGES)) * page_size();
  std::size_t r = std::max(at_least, std::min(max_size, std::max(phys, at_least)));
  return round_up(r, page_size());
}

// The range starts at a huge-page boundary (detail::huge_page_bytes), so that file offset
// k * 2 MiB lies at a 2 MiB-aligned address in every process that maps the segment: where the
// system gives shmem huge pages, each can then be mapped whole (one page-table entry for
// 2 MiB). The slack is unmapped again.
std::byte* reserve_range(std::size_t n) {
  const std::size_t slack = detail::huge_page_bytes;
  void* p =
      ::mmap(nullptr, n + slack, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    throw_error(errc::no_space, "cannot reserve " + format_bytes(n) +
                                    " of address space for the shared segment: " +
                                    std::strerror(errno));
  auto* raw = static_cast<std::byte*>(p);
  std::byte* base = raw + (slack - reinterpret_cast<std::uintptr_t>(raw) % slack) % slack;
  if (base > raw) ::munmap(raw, static_cast<std::size_t>(base - raw));
  std::byte* end = raw + n + slack;
  if (end > base + n) ::munmap(base + n, static_cast<std::size_t>(end - (base + n)));
  return base;
}

// Why `bytes` more could not be made memory of the segment (`err`: the errno), and what to do.
std::string no_memory_message(std::size_t bytes, int err) {
  return "cannot reserve " + format_bytes(bytes) + " more for the shared segment (" +
         std::strerror(err) + "); " + format_bytes(available_memory_bytes()) +
         " of memory is available; free memory or save a smaller state dict";
}

// Makes the file [old, new) real memory: a shortage fails here, not as SIGBUS on first touch.
void extend_file(int fd, std::size_t old_size, std::size_t new_size) {
  if (::ftruncate(fd, static_cast<off_t>(new_size)) != 0)
    throw_error(errc::io_error, "cannot size the shared segment to " + format_bytes(new_size) +
                                    ": " + std::strerror(errno));
  if (::fallocate(fd, 0, static_cast<off_t>(old_size),
                  static_cast<off_t>(new_size - old_size)) != 0) {
    int e = errno;
    if (::ftruncate(fd, static_cast<off_t>(old_size)) != 0) {
      // The file keeps its larger size; nothing maps the tail, so nothing can touch it.
    }
    throw_error(e == ENOSPC || e == ENOMEM ? errc::no_space : errc::io_error,
                no_memory_message(new_size - old_size, e));
  }
}

// Maps the file's [from, to) at base + from, advised for transparent huge pages before any page
// is touched (populate_write faults them in afterwards). Where the system's shmem setting is
// `advise` (/sys/kernel/mm/transparent_hugepage/shmem_enabled), that advice is what gives the
// segment 2 MiB pages; under `always` and `within_size` it gets them anyway, under `never` the
// advice changes nothing. A kernel without transparent huge pages refuses the advice; that is
// not an error. What huge pages save is measured in docs/benchmarks.md ("Huge pages for the
// segment").
void map_tail(std::byte* base, int fd, std::size_t from, std::size_t to, bool populate) {
  int flags = MAP_SHARED | MAP_FIXED | (populate ? MAP_POPULATE : 0);
  void* p = ::mmap(base + from, to - from, PROT_READ | PROT_WRITE, flags, fd,
                   static_cast<off_t>(from));
  if (p == MAP_FAILED)
    throw_error(errc::no_space, "cannot map " + format_bytes(to - from) +
                                    " of the shared segment: " + std::strerror(errno));
  ::madvise(p, to - from, MADV_HUGEPAGE);
}

// Gives [from, to) back to the reservation (PROT_NONE, no memory behind it).
void unmap_tail(std::byte* base, std::size_t from, std::size_t to) noexcept {
  ::mmap(base + from, to - from, PROT_NONE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

// Below this, one thread populates: starting others costs more than they save.
constexpr std::size_t parallel_populate_from = std::size_t{32} << 20;

// Allocates and write-faults every page of the mapped range [p, p + n) with MADV_POPULATE_WRITE,
// split across up to one thread per CPU (detail::run_in_shares). Returns 0, or the first errno:
// EINVAL where the kernel lacks MADV_POPULATE_WRITE, ENOMEM or EFAULT where memory ran out
// (reported here instead of as SIGBUS on first touch).
//
// Why not fallocate and MAP_POPULATE: fallocate allocates and zeroes every page on one thread
// (under the memory file's inode lock), and on virtual machines whose memory the host backs
// lazily the first touch of each page is the expensive part. Measured on a 2-vCPU AMD EPYC
// guest, 1 GiB of fresh memory then copied into by two threads: 1.35-1.39 GB/s through
// fallocate + MAP_POPULATE, 2.17-2.28 GB/s populated by two threads (docs/benchmarks.md).
int populate_write(std::byte* p, std::size_t n) noexcept {
  return detail::run_in_shares(n, parallel_populate_from, [p](std::size_t from, std::size_t to) {
    return ::madvise(p + from, to - from, MADV_POPULATE_WRITE) == 0 ? 0 : errno;
  });
}

// Adds the file's [from, to) as memory behind the mapping. With `prefault`, every page is
// allocated and faulted in for writing now (populate_write); without, it is only reserved
// (fallocate). Either way a shortage fails here as error(no_space), not as SIGBUS later. On
// failure the file and the mapping are as before.
void add_memory(std::byte* base, int fd, std::size_t from, std::size_t to, bool prefault) {
  if (prefault) {
    if (::ftruncate(fd, static_cast<off_t>(to)) != 0)
      throw_error(errc::io_error, "cannot size the shared segment to " + format_bytes(to) + ": " +
                                      std::strerror(errno));
    map_tail(base, fd, from, to, false);
    int e = populate_write(base + from, to - from);
    if (e == 0) return;
    unmap_tail(base, from, to);
    if (::ftruncate(fd, static_cast<off_t>(from)) != 0) {
      // The file keeps its larger size; nothing maps the tail, so nothing can touch it.
    }
    if (e != EINVAL)
      throw_error(errc::no_space, no_memory_message(to - from, e));
    // No MADV_POPULATE_WRITE (Linux < 5.14): fallocate, then MAP_POPULATE on one thread.
  }
  extend_file(fd, from, to);
  map_tail(base, fd, from, to, prefault);
}

}  // namespace

segment segment::create(std::size_t bytes, bool prefault) {
  segment_options o;
  o.initial_bytes = bytes;
  o.max_bytes = bytes;
  o.prefault = prefault;
  return create(o);
}

segment segment::create(const segment_options& o) {
  std::size_t bytes = o.initial_bytes;
  if (bytes == 0) throw_error(errc::invalid_argument, "shared segment size must be positive");
  const std::size_t p = page_size();
  if (bytes > SIZE_MAX / 2 || o.max_bytes > SIZE_MAX / 2)
    throw_error(errc::invalid_argument, "shared segment size overflows");
  bytes = round_up(bytes, p);
  std::size_t max_size = o.max_bytes == 0 ? SIZE_MAX / 4 : std::max(round_up(o.max_bytes, p), bytes);

  auto avail = available_memory_bytes();
  if (bytes > avail)
    throw_error(errc::no_space,
                "cannot create a shared segment of " + format_bytes(bytes) + ": only " +
                    format_bytes(avail) +
                    " of memory is available; lower segment_bytes or free memory");

  int raw = ::memfd_create("shmckpt-segment", MFD_CLOEXEC);
  if (raw < 0) {
    int e = errno;
    throw_error(e == ENOSYS ? errc::unsupported : errc::io_error,
                "memfd_create failed: " + std::string(std::strerror(e)) +
                    " (shmckpt needs Linux 3.17 or newer)");
  }
  auto s = std::make_shared<impl>();
  s->fd.reset(raw);
  s->prefault = o.prefault;
  s->max_size = max_size;
  s->reserved = max_size == bytes ? bytes : reservation_for(max_size, bytes);
  s->base = reserve_range(s->reserved);
  try {
    add_memory(s->base, raw, 0, bytes, o.prefault);
  } catch (const error& e) {
    if (e.kind() != errc::no_space) throw;
    throw_error(errc::no_space, "cannot reserve " + format_bytes(bytes) +
                                    " for the shared segment; " +
                                    format_bytes(available_memory_bytes()) +
                                    " of memory is available; lower segment_bytes or free memory");
  }
  s->size.store(bytes);
  try {
    s->allocator.emplace(bip::create_only, s->base, bytes);
  } catch (const std::exception& e) {
    throw_error(errc::io_error,
                std::string("cannot set up the allocator in the shared segment: ") + e.what());
  }
  return segment(std::move(s));
}

segment segment::attach(int fd, std::size_t bytes) {
  auto s = std::make_shared<impl>();
  s->fd.reset(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    throw_error(errc::io_error, "inherited segment fd " + std::to_string(fd) +
                                    " is not open: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_size) < bytes || bytes == 0)
    throw_error(errc::io_error, "inherited segment fd " + std::to_string(fd) + " holds " +
                                    std::to_string(st.st_size) + " bytes, expected " +
                                    std::to_string(bytes));
  s->max_size = SIZE_MAX / 4;  // the parent decides how far it grows; resolve() checks the file
  s->reserved = reservation_for(s->max_size, round_up(bytes, page_size()));
  s->base = reserve_range(s->reserved);
  s->prefault = false;
  try {
    map_tail(s->base, fd, 0, bytes, false);
  } catch (const error& e) {
    throw_error(errc::io_error, std::string("cannot map the inherited segment: ") + e.what());
  }
  s->size.store(bytes);
  return segment(std::move(s));
}

std::byte* segment::base() const noexcept { return impl_->base; }
std::size_t segment::size() const noexcept { return impl_->size.load(std::memory_order_acquire); }
std::size_t segment::max_size() const noexcept { return impl_->max_size; }
int segment::fd() const noexcept { return impl_->fd.get(); }

// Called with impl_->lock held.
bool segment::grow_for(std::size_t n) {
  impl& s = *impl_;
  std::size_t old_size = s.size.load(std::memory_order_relaxed);
  if (old_size >= s.max_size) return false;
  // Exactly what is asked (plus the allocator's bookkeeping), in 2 MiB steps: growing costs
  // only the new bytes, so there is nothing to gain from doubling, and memory is the trainer's.
  constexpr std::size_t step = std::size_t{2} << 20;
  std::size_t want = round_up(n + 64 * 1024, step);
  std::size_t new_size = old_size > s.max_size - want ? s.max_size : old_size + want;
  new_size = std::min(new_size, s.reserved);
  if (new_size <= old_size) return false;
  if (new_size - old_size > available_memory_bytes())
    throw_error(errc::no_space,
                "shared segment cannot grow by " + format_bytes(new_size - old_size) + " to hold " +
                    format_bytes(n) + ": only " + format_bytes(available_memory_bytes()) +
                    " of memory is available (the segment holds " + format_bytes(old_size) +
                    "); free memory, save a smaller state dict, or use fewer staging generations");
  add_memory(s.base, s.fd.get(), old_size, new_size, s.prefault);
  s.allocator->grow(new_size - old_size);
  s.size.store(new_size, std::memory_order_release);
  return true;
}

std::shared_ptr<std::byte> segment::allocate(std::size_t n) {
  if (!impl_->allocator)
    throw_error(errc::invalid_argument, "only the process that created a segment may allocate");
  void* p = nullptr;
  std::size_t free_now = 0;
  // Large blocks (staging arenas, big tensors) start on a page: the writer's O_DIRECT path sends
  // bytes to the disk straight from memory only where their address is aligned like their file
  // offset (the data section starts on a page). The cost is under a page per large block.
  const std::size_t align = n >= page_aligned_from ? 4096 : 64;
  {
    std::lock_guard g(impl_->lock);
    p = impl_->allocator->allocate_aligned(n == 0 ? 1 : n, align, std::nothrow);
    // A free block at the end merges with the new tail, so one growth is normally enough; a
    // fragmented segment may need a second (then the request fits in the new tail alone).
    for (int i = 0; !p && i < 2 && grow_for(n + align); ++i)
      p = impl_->allocator->allocate_aligned(n == 0 ? 1 : n, align, std::nothrow);
    free_now = impl_->allocator->get_free_memory();
  }
  if (!p)
    throw_error(errc::no_space,
                "shared segment has no room for " + format_bytes(n) + ": " +
                    format_bytes(free_now) + " free of " + format_bytes(size()) +
                    " (possibly fragmented), and it may not grow beyond its cap of " +
                    format_bytes(impl_->max_size) +
                    "; raise segment_bytes (0: no cap) or wait for pending writes");
  auto keep = impl_;
  return std::shared_ptr<std::byte>(static_cast<std::byte*>(p), [keep](std::byte* q) {
    std::lock_guard g(keep->lock);
    keep->allocator->deallocate(q);
  });
}

tensor segment::make_tensor(dtype type, std::vector<std::int64_t> shape) {
  auto n = tensor_nbytes(type, shape);
  if (!n)
    throw_error(errc::invalid_argument, "make_tensor: dtype " + std::string(dtype_name(type)) +
                                            " and the given shape have no valid byte size");
  auto mem = allocate(static_cast<std::size_t>(*n));
  std::memset(mem.get(), 0, static_cast<std::size_t>(*n));
  std::span<std::byte> bytes{mem.get(), static_cast<std::size_t>(*n)};
  return tensor(type, std::move(shape), bytes, std::move(mem));
}

tensor segment::copy_in(const tensor& src) {
  auto mem = allocate(src.nbytes());
  if (src.nbytes()) std::memcpy(mem.get(), src.data(), src.nbytes());
  std::span<std::byte> bytes{mem.get(), src.nbytes()};
  return tensor(src.type(), src.shape(), bytes, std::move(mem));
}

std::size_t segment::free_bytes() const {
  if (!impl_->allocator) return 0;
  std::lock_guard g(impl_->lock);
  return impl_->allocator->get_free_memory();
}

bool segment::contains(const void* p, std::size_t n) const noexcept {
  auto a = reinterpret_cast<std::uintptr_t>(p);
  auto b = reinterpret_cast<std::uintptr_t>(impl_->base);
  std::size_t size = this->size();
  return a >= b && a - b <= size && n <= size - (a - b);
}

std::uint64_t segment::offset_of(const void* p) const noexcept {
  return reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(impl_->base);
}

std::span<std::byte> segment::resolve(std::uint64_t offset, std::uint64_t length) const {
  std::size_t size = this->size();
  if (offset > size || length > size - offset) {
    if (!impl_->allocator) size = map_grown_tail(offset, length);  // the child: maybe it grew
    if (offset > size || length > size - offset)
      throw_error(errc::protocol_error, "tensor range [" + std::to_string(offset) + ", +" +
                                            std::to_string(length) +
                                            ") lies outside the shared segment of " +
                                            std::to_string(size) + " bytes");
  }
  return {impl_->base + offset, static_cast<std::size_t>(length)};
}

// The child's side of growth: the parent grew the file; map what it added. Returns the size
// mapped afterwards. Nothing is mapped beyond the file's real size or the reservation.
std::size_t segment::map_grown_tail(std::uint64_t offset, std::uint64_t length) const {
  impl& s = *impl_;
  std::lock_guard g(s.lock);
  std::size_t size = s.size.load(std::memory_order_relaxed);
  if (offset <= size && length <= size - offset) return size;  // another thread mapped it
  struct stat st {};
  if (::fstat(s.fd.get(), &st) != 0) return size;
  std::size_t file = static_cast<std::size_t>(st.st_size) / page_size() * page_size();
  file = std::min(file, s.reserved);
  if (file <= size) return size;
  map_tail(s.base, s.fd.get(), size, file, false);
  s.size.store(file, std::memory_order_release);
  return file;
}

}  // namespace shmckpt
