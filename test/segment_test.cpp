#define BOOST_TEST_MODULE segment_test
#include <fcntl.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <filesystem>
#include <iterator>
#include <set>
#include <string>

#include "shmckpt/error.hpp"
#include "ipc/segment.hpp"
#include "test_support.hpp"

using shmckpt::test::dev_shm_entries;

using namespace shmckpt;

namespace {


}  // namespace

BOOST_AUTO_TEST_CASE(segment_is_anonymous_and_leaves_nothing_in_dev_shm) {
  auto before = dev_shm_entries();
  {
    auto seg = segment::create(4u << 20);
    BOOST_TEST(seg.size() >= (4u << 20));
    BOOST_TEST((dev_shm_entries() == before));
    // Close-on-exec, so no unrelated child inherits it.
    BOOST_TEST((::fcntl(seg.fd(), F_GETFD) & FD_CLOEXEC) != 0);
  }
  BOOST_TEST((dev_shm_entries() == before));
}

BOOST_AUTO_TEST_CASE(too_large_a_segment_fails_at_once_naming_sizes) {
  try {
    (void)segment::create(std::size_t{1} << 50);  // 1 PiB
    BOOST_FAIL("a 1 PiB segment should not be creatable");
  } catch (const error& e) {
    BOOST_TEST(static_cast<int>(e.kind()) == static_cast<int>(errc::no_space));
    std::string m = e.what();
    BOOST_TEST(m.find("1125899906842624 bytes") != std::string::npos, m);
    BOOST_TEST(m.find("available") != std::string::npos, m);
  }
}

BOOST_AUTO_TEST_CASE(allocations_are_aligned_bounded_and_reported_when_exhausted) {
  auto seg = segment::create(1u << 20);
  auto a = seg.allocate(1000);
  auto b = seg.allocate(3);
  BOOST_TEST(reinterpret_cast<std::uintptr_t>(a.get()) % 64 == 0u);
  BOOST_TEST(reinterpret_cast<std::uintptr_t>(b.get()) % 64 == 0u);
  BOOST_TEST(seg.contains(a.get(), 1000));
  BOOST_TEST(!seg.contains(a.get(), seg.size()));
  try {
    (void)seg.allocate(2u << 20);
    BOOST_FAIL("allocating more than the segment holds must fail");
  } catch (const error& e) {
    BOOST_TEST(static_cast<int>(e.kind()) == static_cast<int>(errc::no_space));
    BOOST_TEST(std::string(e.what()).find("2097152 bytes") != std::string::npos, e.what());
  }
  auto free_before = seg.free_bytes();
  a.reset();
  BOOST_TEST(seg.free_bytes() > free_before);
}

BOOST_AUTO_TEST_CASE(resolve_checks_bounds) {
  auto seg = segment::create(1u << 20);
  BOOST_TEST(seg.resolve(0, seg.size()).size() == seg.size());
  BOOST_TEST(seg.resolve(seg.size(), 0).size() == 0u);
  BOOST_CHECK_THROW(seg.resolve(seg.size(), 1), error);
  BOOST_CHECK_THROW(seg.resolve(1, seg.size()), error);
  BOOST_CHECK_THROW(seg.resolve(~0ull, 2), error);  // offset + length would wrap
}

BOOST_AUTO_TEST_CASE(attached_mapping_sees_the_same_bytes) {
  auto seg = segment::create(1u << 20);
  auto t = seg.make_tensor(dtype::i32, {4});
  t.data_as<std::int32_t>()[2] = 1234;
  auto view = segment::attach(::fcntl(seg.fd(), F_DUPFD_CLOEXEC, 0), seg.size());
  auto bytes = view.resolve(seg.offset_of(t.data()), t.nbytes());
  std::int32_t v;
  std::memcpy(&v, bytes.data() + 8, 4);
  BOOST_TEST(v == 1234);
  // The attached side cannot allocate: only the parent owns the allocator.
  BOOST_CHECK_THROW(view.allocate(16), error);
}

BOOST_AUTO_TEST_CASE(tensors_keep_the_mapping_alive_after_the_handle_is_gone) {
  tensor t;
  {
    auto seg = segment::create(1u << 20);
    t = seg.make_tensor(dtype::f64, {3});
  }
  t.data_as<double>()[1] = 2.5;  // would fault if the mapping had been unmapped
  BOOST_TEST(t.data_as<double>()[1] == 2.5);
}

