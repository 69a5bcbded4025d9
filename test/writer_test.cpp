// writer_test — write_safetensors, the default writer, and the bytes they put on disk.
#define BOOST_TEST_MODULE writer_test
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>

#include <boost/json.hpp>

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


bool has_code(const error& e, errc want) { return e.kind() == want; }

double bits_to_double(std::uint64_t b) { return std::bit_cast<double>(b); }

// A dict nested `depth` levels deep (the root counting as 1) with leaves at the bottom.
dict nested_dicts(std::size_t depth) {
  dict d{{"leaf", 1.5}, {"w", tensor::zeros(dtype::f32, {2})}};
  for (std::size_t i = 1; i < depth; ++i) d = dict{{"n", std::move(d)}};
  return d;
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_dtype_round_trips_bit_exact) {
  scratch_dir dir("writer");
  state_dict sd;
  for (std::size_t i = 0; i < dtype_count; ++i) {
    auto t = static_cast<dtype>(i);
    // 8 elements fill whole bytes for every dtype, the 4- and 6-bit ones included.
    sd.insert_or_assign(std::string(dtype_name(t)), random_tensor(t, {2, 4}, i));
  }
  write_safetensors(dir / "all.safetensors", sd);
  state_dict back = read(dir / "all.safetensors");
  BOOST_TEST(back.size() == dtype_count);
  BOOST_TEST((back == sd));
  for (const auto& [k, v] : back) {
    BOOST_TEST_CONTEXT(k) {
      BOOST_TEST(dtype_name(v.as_tensor().type()) == k);
      BOOST_TEST((v.as_tensor().shape() == std::vector<std::int64_t>{2, 4}));
    }
  }
}

BOOST_AUTO_TEST_CASE(empty_scalar_and_high_rank_tensors_round_trip) {
  scratch_dir dir("writer");
  std::vector<std::int64_t> rank12{1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 3};
  std::vector<std::int64_t> at_limit(1024, 1);
  state_dict sd{
      {"empty", tensor::zeros(dtype::f32, {0})},
      {"empty_middle", tensor::zeros(dtype::i64, {3, 0, 5})},
      {"scalar", random_tensor(dtype::f64, {}, 1)},
      {"scalar_u8", random_tensor(dtype::u8, {}, 2)},
      {"rank12", random_tensor(dtype::bf16, rank12, 3)},
      {"rank1024", random_tensor(dtype::i8, at_limit, 4)},
  };
  write_safetensors(dir / "x.safetensors", sd);
  state_dict back = read(dir / "x.safetensors");
  BOOST_TEST((back == sd));
  BOOST_TEST(back.at("scalar").as_tensor().shape().empty());
  BOOST_TEST(back.at("scalar").as_tensor().nbytes() == 8u);
  BOOST_TEST(back.at("empty").as_tensor().nbytes() == 0u);
  BOOST_TEST((back.at("empty_middle").as_tensor().shape() == std::vector<std::int64_t>{3, 0, 5}));

  std::vector<std::int64_t> too_many(1025, 1);
  BOOST_CHECK_EXCEPTION(
      write_safetensors(dir / "y.safetensors", {{"t", tensor::zeros(dtype::u8, too_many)}}), error,
      expect_error(errc::invalid_argument, "1025 dimensions"));
  BOOST_TEST(!fs::exists(dir / "y.safetensors"));
}

