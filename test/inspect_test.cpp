// inspect_test — runs the ckpt-inspect binary (its path arrives after "--") and checks exit
// statuses, output and the --json document.
#define BOOST_TEST_MODULE inspect_test
#include <boost/test/unit_test.hpp>

#include <sys/stat.h>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <boost/json.hpp>

#include "hostile/hostile_files.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/writer.hpp"

extern char** environ;

using namespace shmckpt;
using shmckpt_test::read_file;
using shmckpt_test::scratch_dir;
using shmckpt_test::write_file;
namespace fs = std::filesystem;

namespace {

std::string inspect_binary() {
  auto& suite = boost::unit_test::framework::master_test_suite();
  std::string path;
  for (int i = 1; i < suite.argc; ++i) {
    std::string a = suite.argv[i];
    if (a == "--") continue;
    path = a;  // the last argument is the binary (Boost.Test may or may not strip "--")
  }
  return path;
}

struct run_result {
  int status = -1;  // exit status; 128 + signal when killed
  std::string out;
  std::string err;
};

// Runs ckpt-inspect with `args`, capturing stdout and stderr through files in `dir`.
run_result run_inspect(const scratch_dir& dir, std::vector<std::string> args) {
  std::string binary = inspect_binary();
  BOOST_TEST_REQUIRE(fs::is_regular_file(binary), "ckpt-inspect not found at '" << binary << "'");
  fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  posix_spawn_file_actions_t fa;
  ::posix_spawn_file_actions_init(&fa);
  ::posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ::posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv{binary.data()};
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, binary.c_str(), &fa, nullptr, argv.data(), environ);
  ::posix_spawn_file_actions_destroy(&fa);
  BOOST_TEST_REQUIRE(rc == 0, "posix_spawn failed: " << rc);
  int ws = 0;
  while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  run_result r;
  r.status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

tensor random_tensor(dtype t, std::vector<std::int64_t> shape, std::uint64_t seed) {
  tensor x = tensor::zeros(t, std::move(shape));
  std::mt19937_64 rng(seed);
  for (auto& b : x.bytes()) b = static_cast<std::byte>(rng());
  return x;
}

state_dict sample(int rank) {
  return {{"model", dict{{"weight", random_tensor(dtype::f32, {4, 4}, 1 + rank)},
                         {"bias", random_tensor(dtype::bf16, {4}, 2 + rank)}}},
          {"step", 100 + rank},
          {"lr", 0.001},
          {"name", "run \"a\""}};
}

bool one_line_error(const run_result& r) {
  return r.err.starts_with("ckpt-inspect: ") && r.err.find('\n') == r.err.size() - 1;
}

}  // namespace

