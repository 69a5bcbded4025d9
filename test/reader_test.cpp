// reader_test — read(), list_entries() and check_checksums() on good, foreign and hostile files
// (read_into: read_into_test).
#define BOOST_TEST_MODULE reader_test
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <future>
#include <random>

#include "hostile/hostile_files.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/writer.hpp"
#include "reader_support.hpp"
#include "storage/huge_page_watch.hpp"

using namespace shmckpt;
using shmckpt_test::random_tensor;
using shmckpt_test::read_file;
using shmckpt_test::safetensors_bytes;
using shmckpt_test::scratch_dir;
using shmckpt_test::write_file;
using shmckpt_test::expect_error;
using shmckpt_test::file_offset_of;
using shmckpt_test::floats;
using shmckpt_test::int64s;
namespace fs = std::filesystem;


BOOST_AUTO_TEST_CASE(hand_written_spec_file_reads_as_a_flat_dict_in_file_order) {
  scratch_dir dir("reader");
  // Written from the spec, not by our writer: header keys in a different order than the data,
  // foreign metadata, no shmckpt tree.
  std::string header =
      R"({"idx":{"dtype":"I64","shape":[2],"data_offsets":[24,40]},)"
      R"("__metadata__":{"format":"pt"},)"
      R"("weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("bias":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})";
  std::string data = floats({1, 2, 3, 4}) + floats({-1.5f, 0.25f}) + int64s({7, -9});
  fs::path file = dir / "foreign.safetensors";
  write_file(file, safetensors_bytes(header, data));

  state_dict sd = read(file);
  std::vector<std::string> keys;
  for (const auto& [k, v] : sd) keys.push_back(k);
  BOOST_TEST((keys == std::vector<std::string>{"weight", "bias", "idx"}));
  auto w = sd.at("weight").as_tensor().data_as<float>();
  BOOST_TEST((std::vector<float>(w.begin(), w.end()) == std::vector<float>{1, 2, 3, 4}));
  auto b = sd.at("bias").as_tensor().data_as<float>();
  BOOST_TEST((std::vector<float>(b.begin(), b.end()) == std::vector<float>{-1.5f, 0.25f}));
  auto i = sd.at("idx").as_tensor().data_as<std::int64_t>();
  BOOST_TEST((std::vector<std::int64_t>(i.begin(), i.end()) == std::vector<std::int64_t>{7, -9}));
  BOOST_TEST((sd.at("weight").as_tensor().shape() == std::vector<std::int64_t>{2, 2}));

  auto entries = list_entries(file);
  BOOST_TEST_REQUIRE(entries.size() == 3u);
  BOOST_TEST(entries[0].name == "weight");
  BOOST_TEST(entries[1].offset == 16u);
  BOOST_TEST(entries[2].nbytes == 16u);
  BOOST_TEST(entries[2].checksum.empty());

  // Same bytes, header left unpadded: the data section starts misaligned; tensors must still
  // read correctly and be safe to access as their element type.
  fs::path unpadded = dir / "unpadded.safetensors";
  write_file(unpadded, safetensors_bytes(header + " ", data, false));
  state_dict u = read(unpadded);
  BOOST_TEST((u == sd));
  for (const auto& [k, v] : u)
    BOOST_TEST(reinterpret_cast<std::uintptr_t>(v.as_tensor().data()) % 4 == 0u);
}

// Laid out as the safetensors reference writer lays out a torch file with the FNUZ float8
// types (format "pt", entries sorted by alignment then name, space padding).
BOOST_AUTO_TEST_CASE(reference_written_fnuz_tensors_list_and_round_trip) {
  scratch_dir dir("reader");
  std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F8_E4M3FNUZ","shape":[2,2],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"F8_E5M2FNUZ","shape":[3],"data_offsets":[4,7]}})";
  std::string data = "\x01\x02\x80\x7f" "\x10\x20\x30";
  fs::path file = dir / "fnuz.safetensors";
  write_file(file, safetensors_bytes(header, data));

  auto entries = list_entries(file);
  BOOST_TEST_REQUIRE(entries.size() == 2u);
  BOOST_TEST((entries[0].type == dtype::f8_e4m3fnuz));
  BOOST_TEST((entries[1].type == dtype::f8_e5m2fnuz));
  state_dict sd = read(file);
  BOOST_TEST(sd.at("a").as_tensor().nbytes() == 4u);
  // Written again by our writer and read back: same dtypes, shapes and bytes.
  write_safetensors(dir / "again.safetensors", sd);
  state_dict back = read(dir / "again.safetensors");
  BOOST_TEST((back == sd));
  BOOST_TEST(std::memcmp(back.at("b").as_tensor().data(), "\x10\x20\x30", 3) == 0);
}