// The value of `key` ("VmFlags", "ShmemPmdMapped", ...) in /proc/self/smaps for the mapping that
// contains `p`: the rest of its line, or "" when there is no such mapping or key.
std::string smaps_value(const void* p, const std::string& key) {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool inside = false;
  auto addr = reinterpret_cast<std::uintptr_t>(p);
  while (std::getline(in, line)) {
    std::uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      inside = addr >= lo && addr < hi;
      continue;
    }
    if (inside && line.rfind(key + ":", 0) == 0) return line.substr(key.size() + 1);
  }
  return "";
}

// A "N kB" value of smaps_value, in bytes (0 when absent).
std::uint64_t smaps_bytes(const void* p, const std::string& key) {
  std::uint64_t kb = 0;
  std::sscanf(smaps_value(p, key).c_str(), "%lu", &kb);
  return kb * 1024;
}

// Resident bytes of this process's mapping that contains `p`: pages already in our page
// tables, which a write can use without a fault.
std::uint64_t mapped_resident_bytes(const void* p) { return smaps_bytes(p, "Rss"); }

BOOST_AUTO_TEST_CASE(prefaulted_segment_is_resident_before_the_first_write) {
  const std::size_t n = 32u << 20;
  auto cold = segment::create(n, /*prefault=*/false);
  auto warm = segment::create(n, /*prefault=*/true);
  // Every page of the prefaulted mapping is already in our page tables, so the first copy into
  // it runs at memcpy speed; the cold one would take a fault per page.
  BOOST_TEST(mapped_resident_bytes(warm.base()) == warm.size());
  BOOST_TEST(mapped_resident_bytes(cold.base()) < cold.size() / 8);
  // Freed blocks keep their pages: reuse takes no new faults.
  { auto a = warm.allocate(n / 2); std::memset(a.get(), 1, n / 2); }
  BOOST_TEST(mapped_resident_bytes(warm.base()) == warm.size());
}

BOOST_AUTO_TEST_CASE(a_growable_segment_grows_in_place_and_the_attached_side_follows) {
  auto seg = segment::create(segment_options{.initial_bytes = 1u << 20, .max_bytes = 0});
  auto child = segment::attach(::fcntl(seg.fd(), F_DUPFD_CLOEXEC, 0), seg.size());
  std::size_t first_size = seg.size();
  auto small = seg.allocate(1000);
  std::memset(small.get(), 0x5a, 1000);
  std::byte* base = seg.base();
  // Far more than the segment holds: it grows by what is missing, nothing moves.
  auto big = seg.allocate(24u << 20);
  BOOST_TEST(seg.size() > first_size);
  BOOST_TEST(seg.size() < first_size + (32u << 20));  // by what was needed, not by doubling
  BOOST_TEST(seg.base() == base);
  BOOST_TEST(seg.contains(big.get(), 24u << 20));
  BOOST_TEST(static_cast<int>(small.get()[999]) == 0x5a);
  std::memset(big.get(), 0x33, 24u << 20);
  // The attached side maps the new tail when it first sees an offset in it.
  auto view = child.resolve(seg.offset_of(big.get()), 24u << 20);
  BOOST_TEST(static_cast<int>(view[0]) == 0x33);
  BOOST_TEST(static_cast<int>(view[(24u << 20) - 1]) == 0x33);
  BOOST_TEST(child.size() >= seg.offset_of(big.get()) + (24u << 20));
  // ... but never beyond what the file holds.
  BOOST_CHECK_THROW(child.resolve(seg.size(), 1), error);
  // Freed memory is reused before the segment grows again.
  std::size_t grown = seg.size();
  big.reset();
  auto again = seg.allocate(20u << 20);
  BOOST_TEST(seg.size() == grown);
}

// Size and resident bytes of this process's mapping that contains `p` (/proc/self/smaps).
std::pair<std::uint64_t, std::uint64_t> mapping_size_and_resident(const void* p) {
  return {smaps_bytes(p, "Size"), smaps_bytes(p, "Rss")};
}