BOOST_AUTO_TEST_CASE(help_and_version_exit_zero) {
  scratch_dir dir("inspect");
  auto help = run_inspect(dir, {"--help"});
  BOOST_TEST(help.status == 0);
  BOOST_TEST(help.out.find("list") != std::string::npos);
  BOOST_TEST(help.out.find("verify") != std::string::npos);
  auto version = run_inspect(dir, {"--version"});
  BOOST_TEST(version.status == 0);
  BOOST_TEST(version.out.find(std::string(library_version())) != std::string::npos);
  auto list_help = run_inspect(dir, {"list", "--help"});
  BOOST_TEST(list_help.status == 0);
  BOOST_TEST(list_help.out.find("--json") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(usage_errors_exit_two) {
  scratch_dir dir("inspect");
  write_safetensors(dir / "c.safetensors", sample(0));
  std::string file = (dir / "c.safetensors").string();
  for (const auto& args : std::vector<std::vector<std::string>>{
           {},
           {"frobnicate", file},
           {"list"},
           {"list", "--bogus", file},
           {"list", file, "extra"},
           {"--bogus", "list", file},
           {"tree", "--rank", "x", file},
           {"verify"},
       }) {
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    BOOST_TEST_CONTEXT("ckpt-inspect " << joined) {
      auto r = run_inspect(dir, args);
      BOOST_TEST(r.status == 2);
      BOOST_TEST(r.err.starts_with("ckpt-inspect: "));
      BOOST_TEST(r.out.empty());
    }
  }
}

BOOST_AUTO_TEST_CASE(list_prints_every_entry_and_totals) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  write_safetensors(file, sample(0));
  auto r = run_inspect(dir, {"list", file.string()});
  BOOST_TEST(r.status == 0);
  BOOST_TEST(r.err.empty());
  BOOST_TEST(r.out.find("model.weight") != std::string::npos);
  BOOST_TEST(r.out.find("[4, 4]") != std::string::npos);
  BOOST_TEST(r.out.find("BF16") != std::string::npos);
  BOOST_TEST(r.out.find("2 tensors, 72 bytes") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(list_json_is_a_document_matching_the_file) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  write_safetensors(file, sample(0));
  auto r = run_inspect(dir, {"list", "--json", file.string()});
  BOOST_TEST_REQUIRE(r.status == 0);
  boost::json::error_code ec;
  boost::json::value doc = boost::json::parse(r.out, ec);
  BOOST_TEST_REQUIRE(!ec, "not JSON: " << r.out);
  const auto& files = doc.at("files").as_array();
  BOOST_TEST_REQUIRE(files.size() == 1u);
  const auto& tensors = files[0].at("tensors").as_array();
  auto entries = list_entries(file);
  BOOST_TEST_REQUIRE(tensors.size() == entries.size());
  for (std::size_t i = 0; i < entries.size(); ++i) {
    BOOST_TEST(tensors[i].at("name").as_string() == entries[i].name);
    BOOST_TEST(tensors[i].at("dtype").as_string() == dtype_name(entries[i].type));
    BOOST_TEST(tensors[i].at("bytes").to_number<std::uint64_t>() == entries[i].nbytes);
    BOOST_TEST(tensors[i].at("checksum").as_string() == entries[i].checksum);
    BOOST_TEST(tensors[i].at("shape").as_array().size() == entries[i].shape.size());
  }
  BOOST_TEST(doc.at("total_bytes").to_number<std::uint64_t>() == 72u);
  BOOST_TEST(doc.at("tensor_count").to_number<std::uint64_t>() == 2u);
}

BOOST_AUTO_TEST_CASE(list_of_a_directory_covers_every_rank_in_rank_order) {
  scratch_dir dir("inspect");
  for (int rank : {10, 2, 0, 1})
    write_safetensors(checkpoint_file_path(dir.path(), rank), sample(rank));
  write_file(dir / "notes.txt", "not a checkpoint");
  write_file(dir / "checkpoint_01.safetensors", "not canonical: ignored");
  auto r = run_inspect(dir, {"list", "--json", dir.path().string()});
  BOOST_TEST_REQUIRE(r.status == 0);
  boost::json::value doc = boost::json::parse(r.out);
  std::vector<std::int64_t> ranks;
  for (const auto& f : doc.at("files").as_array())
    ranks.push_back(f.at("rank").to_number<std::int64_t>());
  BOOST_TEST((ranks == std::vector<std::int64_t>{0, 1, 2, 10}));
  BOOST_TEST(doc.at("tensor_count").to_number<std::uint64_t>() == 8u);

  auto text = run_inspect(dir, {"list", dir.path().string()});
  BOOST_TEST(text.status == 0);
  BOOST_TEST(text.out.find("total: 4 files, 8 tensors") != std::string::npos);
  BOOST_TEST(text.out.find("checkpoint_2") < text.out.find("checkpoint_10"));
}

BOOST_AUTO_TEST_CASE(unreadable_input_exits_three_with_a_one_line_reason) {
  scratch_dir dir("inspect");
  auto missing = run_inspect(dir, {"list", (dir / "missing.safetensors").string()});
  BOOST_TEST(missing.status == 3);
  BOOST_TEST(one_line_error(missing), missing.err);
  BOOST_TEST(missing.err.find("missing.safetensors") != std::string::npos);

  // One bad rank spoils the directory, and nothing is half-printed.
  fs::create_directory(dir / "ranks");
  write_safetensors(checkpoint_file_path(dir / "ranks", 0), sample(0));
  write_file(checkpoint_file_path(dir / "ranks", 1), "garbage!garbage!");
  for (const char* cmd : {"list", "verify"}) {
    auto r = run_inspect(dir, {cmd, (dir / "ranks").string()});
    BOOST_TEST(r.status == 3);
    BOOST_TEST(r.out.empty(), r.out);
    BOOST_TEST(r.err.find("checkpoint_1.safetensors") != std::string::npos, r.err);
  }

  fs::create_directory(dir / "empty");
  auto empty = run_inspect(dir, {"list", (dir / "empty").string()});
  BOOST_TEST(empty.status == 3);
  BOOST_TEST(one_line_error(empty), empty.err);
}

BOOST_AUTO_TEST_CASE(every_hostile_file_makes_list_exit_three) {
  scratch_dir dir("inspect");
  fs::create_directory(dir / "hostile");
  for (const auto& c : shmckpt_test::hostile_cases()) {
    BOOST_TEST_CONTEXT("hostile case " << c.name) {
      fs::path file = dir / "hostile" / (c.name + ".safetensors");
      write_file(file, c.bytes);
      for (const char* cmd : {"list", "tree", "verify"}) {
        auto r = run_inspect(dir, {cmd, file.string()});
        BOOST_TEST(r.status == 3, cmd << " exited " << r.status);
        BOOST_TEST(one_line_error(r), r.err);
        BOOST_TEST(r.out.empty(), r.out);
        BOOST_TEST(r.err.find(c.expect) != std::string::npos, r.err);
      }
      auto json = run_inspect(dir, {"list", "--json", file.string()});
      BOOST_TEST(json.status == 3);
      BOOST_TEST(json.out.empty());
    }
  }
}

BOOST_AUTO_TEST_CASE(tree_prints_keys_values_and_tensor_shapes) {
  scratch_dir dir("inspect");
  write_safetensors(checkpoint_file_path(dir.path(), 1), sample(1));
  auto r = run_inspect(dir, {"tree", "--rank", "1", dir.path().string()});
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  BOOST_TEST(r.out.find("model: dict (2)\n") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("  weight: tensor F32 [4, 4] (64 bytes)\n") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("step: int 101\n") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("lr: float 0.001\n") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("name: string \"run \\\"a\\\"\"\n") != std::string::npos, r.out);
  auto rank0 = run_inspect(dir, {"tree", dir.path().string()});
  BOOST_TEST(rank0.status == 3);
}

BOOST_AUTO_TEST_CASE(tree_shows_integer_keyed_dicts_and_tuples) {
  scratch_dir dir("inspect");
  fs::path file = dir / "adam.safetensors";
  dict state = dict::with_int_keys();
  state["0"] = dict{{"exp_avg", tensor::zeros(dtype::f32, {2})}};
  write_safetensors(file, {{"state", state}, {"betas", tuple{0.5, 0.25}}});
  auto r = run_inspect(dir, {"tree", file.string()});
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  BOOST_TEST(r.out.find("state: dict (1, int keys)\n") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("  0: dict (1)\n") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("betas: tuple (2)\n") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("  1: float 0.25\n") != std::string::npos, r.out);
}

// (Were a subcommand to block on the FIFO, the suite would hit its CTest timeout and fail.)
BOOST_AUTO_TEST_CASE(a_fifo_named_like_a_rank_file_makes_every_subcommand_exit_three) {
  scratch_dir dir("inspect");
  fs::path ck = dir / "ck";
  fs::create_directory(ck);
  BOOST_TEST_REQUIRE(::mkfifo((ck / "checkpoint_0.safetensors").c_str(), 0644) == 0);
  for (std::vector<std::string> args :
       {std::vector<std::string>{"list", ck.string()}, {"tree", ck.string()},
        {"verify", ck.string()}, {"show", ck.string(), "w"},
        {"list", (ck / "checkpoint_0.safetensors").string()}}) {
    auto r = run_inspect(dir, args);
    BOOST_TEST(r.status == 3, args[0] << ": " << r.out << r.err);
    BOOST_TEST(r.err.find("is a FIFO, not a regular file") != std::string::npos, r.err);
  }
}

BOOST_AUTO_TEST_CASE(verify_passes_good_files_and_exits_one_naming_a_corrupted_tensor) {
  scratch_dir dir("inspect");
  fs::path file = dir / "checkpoint_0.safetensors";
  write_safetensors(file, sample(0));
  auto good = run_inspect(dir, {"verify", dir.path().string()});
  BOOST_TEST(good.status == 0, good.out << good.err);
  BOOST_TEST(good.out.find("ok, 2 tensors verified") != std::string::npos, good.out);

  // Flip the last data byte: it belongs to the last tensor in the file.
  std::string bytes = read_file(file);
  bytes.back() ^= 0x01;
  write_file(file, bytes);
  std::string last = list_entries(file).back().name;
  auto bad = run_inspect(dir, {"verify", file.string()});
  BOOST_TEST(bad.status == 1);
  BOOST_TEST(bad.out.find("tensor '" + last + "': checksum mismatch") != std::string::npos,
             bad.out);
  BOOST_TEST(bad.out.find("1 of 2 tensors do not match") != std::string::npos, bad.out);

  safetensors_write_options no_sums;
  no_sums.checksums = false;
  write_safetensors(file, sample(0), no_sums);
  auto none = run_inspect(dir, {"verify", file.string()});
  BOOST_TEST(none.status == 0);
  BOOST_TEST(none.out.find("no checksums recorded") != std::string::npos, none.out);
}

// ---- show ------------------------------------------------------------------------------------

namespace {

template <class T>
tensor tensor_of(dtype type, std::initializer_list<T> values) {
  auto t = tensor::zeros(type, {static_cast<std::int64_t>(values.size())});
  std::memcpy(t.data(), values.begin(), t.nbytes());
  return t;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_CASE(show_prints_metadata_statistics_and_first_values_of_a_float_tensor) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto w = tensor_of<float>(dtype::f32, {1, -2, 3.5f, nan, inf, -inf, 0.1f});
  write_safetensors(file, {{"model", dict{{"w", w}}}});
  auto r = run_inspect(dir, {"show", file.string(), "model.w"});
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  BOOST_TEST(r.err.empty());
  BOOST_TEST(contains(r.out, file.string() + ": tensor 'model.w'\n"), r.out);
  BOOST_TEST(contains(r.out, "  dtype     F32\n"), r.out);
  BOOST_TEST(contains(r.out, "  shape     [7] (7 elements)\n"), r.out);
  BOOST_TEST(contains(r.out, "  bytes     28 at offset 0"), r.out);
  BOOST_TEST(contains(r.out, "  checksum  xxh3:"), r.out);
  BOOST_TEST(contains(r.out, "  min       -2.0\n"), r.out);
  BOOST_TEST(contains(r.out, "  max       3.5\n"), r.out);
  BOOST_TEST(contains(r.out, "  mean      0.65"), r.out);  // (1 - 2 + 3.5 + 0.1) / 4
  BOOST_TEST(contains(r.out, "  nan       1\n"), r.out);
  BOOST_TEST(contains(r.out, "  inf       2 (+1, -1)\n"), r.out);
  BOOST_TEST(contains(r.out, "  values    [1.0, -2.0, 3.5, nan, inf, -inf, 0.1]\n"), r.out);

  auto few = run_inspect(dir, {"show", "-n", "2", file.string(), "model.w"});
  BOOST_TEST(contains(few.out, "  values    [1.0, -2.0, ...] (first 2 of 7)\n"), few.out);
}

BOOST_AUTO_TEST_CASE(show_decodes_half_precision_and_integer_dtypes) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  write_safetensors(
      file, {{"h", tensor_of<std::uint16_t>(dtype::f16, {0x3C00, 0xC000, 0x3555, 0x7E00})},
             {"b", tensor_of<std::uint16_t>(dtype::bf16, {0x3F80, 0x4049, 0xFF80})},
             {"i", tensor_of<std::int64_t>(dtype::i64, {-5, 7, INT64_MAX})},
             {"u", tensor_of<std::uint64_t>(dtype::u64, {UINT64_MAX, 0})},
             {"m", tensor_of<std::uint8_t>(dtype::boolean, {1, 0, 1})}});
  auto h = run_inspect(dir, {"show", file.string(), "h"});
  BOOST_TEST(contains(h.out, "  values    [1.0, -2.0, 0.33325195, nan]\n"), h.out);
  BOOST_TEST(contains(h.out, "  nan       1\n"), h.out);
  auto b = run_inspect(dir, {"show", file.string(), "b"});
  BOOST_TEST(contains(b.out, "  values    [1.0, 3.140625, -inf]\n"), b.out);
  BOOST_TEST(contains(b.out, "  max       3.140625\n"), b.out);
  auto i = run_inspect(dir, {"show", file.string(), "i"});
  BOOST_TEST(contains(i.out, "  min       -5\n"), i.out);
  BOOST_TEST(contains(i.out, "  max       9223372036854775807\n"), i.out);
  BOOST_TEST(!contains(i.out, "nan"), i.out);
  auto u = run_inspect(dir, {"show", file.string(), "u"});
  BOOST_TEST(contains(u.out, "  max       18446744073709551615\n"), u.out);
  auto m = run_inspect(dir, {"show", file.string(), "m"});
  BOOST_TEST(contains(m.out, "  mean      0.6666666666666666\n"), m.out);
  BOOST_TEST(contains(m.out, "  values    [1, 0, 1]\n"), m.out);
}

BOOST_AUTO_TEST_CASE(show_prints_raw_bytes_for_dtypes_without_arithmetic) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  auto f8 = tensor::zeros(dtype::f8_e4m3, {20});
  for (std::size_t i = 0; i < 20; ++i) f8.bytes()[i] = static_cast<std::byte>(i * 16 + 1);
  write_safetensors(file, {{"f8", f8}, {"c", tensor::zeros(dtype::c64, {1})}});
  auto r = run_inspect(dir, {"show", file.string(), "f8"});
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  BOOST_TEST(contains(r.out, "  raw       01 11 21 31 41 51 61 71 81 91 a1 b1 c1 d1 e1 f1 ... "
                             "(first 16 of 20 bytes)\n"),
             r.out);
  BOOST_TEST(!contains(r.out, "min"), r.out);
  auto c = run_inspect(dir, {"show", "--json", file.string(), "c"});
  BOOST_TEST_REQUIRE(c.status == 0, c.err);
  auto doc = boost::json::parse(c.out);
  BOOST_TEST(doc.at("stats").is_null());
  BOOST_TEST(doc.at("first_bytes").as_string() == "00 00 00 00 00 00 00 00");
}

BOOST_AUTO_TEST_CASE(show_json_is_a_document_with_stats_and_values) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  const float nan = std::numeric_limits<float>::quiet_NaN();
  write_safetensors(file, {{"w", tensor_of<float>(dtype::f32, {0.5f, nan, -1.5f})}, {"step", 7}});
  auto r = run_inspect(dir, {"show", "--json", file.string(), "w"});
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  boost::json::value doc = boost::json::parse(r.out);
  BOOST_TEST(doc.at("key").as_string() == "w");
  BOOST_TEST(doc.at("dtype").as_string() == "F32");
  BOOST_TEST(doc.at("elements").to_number<int>() == 3);
  BOOST_TEST(doc.at("checksum").as_string() == list_entries(file)[0].checksum);
  const auto& stats = doc.at("stats");
  BOOST_TEST(stats.at("min").to_number<double>() == -1.5);
  BOOST_TEST(stats.at("max").to_number<double>() == 0.5);
  BOOST_TEST(stats.at("mean").to_number<double>() == -0.5);
  BOOST_TEST(stats.at("nan").to_number<int>() == 1);
  const auto& values = doc.at("values").as_array();
  BOOST_TEST_REQUIRE(values.size() == 3u);
  BOOST_TEST(values[1].as_string() == "nan");  // JSON has no NaN

  auto step = run_inspect(dir, {"show", "--json", file.string(), "step"});
  BOOST_TEST_REQUIRE(step.status == 0, step.err);
  boost::json::value s = boost::json::parse(step.out);
  BOOST_TEST(s.at("kind").as_string() == "int");
  BOOST_TEST(s.at("value").to_number<int>() == 7);
  auto text = run_inspect(dir, {"show", file.string(), "step"});
  BOOST_TEST(text.out == "step: int 7\n");
}

