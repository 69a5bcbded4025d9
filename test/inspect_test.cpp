// inspect_test — runs the ckpt-inspect binary (its path arrives after "--") and checks exit
// statuses, output and the --json document of list, tree and verify (show and diff:
// inspect_show_diff_test).
#define BOOST_TEST_MODULE inspect_test
#include <boost/test/unit_test.hpp>

#include <sys/stat.h>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include <boost/json.hpp>

#include "shmckpt/reader.hpp"
#include "shmckpt/writer.hpp"
#include "inspect_support.hpp"

using namespace shmckpt;
using namespace shmckpt_test;
namespace fs = std::filesystem;

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

BOOST_AUTO_TEST_CASE(list_and_verify_check_the_manifest_against_the_files_and_show_temp_files) {
  scratch_dir dir("inspect");
  fs::path ckpt = dir / "step_1";
  make_default_writer({})->write(sample(0), ckpt, {});
  auto good = run_inspect(dir, {"verify", ckpt.string()});
  BOOST_TEST(good.status == 0, good.out << good.err);
  BOOST_TEST(good.out.find("manifest ok, 1 rank file(s) match it") != std::string::npos, good.out);

  // Rank 0's file replaced by another save's file of the same size: the manifest's header
  // checksum no longer matches.
  write_safetensors(ckpt / "checkpoint_0.safetensors", sample(5));
  auto r = run_inspect(dir, {"list", ckpt.string()});
  BOOST_TEST(r.status == 0);
  BOOST_TEST(r.out.find("does not match the files: INCOMPLETE") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("rank 0") != std::string::npos, r.out);
  auto j = run_inspect(dir, {"list", "--json", ckpt.string()});
  auto doc = boost::json::parse(j.out);
  BOOST_TEST(!doc.at("manifest").at("complete").as_bool());
  BOOST_TEST(doc.at("manifest").at("present").as_bool());
  BOOST_TEST(doc.at("manifest").at("problem").as_string().find("header checksum") !=
             std::string::npos);
  auto bad = run_inspect(dir, {"verify", ckpt.string()});
  BOOST_TEST(bad.status == 1, bad.out << bad.err);
  BOOST_TEST(bad.out.find("manifest does not match the files") != std::string::npos, bad.out);

  // Temporary files: one whose writer is gone (nobody holds its lock), one being written (this
  // process holds the lock, as a writer does).
  write_file(ckpt / ".checkpoint_0.safetensors.tmp.4242.0", "dead");
  fs::path live = ckpt / ".checkpoint_1.safetensors.tmp.4243.0";
  write_file(live, "alive");
  int fd = ::open(live.c_str(), O_WRONLY | O_CLOEXEC);
  BOOST_TEST_REQUIRE(fd >= 0);
  struct flock l {};
  l.l_type = F_WRLCK;
  l.l_whence = SEEK_SET;
  BOOST_TEST_REQUIRE(::fcntl(fd, F_OFD_SETLK, &l) == 0);
  r = run_inspect(dir, {"list", ckpt.string()});
  BOOST_TEST(r.out.find("temporary file: .checkpoint_0.safetensors.tmp.4242.0, 4 bytes, stale: "
                        "its writer is gone") != std::string::npos,
             r.out);
  BOOST_TEST(r.out.find("temporary file: .checkpoint_1.safetensors.tmp.4243.0, 5 bytes, being "
                        "written") != std::string::npos,
             r.out);
  j = run_inspect(dir, {"list", "--json", ckpt.string()});
  doc = boost::json::parse(j.out);
  const auto& temps = doc.at("temp_files").as_array();
  BOOST_TEST_REQUIRE(temps.size() == 2u);
  BOOST_TEST(temps[0].at("stale").as_bool());
  BOOST_TEST(!temps[1].at("stale").as_bool());
  ::close(fd);
}