BOOST_AUTO_TEST_CASE(growth_prefaults_all_of_the_new_memory_and_leaves_it_zero) {
  auto seg = segment::create(segment_options{.initial_bytes = 1u << 20, .max_bytes = 0});
  // Large enough to be populated by several threads, and not a multiple of their shares.
  const std::size_t n = (40u << 20) + 12345;
  auto big = seg.allocate(n);
  for (const std::byte* at : {big.get(), big.get() + n / 2, big.get() + n - 1}) {
    auto [size, resident] = mapping_size_and_resident(at);
    BOOST_TEST(size > 0u);
    BOOST_TEST(resident == size);  // every page of the mapping: no fault left for the first copy
  }
  bool zero = true;
  for (std::size_t i = 0; i < n; i += 4093) zero = zero && big.get()[i] == std::byte{0};
  BOOST_TEST(zero);
  BOOST_TEST((big.get()[n - 1] == std::byte{0}));
}

BOOST_AUTO_TEST_CASE(a_capped_segment_stops_at_its_cap_naming_it) {
  auto seg = segment::create(segment_options{.initial_bytes = 1u << 20, .max_bytes = 8u << 20});
  auto a = seg.allocate(4u << 20);  // grows within the cap
  BOOST_TEST(seg.size() <= (8u << 20));
  try {
    (void)seg.allocate(6u << 20);
    BOOST_FAIL("allocating beyond the cap must fail");
  } catch (const error& e) {
    BOOST_TEST(static_cast<int>(e.kind()) == static_cast<int>(errc::no_space));
    std::string m = e.what();
    BOOST_TEST(m.find("cap of 8.0 MiB") != std::string::npos, m);
    BOOST_TEST(m.find("raise segment_bytes") != std::string::npos, m);
  }
  // A fixed segment (create(bytes)) never grows.
  auto fixed = segment::create(1u << 20);
  BOOST_CHECK_THROW((void)fixed.allocate(2u << 20), error);
  BOOST_TEST(fixed.size() == (1u << 20));
}

// The bracketed choice in /sys/kernel/mm/transparent_hugepage/shmem_enabled ("" without THP).
std::string shmem_huge_setting() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto a = all.find('['), b = all.find(']');
  return a == std::string::npos || b == std::string::npos ? "" : all.substr(a + 1, b - a - 1);
}

BOOST_AUTO_TEST_CASE(every_mapping_of_a_segment_is_2mib_aligned_and_advised_for_huge_pages) {
  constexpr std::uintptr_t huge = 2u << 20;
  auto seg = segment::create(segment_options{.initial_bytes = 8u << 20, .max_bytes = 0});
  auto child = segment::attach(::fcntl(seg.fd(), F_DUPFD_CLOEXEC, 0), seg.size());
  // File offset k * 2 MiB at a 2 MiB boundary in both processes: a huge page maps whole.
  BOOST_TEST(reinterpret_cast<std::uintptr_t>(seg.base()) % huge == 0u);
  BOOST_TEST(reinterpret_cast<std::uintptr_t>(child.base()) % huge == 0u);
  // A grown tail is advised too, on both sides.
  auto big = seg.allocate(12u << 20);
  std::memset(big.get(), 0x42, 12u << 20);
  auto view = child.resolve(seg.offset_of(big.get()), 12u << 20);
  BOOST_TEST(static_cast<int>(view[(12u << 20) - 1]) == 0x42);
  const std::string setting = shmem_huge_setting();
  if (setting.empty()) {
    BOOST_TEST_MESSAGE("no transparent huge pages in this kernel: only the alignment is checked");
    return;
  }
  for (const void* p : {static_cast<const void*>(seg.base()), static_cast<const void*>(big.get()),
                        static_cast<const void*>(child.base()),
                        static_cast<const void*>(view.data())}) {
    std::string flags = smaps_value(p, "VmFlags");
    BOOST_TEST_INFO("VmFlags of the mapping at " << p << ":" << flags);
    BOOST_TEST(flags.find(" hg") != std::string::npos);
  }
  if (setting == "advise" || setting == "always" || setting == "within_size" ||
      setting == "force") {
    // The system gives shmem huge pages to advised mappings: the prefaulted memory is in them.
    BOOST_TEST_INFO("shmem_enabled is " << setting);
    BOOST_TEST(smaps_bytes(seg.base(), "ShmemPmdMapped") >= huge);
  } else {
    BOOST_TEST_MESSAGE("shmem_enabled is '" << setting << "': the advice is checked, not its effect");
  }
}
