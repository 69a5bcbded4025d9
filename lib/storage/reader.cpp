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
// With read_options::copy, `read` maps only to parse the header: the data section is read with
// pread into one private allocation that every tensor shares (see private_copy).
//
// `list_entries` reads only the header, with pread, and maps nothing.
//
// `read_into` maps the file like `read`, builds the whole tree as views (which validates it
// exactly as `read` does), matches the template against it by flattened key path, and only
// when every requested key has been checked (kinds, dtypes, shapes, optionally checksums)
// copies bytes into the template's tensors and replaces its other leaves: an error leaves the
// template untouched.
#include "shmckpt/reader.hpp"

#include "shmckpt/checkpoint_dir.hpp"
#include "shmckpt/layout.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <unordered_map>
#include <unordered_set>

#include "io/regular_file.hpp"
#include "format/safetensors.hpp"
#include "shmckpt/error.hpp"
#include "core/parallel.hpp"
#include "core/util.hpp"
#include "core/xxh3.hpp"
#include "storage/huge_page_watch.hpp"

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
  reject_nul(file_or_dir, "checkpoint path");
  if (rank < 0)
    throw_error(errc::invalid_argument, "rank must be non-negative, not " + std::to_string(rank));
  std::error_code ec;
  if (fs::is_directory(file_or_dir, ec)) return checkpoint_file_path(file_or_dir, rank);
  return file_or_dir;
}

// A directory is a checkpoint only once its manifest is published and its rank files are the
// ones the manifest lists (checkpoint_dir.hpp, verify_checkpoint: names, sizes, header checksums).
fs::path resolve_complete(const fs::path& file_or_dir, int rank, bool allow_incomplete) {
  fs::path file = resolve(file_or_dir, rank);  // validates the rank first
  std::error_code ec;
  if (allow_incomplete || !fs::is_directory(file_or_dir, ec)) return file;
  try {
    verify_checkpoint(file_or_dir);
  } catch (const error& e) {
    if (e.kind() == errc::not_found)
      throw_error(errc::not_found,
                  "checkpoint '" + file_or_dir.string() + "' is incomplete: it has no valid " +
                      manifest_name +
                      " (a save failed or is still in progress); load another checkpoint (see "
                      "latest_checkpoint) or set allow_incomplete");
    if (e.kind() == errc::corrupt_data)
      throw_error(errc::corrupt_data,
                  std::string(e.what()) +
                      "; the checkpoint is torn or damaged: load another checkpoint (see "
                      "latest_checkpoint), or set allow_incomplete to read the files as they are");
    throw;
  }
  return file;
}

checkpoint_file open_checkpoint(const fs::path& path) {
  checkpoint_file f;
  f.path = path;
  f.label = "checkpoint '" + path.string() + "'";
  // Never a blocking open: a FIFO named like a checkpoint must not hang the reader.
  detail::regular_file r = detail::open_regular_file(path, f.label);
  f.fd = std::move(r.fd);
  f.size = r.size;
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
  unique_fd fd;  // the file, which copying reads read with pread
  std::shared_ptr<file_mapping> map;
  std::byte* data = nullptr;      // start of the data section in the mapping
  std::uint64_t data_offset = 0;  // and in the file
  std::uint64_t data_bytes = 0;   // its length
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
  m.data_offset = 8 + n;
  m.data_bytes = f.size - 8 - n;
  m.header = detail::parse_header(text, f.size - 8 - n, f.label);
  m.fd = std::move(f.fd);
  return m;
}

std::uint64_t hash_of(const std::byte* data, const tensor_entry& e) {
  return XXH3_64bits(data + e.offset, static_cast<std::size_t>(e.nbytes));
}

value no_tensor(std::size_t) { return none; }

