// reader.cpp — opening checkpoint files and turning them back into state dicts.
//
// A checkpoint may be gigabytes, so `read` does not read it: it maps the whole file privately
// (MAP_PRIVATE, copy-on-write) and the loaded tensors are views into that mapping. The mapping
// is owned by a `file_mapping` held through a shared_ptr that every view tensor carries as its
// owner, so the map lives exactly as long as the last tensor from it, and closing or even
// deleting the file does not invalidate them (the inode stays alive while mapped). Writes into
// a loaded tensor touch only this process's copy-on-write pages, never the file. MAP_NORESERVE
// keeps a writable private map of a huge file from being refused under strict overcommit.
//
// Trust: the file is untrusted input. Only the first 8 bytes are interpreted before the header
// length is checked against the file size and the cap; the header itself is validated by
// safetensors.cpp before any tensor is built. Tensors whose bytes miss their natural alignment
// in the map (possible in files from other writers; never in ours) are copied, so typed access
// through tensor::data_as is always aligned. What the reader cannot defend against is the file
// shrinking under a live map (another process truncating it): touching a vanished page raises
// SIGBUS, as with any mapped file.
//
// `list_entries` reads only the header, with pread, and maps nothing.
#include "shmckpt/reader.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>

#include "safetensors.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/writer.hpp"
#include "util.hpp"

#ifndef SHMCKPT_VERSION
#define SHMCKPT_VERSION "unknown"
#endif

namespace shmckpt {
namespace {

namespace fs = std::filesystem;

std::string os_message(int err) { return std::system_category().message(err); }

// A whole-file private mapping; unmapped when the last tensor viewing it goes away.
class file_mapping {
 public:
  file_mapping(void* addr, std::size_t size) noexcept : addr_(addr), size_(size) {}
  file_mapping(const file_mapping&) = delete;
  file_mapping& operator=(const file_mapping&) = delete;
  ~file_mapping() { ::munmap(addr_, size_); }

  std::byte* data() const noexcept { return static_cast<std::byte*>(addr_); }
  std::size_t size() const noexcept { return size_; }

 private:
  void* addr_;
  std::size_t size_;
};

// An open checkpoint file and the label every error about it starts with.
struct checkpoint_file {
  fs::path path;
  std::string label;
  unique_fd fd;
  std::uint64_t size = 0;
};

fs::path resolve(const fs::path& file_or_dir, int rank) {
  if (rank < 0)
    throw_error(errc::invalid_argument, "rank must be non-negative, not " + std::to_string(rank));
  std::error_code ec;
  if (fs::is_directory(file_or_dir, ec)) return checkpoint_file_path(file_or_dir, rank);
  return file_or_dir;
}

checkpoint_file open_checkpoint(const fs::path& path) {
  checkpoint_file f;
  f.path = path;
  f.label = "checkpoint '" + path.string() + "'";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) throw_error(errc::not_found, f.label + ": no such file");
    throw_error(errc::io_error, f.label + ": cannot open: " + os_message(err));
  }
  f.fd.reset(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    throw_error(errc::io_error, f.label + ": cannot stat: " + os_message(errno));
  if (!S_ISREG(st.st_mode)) throw_error(errc::io_error, f.label + ": not a regular file");
  f.size = static_cast<std::uint64_t>(st.st_size);
  return f;
}

void pread_all(const checkpoint_file& f, char* p, std::size_t n, std::uint64_t off) {
  while (n > 0) {
    ssize_t r = ::pread(f.fd.get(), p, n, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_error(errc::io_error, f.label + ": read failed: " + os_message(errno));
    }
    if (r == 0)
      throw_error(errc::corrupt_data, f.label + ": file ended early (did it shrink while read?)");
    p += r;
    n -= static_cast<std::size_t>(r);
    off += static_cast<std::uint64_t>(r);
  }
}

// The mapped file with its validated header.
struct mapped_checkpoint {
  std::string label;
  std::shared_ptr<file_mapping> map;
  std::byte* data = nullptr;  // start of the data section
  detail::parsed_header header;
};

mapped_checkpoint map_checkpoint(const fs::path& path) {
  checkpoint_file f = open_checkpoint(path);
  mapped_checkpoint m;
  m.label = f.label;
  unsigned char prefix[8] = {};
  if (f.size < 8) detail::parse_header_length(prefix, f.size, f.label);  // throws
  if (f.size > SIZE_MAX)
    throw_error(errc::io_error, f.label + ": too large to map in this address space");
  void* addr = ::mmap(nullptr, static_cast<std::size_t>(f.size), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_NORESERVE, f.fd.get(), 0);
  if (addr == MAP_FAILED)
    throw_error(errc::io_error, f.label + ": cannot map " + std::to_string(f.size) +
                                    " bytes: " + os_message(errno));
  m.map = std::make_shared<file_mapping>(addr, static_cast<std::size_t>(f.size));
  std::memcpy(prefix, m.map->data(), 8);
  std::uint64_t n = detail::parse_header_length(prefix, f.size, f.label);
  std::string_view text(reinterpret_cast<const char*>(m.map->data()) + 8,
                        static_cast<std::size_t>(n));
  m.data = m.map->data() + 8 + n;
  m.header = detail::parse_header(text, f.size - 8 - n, f.label);
  return m;
}

std::uint64_t hash_of(const mapped_checkpoint& m, const tensor_entry& e) {
  return XXH3_64bits(m.data + e.offset, static_cast<std::size_t>(e.nbytes));
}

value no_tensor(std::size_t) { return none; }

}  // namespace

