// writer_direct_test — the writer's O_DIRECT path (aligned data section, bounce buffer, buffered
// fallback, cancellation) and the durable-file routine under it.
#define BOOST_TEST_MODULE writer_direct_test
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <sys/statfs.h>

#include <cstring>

#include "core/progress.hpp"
#include "io/durable_file.hpp"
#include "hostile/hostile_files.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/writer.hpp"
#include "test_support.hpp"

using namespace shmckpt;
using shmckpt_test::random_tensor;
using shmckpt_test::read_file;
using shmckpt_test::scratch_dir;
using shmckpt::test::expect_error;
using shmckpt::test::listing;
namespace fs = std::filesystem;

namespace {

// Whether O_DIRECT works in `dir` and the filesystem is not a memory one (where the writer stays
// buffered on purpose): a 4 KiB aligned write through O_DIRECT succeeds.
bool direct_io_works(const fs::path& dir) {
  struct statfs sfs {};
  if (::statfs(dir.c_str(), &sfs) != 0 || sfs.f_type == 0x01021994 /* TMPFS_MAGIC */ ||
      sfs.f_type == 0x858458f6 /* RAMFS_MAGIC */)
    return false;
  fs::path probe = dir / ".direct-probe";
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  void* buf = std::aligned_alloc(4096, 4096);
  std::memset(buf, 0, 4096);
  bool ok = ::pwrite(fd, buf, 4096, 0) == 4096;
  std::free(buf);
  ::close(fd);
  fs::remove(probe);
  return ok;
}

// 8 + N, where the data section starts.
std::uint64_t data_start(const fs::path& file) {
  std::string bytes = read_file(file);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes.at(i));
  return 8 + n;
}

// Page-aligned memory, filled with a pattern; `offset` bytes in, a tensor view of `n` bytes.
struct page_memory {
  explicit page_memory(std::size_t bytes) : size(bytes + 8192) {
    p = static_cast<std::byte*>(std::aligned_alloc(4096, size));
    for (std::size_t i = 0; i < size; ++i) p[i] = static_cast<std::byte>((i * 131 + 7) & 0xff);
  }
  ~page_memory() { std::free(p); }
  tensor view(dtype t, std::int64_t elements, std::size_t offset) const {
    std::vector<std::int64_t> shape{elements};
    auto n = tensor_nbytes(t, shape);
    return tensor(t, shape, std::span<std::byte>(p + offset, static_cast<std::size_t>(*n)));
  }
  std::byte* p;
  std::size_t size;
};

}  // namespace

BOOST_AUTO_TEST_CASE(data_section_starts_on_a_4096_byte_boundary) {
  scratch_dir dir("writer");
  for (std::size_t tensors : {std::size_t{1}, std::size_t{300}}) {
    state_dict sd;
    for (std::size_t i = 0; i < tensors; ++i)
      sd["t" + std::to_string(i)] = random_tensor(dtype::f32, {static_cast<std::int64_t>(i % 5)}, i);
    fs::path file = dir / ("a" + std::to_string(tensors) + ".safetensors");
    write_safetensors(file, sd);
    BOOST_TEST(data_start(file) % 4096 == 0u);
    BOOST_TEST((read(file, {.verify_checksums = true}) == sd));
  }
}

BOOST_AUTO_TEST_CASE(reader_accepts_both_padded_and_unpadded_headers) {
  scratch_dir dir("writer");
  state_dict sd{{"w", random_tensor(dtype::f32, {7}, 1)}, {"b", random_tensor(dtype::u8, {3}, 2)}};
  fs::path padded = dir / "padded.safetensors";
  write_safetensors(padded, sd);
  std::string bytes = read_file(padded);
  std::uint64_t start = data_start(padded);
  std::string header = bytes.substr(8, start - 8);
  BOOST_TEST(header.size() > header.find_last_not_of(' ') + 1);  // padded by us
  header.erase(header.find_last_not_of(' ') + 1);
  std::string unpadded(8, '\0');
  for (int i = 0; i < 8; ++i) unpadded[i] = static_cast<char>(header.size() >> (8 * i));
  unpadded += header;
  unpadded += bytes.substr(start);
  shmckpt_test::write_file(dir / "unpadded.safetensors", unpadded);
  BOOST_TEST((read(dir / "unpadded.safetensors", {.verify_checksums = true}) == sd));
  BOOST_TEST((read(padded, {.verify_checksums = true}) == sd));
}

