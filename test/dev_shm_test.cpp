#define BOOST_TEST_MODULE dev_shm_test
// Run by CTest inside a mount namespace whose /dev/shm is 64 MiB (test/with_small_dev_shm.sh):
// a 200 MiB checkpoint must still go through, because the segment is a memfd, not a /dev/shm
// file.
#include <sys/statvfs.h>

#include <boost/test/unit_test.hpp>

#include "shmckpt/checkpoint_process.hpp"
#include "shmckpt/reader.hpp"
#include "test_support.hpp"

using namespace shmckpt;

BOOST_AUTO_TEST_CASE(a_64_mib_dev_shm_does_not_stop_a_200_mib_checkpoint) {
  struct statvfs before {};
  BOOST_TEST_REQUIRE(::statvfs("/dev/shm", &before) == 0);
  const std::uint64_t shm_total = std::uint64_t{before.f_blocks} * before.f_frsize;
  BOOST_TEST_REQUIRE(shm_total <= (64u << 20), "/dev/shm is " << shm_total
                                                   << " bytes; run through with_small_dev_shm.sh");

  test::temp_dir dir;
  checkpoint_process_options o;
  o.worker_path = std::filesystem::path(test::arg(1)) / "shmckpt-worker";
  o.segment_bytes = 256u << 20;
  checkpoint_process proc(o);
  auto big = proc.make_tensor(dtype::u32, {50 << 20});  // 200 MiB
  auto v = big.data_as<std::uint32_t>();
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::uint32_t>(i * 2654435761u);
  state_dict sd{{"big", big}, {"step", 1}};
  proc.write(sd, dir.path()).get();

  struct statvfs after {};
  BOOST_TEST_REQUIRE(::statvfs("/dev/shm", &after) == 0);
  BOOST_TEST(after.f_bfree == before.f_bfree);  // not a byte of it came from /dev/shm
  auto back = read(dir / "checkpoint_0.safetensors");
  BOOST_TEST((back == sd));
}
