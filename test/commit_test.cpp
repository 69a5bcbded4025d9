// commit_test — the multi-rank commit on disk: rounds that cannot mix, manifests checked against
// the files they list, re-saving a complete checkpoint, the temporary files of dead writers, and
// the commit's error texts.
//
// Ranks are real processes: each async_checkpointer has its own checkpoint child, and the
// barrier runs in those children. Writers killed or hung mid-write are shmckpt-test-child
// processes (die-mid-write, stall-mid-write).
#define BOOST_TEST_MODULE commit_test
#include "shmckpt/commit.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <boost/test/unit_test.hpp>
#include <fstream>
#include <future>
#include <mutex>
#include <set>
#include <utility>

#include "shmckpt/checkpointer.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "core/progress.hpp"  // lib/: the seam through which the barrier reports progress
#include "shmckpt/writer.hpp"
#include "test_support.hpp"

using namespace shmckpt;
using namespace std::chrono_literals;
using shmckpt::test::expect_error;
using shmckpt::test::temp_dir;
namespace fs = std::filesystem;

namespace {

checkpointer_config config(std::chrono::milliseconds commit_timeout,
                           std::string writer = "default") {
  checkpointer_config c;
  c.process.worker = worker_binary::custom;
  c.process.worker_path = test::test_child();
  c.process.writer_factory = std::move(writer);
  c.process.segment_bytes = 16u << 20;
  c.process.shutdown_timeout = 30s;
  c.commit_timeout = commit_timeout;
  return c;
}

state_dict state(float v, std::int64_t step, std::int64_t n = 256) {
  auto w = tensor::zeros(dtype::f32, {n});
  for (auto& x : w.data_as<float>()) x = v;
  return state_dict{{"model", dict{{"w", w}}}, {"step", step}};
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

std::string replace_once(std::string s, const std::string& from, const std::string& to) {
  auto at = s.find(from);
  BOOST_TEST_REQUIRE(at != std::string::npos, "'" << from << "' not in '" << s << "'");
  return s.replace(at, from.size(), to);
}

// Names in `dir` that are a writer's temporary file (`.<name>.tmp.<...>`).
std::vector<std::string> temp_names(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    auto n = e.path().filename().string();
    if (n.size() > 1 && n[0] == '.' && n.find(".tmp.") != std::string::npos) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}


// Round 1 of a 3-rank save into `dir` in which rank 1 is dead (its trainer crashed, so it never
// saves; a dead checkpoint child alone would be replaced by the next save): ranks 0 and 2 time
// out and leave their arrivals in .commit/. Returns those leftovers' contents by rank.
std::map<int, std::string> failed_round_with_rank_1_dead(const fs::path& dir) {
  std::vector<std::unique_ptr<async_checkpointer>> ranks;
  for (int r = 0; r < 3; ++r) ranks.push_back(make_async_checkpointer(config(1500ms), rank_info{r, 3}));
  std::vector<std::shared_future<void>> w;
  for (int r : {0, 2}) w.push_back(ranks[r]->save(dir, state(1.0f + r, 1)).write);
  for (int r : {0, 1}) expect_error([&] { w[r].get(); }, errc::timeout, "rank(s) 1 of 3 never arrived");
  std::map<int, std::string> left;
  for (int r : {0, 2}) {
    BOOST_TEST_REQUIRE(fs::exists(dir / ".commit" / std::to_string(r)));
    left[r] = slurp(dir / ".commit" / std::to_string(r));
  }
  BOOST_TEST_REQUIRE(!fs::exists(dir / manifest_name));
  return left;
}

int wait_status(pid_t pid) {
  int ws = 0;
  while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  return ws;
}

// A spawned helper process; killed and reaped on destruction unless already reaped, so a failed
// check never leaves it running (it holds the test's output pipe).
struct spawned {
  pid_t pid = -1;
  int out = -1;  // the child's stdout
  spawned() = default;
  spawned(const spawned&) = delete;
  spawned& operator=(const spawned&) = delete;
  spawned(spawned&& o) noexcept : pid(std::exchange(o.pid, -1)), out(std::exchange(o.out, -1)) {}
  int reap() {
    int ws = wait_status(pid);
    pid = -1;
    return ws;
  }
  ~spawned() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      wait_status(pid);
    }
    if (out >= 0) ::close(out);
  }
};