state_dict read(const fs::path& file_or_dir, const read_options& options, int rank) {
  mapped_checkpoint m = map_checkpoint(resolve(file_or_dir, rank));
  const auto& entries = m.header.entries;
  if (options.verify_checksums && !m.header.checksums.empty()) {
    for (std::size_t i = 0; i < entries.size(); ++i) {
      std::uint64_t actual = hash_of(m, entries[i]);
      if (actual != m.header.checksums[i])
        throw_error(errc::corrupt_data,
                    m.label + ": tensor " + detail::quote_name(entries[i].name) +
                        ": checksum mismatch: the header records " + entries[i].checksum +
                        ", the bytes hash to xxh3:" + detail::hex64(actual));
    }
  }
  auto make_tensor = [&](std::size_t i) -> value {
    const tensor_entry& e = entries[i];
    std::span<std::byte> bytes(m.data + e.offset, static_cast<std::size_t>(e.nbytes));
    bool aligned = reinterpret_cast<std::uintptr_t>(bytes.data()) %
                       detail::element_alignment(e.type) == 0;
    if (options.copy || !aligned) return tensor::copy_of(e.type, e.shape, bytes);
    return tensor(e.type, e.shape, bytes, m.map);
  };
  return detail::build_state_dict(m.header, make_tensor, m.label);
}

std::vector<tensor_entry> list_entries(const fs::path& file) {
  checkpoint_file f = open_checkpoint(resolve(file, 0));
  unsigned char prefix[8] = {};
  if (f.size >= 8) pread_all(f, reinterpret_cast<char*>(prefix), 8, 0);
  std::uint64_t n = detail::parse_header_length(prefix, f.size, f.label);
  std::string text(static_cast<std::size_t>(n), '\0');
  pread_all(f, text.data(), text.size(), 8);
  detail::parsed_header h = detail::parse_header(text, f.size - 8 - n, f.label);
  detail::build_state_dict(h, no_tensor, f.label);  // validates the tree; builds nothing big
  return std::move(h.entries);
}

std::vector<checksum_check> check_checksums(const fs::path& file_or_dir, int rank) {
  mapped_checkpoint m = map_checkpoint(resolve(file_or_dir, rank));
  detail::build_state_dict(m.header, no_tensor, m.label);
  std::vector<checksum_check> out;
  out.reserve(m.header.entries.size());
  for (const auto& e : m.header.entries)
    out.push_back({e.name, e.checksum, "xxh3:" + detail::hex64(hash_of(m, e))});
  return out;
}

std::string_view library_version() noexcept { return SHMCKPT_VERSION; }

}  // namespace shmckpt