BOOST_AUTO_TEST_CASE(nested_tree_with_every_value_kind_round_trips_exactly) {
  scratch_dir dir("writer");
  const double nan_payload = bits_to_double(0xfff4000000000123ULL);  // negative, signalling-ish
  state_dict sd;
  // Keys deliberately not in sorted order: order must survive.
  sd["zeta"] = std::int64_t{1};
  sd["alpha"] = none;
  sd["model"] = dict{
      {"layers", list{dict{{"weight", random_tensor(dtype::f32, {3, 4}, 10)},
                           {"bias", random_tensor(dtype::f32, {4}, 11)}},
                      dict{{"weight", random_tensor(dtype::f16, {3, 4}, 12)}, {"frozen", true}}}},
      {"empty_dict", dict{}},
      {"empty_list", list{}},
  };
  sd["numbers"] = list{
      std::numeric_limits<std::int64_t>::min(),
      std::numeric_limits<std::int64_t>::max(),
      std::int64_t{0},
      0.0,
      -0.0,
      std::numeric_limits<double>::infinity(),
      -std::numeric_limits<double>::infinity(),
      std::numeric_limits<double>::quiet_NaN(),
      nan_payload,
      std::numeric_limits<double>::denorm_min(),
      std::numeric_limits<double>::max(),
      0.1,
      1.0,
      false,
  };
  sd["strings"] = list{
      "",
      "quote \" backslash \\ newline \n tab \t control \x01 del \x7f",
      "ünïcødé ✓ 😀",
      std::string("nul \0 inside", 12),
      std::string("\xff\xfe not utf-8 \x80"),
  };
  sd["keys"] = dict{{"", 1}, {"with.dot", 2}, {"ключ", 3}, {std::string("\xff"), 4}};
  sd["deep"] = list{list{list{dict{{"x", list{random_tensor(dtype::u8, {5}, 13)}}}}}};

  write_safetensors(dir / "tree.safetensors", sd);
  state_dict back = read(dir / "tree.safetensors");
  BOOST_TEST((back == sd));  // deep, ordered, doubles compared bit for bit

  std::vector<std::string> keys;
  for (const auto& [k, v] : back) keys.push_back(k);
  BOOST_TEST((keys == std::vector<std::string>{"zeta", "alpha", "model", "numbers", "strings",
                                               "keys", "deep"}));
  const list& nums = back.at("numbers").as_list();
  BOOST_TEST((nums[0].type() == kind::integer));  // ints stay ints
  BOOST_TEST((nums[3].type() == kind::real));    // 0.0 stays a double
  BOOST_TEST(std::signbit(nums[4].as_double()));
  BOOST_TEST(std::bit_cast<std::uint64_t>(nums[8].as_double()) == 0xfff4000000000123ULL);
  BOOST_TEST((nums[13].type() == kind::boolean));
  BOOST_TEST(back.at("model").as_dict().at("empty_dict").as_dict().empty());
  BOOST_TEST(back.at("model").as_dict().at("empty_list").as_list().empty());
  BOOST_TEST(back.at("strings").as_list()[3].as_string().size() == 12u);

  // Tensor names are the flattened key paths.
  std::vector<std::string> names;
  for (const auto& e : list_entries(dir / "tree.safetensors")) names.push_back(e.name);
  std::sort(names.begin(), names.end());
  BOOST_TEST((names == std::vector<std::string>{"deep.0.0.0.x.0", "model.layers.0.bias",
                                                "model.layers.0.weight",
                                                "model.layers.1.weight"}));
}

