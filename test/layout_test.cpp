// layout_test — the names of a checkpoint directory (include/shmckpt/layout.hpp,
// lib/format/layout.hpp) and the commit reading rank files by the format's rules.
#define BOOST_TEST_MODULE layout_test
#include "shmckpt/layout.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>

#include "format/layout.hpp"
#include "format/safetensors.hpp"
#include "hostile/hostile_files.hpp"
#include "shmckpt/commit.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/writer.hpp"

using namespace shmckpt;
namespace fs = std::filesystem;

BOOST_AUTO_TEST_CASE(rank_file_names_round_trip_and_have_one_spelling) {
  BOOST_TEST(rank_file_name(0) == "checkpoint_0.safetensors");
  BOOST_TEST(rank_file_name(12) == "checkpoint_12.safetensors");
  BOOST_TEST(checkpoint_file_path("/ckpt/step_1", 3) == fs::path("/ckpt/step_1/checkpoint_3.safetensors"));
  for (int r : {0, 1, 9, 10, 4095, 2147483647}) BOOST_TEST(*rank_from_file_name(rank_file_name(r)) == r);
  for (const char* other : {"checkpoint_.safetensors", "checkpoint_01.safetensors",
                            "checkpoint_-1.safetensors", "checkpoint_+1.safetensors",
                            "checkpoint_1.safetensors.tmp", "checkpoint_1x.safetensors",
                            "checkpoint_99999999999.safetensors", "checkpoint.json",
                            ".checkpoint_0.safetensors.tmp.1.0", "Checkpoint_0.safetensors"})
    BOOST_TEST(!rank_from_file_name(other).has_value(), other);
  try {
    rank_file_name(-1);
    BOOST_ERROR("a negative rank was named");
  } catch (const error& e) {
    BOOST_TEST(e.kind() == errc::invalid_argument);
  }
}

BOOST_AUTO_TEST_CASE(temporary_file_names_follow_one_pattern) {
  std::string t = detail::temp_file_name(rank_file_name(2), 4242, 7);
  BOOST_TEST(t == ".checkpoint_2.safetensors.tmp.4242.7");
  BOOST_TEST(t.starts_with(detail::temp_prefix(rank_file_name(2))));
  BOOST_TEST(detail::is_temp_name(t));
  BOOST_TEST(detail::is_temp_name(detail::temp_file_name(manifest_name, 1, 0)));
  BOOST_TEST(!detail::is_temp_name(rank_file_name(2)));
  BOOST_TEST(!detail::is_temp_name(manifest_name));
}

// The commit describes a rank file from its header; a length prefix beyond the format's cap is
// refused as the reader refuses it, without reading (or allocating) what it claims.
BOOST_AUTO_TEST_CASE(describe_rank_file_refuses_a_header_length_beyond_the_cap) {
  shmckpt_test::scratch_dir dir("layout");
  const std::uint64_t claimed = detail::max_header_bytes + 8;
  {
    std::string prefix = shmckpt_test::le64(claimed);
    shmckpt_test::write_file(dir / rank_file_name(0), prefix);
    // Sparse: the file is as long as the prefix claims, without using the disk.
    BOOST_REQUIRE(::truncate((dir / rank_file_name(0)).c_str(),
                             static_cast<off_t>(8 + claimed + 16)) == 0);
  }
  try {
    describe_rank_file(dir.path(), 0);
    BOOST_ERROR("a header of " << claimed << " bytes was read");
  } catch (const error& e) {
    BOOST_TEST(e.kind() == errc::corrupt_data);
    BOOST_TEST(std::string(e.what()).find("more than the limit") != std::string::npos, e.what());
  }
}

BOOST_AUTO_TEST_CASE(describe_rank_file_reads_what_the_writer_wrote) {
  shmckpt_test::scratch_dir dir("layout");
  write_safetensors(checkpoint_file_path(dir.path(), 1), {{"w", tensor::zeros(dtype::f32, {4})}});
  rank_file r = describe_rank_file(dir.path(), 1);
  BOOST_TEST(r.file == "checkpoint_1.safetensors");
  BOOST_TEST(r.bytes == fs::file_size(dir / r.file));
  BOOST_TEST(r.checksum.starts_with("xxh3:"));
}