BOOST_AUTO_TEST_CASE(files_without_tensors_read_as_empty_dicts) {
  scratch_dir dir("reader");
  write_file(dir / "a.safetensors", safetensors_bytes("{}", ""));
  write_file(dir / "b.safetensors", safetensors_bytes(R"({"__metadata__":{}})", ""));
  BOOST_TEST(read(dir / "a.safetensors").empty());
  BOOST_TEST(read(dir / "b.safetensors").empty());
  write_safetensors(dir / "c.safetensors", {{"step", 3}, {"empty", dict{}}});
  state_dict c = read(dir / "c.safetensors");
  BOOST_TEST(c.at("step").as_int() == 3);
  BOOST_TEST(list_entries(dir / "c.safetensors").empty());
}

BOOST_AUTO_TEST_CASE(tensors_view_one_private_copy_on_write_mapping) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  state_dict original{{"a", random_tensor(dtype::f32, {64}, 1)},
                      {"b", random_tensor(dtype::i64, {8}, 2)}};
  write_safetensors(file, original);
  std::string bytes_before = read_file(file);

  state_dict sd = read(file);
  const auto& a = sd.at("a").as_tensor();
  const auto& b = sd.at("b").as_tensor();
  BOOST_TEST(a.owner() != nullptr);
  BOOST_TEST(a.owner().get() == b.owner().get());  // one mapping for the whole file

  a.data_as<float>()[0] = 12345.0f;  // private page: the file must not change
  BOOST_TEST(read_file(file) == bytes_before);
  BOOST_TEST((read(file).at("a") == original.at("a")));

  // The mapping outlives the file's name and the dict it came from.
  tensor kept = b;
  sd = {};
  fs::remove(file);
  BOOST_TEST((kept == original.at("b").as_tensor()));
}

BOOST_AUTO_TEST_CASE(copy_option_gives_private_tensors_independent_of_the_file) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  state_dict original{{"a", random_tensor(dtype::f32, {64}, 1)},
                      {"b", random_tensor(dtype::u8, {5}, 2)}};
  write_safetensors(file, original);
  read_options opt;
  opt.copy = true;
  state_dict sd = read(file, opt);
  BOOST_TEST((sd == original));
  // The copies share one private allocation, which is not the file's mapping: emptying the file
  // (which would make a view's pages vanish, SIGBUS on touch) and removing it change nothing.
  BOOST_TEST(sd.at("a").as_tensor().owner().get() == sd.at("b").as_tensor().owner().get());
  fs::resize_file(file, 0);
  BOOST_TEST((sd == original));
  fs::remove(file);
  BOOST_TEST((sd == original));
  // Writing into a copy changes only that copy.
  sd.at("a").as_tensor().data_as<float>()[0] += 1.0f;
  BOOST_TEST(!(sd.at("a") == original.at("a")));
  BOOST_TEST((sd.at("b") == original.at("b")));
}

// Large enough for the huge-page allocation and for the read on several threads, with tensors
// straddling the 2 MiB boundaries the shares are cut at; a corrupted byte in the second half
// (read by another thread) is still found by verify_checksums in the copied bytes.
BOOST_AUTO_TEST_CASE(copying_read_of_a_large_file_matches_and_verifies_every_tensor) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  state_dict original;
  for (int i = 0; i < 12; ++i)  // 12 x 3.5 MiB + small ones between them: about 42 MiB
    original.insert_or_assign("t" + std::to_string(i),
                              dict{{"w", random_tensor(dtype::f32, {917504}, 10 + i)},
                                   {"b", random_tensor(dtype::u8, {13 + i}, 40 + i)}});
  write_safetensors(file, original);
  read_options opt;
  opt.copy = true;
  opt.verify_checksums = true;
  state_dict sd = read(file, opt);
  BOOST_TEST((sd == original));
  // Laid out as in the file, whose data section starts on a page: every tensor keeps the
  // alignment it has in the file's mapping.
  std::map<std::string, std::uintptr_t> mapped;
  state_dict view = read(file);
  for_each_tensor(view, [&](const std::string& name, const tensor& t) {
    mapped[name] = reinterpret_cast<std::uintptr_t>(t.data());
  });
  std::size_t checked = 0;
  for_each_tensor(sd, [&](const std::string& name, const tensor& t) {
    BOOST_TEST_CONTEXT(name) {
      BOOST_TEST(reinterpret_cast<std::uintptr_t>(t.data()) % 4096 == mapped.at(name) % 4096);
    }
    ++checked;
  });
  BOOST_TEST(checked == 24u);
  sd = {};
  view = {};

  auto last = read(file).at("t11").as_dict().at("w").as_tensor();
  std::uint64_t at = fs::file_size(file) - last.nbytes() / 2;
  last = {};
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(at));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(static_cast<std::streamoff>(at));
    f.write(&c, 1);
  }
  try {
    read(file, opt);
    BOOST_FAIL("a corrupted copy passed verify_checksums");
  } catch (const error& e) {
    BOOST_TEST(e.kind() == errc::corrupt_data);
    BOOST_TEST(std::string(e.what()).find("t11.w") != std::string::npos, e.what());
  }
}