// What torch.optim.Adam's state_dict() looks like: int parameter ids as keys, betas a tuple.
BOOST_AUTO_TEST_CASE(int_keyed_dicts_and_tuples_round_trip_through_the_file) {
  scratch_dir dir("writer");
  dict state = dict::with_int_keys();
  state["0"] = dict{{"step", random_tensor(dtype::f32, {}, 1)},
                    {"exp_avg", random_tensor(dtype::f32, {3}, 2)}};
  state["1"] = dict{{"step", random_tensor(dtype::f32, {}, 3)},
                    {"exp_avg", random_tensor(dtype::f32, {4}, 4)}};
  dict neg = dict::with_int_keys();
  neg["-9223372036854775808"] = "min";
  neg["9223372036854775807"] = "max";
  state_dict sd{
      {"optimizer", dict{{"state", state},
                         {"param_groups", list{dict{{"lr", 0.001},
                                                    {"betas", tuple{0.9, 0.999}},
                                                    {"params", list{0, 1}}}}}}},
      {"limits", neg},
      {"empty", tuple{}},
      {"nested", tuple{tuple{}, dict::with_int_keys(), list{tuple{1}}}},
  };
  write_safetensors(dir / "adam.safetensors", sd);
  state_dict back = read(dir / "adam.safetensors");
  BOOST_TEST((back == sd));
  const dict& st = back.at("optimizer").as_dict().at("state").as_dict();
  BOOST_TEST((st.keys() == key_type::integer));
  BOOST_TEST((back.at("limits").as_dict().keys() == key_type::integer));
  BOOST_TEST((back.at("optimizer").as_dict().at("param_groups").as_list()[0].as_dict()
                  .at("betas").type() == kind::tuple));
  // Tensor names are unchanged: integer keys flatten to their decimal text.
  std::vector<std::string> names;
  for (const auto& e : list_entries(dir / "adam.safetensors")) names.push_back(e.name);
  std::sort(names.begin(), names.end());
  BOOST_TEST((names == std::vector<std::string>{"optimizer.state.0.exp_avg",
                                                "optimizer.state.0.step",
                                                "optimizer.state.1.exp_avg",
                                                "optimizer.state.1.step"}));
  // Such a file says version 2; a tree without them stays version 1 for older readers.
  auto version_of = [](const fs::path& f) {
    std::ifstream in(f, std::ios::binary);
    std::uint64_t n = 0;
    in.read(reinterpret_cast<char*>(&n), 8);
    std::string header(n, '\0');
    in.read(header.data(), static_cast<std::streamsize>(n));
    return std::string(boost::json::parse(header)
                           .at("__metadata__").at("shmckpt.version").as_string());
  };
  BOOST_TEST(version_of(dir / "adam.safetensors") == "2");
  write_safetensors(dir / "plain.safetensors", state_dict{{"x", list{1, 2}}});
  BOOST_TEST(version_of(dir / "plain.safetensors") == "1");
}

// Files written before the format marker became "pt" keep loading.
BOOST_AUTO_TEST_CASE(a_file_with_the_old_format_marker_still_loads) {
  scratch_dir dir("writer");
  std::string data(8, '\x11');
  std::string tree = R"({"dict":[["a",{"tensor":"a"}],["step",3]]})";
  std::string header = R"({"__metadata__":{"format":"shmckpt","shmckpt.version":"1","shmckpt.tree":)" +
                       shmckpt_test::json_string(tree) +
                       R"(},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  {
    std::ofstream out(dir / "old.safetensors", std::ios::binary);
    std::string bytes = shmckpt_test::safetensors_bytes(header, data);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  state_dict back = read(dir / "old.safetensors");
  BOOST_TEST(back.at("step").as_int() == 3);
  BOOST_TEST(back.at("a").as_tensor().nbytes() == 8u);
}

BOOST_AUTO_TEST_CASE(tree_at_the_depth_limit_round_trips_and_one_deeper_is_rejected) {
  scratch_dir dir("writer");
  state_dict ok = nested_dicts(64);
  write_safetensors(dir / "ok.safetensors", ok);
  BOOST_TEST((read(dir / "ok.safetensors") == ok));

  state_dict lists{{"l", list{}}};
  value* inner = &lists["l"];
  for (int i = 2; i < 64; ++i) {
    inner->as_list().push_back(list{});
    inner = &inner->as_list().back();
  }
  inner->as_list().push_back(-0.0);
  write_safetensors(dir / "lists.safetensors", lists);
  BOOST_TEST((read(dir / "lists.safetensors") == lists));

  BOOST_CHECK_EXCEPTION(write_safetensors(dir / "deep.safetensors", nested_dicts(65)), error,
                        expect_error(errc::invalid_argument, "deeper than 64"));
  BOOST_TEST(!fs::exists(dir / "deep.safetensors"));
}