// Checks entry `i` of the data section at `data`: the file's mapping, or a private copy of it.
void verify_entry(const mapped_checkpoint& m, const std::byte* data, std::size_t i) {
  if (m.header.checksums.empty()) return;  // written without checksums: nothing to compare
  const tensor_entry& e = m.header.entries[i];
  std::uint64_t actual = hash_of(data, e);
  if (actual != m.header.checksums[i])
    throw_error(errc::corrupt_data, m.label + ": tensor " + detail::quote_name(e.name) +
                                        ": checksum mismatch: the header records " +
                                        detail::checksum_text(m.header.checksums[i]) +
                                        ", the bytes hash to xxh3:" + detail::hex64(actual));
}

// Private anonymous memory holding a copy of a file's whole data section, which the tensors of
// a copying read view. One allocation instead of one per tensor, 2 MiB-aligned and advised for
// transparent huge pages: first touch then faults once per 2 MiB instead of once per 4 KiB, and
// on virtual machines that is most of what a copying load costs (docs/benchmarks.md).
class private_copy {
 public:
  static constexpr std::size_t huge_page = detail::huge_page_bytes;

  private_copy(std::size_t n, const std::string& label) {
    len_ = n >= huge_page ? n + huge_page : std::max<std::size_t>(n, 1);
    void* p = ::mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      throw_error(errc::no_space, label + ": cannot allocate " + format_bytes(n) +
                                      " for a private copy of its tensors (" + os_message(errno) +
                                      "); free memory, or read without copy (the tensors then "
                                      "view the file's mapping)");
    base_ = static_cast<std::byte*>(p);
    data_ = base_;
    if (n >= huge_page) {
      auto at = (reinterpret_cast<std::uintptr_t>(p) + huge_page - 1) & ~(huge_page - 1);
      data_ = reinterpret_cast<std::byte*>(at);
      // Best effort: transparent huge pages may be off.
      huge_ = ::madvise(data_, n, MADV_HUGEPAGE) == 0;
    }
  }
  private_copy(const private_copy&) = delete;
  private_copy& operator=(const private_copy&) = delete;
  ~private_copy() { ::munmap(base_, len_); }

  std::byte* data() const noexcept { return data_; }
  /// Whether the memory was advised for huge pages.
  bool huge() const noexcept { return huge_; }

 private:
  std::byte* base_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t len_ = 0;
  bool huge_ = false;
};

// From this size the data section is read on one thread per CPU: both the page-cache copy and
// the first touch of the new memory scale with threads, and a cold read keeps more I/O in flight.
constexpr std::size_t parallel_read_from = std::size_t{32} << 20;

// Reads the data section of `m` into new private memory with pread: the file's mapping is never
// faulted in for the bytes.
std::shared_ptr<private_copy> read_data_section(const mapped_checkpoint& m) {
  const auto n = static_cast<std::size_t>(m.data_bytes);
  auto copy = std::make_shared<private_copy>(n, m.label);
  detail::huge_page_watch watch(copy->huge());
  constexpr int ended_early = -1;
  auto read_range = [&](std::size_t from, std::size_t to) {
    std::byte* p = copy->data() + from;
    std::uint64_t off = m.data_offset + from;
    for (std::size_t left = to - from; left > 0;) {
      ssize_t r = ::pread(m.fd.get(), p, std::min(left, std::size_t{1} << 30),
                          static_cast<off_t>(off));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return errno;
      if (r == 0) return ended_early;
      p += r;
      off += static_cast<std::uint64_t>(r);
      left -= static_cast<std::size_t>(r);
    }
    return 0;
  };
  int e = detail::run_in_shares(n, parallel_read_from, [&](std::size_t from, std::size_t to) {
    bool switched = false;
    for (std::size_t at = from; at < to;) {
      if (watch.settled()) {
        if (!switched) (void)watch.fault_in(nullptr, 0, {copy->data() + at, to - at}, switched);
        return read_range(at, to);
      }
      const std::size_t end = std::min(to, at + detail::huge_page_watch::chunk);
      if (int r = watch.fault_in(copy->data() + at, end - at, {copy->data() + end, to - end},
                                 switched))
        return r;
      if (int r = read_range(at, end)) return r;
      at = end;
    }
    return 0;
  });
  if (e == ended_early)
    throw_error(errc::corrupt_data, m.label + ": file ended early (did it shrink while read?)");
  if (e == ENOMEM)
    throw_error(errc::no_space, m.label + ": cannot allocate " + format_bytes(n) +
                                    " for a private copy of its tensors (out of memory); free "
                                    "memory, or read without copy (the tensors then view the "
                                    "file's mapping)");
  if (e != 0) throw_error(errc::io_error, m.label + ": read failed: " + os_message(e));
  return copy;
}