BOOST_AUTO_TEST_CASE(verify_checksums_detects_a_flipped_byte_and_names_the_tensor) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  state_dict original{{"a", random_tensor(dtype::f32, {64}, 1)},
                      {"b", random_tensor(dtype::f32, {64}, 2)},
                      {"c", random_tensor(dtype::u8, {3}, 3)}};
  write_safetensors(file, original);
  read_options verify;
  verify.verify_checksums = true;
  BOOST_TEST((read(file, verify) == original));
  for (const auto& c : check_checksums(file)) BOOST_TEST(c.ok());

  std::string bytes = read_file(file);
  bytes[file_offset_of(file, "b") + 17] ^= 0x04;  // one bit, in the middle of tensor b
  write_file(file, bytes);

  BOOST_CHECK_NO_THROW(read(file));  // without verification the bytes are just bytes
  BOOST_CHECK_EXCEPTION(read(file, verify), error,
                        expect_error(errc::corrupt_data,
                                     {file.string(), "tensor 'b'", "checksum mismatch"}));
  auto checks = check_checksums(file);
  BOOST_TEST_REQUIRE(checks.size() == 3u);
  for (const auto& c : checks) {
    BOOST_TEST_CONTEXT(c.name) {
      BOOST_TEST(c.ok() == (c.name != "b"));
      BOOST_TEST(c.recorded.starts_with("xxh3:"));
    }
  }
}

BOOST_AUTO_TEST_CASE(missing_files_give_not_found_naming_the_file) {
  scratch_dir dir("reader");
  BOOST_CHECK_EXCEPTION(read(dir / "nope.safetensors"), error,
                        expect_error(errc::not_found, {"nope.safetensors", "no such file"}));
  BOOST_CHECK_EXCEPTION(list_entries(dir / "nope.safetensors"), error,
                        expect_error(errc::not_found, {"nope.safetensors"}));
  // A directory means its rank file; without a manifest it is incomplete.
  BOOST_CHECK_EXCEPTION(read(dir.path()), error,
                        expect_error(errc::not_found, {"incomplete", "checkpoint.json"}));
  BOOST_CHECK_EXCEPTION(read(dir.path(), {.allow_incomplete = true}), error,
                        expect_error(errc::not_found, {"checkpoint_0.safetensors"}));
  BOOST_CHECK_EXCEPTION(read(dir.path(), {}, -1), error,
                        expect_error(errc::invalid_argument, {"-1"}));
}

BOOST_AUTO_TEST_CASE(a_directory_reads_the_requested_rank_file) {
  scratch_dir dir("reader");
  for (int r = 0; r < 3; ++r)
    write_safetensors(checkpoint_file_path(dir.path(), r), {{"rank", r}});
  read_options any{.allow_incomplete = true};
  BOOST_TEST(read(dir.path(), any).at("rank").as_int() == 0);
  BOOST_TEST(read(dir.path(), any, 2).at("rank").as_int() == 2);
  BOOST_CHECK_EXCEPTION(read(dir.path(), any, 3), error,
                        expect_error(errc::not_found, {"checkpoint_3.safetensors"}));
}

BOOST_AUTO_TEST_CASE(something_other_than_a_regular_file_gives_io_error) {
  scratch_dir dir("reader");
  fs::create_directory(dir / "checkpoint_0.safetensors");
  BOOST_CHECK_EXCEPTION(
      read(dir.path(), {.allow_incomplete = true}), error,
      expect_error(errc::io_error, {"checkpoint_0.safetensors", "not a regular file"}));
  BOOST_CHECK_EXCEPTION(list_entries("/dev/null"), error,
                        expect_error(errc::io_error, {"/dev/null", "not a regular file"}));
}