BOOST_AUTO_TEST_CASE(show_of_an_unknown_key_exits_two_pointing_to_list) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  write_safetensors(file, sample(0));
  auto r = run_inspect(dir, {"show", file.string(), "model.nope"});
  BOOST_TEST(r.status == 2);
  BOOST_TEST(r.out.empty());
  BOOST_TEST(r.err == "ckpt-inspect: no tensor 'model.nope' in " + file.string() +
                          "; try 'ckpt-inspect list " + file.string() + "'\n");
  auto no_key = run_inspect(dir, {"show", file.string()});
  BOOST_TEST(no_key.status == 2);
  BOOST_TEST(contains(no_key.err, "show: missing <key>"), no_key.err);
  auto missing = run_inspect(dir, {"show", (dir / "none.safetensors").string(), "w"});
  BOOST_TEST(missing.status == 3);
  BOOST_TEST(one_line_error(missing), missing.err);
}

// ---- diff ------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(diff_of_identical_checkpoints_exits_zero) {
  scratch_dir dir("inspect");
  write_safetensors(dir / "a.safetensors", sample(0));
  write_safetensors(dir / "b.safetensors", sample(0), {.checksums = false});
  auto r = run_inspect(dir, {"diff", (dir / "a.safetensors").string(),
                             (dir / "b.safetensors").string()});
  BOOST_TEST(r.status == 0, r.out << r.err);
  BOOST_TEST(contains(r.out, "identical: 5 keys\n"), r.out);
  auto json = run_inspect(dir, {"diff", "--json", (dir / "a.safetensors").string(),
                                (dir / "b.safetensors").string()});
  BOOST_TEST(json.status == 0);
  BOOST_TEST(boost::json::parse(json.out).at("identical").as_bool());
}