BOOST_AUTO_TEST_CASE(written_file_follows_the_safetensors_layout) {
  scratch_dir dir("writer");
  state_dict sd{
      {"flag", random_tensor(dtype::boolean, {3}, 1)},  // 3 bytes: would misalign what follows
      {"w", random_tensor(dtype::f32, {5}, 2)},
      {"h", random_tensor(dtype::f16, {3}, 3)},
      {"d", random_tensor(dtype::f64, {2}, 4)},
      {"packed", random_tensor(dtype::f4, {6}, 5)},
      {"e", tensor::zeros(dtype::i32, {0})},
      {"u", random_tensor(dtype::u8, {2}, 6)},
  };
  fs::path file = dir / "layout.safetensors";
  write_safetensors(file, sd);
  std::string bytes = read_file(file);

  BOOST_TEST_REQUIRE(bytes.size() >= 8u);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  BOOST_TEST_REQUIRE(n <= bytes.size() - 8);
  BOOST_TEST((8 + n) % 8 == 0u);
  std::string header = bytes.substr(8, n);
  BOOST_TEST(header.front() == '{');
  std::size_t close = header.find_last_not_of(' ');
  BOOST_TEST(header[close] == '}');  // only spaces pad the JSON

  boost::json::value doc = boost::json::parse(header);
  const auto& obj = doc.as_object();
  const auto& meta = obj.at("__metadata__").as_object();
  for (const auto& kv : meta) BOOST_TEST(kv.value().is_string());
  // "pt": what the Hugging Face loaders require of PyTorch safetensors files.
  BOOST_TEST(meta.at("format").as_string() == "pt");
  BOOST_TEST(meta.at("shmckpt.version").as_string() == "1");
  boost::json::value sums = boost::json::parse(meta.at("shmckpt.checksums").as_string());

  const char* data = bytes.data() + 8 + n;
  std::uint64_t data_size = bytes.size() - 8 - n;
  std::uint64_t expected = 0;
  std::size_t tensors = 0;
  for (const auto& kv : obj) {  // header order
    if (kv.key() == "__metadata__") continue;
    ++tensors;
    BOOST_TEST_CONTEXT(kv.key()) {
      const auto& e = kv.value().as_object();
      BOOST_TEST(e.size() == 3u);
      auto t = dtype_from_name(std::string(e.at("dtype").as_string()));
      BOOST_TEST_REQUIRE(t.has_value());
      const auto& off = e.at("data_offsets").as_array();
      auto begin = off.at(0).to_number<std::uint64_t>();
      auto end = off.at(1).to_number<std::uint64_t>();
      BOOST_TEST(begin == expected);  // contiguous, in header order
      expected = end;
      // Each tensor naturally aligned in the file, so a mapped view can be used in place.
      std::size_t align = dtype_bits(*t) % 8 ? 1 : std::min<std::size_t>(dtype_bits(*t) / 8, 8);
      BOOST_TEST((8 + n + begin) % align == 0u);
      std::uint64_t h = XXH3_64bits(data + begin, end - begin);
      char hex[17];
      std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
      BOOST_TEST(sums.as_object().at(kv.key()).as_string() == hex);
    }
  }
  BOOST_TEST(tensors == sd.size());
  // Descending element size, state-dict order within a size, packed sub-byte types last.
  std::vector<std::string> order;
  for (const auto& kv : obj)
    if (kv.key() != "__metadata__") order.emplace_back(kv.key());
  BOOST_TEST((order == std::vector<std::string>{"d", "w", "e", "h", "flag", "u", "packed"}));
  BOOST_TEST(expected == data_size);  // no trailing bytes
  BOOST_TEST(fs::file_size(file) == 8 + n + data_size);
  BOOST_TEST(((fs::status(file).permissions() & fs::perms::others_write) == fs::perms::none));
}

