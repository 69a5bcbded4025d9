// inspect_test — runs the ckpt-inspect binary (its path arrives after "--") and checks exit
// statuses, output and the --json document.
#define BOOST_TEST_MODULE inspect_test
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

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