BOOST_AUTO_TEST_CASE(diff_names_every_kind_of_difference_and_exits_one) {
  scratch_dir dir("inspect");
  state_dict a{{"w", tensor_of<float>(dtype::f32, {1, 2, 3})},
               {"i", tensor_of<std::int32_t>(dtype::i32, {5, -5})},
               {"s", tensor_of<float>(dtype::f32, {1, 2})},
               {"f8", tensor_of<std::uint8_t>(dtype::f8_e5m2, {1, 2, 3})},
               {"optim", dict{{"step", 10}, {"lr", 0.5}, {"betas", list{0.9}}}},
               {"gone", "x"}};
  state_dict b{{"w", tensor_of<float>(dtype::f32, {1, 2.5f, 1})},
               {"i", tensor_of<std::int32_t>(dtype::i32, {5, 5})},
               {"s", tensor_of<float>(dtype::f32, {1, 2, 3})},
               {"f8", tensor_of<std::uint8_t>(dtype::f8_e5m2, {1, 9, 3})},
               {"optim", dict{{"step", 11}, {"lr", 0.5}, {"betas", list{0.9, 0.99}}}},
               {"new", tensor::zeros(dtype::bf16, {2})}};
  fs::path fa = dir / "a.safetensors", fb = dir / "b.safetensors";
  write_safetensors(fa, a);
  write_safetensors(fb, b);
  auto r = run_inspect(dir, {"diff", fa.string(), fb.string()});
  BOOST_TEST(r.status == 1, r.out << r.err);
  BOOST_TEST(r.err.empty(), r.err);
  BOOST_TEST(contains(r.out, "--- a: " + fa.string() + "\n+++ b: " + fb.string() + "\n"), r.out);
  BOOST_TEST(contains(r.out, "~ w: F32 [3]: 2 of 3 elements differ, max |a - b| = 2.0\n"), r.out);
  BOOST_TEST(contains(r.out, "~ i: I32 [2]: 1 of 2 elements differ, max |a - b| = 10\n"), r.out);
  BOOST_TEST(contains(r.out, "~ s: F32 [2] -> F32 [3]\n"), r.out);
  BOOST_TEST(contains(r.out, "~ f8: F8_E5M2 [3]: 1 of 3 bytes differ\n"), r.out);
  BOOST_TEST(contains(r.out, "~ optim.step: int 10 -> int 11\n"), r.out);
  BOOST_TEST(!contains(r.out, "optim.lr"), r.out);
  BOOST_TEST(contains(r.out, "- gone: string \"x\"\n"), r.out);
  BOOST_TEST(contains(r.out, "+ optim.betas.1: float 0.99\n"), r.out);
  BOOST_TEST(contains(r.out, "+ new: tensor BF16 [2]\n"), r.out);
  BOOST_TEST(contains(r.out, "1 only in a, 2 only in b, 5 changed, 2 same\n"), r.out);

  auto j = run_inspect(dir, {"diff", "--json", fa.string(), fb.string()});
  BOOST_TEST_REQUIRE(j.status == 1, j.err);
  boost::json::value doc = boost::json::parse(j.out);
  BOOST_TEST(!doc.at("identical").as_bool());
  BOOST_TEST(doc.at("only_in_a").as_array().size() == 1u);
  BOOST_TEST(doc.at("only_in_b").as_array().size() == 2u);
  const auto& changed = doc.at("changed").as_array();
  BOOST_TEST_REQUIRE(changed.size() == 5u);
  BOOST_TEST(changed[0].at("key").as_string() == "w");
  BOOST_TEST(changed[0].at("change").as_string() == "values");
  BOOST_TEST(changed[0].at("max_abs_diff").to_number<double>() == 2.0);
  BOOST_TEST(changed[1].at("max_abs_diff").to_number<int>() == 10);
  BOOST_TEST(changed[2].at("change").as_string() == "layout");
  BOOST_TEST(changed[3].at("change").as_string() == "bytes");
  BOOST_TEST(changed[4].at("a").to_number<int>() == 10);
  BOOST_TEST(changed[4].at("b").to_number<int>() == 11);
}

