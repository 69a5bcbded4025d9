#include "shmckpt/segment.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/managed_external_buffer.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>

#include "shmckpt/error.hpp"
#include "util.hpp"

namespace shmckpt {

namespace bip = boost::interprocess;

// The allocator's metadata lives at the start of the mapping. It uses null_mutex_family (no
// process-shared mutex that a dying process could leave locked); `lock` serialises the parent's
// threads, and the child never touches the metadata.
struct segment::impl {
  unique_fd fd;
  std::byte* base = nullptr;
  std::size_t size = 0;
  std::optional<bip::managed_external_buffer> allocator;  // parent only
  mutable std::mutex lock;

  ~impl() {
    allocator.reset();
    if (base) ::munmap(base, size);
  }
};

namespace {

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

segment segment::create(std::size_t bytes, bool prefault) {
  if (bytes == 0) throw_error(errc::invalid_argument, "shared segment size must be positive");
  const std::size_t p = page_size();
  if (bytes > SIZE_MAX - p) throw_error(errc::invalid_argument, "shared segment size overflows");
  bytes = (bytes + p - 1) / p * p;

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
  s->size = bytes;
  if (::ftruncate(raw, static_cast<off_t>(bytes)) != 0)
    throw_error(errc::io_error, "cannot size the shared segment to " + format_bytes(bytes) +
                                    ": " + std::strerror(errno));
  // Reserve every page now so a shortage fails here, not as SIGBUS on first touch later.
  if (::fallocate(raw, 0, 0, static_cast<off_t>(bytes)) != 0) {
    int e = errno;
    throw_error(e == ENOSPC || e == ENOMEM ? errc::no_space : errc::io_error,
                "cannot reserve " + format_bytes(bytes) + " for the shared segment (" +
                    std::strerror(e) + "); " + format_bytes(available_memory_bytes()) +
                    " of memory is available; lower segment_bytes or free memory");
  }
  int flags = MAP_SHARED | (prefault ? MAP_POPULATE : 0);
  void* addr = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, flags, raw, 0);
  if (addr == MAP_FAILED)
    throw_error(errc::no_space, "cannot map the shared segment of " + format_bytes(bytes) + ": " +
                                    std::strerror(errno));
  s->base = static_cast<std::byte*>(addr);
  try {
    s->allocator.emplace(bip::create_only, addr, bytes);
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
  void* addr = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED)
    throw_error(errc::io_error, "cannot map the inherited segment of " + format_bytes(bytes) +
                                    ": " + std::strerror(errno));
  s->base = static_cast<std::byte*>(addr);
  s->size = bytes;
  return segment(std::move(s));
}

std::byte* segment::base() const noexcept { return impl_->base; }
std::size_t segment::size() const noexcept { return impl_->size; }
int segment::fd() const noexcept { return impl_->fd.get(); }

std::shared_ptr<std::byte> segment::allocate(std::size_t n) {
  if (!impl_->allocator)
    throw_error(errc::invalid_argument, "only the process that created a segment may allocate");
  void* p = nullptr;
  std::size_t free_now = 0;
  {
    std::lock_guard g(impl_->lock);
    p = impl_->allocator->allocate_aligned(n == 0 ? 1 : n, 64, std::nothrow);
    free_now = impl_->allocator->get_free_memory();
  }
  if (!p)
    throw_error(errc::no_space,
                "shared segment has no room for " + format_bytes(n) + ": " +
                    format_bytes(free_now) + " free of " + format_bytes(impl_->size) +
                    " (possibly fragmented); raise segment_bytes or wait for pending writes");
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
  return a >= b && a - b <= impl_->size && n <= impl_->size - (a - b);
}

std::uint64_t segment::offset_of(const void* p) const noexcept {
  return reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(impl_->base);
}

std::span<std::byte> segment::resolve(std::uint64_t offset, std::uint64_t length) const {
  if (offset > impl_->size || length > impl_->size - offset)
    throw_error(errc::protocol_error, "tensor range [" + std::to_string(offset) + ", +" +
                                          std::to_string(length) +
                                          ") lies outside the shared segment of " +
                                          std::to_string(impl_->size) + " bytes");
  return {impl_->base + offset, static_cast<std::size_t>(length)};
}

}  // namespace shmckpt