BOOST_AUTO_TEST_CASE(direct_path_is_taken_where_the_filesystem_supports_it) {
  scratch_dir dir("writer");
  if (!direct_io_works(dir.path())) {
    BOOST_TEST_MESSAGE("skipped: O_DIRECT does not work in " << dir.path());
    return;
  }
  page_memory mem(std::size_t{3} << 20);
  // Page-aligned, page-multiple tensors, contiguous in memory: all of it straight from memory.
  state_dict sd{{"a", mem.view(dtype::f32, 1 << 18, 0)},
                {"b", mem.view(dtype::f32, 1 << 18, std::size_t{1} << 20)}};
  fs::path file = dir / "direct.safetensors";
  safetensors_write_result r = write_safetensors(file, sd);
  BOOST_TEST((r.path == write_path::direct));
  BOOST_TEST(r.direct_bytes == std::uint64_t{2} << 20);
  BOOST_TEST(r.bounced_bytes == 0u);
  BOOST_TEST(r.file_bytes == fs::file_size(file));
  BOOST_TEST((read(file, {.verify_checksums = true}) == sd));

  safetensors_write_options buffered;
  buffered.io = write_io::buffered;
  safetensors_write_result b = write_safetensors(dir / "buffered.safetensors", sd, buffered);
  BOOST_TEST((b.path == write_path::buffered));
  BOOST_TEST(b.direct_bytes + b.bounced_bytes == 0u);
  BOOST_TEST(read_file(dir / "buffered.safetensors") == read_file(file));  // the same bytes
}

BOOST_AUTO_TEST_CASE(bounce_buffer_serves_odd_sizes_misaligned_memory_empty_and_packed_tensors) {
  scratch_dir dir("writer");
  const bool direct = direct_io_works(dir.path());
  page_memory mem(std::size_t{12} << 20);
  state_dict sd;
  sd["aligned"] = mem.view(dtype::f64, (1 << 19) + 3, 0);  // first in the file; odd tail
  sd["misaligned"] = mem.view(dtype::u8, (std::int64_t{3} << 20) + 5, std::size_t{5} << 20 | 1);
  sd["empty"] = tensor::zeros(dtype::f32, {0});
  sd["empty_u8"] = tensor::zeros(dtype::u8, {0, 4});
  sd["one"] = random_tensor(dtype::u8, {1}, 3);
  sd["packed"] = random_tensor(dtype::f4, {7 * 2}, 4);
  sd["six"] = random_tensor(dtype::f6_e2m3, {4 * 3}, 5);
  sd["heap"] = random_tensor(dtype::f64, {4097}, 6);  // private memory, malloc-aligned
  sd["page_tail"] = mem.view(dtype::i16, 2048 * 3 + 1, std::size_t{10} << 20);
  list many;
  for (int i = 0; i < 2000; ++i) many.push_back(random_tensor(dtype::i8, {i % 11}, 100 + i));
  sd["many"] = std::move(many);
  sd["step"] = 12;
  fs::path file = dir / "mixed.safetensors";
  safetensors_write_result r = write_safetensors(file, sd);
  BOOST_TEST(data_start(file) % 4096 == 0u);
  BOOST_TEST(r.file_bytes == fs::file_size(file));  // the padded last block was cut off
  if (direct) {
    BOOST_TEST((r.path == write_path::direct));
    BOOST_TEST(r.direct_bytes > 0u);
    BOOST_TEST(r.bounced_bytes >= (std::uint64_t{3} << 20));  // at least the misaligned tensor
    BOOST_TEST(r.direct_bytes + r.bounced_bytes >= r.file_bytes - data_start(file));
  }
  BOOST_TEST((read(file, {.verify_checksums = true}) == sd));
  BOOST_TEST((read(file, {.copy = true, .verify_checksums = true}) == sd));

  safetensors_write_options buffered;
  buffered.io = write_io::buffered;
  write_safetensors(dir / "buffered.safetensors", sd, buffered);
  BOOST_TEST(read_file(dir / "buffered.safetensors") == read_file(file));

  // Only empty tensors, and nothing at all: a data section of 0 bytes.
  for (state_dict tiny : {state_dict{{"e", tensor::zeros(dtype::f32, {0})}}, state_dict{}}) {
    write_safetensors(dir / "tiny.safetensors", tiny);
    BOOST_TEST(fs::file_size(dir / "tiny.safetensors") == data_start(dir / "tiny.safetensors"));
    BOOST_TEST((read(dir / "tiny.safetensors") == tiny));
  }
}