BOOST_AUTO_TEST_CASE(checksums_can_be_left_out) {
  scratch_dir dir("writer");
  state_dict sd{{"w", random_tensor(dtype::f32, {4}, 1)}};
  safetensors_write_options opt;
  opt.checksums = false;
  write_safetensors(dir / "x.safetensors", sd, opt);
  auto entries = list_entries(dir / "x.safetensors");
  BOOST_TEST_REQUIRE(entries.size() == 1u);
  BOOST_TEST(entries[0].checksum.empty());
  BOOST_TEST(read_file(dir / "x.safetensors").find("shmckpt.checksums") == std::string::npos);
  read_options ro;
  ro.verify_checksums = true;
  BOOST_TEST((read(dir / "x.safetensors", ro) == sd));

  write_safetensors(dir / "y.safetensors", sd);
  auto with = list_entries(dir / "y.safetensors");
  BOOST_TEST(with[0].checksum.starts_with("xxh3:"));
  BOOST_TEST(with[0].checksum.size() == 5u + 16u);
}

BOOST_AUTO_TEST_CASE(duplicate_flattened_names_fail_and_leave_the_previous_checkpoint_intact) {
  scratch_dir dir("writer");
  fs::path file = dir / "ckpt.safetensors";
  write_safetensors(file, {{"w", random_tensor(dtype::f32, {8}, 1)}});
  std::string before = read_file(file);

  tensor t = random_tensor(dtype::f32, {2}, 2);
  state_dict clash{{"a.b", t}, {"a", dict{{"b", t}}}};
  BOOST_CHECK_EXCEPTION(write_safetensors(file, clash), error,
                        expect_error(errc::invalid_argument, "'a.b'"));
  BOOST_TEST(read_file(file) == before);
  BOOST_TEST((listing(dir.path()) == std::vector<std::string>{"ckpt.safetensors"}));

  state_dict list_clash{{"l", list{t}}, {"l.0", t}};
  BOOST_CHECK_EXCEPTION(write_safetensors(file, list_clash), error,
                        expect_error(errc::invalid_argument, "'l.0'"));
  BOOST_CHECK_EXCEPTION(write_safetensors(file, {{"__metadata__", t}}), error,
                        expect_error(errc::invalid_argument, "reserved"));
  BOOST_CHECK_EXCEPTION(write_safetensors(file, {{std::string("\xff"), t}}), error,
                        expect_error(errc::invalid_argument, "not valid UTF-8"));
  BOOST_TEST(read_file(file) == before);
  BOOST_TEST((listing(dir.path()) == std::vector<std::string>{"ckpt.safetensors"}));
}

BOOST_AUTO_TEST_CASE(cancelled_write_leaves_the_previous_checkpoint_and_no_temp_file) {
  scratch_dir dir("writer");
  fs::path file = dir / "ckpt.safetensors";
  write_safetensors(file, {{"w", random_tensor(dtype::f32, {8}, 1)}});
  std::string before = read_file(file);

  std::atomic<bool> cancel{true};
  safetensors_write_options opt;
  opt.cancel = &cancel;
  BOOST_CHECK_EXCEPTION(write_safetensors(file, {{"w", random_tensor(dtype::f32, {8}, 2)}}, opt),
                        error, expect_error(errc::closed, "cancelled"));
  BOOST_TEST(read_file(file) == before);
  BOOST_TEST((listing(dir.path()) == std::vector<std::string>{"ckpt.safetensors"}));

  cancel = false;  // the same options write normally once the flag is clear
  write_safetensors(file, {{"w", random_tensor(dtype::f32, {8}, 2)}}, opt);
  BOOST_TEST(read_file(file) != before);
}

BOOST_AUTO_TEST_CASE(failure_after_the_data_is_written_removes_the_temp_file) {
  scratch_dir dir("writer");
  // The target is a non-empty directory: everything succeeds up to the rename, which fails.
  fs::create_directory(dir / "target");
  shmckpt_test::write_file(dir / "target" / "keep", "x");
  BOOST_CHECK_EXCEPTION(
      write_safetensors(dir / "target", {{"w", random_tensor(dtype::f32, {8}, 1)}}), error,
      expect_error(errc::io_error, "rename"));
  BOOST_TEST((listing(dir.path()) == std::vector<std::string>{"target"}));
  BOOST_TEST(read_file(dir / "target" / "keep") == "x");
}