// A FIFO, a socket or a device named like a checkpoint: every reading call answers io_error at
// once instead of blocking in open() (a FIFO) or reading a device. Should a call block anyway,
// the watchdog opens the FIFO's other end, which releases it, and the case fails.
BOOST_AUTO_TEST_CASE(fifos_sockets_and_devices_give_io_error_without_blocking) {
  scratch_dir dir("reader");
  fs::path fifo_dir = dir / "fifo", sock_dir = dir / "sock", dev_dir = dir / "dev";
  for (const auto& d : {fifo_dir, sock_dir, dev_dir}) fs::create_directory(d);
  fs::path fifo = fifo_dir / "checkpoint_0.safetensors";
  BOOST_TEST_REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  fs::path sock = sock_dir / "checkpoint_0.safetensors";
  int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  BOOST_TEST_REQUIRE(sock.string().size() < sizeof addr.sun_path);
  std::strcpy(addr.sun_path, sock.c_str());
  BOOST_TEST_REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  fs::create_symlink("/dev/zero", dev_dir / "checkpoint_0.safetensors");

  struct target {
    fs::path dir;
    std::string type;
  };
  for (const auto& t : {target{fifo_dir, "a FIFO"}, target{sock_dir, "a socket"},
                        target{dev_dir, "a character device"}}) {
    fs::path file = t.dir / "checkpoint_0.safetensors";
    std::vector<std::pair<std::string, std::function<void()>>> calls{
        {"read", [&] { read(file); }},
        {"read(dir)", [&] { read(t.dir, {.allow_incomplete = true}); }},
        {"read_into", [&] {
           state_dict tmpl{{"w", tensor::zeros(dtype::f32, {2})}};
           read_into(file, tmpl);
         }},
        {"list_entries", [&] { list_entries(file); }},
        {"check_checksums", [&] { check_checksums(file); }},
    };
    for (auto& [name, call] : calls) {
      BOOST_TEST_CONTEXT(t.type << ", " << name) {
        auto done = std::async(std::launch::async, [&] {
          try {
            call();
            return std::string("no error");
          } catch (const error& e) {
            return std::string(e.kind() == errc::io_error ? "io_error: " : "other: ") + e.what();
          }
        });
        if (done.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
          int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);  // release the blocked open()
          BOOST_ERROR("blocked for 5 s");
          done.wait();
          if (w >= 0) ::close(w);
          continue;
        }
        std::string what = done.get();
        BOOST_TEST(what.starts_with("io_error: "), what);
        BOOST_TEST(what.find("is " + t.type + ", not a regular file") != std::string::npos, what);
        BOOST_TEST(what.find("checkpoint_0.safetensors") != std::string::npos, what);
      }
    }
  }
  ::close(s);
}

BOOST_AUTO_TEST_CASE(hostile_files_are_rejected_as_corrupt_data_naming_file_and_field) {
  scratch_dir dir("reader");
  auto cases = shmckpt_test::hostile_cases();
  BOOST_TEST(cases.size() >= 40u);
  for (const auto& c : cases) {
    BOOST_TEST_CONTEXT("hostile case " << c.name) {
      fs::path file = dir / (c.name + ".safetensors");
      write_file(file, c.bytes);
      auto check =
          expect_error(errc::corrupt_data, {"checkpoint '" + file.string() + "'", c.expect});
      BOOST_CHECK_EXCEPTION(read(file), error, check);
      BOOST_CHECK_EXCEPTION(list_entries(file), error, check);
      BOOST_CHECK_EXCEPTION(check_checksums(file), error, check);
      read_options copy;
      copy.copy = true;
      copy.verify_checksums = true;
      BOOST_CHECK_EXCEPTION(read(file, copy), error, check);
    }
  }
}

BOOST_AUTO_TEST_CASE(every_truncation_of_a_real_checkpoint_is_rejected) {
  scratch_dir dir("reader");
  fs::path good = dir / "good.safetensors";
  write_safetensors(good, {{"w", random_tensor(dtype::f32, {4}, 1)},
                           {"meta", dict{{"step", 10}, {"lr", 0.5}}}});
  std::string bytes = read_file(good);
  fs::path cut = dir / "cut.safetensors";
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    BOOST_TEST_CONTEXT("first " << len << " bytes") {
      write_file(cut, std::string_view(bytes).substr(0, len));
      BOOST_CHECK_EXCEPTION(read(cut), error, [](const error& e) {
        return e.kind() == errc::corrupt_data;
      });
    }
  }
}