// The direct path's batches grow from 8 MiB to 64 MiB (8, 16, 32, 64, 64, ...): a file past
// the cap, with misaligned tensors and odd sizes across every batch boundary, comes out byte for
// byte as the buffered path writes it, and its checksums verify.
BOOST_AUTO_TEST_CASE(growing_direct_batches_write_the_same_bytes_as_the_buffered_path) {
  scratch_dir dir("writer");
  constexpr std::size_t MiB = std::size_t{1} << 20;
  page_memory mem(144 * MiB);
  state_dict sd;
  list parts;
  std::size_t at = 0;
  for (int i = 0; at + 23 * MiB < 144 * MiB; ++i) {
    // 7-23 MiB each, every third one starting off a page boundary, sizes not multiples of 4096.
    std::size_t n = (7 + (i * 5) % 17) * MiB + static_cast<std::size_t>(i * 977 % 4096);
    std::size_t off = at + (i % 3 == 1 ? 5 + i : 0);
    parts.push_back(mem.view(dtype::u8, static_cast<std::int64_t>(n), off));
    at = (off + n + 4095) / 4096 * 4096;
  }
  BOOST_REQUIRE(at > 120 * MiB);  // past 8 + 16 + 32 + 64 MiB: a batch after the capped one
  sd["parts"] = std::move(parts);
  fs::path file = dir / "large.safetensors";
  safetensors_write_result r = write_safetensors(file, sd);
  if (direct_io_works(dir.path())) {
    BOOST_TEST((r.path == write_path::direct));
    BOOST_TEST(r.bounced_bytes > 0u);
  }
  safetensors_write_options buffered;
  buffered.io = write_io::buffered;
  write_safetensors(dir / "buffered.safetensors", sd, buffered);
  BOOST_TEST((read_file(dir / "buffered.safetensors") == read_file(file)));
  BOOST_TEST((read(file, {.verify_checksums = true}) == sd));
}

BOOST_AUTO_TEST_CASE(memory_filesystem_falls_back_to_buffered_writes) {
  struct statfs sfs {};
  if (::statfs("/dev/shm", &sfs) != 0 || sfs.f_type != 0x01021994 /* TMPFS_MAGIC */) {
    BOOST_TEST_MESSAGE("skipped: /dev/shm is not a tmpfs");
    return;
  }
  std::string pattern = "/dev/shm/shmckpt-writer-XXXXXX";
  BOOST_TEST_REQUIRE(::mkdtemp(pattern.data()) != nullptr);
  fs::path dir = pattern;
  page_memory mem(std::size_t{1} << 20);
  state_dict sd{{"a", mem.view(dtype::f32, 1 << 18, 0)}, {"b", random_tensor(dtype::u8, {5}, 1)}};
  safetensors_write_result r = write_safetensors(dir / "x.safetensors", sd);
  BOOST_TEST((r.path == write_path::buffered));
  BOOST_TEST(r.direct_bytes + r.bounced_bytes == 0u);
  BOOST_TEST(data_start(dir / "x.safetensors") % 4096 == 0u);
  BOOST_TEST((read(dir / "x.safetensors", {.verify_checksums = true}) == sd));
  BOOST_TEST((listing(dir) == std::vector<std::string>{"x.safetensors"}));
  fs::remove_all(dir);
}