BOOST_AUTO_TEST_CASE(parent_that_is_a_regular_file_gives_io_error_naming_the_file) {
  scratch_dir dir("writer");
  shmckpt_test::write_file(dir / "plain", "x");
  fs::path file = dir / "plain" / "ckpt.safetensors";
  BOOST_CHECK_EXCEPTION(write_safetensors(file, {{"w", tensor::zeros(dtype::f32, {1})}}), error,
                        expect_error(errc::io_error, file.string()));
  BOOST_TEST(read_file(dir / "plain") == "x");
  BOOST_CHECK_EXCEPTION(write_safetensors(dir.path() / "", {}), error,
                        [](const error& e) { return has_code(e, errc::invalid_argument); });
}

BOOST_AUTO_TEST_CASE(full_filesystem_fails_early_with_no_space_naming_needed_and_free_bytes) {
  // tmpfs refuses an fallocate larger than the whole filesystem at once, without filling it,
  // so this is safe on a shared machine. The tensor's "bytes" are an untouched address-space
  // reservation: the write must fail before reading any of them.
  struct statfs sfs {};
  if (::statfs("/dev/shm", &sfs) != 0 || sfs.f_type != 0x01021994 /* TMPFS_MAGIC */ ||
      sfs.f_blocks == 0) {
    BOOST_TEST_MESSAGE("skipped: /dev/shm is not a size-limited tmpfs");
    return;
  }
  std::uint64_t fs_size = static_cast<std::uint64_t>(sfs.f_blocks) * sfs.f_bsize;
  std::size_t size = static_cast<std::size_t>(fs_size * 2 + (std::uint64_t{1} << 30));
  void* reservation = ::mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                             -1, 0);
  if (reservation == MAP_FAILED) {
    BOOST_TEST_MESSAGE("skipped: cannot reserve " << size << " bytes of address space");
    return;
  }
  std::string pattern = "/dev/shm/shmckpt-writer-XXXXXX";
  BOOST_TEST_REQUIRE(::mkdtemp(pattern.data()) != nullptr);
  fs::path dir = pattern;
  {
    tensor huge(dtype::u8, {static_cast<std::int64_t>(size)},
                {static_cast<std::byte*>(reservation), size});
    BOOST_CHECK_EXCEPTION(write_safetensors(dir / "big.safetensors", {{"huge", huge}}), error,
                          [&](const error& e) {
                            std::string m = e.what();
                            BOOST_TEST_INFO("message: " << m);
                            // "... needs <file size> bytes, the filesystem has <n> bytes free"
                            auto at = m.find("needs ");
                            std::uint64_t needed =
                                at == std::string::npos ? 0 : std::stoull(m.substr(at + 6));
                            return e.kind() == errc::no_space &&
                                   m.find("big.safetensors") != std::string::npos &&
                                   needed > size && needed <= size + 4096 &&
                                   m.find("bytes free") != std::string::npos;
                          });
  }
  BOOST_TEST(fs::is_empty(dir));
  fs::remove_all(dir);
  ::munmap(reservation, size);
}

BOOST_AUTO_TEST_CASE(large_tensors_and_many_small_ones_cross_chunk_and_iovec_limits) {
  scratch_dir dir("writer");
  state_dict sd;
  sd["big"] = random_tensor(dtype::u8, {(std::int64_t{20} << 20) + 3}, 1);  // 3 chunks, odd end
  list small;
  for (int i = 0; i < 3000; ++i) small.push_back(random_tensor(dtype::i16, {i % 7}, 100 + i));
  sd["small"] = std::move(small);
  sd["after"] = random_tensor(dtype::f64, {(std::int64_t{9} << 20) / 8}, 2);
  write_safetensors(dir / "big.safetensors", sd);
  read_options ro;
  ro.verify_checksums = true;
  BOOST_TEST((read(dir / "big.safetensors", ro) == sd));
}