BOOST_AUTO_TEST_CASE(diff_usage_and_input_errors) {
  scratch_dir dir("inspect");
  write_safetensors(dir / "a.safetensors", sample(0));
  auto one = run_inspect(dir, {"diff", (dir / "a.safetensors").string()});
  BOOST_TEST(one.status == 2);
  BOOST_TEST(contains(one.err, "diff: missing <b>"), one.err);
  write_file(dir / "bad.safetensors", "garbage!garbage!");
  auto bad = run_inspect(dir, {"diff", (dir / "a.safetensors").string(),
                               (dir / "bad.safetensors").string()});
  BOOST_TEST(bad.status == 3);
  BOOST_TEST(bad.out.empty(), bad.out);
  BOOST_TEST(one_line_error(bad), bad.err);
}

// ---- tree --json -----------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(tree_json_mirrors_the_state_dict) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  write_safetensors(file, {{"model", dict{{"w", tensor::zeros(dtype::f32, {2, 3})}}},
                           {"optim", dict{{"lr", 0.25},
                                          {"nan", std::nan("")},
                                          {"betas", list{1, none}}}},
                           {"flag", true},
                           {"bytes", std::string("\xff", 1)}});
  auto r = run_inspect(dir, {"tree", "--json", file.string()});
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  boost::json::value doc = boost::json::parse(r.out);
  BOOST_TEST(doc.at("path").as_string() == file.string());
  const auto& tree = doc.at("tree").as_object();
  const auto& w = tree.at("model").at("w");
  BOOST_TEST(w.at("tensor").as_string() == "model.w");
  BOOST_TEST(w.at("dtype").as_string() == "F32");
  BOOST_TEST(w.at("shape").as_array().size() == 2u);
  BOOST_TEST(w.at("bytes").to_number<int>() == 24);
  BOOST_TEST(tree.at("optim").at("lr").as_double() == 0.25);
  BOOST_TEST(tree.at("optim").at("nan").as_string() == "nan");
  BOOST_TEST(tree.at("optim").at("betas").as_array()[1].is_null());
  BOOST_TEST(tree.at("flag").as_bool());
  BOOST_TEST(tree.at("bytes").as_string() == "\\xff");
  std::vector<std::string> keys;
  for (const auto& kv : tree) keys.emplace_back(kv.key());
  BOOST_TEST((keys == std::vector<std::string>{"model", "optim", "flag", "bytes"}));
}