// Starts shmckpt-test-child <mode> <file> with its stdout on a pipe.
spawned spawn_writer(const std::string& mode, const fs::path& file) {
  int p[2];
  BOOST_TEST_REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  ::posix_spawn_file_actions_init(&fa);
  ::posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  auto child = test::test_child().string();
  std::string m = mode, f = file.string();
  char* argv[] = {child.data(), m.data(), f.data(), nullptr};
  spawned s;
  int rc = ::posix_spawn(&s.pid, child.c_str(), &fa, nullptr, argv, environ);
  ::posix_spawn_file_actions_destroy(&fa);
  ::close(p[1]);
  BOOST_TEST_REQUIRE(rc == 0);
  s.out = p[0];
  return s;
}

// A writer SIGKILLed in the middle of writing `dir`/checkpoint_<rank>.safetensors; returns the
// temporary file it left.
std::string writer_killed_mid_write(const fs::path& dir, int rank = 0) {
  fs::create_directories(dir);
  auto s = spawn_writer("die-mid-write", checkpoint_file_path(dir, rank));
  const pid_t pid = s.pid;
  int ws = s.reap();
  BOOST_TEST_REQUIRE((WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL), "status " << ws);
  auto left = temp_names(dir);
  BOOST_TEST_REQUIRE(left.size() == 1u);
  // The name the parent-side cleanup of a dead child matches.
  BOOST_TEST(left[0].rfind(".checkpoint_" + std::to_string(rank) + ".safetensors.tmp." +
                               std::to_string(pid) + ".",
                           0) == 0);
  return left[0];
}