BOOST_AUTO_TEST_CASE(rewriting_replaces_the_whole_file) {
  scratch_dir dir("writer");
  fs::path file = dir / "ckpt.safetensors";
  state_dict first{{"a", random_tensor(dtype::f32, {100}, 1)}, {"step", 1}};
  state_dict second{{"b", random_tensor(dtype::u8, {3}, 2)}, {"step", 2}};
  write_safetensors(file, first);
  write_safetensors(file, second);
  BOOST_TEST((read(file) == second));
  BOOST_TEST((listing(dir.path()) == std::vector<std::string>{"ckpt.safetensors"}));
}

BOOST_AUTO_TEST_CASE(a_checkpoint_can_be_rewritten_from_its_own_mapped_tensors) {
  scratch_dir dir("writer");
  fs::path file = dir / "ckpt.safetensors";
  state_dict original{{"w", random_tensor(dtype::f32, {1000}, 1)}, {"n", 5}};
  write_safetensors(file, original);
  state_dict mapped = read(file);  // views into a map of the file being replaced
  mapped["n"] = 6;
  write_safetensors(file, mapped);
  state_dict back = read(file);
  BOOST_TEST(back.at("n").as_int() == 6);
  BOOST_TEST((back.at("w") == original.at("w")));
}

BOOST_AUTO_TEST_CASE(default_writer_creates_the_directory_and_names_the_file_by_rank) {
  scratch_dir dir("writer");
  // Rank 3 of 4 alone: its file is written, but the commit barrier names the absent ranks and
  // no manifest is published.
  auto writer = make_default_writer(
      {{"rank", "3"}, {"world_size", "4"}, {"commit_timeout_ms", "100"}});
  state_dict sd{{"w", random_tensor(dtype::f32, {4}, 1)}};
  fs::path target = dir / "run" / "step_100";
  BOOST_CHECK_EXCEPTION(writer->write(sd, target, {}), error, [](const error& e) {
    return has_code(e, errc::timeout) &&
           std::string(e.what()).find("rank(s) 0, 1, 2 of 4 never arrived") != std::string::npos;
  });
  BOOST_TEST(fs::is_regular_file(target / "checkpoint_3.safetensors"));
  BOOST_TEST(!fs::exists(target / "checkpoint.json"));
  BOOST_TEST((read(target, {.allow_incomplete = true}, 3) == sd));
  BOOST_CHECK_EXCEPTION(read(target, {}, 3), error, expect_error(errc::not_found, "incomplete"));

  auto rank0 = make_default_writer({});
  rank0->write(sd, dir / "single", {});
  BOOST_TEST((read(dir / "single") == sd));
  BOOST_TEST(fs::is_regular_file(dir / "single" / "checkpoint.json"));
  BOOST_CHECK_EXCEPTION(make_default_writer({{"rank", "1"}}), error,
                        expect_error(errc::invalid_argument, "world_size"));

  for (std::string bad : {"-1", "x", "", "3x", " 3", "99999999999"}) {
    BOOST_TEST_CONTEXT("rank '" << bad << "'") {
      BOOST_CHECK_EXCEPTION(make_default_writer({{"rank", bad}}), error,
                            expect_error(errc::invalid_argument, "'rank'"));
    }
  }

  std::atomic<bool> cancel{true};
  auto cancelled = make_default_writer({{"rank", "0"}}, &cancel);
  BOOST_CHECK_EXCEPTION(cancelled->write(sd, dir / "c", {}), error,
                        [](const error& e) { return has_code(e, errc::closed); });
  BOOST_TEST(!fs::exists(dir / "c" / "checkpoint_0.safetensors"));
}

BOOST_AUTO_TEST_CASE(checkpoint_file_path_names_the_rank_file) {
  BOOST_TEST(checkpoint_file_path("/a/b", 7) == fs::path("/a/b/checkpoint_7.safetensors"));
  BOOST_TEST(checkpoint_file_path("rel", 0) == fs::path("rel/checkpoint_0.safetensors"));
  BOOST_CHECK_EXCEPTION(checkpoint_file_path("/a", -1), error,
                        [](const error& e) { return has_code(e, errc::invalid_argument); });
}

// ---- the O_DIRECT path and its fallback --------------------------------------------------------