// Entry `e` as a tensor viewing its bytes in the data section at `data` (the file's mapping, or
// a private copy of the section), kept alive by `owner`; copied on its own only when the bytes
// miss their natural alignment (only in files from other writers). `shape` is the entry's shape,
// or the entry's shape moved out when the caller needs the entries no more.
tensor entry_tensor(const tensor_entry& e, std::byte* data, std::shared_ptr<const void> owner,
                    std::vector<std::int64_t> shape) {
  std::span<std::byte> bytes(data + e.offset, static_cast<std::size_t>(e.nbytes));
  bool aligned =
      reinterpret_cast<std::uintptr_t>(bytes.data()) % detail::element_alignment(e.type) == 0;
  if (!aligned) return tensor::copy_of(e.type, std::move(shape), bytes);
  return tensor(e.type, std::move(shape), bytes, std::move(owner));
}

// ---- read_into -------------------------------------------------------------------------------

std::string join_path(const std::string& path, std::string_view part) {
  return path.empty() ? std::string(part) : path + "." + std::string(part);
}

bool is_container(const value& v) noexcept {
  return v.type() == kind::dict || v.is_sequence();
}

// "F32 [4, 4]" for tensors, "tensor F32 [4, 4]" / "int" / "dict" when the kinds differ.
std::string describe(const value& v) {
  if (v.type() != kind::tensor) return std::string(kind_name(v.type()));
  const tensor& t = v.as_tensor();
  return "tensor " + std::string(dtype_name(t.type())) + " " + format_shape(t.shape());
}

// Every node of the file's tree (containers too, not the root) by flattened path, plus its
// leaves in tree order. A path reachable twice ({"a.b": 1, "a": {"b": 2}}) keeps the first.
struct flat_tree {
  std::unordered_map<std::string, const value*> nodes;
  std::vector<std::string> leaves;

  explicit flat_tree(const dict& root) {
    for_each_node(root, [&](const std::string& path, const value& v) {
      bool first = nodes.emplace(path, &v).second;
      if (first && !is_container(v)) leaves.push_back(path);
      return true;
    });
  }
};

// What read_into will do, decided before any byte of the template is touched.
class read_into_plan {
 public:
  // `copy`: placeholders get private copies of the file's tensors instead of views.
  read_into_plan(const mapped_checkpoint& m, const flat_tree& file, bool copy)
      : m_(m), file_(file), copy_(copy) {
    for (std::size_t i = 0; i < m.header.entries.size(); ++i)
      entry_index_.emplace(m.header.entries[i].name, i);
  }

  void visit_dict(dict& d, const std::string& path) {
    for (auto& [k, v] : d) visit(v, join_path(path, k));
  }

  // Throws for the first mismatch found, mentioning how many more there are.
  void check() const {
    if (mismatches_.empty()) return;
    std::string what = m_.label + ": " + mismatches_.front();
    if (mismatches_.size() > 1)
      what += " (and " + std::to_string(mismatches_.size() - 1) + " more " +
              (mismatches_.size() == 2 ? "key" : "keys") + " that do not match)";
    throw_error(errc::invalid_argument, what);
  }

  void verify_checksums() const {
    for (const auto& c : copies_) verify_entry(m_, m_.data, c.entry);
    for (const auto& a : assigns_)
      if (a.entry) verify_entry(m_, m_.data, *a.entry);
  }

  void apply() const {
    for (const auto& c : copies_) {
      const std::byte* from = m_.data + m_.header.entries[c.entry].offset;
      if (c.target.nbytes()) std::memcpy(c.target.data(), from, c.target.nbytes());
    }
    for (const auto& a : assigns_)
      *a.slot = copy_ && a.entry ? value(a.source->as_tensor().clone()) : *a.source;
  }