// ---- verify progress -------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(verify_draws_progress_only_when_stderr_is_a_terminal) {
  scratch_dir dir("inspect");
  fs::path file = dir / "checkpoint_0.safetensors";
  write_safetensors(file, sample(0));
  // Not a terminal (a file): stderr stays empty.
  auto plain = run_inspect(dir, {"verify", file.string()});
  BOOST_TEST(plain.status == 0);
  BOOST_TEST(plain.err.empty(), plain.err);

  // A pseudo-terminal as stderr.
  int master = ::posix_openpt(O_RDWR | O_NOCTTY);
  BOOST_TEST_REQUIRE(master >= 0);
  BOOST_TEST_REQUIRE(::grantpt(master) == 0);
  BOOST_TEST_REQUIRE(::unlockpt(master) == 0);
  std::string slave = ::ptsname(master);
  std::string binary = inspect_binary();
  fs::path out = dir / "stdout.txt";
  posix_spawn_file_actions_t fa;
  ::posix_spawn_file_actions_init(&fa);
  ::posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ::posix_spawn_file_actions_addopen(&fa, 2, slave.c_str(), O_RDWR | O_NOCTTY, 0);
  std::string cmd = "verify", path = file.string();
  std::vector<char*> argv{binary.data(), cmd.data(), path.data(), nullptr};
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, binary.c_str(), &fa, nullptr, argv.data(), environ);
  ::posix_spawn_file_actions_destroy(&fa);
  BOOST_TEST_REQUIRE(rc == 0);
  // Drain the terminal while the child runs (a full pty buffer would block it).
  std::string err;
  int ws = 0;
  for (;;) {
    pollfd p{master, POLLIN, 0};
    if (::poll(&p, 1, 100) > 0) {
      char buf[4096];
      ssize_t n = ::read(master, buf, sizeof buf);
      if (n > 0) err.append(buf, static_cast<std::size_t>(n));
    }
    pid_t w = ::waitpid(pid, &ws, WNOHANG);
    if (w == pid) break;
  }
  for (;;) {  // what is left after exit
    pollfd p{master, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) break;
    char buf[4096];
    ssize_t n = ::read(master, buf, sizeof buf);
    if (n <= 0) break;
    err.append(buf, static_cast<std::size_t>(n));
  }
  ::close(master);
  BOOST_TEST(WIFEXITED(ws));
  BOOST_TEST(WEXITSTATUS(ws) == 0);
  BOOST_TEST(contains(err, "] 100% 72 B / 72 B"), err);
  BOOST_TEST(contains(err, "\r\033[K"), err);  // erased when done
  BOOST_TEST(contains(read_file(out), "ok, 2 tensors verified"));
}

BOOST_AUTO_TEST_CASE(list_of_a_directory_reports_whether_its_manifest_makes_it_complete) {
  scratch_dir dir("inspect");
  fs::path ckpt = dir / "step_1";
  make_default_writer({})->write(sample(0), ckpt, {});  // publishes checkpoint.json
  auto r = run_inspect(dir, {"list", ckpt.string()});
  BOOST_TEST(r.status == 0);
  BOOST_TEST(r.out.find("manifest: checkpoint.json, world size 1, complete") != std::string::npos,
             r.out);
  auto j = run_inspect(dir, {"list", "--json", ckpt.string()});
  auto doc = boost::json::parse(j.out);
  BOOST_TEST(doc.at("manifest").at("complete").as_bool());

  fs::remove(ckpt / "checkpoint.json");
  r = run_inspect(dir, {"list", ckpt.string()});
  BOOST_TEST(r.status == 0);  // still listed: inspecting a failed save is the point
  BOOST_TEST(r.out.find("manifest: none: INCOMPLETE") != std::string::npos, r.out);
}