// Mounts a `size` tmpfs on a fresh directory in a private mount namespace; unmounts on
// destruction. `ok` is false (and the test skips) where that is not permitted.
struct small_filesystem {
  fs::path dir;
  bool ok = false;
  explicit small_filesystem(const char* size) {
    if (::geteuid() != 0) return;
    if (::unshare(CLONE_NEWNS) != 0) return;
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return;
    auto tmpl = (fs::temp_directory_path() / "shmckpt-small-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) return;
    dir = tmpl;
    std::string opts = std::string("size=") + size;
    ok = ::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) == 0;
  }
  ~small_filesystem() {
    if (dir.empty()) return;
    if (ok) ::umount2(dir.c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

// A pre-commit hook that fills the filesystem of the checkpoint directory.
class fill_disk_hook : public writer_hook {
 public:
  void pre_commit(const fs::path& dir, const kwargs&) override {
    std::ofstream filler(dir.parent_path() / "filler", std::ios::binary);
    std::string block(4096, 'x');
    while (filler.write(block.data(), block.size())) {
    }
  }
};

}  // namespace

// The tmpfs cases come first: they move this process into a private mount namespace, which
// affects only the calling thread once others exist.
BOOST_AUTO_TEST_CASE(a_disk_full_re_save_leaves_the_old_checkpoint_loadable_and_latest) {
  small_filesystem small("4m");
  if (!small.ok) {
    BOOST_TEST_MESSAGE("skipped: cannot mount a small tmpfs here (needs root)");
    return;
  }
  const fs::path root = small.dir;
  sync_checkpointer ck;
  ck.save(root / "step_1", state(1.0f, 1, 256 << 10));  // 1 MiB
  ck.save(root / "step_2", state(2.0f, 2, 256 << 10));
  BOOST_TEST_REQUIRE((latest_checkpoint(root) == std::optional<fs::path>(root / "step_2")));

  // Re-saving a complete checkpoint is refused before the disk is touched.
  expect_error([&] { ck.save(root / "step_2", state(3.0f, 3, 768 << 10)); },
               errc::invalid_argument, "already holds a complete checkpoint");
  BOOST_TEST((latest_checkpoint(root) == std::optional<fs::path>(root / "step_2")));
  BOOST_TEST((ck.load(root / "step_2").state == state(2.0f, 2, 256 << 10)));

  // A new checkpoint that does not fit fails cleanly and leaves nothing that counts.
  expect_error([&] { ck.save(root / "step_3", state(3.0f, 3, 768 << 10)); }, errc::no_space,
               "not enough disk space");
  BOOST_TEST(temp_names(root / "step_3").empty());
  BOOST_TEST((latest_checkpoint(root) == std::optional<fs::path>(root / "step_2")));

  // Asked to overwrite, the old checkpoint is retired when the save starts (documented): the
  // failed save leaves step_2 incomplete, and step_1 is the latest again.
  expect_error([&] { ck.save(root / "step_2", state(3.0f, 3, 768 << 10), {{"overwrite", "true"}}); },
               errc::no_space, "not enough disk space");
  BOOST_TEST(!is_complete(root / "step_2"));
  BOOST_TEST((latest_checkpoint(root) == std::optional<fs::path>(root / "step_1")));
  BOOST_TEST((ck.load(root / "step_1").state == state(1.0f, 1, 256 << 10)));

}

BOOST_AUTO_TEST_CASE(a_full_disk_while_committing_is_no_space) {
  small_filesystem small("1m");
  if (!small.ok) {
    BOOST_TEST_MESSAGE("skipped: cannot mount a small tmpfs here (needs root)");
    return;
  }
  const fs::path root = small.dir;
  // The rank file is written; then the hook fills the disk, so the manifest cannot be.
  register_writer_hook("fill_disk", [](const kwargs&) { return std::make_unique<fill_disk_hook>(); });
  checkpointer_config c;
  c.process.writer_args["hook"] = "fill_disk";
  sync_checkpointer filling(c);
  expect_error([&] { filling.save(root / "step_1", state(4.0f, 4, 16)); }, errc::no_space,
               "checkpoint.json");
  BOOST_TEST(!is_complete(root / "step_1"));
  BOOST_TEST(temp_names(root / "step_1").empty());
}

BOOST_AUTO_TEST_CASE(after_a_failed_round_a_rank_dead_before_writing_fails_the_next_round) {
  temp_dir dir;
  const fs::path ckpt = dir / "step_1";
  failed_round_with_rank_1_dead(ckpt);  // leaves .commit/0 and .commit/2

  // The restarted job saves the same directory; rank 2 dies before writing (it never saves).
  // Rank 2's arrival from round 1 must not count: ranks 0 and 1 fail, naming rank 2, and
  // nothing is published.
  std::vector<std::unique_ptr<async_checkpointer>> ranks;
  for (int r = 0; r < 3; ++r) ranks.push_back(make_async_checkpointer(config(1500ms), rank_info{r, 3}));
  std::vector<std::shared_future<void>> w;
  for (int r = 0; r < 2; ++r) w.push_back(ranks[r]->save(ckpt, state(10.0f + r, 2)).write);
  for (int r : {0, 1}) expect_error([&] { w[r].get(); }, errc::timeout, "rank(s) 2 of 3 never arrived");
  BOOST_TEST(!fs::exists(ckpt / manifest_name));
  BOOST_TEST(!is_complete(ckpt));
  BOOST_TEST(!latest_checkpoint(dir.path()).has_value());
  expect_error([&] { ranks[0]->load(ckpt); }, errc::not_found, "incomplete");
}

BOOST_AUTO_TEST_CASE(after_a_failed_round_a_late_rank_commits_with_the_others) {
  temp_dir dir;
  const fs::path ckpt = dir / "step_1";
  auto leftovers = failed_round_with_rank_1_dead(ckpt);

  // The restarted job saves the same directory; rank 2 comes late (its writer waits for a
  // gate). Its round-1 arrival must not let rank 0 publish without it.
  std::vector<std::unique_ptr<async_checkpointer>> ranks;
  for (int r = 0; r < 3; ++r)
    ranks.push_back(make_async_checkpointer(config(60s, "gate"), rank_info{r, 3}));
  const auto gate = (dir / "gate").string();
  std::vector<std::shared_future<void>> w;
  for (int r = 0; r < 3; ++r) {
    kwargs kw;
    if (r == 2) kw["gate"] = gate;
    w.push_back(ranks[r]->save(ckpt, state(10.0f + r, 2), kw).write);
  }
  // Let ranks 0 and 1 reach the barrier first (bounded; any order must work).
  test::eventually([&] {
    for (int r : {0, 1}) {
      auto p = ckpt / ".commit" / std::to_string(r);
      if (!fs::exists(p) || (leftovers.count(r) && slurp(p) == leftovers[r])) return false;
    }
    return true;
  });
  BOOST_TEST(!fs::exists(ckpt / manifest_name), "published before rank 2 arrived");
  std::ofstream(gate).put('x');
  for (auto& f : w) f.get();  // every rank succeeds

  auto m = verify_checkpoint(ckpt);
  BOOST_TEST_REQUIRE(m.ranks.size() == 3u);
  std::set<std::string> rounds;
  for (const auto& r : m.ranks) {
    BOOST_TEST(r.round.size() == 32u);
    rounds.insert(r.round);
  }
  BOOST_TEST(rounds.size() == 3u);  // one token per rank
  for (int r = 0; r < 3; ++r) BOOST_TEST((ranks[r]->load(ckpt).state == state(10.0f + r, 2)));
  BOOST_TEST(!fs::exists(ckpt / ".commit"));
}

BOOST_AUTO_TEST_CASE(a_manifest_with_a_wrong_checksum_or_a_foreign_file_is_refused) {
  temp_dir dir;
  sync_checkpointer ck;
  const fs::path ckpt = dir / "step_1";
  ck.save(ckpt, state(1.0f, 1));
  const std::string good = slurp(ckpt / manifest_name);
  const auto recorded = describe_rank_file(ckpt, 0).checksum;
  BOOST_TEST_REQUIRE(good.find(recorded) != std::string::npos);

  // Same size, other header checksum.
  std::string other = recorded;
  other.back() = other.back() == '0' ? '1' : '0';
  spit(ckpt / manifest_name, replace_once(good, recorded, other));
  BOOST_TEST(!is_complete(ckpt));
  BOOST_TEST(!latest_checkpoint(dir.path()).has_value());
  expect_error([&] { read(ckpt); }, errc::corrupt_data, "rank 0");
  expect_error([&] { read(ckpt); }, errc::corrupt_data, other);
  expect_error([&] { read(ckpt); }, errc::corrupt_data, recorded);
  expect_error([&] { ck.load(ckpt); }, errc::corrupt_data, "header checksum");
  BOOST_TEST((read(ckpt, {.allow_incomplete = true}) == state(1.0f, 1)));

  // The entry names another file (a valid copy of rank 0's, same size and checksum).
  fs::copy_file(ckpt / "checkpoint_0.safetensors", ckpt / "other.safetensors");
  spit(ckpt / manifest_name, replace_once(good, "checkpoint_0.safetensors", "other.safetensors"));
  BOOST_TEST(!is_complete(ckpt));
  expect_error([&] { read(ckpt); }, errc::corrupt_data, "other.safetensors");
  BOOST_TEST(!latest_checkpoint(dir.path()).has_value());

  // The file was replaced by another save's file of the same size.
  spit(ckpt / manifest_name, good);
  BOOST_TEST_REQUIRE(is_complete(ckpt));
  write_safetensors(checkpoint_file_path(ckpt, 0), state(2.0f, 1));
  BOOST_TEST(fs::file_size(ckpt / "checkpoint_0.safetensors") ==
             describe_rank_file(ckpt, 0).bytes);
  BOOST_TEST(!is_complete(ckpt));
  expect_error([&] { read(ckpt); }, errc::corrupt_data, "rank 0");
  state_dict tmpl = state(0.0f, 0);
  expect_error([&] { read_into(ckpt, tmpl); }, errc::corrupt_data, "rank 0");
}

BOOST_AUTO_TEST_CASE(manifests_without_round_tokens_still_load) {
  temp_dir dir;
  sync_checkpointer ck;
  const fs::path ckpt = dir / "step_1";
  ck.save(ckpt, state(1.0f, 1));
  auto m = read_manifest(ckpt);
  BOOST_TEST_REQUIRE(m.has_value());
  const std::string token = m->ranks[0].round;
  BOOST_TEST_REQUIRE(token.size() == 32u);
  spit(ckpt / manifest_name, replace_once(slurp(ckpt / manifest_name), ",\"round\":\"" + token + "\"", ""));
  BOOST_TEST(is_complete(ckpt));
  BOOST_TEST(read_manifest(ckpt)->ranks[0].round.empty());
  BOOST_TEST((read(ckpt) == state(1.0f, 1)));
}

BOOST_AUTO_TEST_CASE(re_saving_a_complete_checkpoint_is_refused_unless_overwrite_is_asked) {
  temp_dir dir;
  const fs::path ckpt = dir / "step_1";
  sync_checkpointer ck;
  ck.save(ckpt, state(1.0f, 1));
  const std::string manifest_before = slurp(ckpt / manifest_name);
  const std::string file_before = slurp(ckpt / "checkpoint_0.safetensors");
  expect_error([&] { ck.save(ckpt, state(2.0f, 2)); }, errc::invalid_argument,
               "save into a new directory, or pass overwrite=\"true\"");
  BOOST_TEST(slurp(ckpt / manifest_name) == manifest_before);  // untouched
  BOOST_TEST(slurp(ckpt / "checkpoint_0.safetensors") == file_before);
  BOOST_TEST((ck.load(ckpt).state == state(1.0f, 1)));

  ck.save(ckpt, state(2.0f, 2), {{"overwrite", "true"}});
  BOOST_TEST((ck.load(ckpt).state == state(2.0f, 2)));
  expect_error([&] { ck.save(ckpt, state(3.0f, 3), {{"overwrite", "yes"}}); },
               errc::invalid_argument, "'overwrite'");

  checkpointer_config c;
  c.on_existing = existing_checkpoint::overwrite;
  sync_checkpointer overwriting(c);
  overwriting.save(ckpt, state(3.0f, 3));
  BOOST_TEST((ck.load(ckpt).state == state(3.0f, 3)));

  // Through a checkpoint child, too.
  async_checkpointer async_ck(config(30s));
  expect_error([&] { async_ck.save(ckpt, state(4.0f, 4)).write.get(); }, errc::child_failed,
               "already holds a complete checkpoint");
  BOOST_TEST((ck.load(ckpt).state == state(3.0f, 3)));
}

BOOST_AUTO_TEST_CASE(a_writer_killed_mid_write_leaves_no_temp_file_after_the_next_save) {
  temp_dir dir;
  const fs::path ckpt = dir / "step_1";
  writer_killed_mid_write(ckpt);
  sync_checkpointer ck;
  ck.save(ckpt, state(1.0f, 1));
  BOOST_TEST(temp_names(ckpt).empty());
  BOOST_TEST(is_complete(ckpt));
}

BOOST_AUTO_TEST_CASE(keep_last_removes_what_dead_writers_left_and_nothing_of_live_ones) {
  temp_dir dir;
  sync_checkpointer ck;
  // step_0: a save whose only writer was killed mid-write, long ago.
  writer_killed_mid_write(dir / "step_0");
  fs::last_write_time(dir / "step_0", fs::file_time_type::clock::now() - 1h);
  // step_1: a complete checkpoint with a dead writer's temporary file beside it.
  ck.save(dir / "step_1", state(1.0f, 1));
  writer_killed_mid_write(dir / "step_1", 1);
  fs::last_write_time(dir / "step_1" / manifest_name, fs::file_time_type::clock::now() - 30min);
  // step_old: an old directory where a writer is alive, hung mid-write.
  fs::create_directories(dir / "step_old");
  auto live = spawn_writer("stall-mid-write", checkpoint_file_path(dir / "step_old", 0));
  char buf[8] = {};
  BOOST_TEST_REQUIRE(::read(live.out, buf, 8) == 8);  // "stalled\n"
  fs::last_write_time(dir / "step_old", fs::file_time_type::clock::now() - 1h);
  ck.save(dir / "step_2", state(2.0f, 2));

  auto removed = keep_last(dir.path(), 2);
  BOOST_TEST((removed == std::vector<fs::path>{dir / "step_0"}));
  BOOST_TEST(!fs::exists(dir / "step_0"));
  BOOST_TEST(temp_names(dir / "step_1").empty());
  BOOST_TEST(is_complete(dir / "step_1"));
  BOOST_TEST(temp_names(dir / "step_old").size() == 1u);  // its writer is alive

  auto t = temp_files(dir / "step_old");
  BOOST_TEST_REQUIRE(t.size() == 1u);
  BOOST_TEST(!t[0].stale);
  BOOST_TEST(t[0].bytes > (1u << 20));  // preallocated
  BOOST_TEST(remove_stale_temp_files(dir / "step_old").empty());
  ::kill(live.pid, SIGKILL);
  live.reap();
  t = temp_files(dir / "step_old");
  BOOST_TEST_REQUIRE(t.size() == 1u);
  BOOST_TEST(t[0].stale);
  BOOST_TEST(remove_stale_temp_files(dir / "step_old").size() == 1u);
  BOOST_TEST(temp_names(dir / "step_old").empty());
}

BOOST_AUTO_TEST_CASE(manifest_errors_are_exact_and_checked_before_reading) {
  temp_dir dir;
  sync_checkpointer ck;
  const fs::path ckpt = dir / "s";
  ck.save(ckpt, state(1.0f, 1));
  const std::string good = slurp(ckpt / manifest_name);

  spit(ckpt / manifest_name, replace_once(good, "\"world_size\":1", "\"world_size\":1099511627776"));
  expect_error([&] { read_manifest(ckpt); }, errc::corrupt_data, "world_size 1099511627776");

  // Malformed manifests: the reason, with no source locations of the JSON library.
  for (std::string bad : {std::string("{\"format\":"), replace_once(good, "\"ranks\"", "\"rank_list\""),
                          replace_once(good, "\"world_size\":1", "\"world_size\":\"one\""),
                          std::string("[1,2]")}) {
    BOOST_TEST_CONTEXT(bad) {
      spit(ckpt / manifest_name, bad);
      try {
        read_manifest(ckpt);
        BOOST_FAIL("accepted");
      } catch (const error& e) {
        std::string m = e.what();
        BOOST_TEST(static_cast<int>(e.kind()) == static_cast<int>(errc::corrupt_data));
        BOOST_TEST(m.find("is malformed") != std::string::npos, m);
        BOOST_TEST(m.find("boost") == std::string::npos, m);
        BOOST_TEST(m.find(".hpp") == std::string::npos, m);
        BOOST_TEST(m.find(".ipp") == std::string::npos, m);
      }
    }
  }

  // A huge manifest is refused from its size, before it is read (a sparse file: no disk used).
  {
    std::ofstream(ckpt / manifest_name, std::ios::trunc).put('{');
    fs::resize_file(ckpt / manifest_name, std::uintmax_t{200} << 20);
  }
  expect_error([&] { read_manifest(ckpt); }, errc::corrupt_data, "bytes, more than the");

  // Paths holding NUL: the whole path in the message, never a different file opened.
  std::string with_nul = (dir / "s").string() + std::string("\0tail", 5);
  expect_error([&] { read(with_nul); }, errc::invalid_argument, "s\\x00tail");
  expect_error([&] { read_manifest(with_nul); }, errc::invalid_argument, "\\x00tail");
  BOOST_TEST(!is_complete(with_nul));
  expect_error([&] { ck.save(with_nul, state(1.0f, 1)); }, errc::invalid_argument, "\\x00tail");
}

BOOST_AUTO_TEST_CASE(waiting_at_the_barrier_reports_progress_naming_what_it_waits_for) {
  temp_dir dir;
  std::mutex m;
  std::vector<std::string> seen;
  auto previous = detail::set_progress_reporter([&](std::string_view what) {
    std::lock_guard g(m);
    seen.emplace_back(what);
  });
  checkpointer_config c;
  c.commit_timeout = 300ms;
  // Rank 0 of 3 alone waits for ranks 1 and 2; rank 1 of 2 alone waits for the manifest.
  expect_error([&] { sync_checkpointer(c, rank_info{0, 3}).save(dir / "a", state(1.0f, 1)); },
               errc::timeout, "rank(s) 1, 2 of 3 never arrived");
  expect_error([&] { sync_checkpointer(c, rank_info{1, 2}).save(dir / "b", state(1.0f, 1)); },
               errc::timeout, "rank(s) 0 of 2 never arrived");
  detail::set_progress_reporter(std::move(previous));
  auto has = [&](const std::string& text) {
    return std::find(seen.begin(), seen.end(), text) != seen.end();
  };
  BOOST_TEST(has("waiting at the commit barrier of " + (dir / "a").string() + " for rank(s) 1, 2"));
  BOOST_TEST(has("waiting at the commit barrier of " + (dir / "b").string() +
                 " for rank 0 to publish the manifest"));
}

// A FIFO named checkpoint.json in a sibling directory: the scans answer at once, skip it and say
// why; it is neither picked nor deleted. (A blocking open would hang them: the watchdog then
// opens the FIFO's other end to release them, and the case fails.)
BOOST_AUTO_TEST_CASE(scans_skip_and_report_a_fifo_manifest_without_blocking) {
  temp_dir dir;
  sync_checkpointer ck(checkpointer_config{}, rank_info{0, 1});
  ck.save(dir / "good", state_dict{{"step", 1}});
  fs::create_directories(dir / "fifo");
  BOOST_TEST_REQUIRE(::mkfifo((dir / "fifo" / manifest_name).c_str(), 0644) == 0);
  std::ofstream(dir / "fifo" / "checkpoint_0.safetensors") << "x";
  auto guarded = [&](auto&& call) {
    auto done = std::async(std::launch::async, call);
    if (done.wait_for(5s) != std::future_status::ready) {
      int w = ::open((dir / "fifo" / manifest_name).c_str(), O_WRONLY | O_NONBLOCK);
      BOOST_ERROR("blocked for 5 s on the FIFO");
      done.wait();
      if (w >= 0) ::close(w);
    }
    return done.get();
  };
  std::vector<std::string> skipped;
  auto latest = guarded([&] { return latest_checkpoint(dir.path(), &skipped); });
  BOOST_TEST_REQUIRE(latest.has_value());
  BOOST_TEST(latest->filename() == "good");
  BOOST_TEST_REQUIRE(skipped.size() == 1u);
  BOOST_TEST(skipped[0].find("is a FIFO, not a regular file") != std::string::npos, skipped[0]);
  BOOST_TEST(skipped[0].find("fifo") != std::string::npos, skipped[0]);
  BOOST_TEST(!guarded([&] { return is_complete(dir / "fifo"); }));
  skipped.clear();
  auto removed = guarded([&] { return keep_last(dir.path(), 1, &skipped); });
  BOOST_TEST(removed.empty());
  BOOST_TEST(skipped.size() == 1u);
  BOOST_TEST(fs::exists(fs::symlink_status(dir / "fifo" / manifest_name)));
  expect_error([&] { guarded([&] { read(dir / "fifo"); return 0; }); }, errc::io_error,
               "is a FIFO, not a regular file");
}