BOOST_AUTO_TEST_CASE(cancel_during_a_direct_write_leaves_the_previous_checkpoint_and_no_temp_file) {
  scratch_dir dir("writer");
  fs::path file = dir / "ckpt.safetensors";
  write_safetensors(file, {{"w", random_tensor(dtype::f32, {8}, 1)}});
  std::string before = read_file(file);

  // Cancelled once the first chunk is on disk: the write is under way, in whichever path.
  page_memory mem(std::size_t{24} << 20);
  std::atomic<bool> cancel{false};
  int reports = 0;
  auto previous = detail::set_progress_reporter([&](std::string_view) {
    if (++reports == 1) cancel = true;
  });
  safetensors_write_options opt;
  opt.cancel = &cancel;
  BOOST_CHECK_EXCEPTION(
      write_safetensors(file, {{"big", mem.view(dtype::u8, std::int64_t{24} << 20, 0)}}, opt),
      error, expect_error(errc::closed, "cancelled"));
  detail::set_progress_reporter(previous);
  BOOST_TEST(reports >= 1);
  BOOST_TEST(read_file(file) == before);
  BOOST_TEST((listing(dir.path()) == std::vector<std::string>{"ckpt.safetensors"}));
}

BOOST_AUTO_TEST_CASE(default_writer_io_argument_picks_the_path_and_rejects_others) {
  scratch_dir dir("writer");
  state_dict sd{{"w", random_tensor(dtype::f32, {1024}, 1)}};
  make_default_writer({{"io", "buffered"}})->write(sd, dir / "b", {});
  make_default_writer({{"io", "auto"}})->write(sd, dir / "a", {});
  BOOST_TEST((read(dir / "b") == sd));
  BOOST_TEST(read_file(dir / "a" / "checkpoint_0.safetensors") ==
             read_file(dir / "b" / "checkpoint_0.safetensors"));
  BOOST_CHECK_EXCEPTION(make_default_writer({{"io", "direct!"}}), error,
                        expect_error(errc::invalid_argument, "'io'"));
}

BOOST_AUTO_TEST_CASE(default_writer_checksums_argument_leaves_the_table_out_on_request) {
  scratch_dir dir("writer");
  state_dict sd{{"w", random_tensor(dtype::f32, {1024}, 2)}};
  make_default_writer({{"checksums", "false"}})->write(sd, dir / "off", {});
  make_default_writer({{"checksums", "true"}})->write(sd, dir / "on", {});
  make_default_writer({})->write(sd, dir / "default", {});
  BOOST_TEST((read(dir / "off") == sd));
  BOOST_TEST(list_entries(dir / "off" / "checkpoint_0.safetensors")[0].checksum.empty());
  for (const char* d : {"on", "default"}) {
    auto e = list_entries(dir / d / "checkpoint_0.safetensors");
    BOOST_TEST(e[0].checksum.starts_with("xxh3:"));
  }
  BOOST_TEST(check_checksums(dir / "off").front().recorded.empty());
  BOOST_CHECK_EXCEPTION(make_default_writer({{"checksums", "maybe"}}), error,
                        expect_error(errc::invalid_argument, "'checksums'"));
}

BOOST_AUTO_TEST_CASE(write_file_durably_replaces_a_small_file_atomically) {
  scratch_dir dir("writer");
  fs::path target = dir / "checkpoint.json";
  BOOST_TEST(detail::write_file_durably(target, "{\"a\":1}", "writing the manifest"));
  BOOST_TEST(read_file(target) == "{\"a\":1}");
  BOOST_TEST(detail::write_file_durably(target, "{}", "writing the manifest"));
  BOOST_TEST(read_file(target) == "{}");
  BOOST_TEST((listing(dir.path()) == std::vector<std::string>{"checkpoint.json"}));

  fs::path gone = dir / "no-such-dir" / "x";
  BOOST_TEST(!detail::write_file_durably(gone, "x", "arrival", {.missing_directory_ok = true}));
  BOOST_CHECK_EXCEPTION(detail::write_file_durably(gone, "x", "writing the arrival"), error,
                        expect_error(errc::io_error, "writing the arrival: cannot create"));
  // A failure before the rename leaves the previous file: the target is a non-empty directory.
  fs::create_directory(dir / "busy");
  shmckpt_test::write_file(dir / "busy" / "keep", "k");
  BOOST_CHECK_EXCEPTION(detail::write_file_durably(dir / "busy", "x", "writing"), error,
                        expect_error(errc::io_error, "rename"));
  BOOST_TEST(read_file(dir / "busy" / "keep") == "k");
  BOOST_TEST((listing(dir.path()) == std::vector<std::string>{"busy", "checkpoint.json"}));
}