BOOST_AUTO_TEST_CASE(any_single_byte_change_in_the_header_is_rejected_or_harmless) {
  // A small mutation fuzzer over the header: each result is either a valid file or
  // error(corrupt_data) — never a crash, a hang or another kind of exception.
  scratch_dir dir("reader");
  fs::path good = dir / "good.safetensors";
  write_safetensors(good, {{"w", random_tensor(dtype::f32, {4}, 1)},
                           {"l", list{1, "s", none, true}},
                           {"b", random_tensor(dtype::bf16, {3}, 2)}});
  std::string bytes = read_file(good);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  fs::path mutated = dir / "m.safetensors";
  std::size_t rejected = 0;
  for (std::size_t pos = 0; pos < 8 + n; ++pos) {
    for (char replacement : {'\0', '"', '9', '}', '\xff'}) {
      if (bytes[pos] == replacement) continue;
      std::string m = bytes;
      m[pos] = replacement;
      write_file(mutated, m);
      try {
        read(mutated);
        list_entries(mutated);
      } catch (const error& e) {
        BOOST_TEST_CONTEXT("byte " << pos << " := " << int(replacement)) {
          BOOST_TEST((e.kind() == errc::corrupt_data), e.what());
        }
        ++rejected;
      }
    }
  }
  BOOST_TEST(rejected >= 2 * (8 + n));  // most changes must be caught, not just survived
}

BOOST_AUTO_TEST_CASE(list_entries_gives_contiguous_entries_with_checksums) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  write_safetensors(file, {{"x", random_tensor(dtype::u8, {3}, 1)},
                           {"y", random_tensor(dtype::f64, {2, 2}, 2)},
                           {"z", random_tensor(dtype::i32, {5}, 3)}});
  auto entries = list_entries(file);
  BOOST_TEST_REQUIRE(entries.size() == 3u);
  std::uint64_t expected = 0;
  for (const auto& e : entries) {
    BOOST_TEST(e.offset == expected);
    expected += e.nbytes;
    BOOST_TEST(e.checksum.size() == 21u);
    BOOST_TEST(e.checksum.find_first_not_of("0123456789abcdef", 5) == std::string::npos);
  }
  // Largest alignment first, so F64 leads; key order lives in the tree, not here.
  BOOST_TEST(entries[0].name == "y");
  BOOST_TEST((entries[0].type == dtype::f64));
  BOOST_TEST((entries[0].shape == std::vector<std::int64_t>{2, 2}));
  std::vector<std::string> keys;
  for (const auto& [k, v] : read(file)) keys.push_back(k);
  BOOST_TEST((keys == std::vector<std::string>{"x", "y", "z"}));
}

// The copying read faults its memory in chunks while huge pages come quickly and gives every
// share's rest 4 KiB pages from the first slow chunk (lib/storage/huge_page_watch.hpp). The
// machine decides what "slow" is, so the decision is tested with rates no machine reaches.
BOOST_AUTO_TEST_CASE(huge_page_watch_switches_every_share_to_small_pages_after_a_slow_chunk) {
  using shmckpt::detail::huge_page_watch;
  constexpr std::size_t n = 4 * huge_page_watch::chunk;
  void* m = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  BOOST_REQUIRE(m != MAP_FAILED);
  auto* p = static_cast<std::byte*>(m);
  const std::size_t c = huge_page_watch::chunk;

  // No huge pages asked for: nothing is watched, every share is read in one piece.
  BOOST_TEST(huge_page_watch(false).settled());

  // Every chunk fast (a rate of 0 bytes/s): the watch keeps faulting chunk by chunk.
  huge_page_watch quick(true, 0.0);
  bool switched = false;
  BOOST_TEST(quick.fault_in(p, c, {p + c, n - c}, switched) == 0);
  BOOST_TEST(!quick.settled());
  BOOST_TEST(!switched);
  BOOST_TEST(static_cast<int>(p[c - 1]) == 0);  // faulted in: readable, zero

  // Every chunk slow (10^18 bytes/s): the first fault-in turns the watch to small pages, and
  // each share advises its own rest once, whether it saw the slow chunk or not.
  huge_page_watch slow(true, 1e18);
  bool first = false, second = false;
  BOOST_TEST(slow.fault_in(p, c, {p + c, c}, first) == 0);
  BOOST_TEST(slow.settled());
  BOOST_TEST(slow.switched_to_small_pages());
  BOOST_TEST(first);
  BOOST_TEST(slow.fault_in(nullptr, 0, {p + 2 * c, 2 * c}, second) == 0);
  BOOST_TEST(second);
  p[n - 1] = std::byte{7};  // the rest is ordinary memory
  BOOST_TEST(static_cast<int>(p[n - 1]) == 7);
  ::munmap(m, n);
}