  std::vector<std::string> missing;
  std::unordered_set<std::string> requested;  // every template leaf path

 private:
  struct copy_into {
    tensor target;  // shares the template tensor's memory
    std::size_t entry;
  };
  struct assign {
    value* slot;                       // in the template
    const value* source;               // in the file's tree
    std::optional<std::size_t> entry;  // when the source is a tensor
  };

  void visit(value& v, const std::string& path) {
    auto found = file_.nodes.find(path);
    const value* src = found == file_.nodes.end() ? nullptr : found->second;
    if (is_container(v)) {
      if (src && !is_container(*src)) mismatch("key", path, describe(*src), describe(v));
      if (v.type() == kind::dict) {
        visit_dict(v.as_dict(), path);
      } else {
        auto& l = v.as_sequence();
        for (std::size_t i = 0; i < l.size(); ++i)
          visit(l[i], join_path(path, std::to_string(i)));
      }
      return;
    }
    if (!requested.insert(path).second)
      throw_error(errc::invalid_argument,
                  m_.label + ": the template has two leaves named " + detail::quote_name(path) +
                      " (flattened key paths must be unique)");
    if (!src) {
      missing.push_back(path);
      return;
    }
    bool want_tensor = v.type() == kind::tensor;
    bool have_tensor = src->type() == kind::tensor;
    if (want_tensor != have_tensor || is_container(*src)) {
      mismatch("key", path, describe(*src), describe(v));
      return;
    }
    if (!want_tensor) {
      assigns_.push_back({&v, src, std::nullopt});
      return;
    }
    std::size_t entry = entry_index_.at(path);  // a tree tensor is named by its own path
    const tensor& t = v.as_tensor();
    if (t.data() == nullptr) {  // placeholder: take the file's tensor as it is
      assigns_.push_back({&v, src, entry});
      return;
    }
    const tensor_entry& e = m_.header.entries[entry];
    if (e.type != t.type() || e.shape != t.shape()) {
      mismatch("tensor", path, std::string(dtype_name(e.type)) + " " + format_shape(e.shape),
               std::string(dtype_name(t.type())) + " " + format_shape(t.shape()));
      return;
    }
    copies_.push_back({t, entry});
  }

  void mismatch(const char* what, const std::string& path, const std::string& file_has,
                const std::string& template_has) {
    mismatches_.push_back(std::string(what) + " " + detail::quote_name(path) +
                          ": checkpoint has " + file_has + ", template has " + template_has);
  }

  const mapped_checkpoint& m_;
  const flat_tree& file_;
  const bool copy_;
  std::unordered_map<std::string, std::size_t> entry_index_;
  std::vector<copy_into> copies_;
  std::vector<assign> assigns_;
  std::vector<std::string> mismatches_;
};

std::string name_list(const std::vector<std::string>& names) {
  constexpr std::size_t shown = 10;
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < shown; ++i)
    out += (i ? ", " : "") + detail::quote_name(names[i]);
  if (names.size() > shown) out += " and " + std::to_string(names.size() - shown) + " more";
  return out;
}

}  // namespace

state_dict read(const fs::path& file_or_dir, const read_options& options) {
  mapped_checkpoint m =
      map_checkpoint(resolve_complete(file_or_dir, options.rank, options.allow_incomplete));
  // A copying read reads the whole data section into one private allocation, and each tensor
  // views its own bytes there; the checksums are taken from those bytes, the ones handed out.
  std::byte* data = m.data;
  std::shared_ptr<const void> owner = m.map;
  if (options.copy && !m.header.entries.empty()) {
    auto copy = read_data_section(m);
    data = copy->data();
    owner = std::move(copy);
  }
  if (options.verify_checksums)
    for (std::size_t i = 0; i < m.header.entries.size(); ++i) verify_entry(m, data, i);
  // Each entry becomes one tensor, and `m` goes away after: its shapes move into the tensors.
  auto make_tensor = [&](std::size_t i) -> value {
    tensor_entry& e = m.header.entries[i];
    return entry_tensor(e, data, owner, std::move(e.shape));
  };
  return detail::build_state_dict(m.header, make_tensor, m.label);
}

state_dict read(const fs::path& file_or_dir, const read_options& options, int rank) {
  read_options o = options;
  o.rank = rank;
  return read(file_or_dir, o);
}

read_result read_into(const fs::path& file_or_dir, state_dict& template_,
                      const read_options& options) {
  mapped_checkpoint m =
      map_checkpoint(resolve_complete(file_or_dir, options.rank, options.allow_incomplete));
  // The whole tree is built (as views, O(header)) so that it is validated exactly as `read`
  // validates it, and so that non-tensor values can be looked up by path. Only the placeholders
  // the template asks for are copied, when asked (apply): never the tensors copied into the
  // template's own memory, nor those it does not name.
  state_dict file = detail::build_state_dict(
      m.header,
      [&](std::size_t i) -> value {
        const tensor_entry& e = m.header.entries[i];
        return entry_tensor(e, m.data, m.map, e.shape);
      },
      m.label);
  flat_tree flat(file);
  read_into_plan plan(m, flat, options.copy);
  plan.visit_dict(template_, "");
  plan.check();
  if (options.strict && !plan.missing.empty())
    throw_error(errc::not_found,
                m.label + ": " + std::to_string(plan.missing.size()) + " key" +
                    (plan.missing.size() == 1 ? " of the template is" : "s of the template are") +
                    " not in the file: " + name_list(plan.missing));
  if (options.verify_checksums) plan.verify_checksums();
  plan.apply();

  read_result r;
  r.state = template_;
  r.missing = std::move(plan.missing);
  for (const auto& leaf : flat.leaves)
    if (!plan.requested.contains(leaf)) r.unexpected.push_back(leaf);
  return r;
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
  detail::spell_checksums(h);
  return std::move(h.entries);
}

std::vector<checksum_check> check_checksums(const fs::path& file_or_dir, int rank) {
  check_checksums_options options;
  options.rank = rank;
  return check_checksums(file_or_dir, options);
}

std::vector<checksum_check> check_checksums(const fs::path& file_or_dir,
                                            const check_checksums_options& options) {
  mapped_checkpoint m = map_checkpoint(resolve(file_or_dir, options.rank));
  detail::build_state_dict(m.header, no_tensor, m.label);
  detail::spell_checksums(m.header);
  std::vector<checksum_check> out;
  out.reserve(m.header.entries.size());
  if (!options.progress) {
    for (const auto& e : m.header.entries)
      out.push_back({e.name, e.checksum, "xxh3:" + detail::hex64(hash_of(m.data, e))});
    return out;
  }
  // Streaming hash in slices, so that a multi-gigabyte tensor still moves the progress bar.
  constexpr std::uint64_t slice = std::uint64_t{64} << 20;
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(),
                                                                 &XXH3_freeState);
  if (!state) throw std::bad_alloc();
  std::uint64_t total = 0, done = 0;
  for (const auto& e : m.header.entries) total += e.nbytes;  // contiguous: cannot overflow
  for (const auto& e : m.header.entries) {
    XXH3_64bits_reset(state.get());
    for (std::uint64_t at = 0; at < e.nbytes;) {
      std::uint64_t n = std::min(slice, e.nbytes - at);
      XXH3_64bits_update(state.get(), m.data + e.offset + at, static_cast<std::size_t>(n));
      at += n;
      done += n;
      if (at < e.nbytes) options.progress(done, total);
    }
    out.push_back({e.name, e.checksum, "xxh3:" + detail::hex64(XXH3_64bits_digest(state.get()))});
    options.progress(done, total);
  }
  if (m.header.entries.empty()) options.progress(0, 0);
  return out;
}

std::string_view library_version() noexcept { return SHMCKPT_VERSION; }

}  // namespace shmckpt
