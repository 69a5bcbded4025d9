#define BOOST_TEST_MODULE commit_store_test
// The commit through a store (commit_store.hpp): ranks are threads of this process sharing a
// memory store, committing directly or through checkpointers whose children stop once their
// file is durable.
#include "shmckpt/commit_store.hpp"

#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <future>
#include <mutex>
#include <thread>

#include "shmckpt/checkpointer.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/writer.hpp"
#include "test_support.hpp"

using namespace shmckpt;
using namespace std::chrono_literals;
using shmckpt::test::temp_dir;
namespace fs = std::filesystem;

namespace {

state_dict state(float v, std::int64_t step) {
  auto w = tensor::zeros(dtype::f32, {32, 32});
  for (auto& x : w.data_as<float>()) x = v;
  return state_dict{{"w", w}, {"step", step}};
}

// Rank r's durable file of a round in `dir`, as the child describes it to its parent.
rank_file write_rank(const fs::path& dir, int r, float v) {
  fs::create_directories(dir);
  write_safetensors(checkpoint_file_path(dir, r), state(v, r));
  rank_file me = describe_rank_file(dir, r);
  me.round = new_round_token();
  return me;
}

// Runs `fn(r)` for every rank in `ranks` on its own thread; returns each one's error text
// (empty: it succeeded).
std::map<int, std::string> run_ranks(const std::vector<int>& ranks,
                                     const std::function<void(int)>& fn) {
  std::map<int, std::future<void>> fs_;
  for (int r : ranks) fs_[r] = std::async(std::launch::async, [&fn, r] { fn(r); });
  std::map<int, std::string> out;
  for (auto& [r, f] : fs_) {
    try {
      f.get();
      out[r] = "";
    } catch (const std::exception& e) {
      out[r] = e.what();
    }
  }
  return out;
}

template <class F>
void expect_err(errc kind, const std::string& fragment, F&& f) {
  test::expect_error(std::forward<F>(f), kind, fragment);
}

store_commit_options quick(std::chrono::milliseconds t = 10s) {
  store_commit_options o;
  o.timeout = t;
  return o;
}

}  // namespace

BOOST_AUTO_TEST_CASE(three_ranks_commit_through_a_store_without_any_commit_directory) {
  temp_dir tmp;
  auto dir = tmp / "step_1";
  auto store = make_memory_store();
  std::map<int, rank_file> files;
  for (int r = 0; r < 3; ++r) files[r] = write_rank(dir, r, 1.0f + r);
  auto res = run_ranks({0, 1, 2}, [&](int r) {
    commit_through_store(*store, store_round{"t/1", ""}, dir, files[r], {r, 3}, quick());
  });
  for (auto& [r, why] : res) BOOST_TEST(why == "", "rank " << r);
  auto m = verify_checkpoint(dir);
  BOOST_TEST(m.world_size == 3);
  for (int r = 0; r < 3; ++r) BOOST_TEST(m.ranks[r].round == files[r].round);
  BOOST_TEST(!fs::exists(dir / ".commit"));
  // Each rank removed its own arrival; only rank 0's outcome of the round is left.
  for (int r = 0; r < 3; ++r)
    BOOST_TEST(!store->get("t/1/arrive/" + std::to_string(r), {}).has_value());
  BOOST_TEST(store->get("t/1/outcome", {}).has_value());
}

BOOST_AUTO_TEST_CASE(one_rank_commits_alone) {
  temp_dir tmp;
  auto store = make_memory_store();
  auto me = write_rank(tmp / "a", 0, 1.0f);
  commit_through_store(*store, store_round{"t/1", ""}, tmp / "a", me, {0, 1}, quick());
  BOOST_TEST(is_complete(tmp / "a"));
}

BOOST_AUTO_TEST_CASE(a_rank_that_never_arrives_is_named_and_no_manifest_appears) {
  temp_dir tmp;
  auto dir = tmp / "step_1";
  auto store = make_memory_store();
  std::map<int, rank_file> files;
  for (int r = 0; r < 2; ++r) files[r] = write_rank(dir, r, 1.0f);
  auto res = run_ranks({0, 1}, [&](int r) {
    commit_through_store(*store, store_round{"t/1", ""}, dir, files[r], {r, 3}, quick(1500ms));
  });
  for (int r : {0, 1}) {
    BOOST_TEST(res[r].find("2 of 3 never arrived") != std::string::npos, res[r]);
    BOOST_TEST(res[r].find("no manifest was published") != std::string::npos, res[r]);
  }
  BOOST_TEST(!fs::exists(dir / manifest_name));
  BOOST_TEST(!fs::exists(dir / ".commit"));
}

BOOST_AUTO_TEST_CASE(the_timeout_error_carries_the_timeout_code) {
  temp_dir tmp;
  auto store = make_memory_store();
  auto me = write_rank(tmp / "a", 1, 1.0f);
  expect_err(errc::timeout, "rank(s) 0, 2 of 3 never arrived", [&] {
    commit_through_store(*store, store_round{"t/1", ""}, tmp / "a", me, {1, 3}, quick(200ms));
  });
}

BOOST_AUTO_TEST_CASE(rounds_never_mix_a_failed_rounds_leftovers_are_ignored) {
  temp_dir tmp;
  auto dir = tmp / "step";
  auto store = make_memory_store();
  // Round 1: rank 2 is late; ranks 0 and 1 give up.
  std::map<int, rank_file> first;
  for (int r = 0; r < 3; ++r) first[r] = write_rank(dir, r, 1.0f);
  auto res = run_ranks({0, 1}, [&](int r) {
    commit_through_store(*store, store_round{"t/1", ""}, dir, first[r], {r, 3}, quick(1500ms));
  });
  BOOST_TEST(res[0].find("2 of 3 never arrived") != std::string::npos, res[0]);
  // Rank 2 arrives in round 1 after all: rank 0's failure reaches it at once, with the reason.
  expect_err(errc::timeout, "rank 0 failed the commit", [&] {
    commit_through_store(*store, store_round{"t/1", ""}, dir, first[2], {2, 3}, quick(30s));
  });
  BOOST_TEST(!fs::exists(dir / manifest_name));
  // A leftover of round 1 that looks like round 2's (rank 1's stale arrival under round 2's
  // key, describing a file that is no longer on disk) must not be counted either.
  store->set("t/2/arrive/1", R"({"dir":")" + dir.string() +
                                 R"(","world_size":3,"entry":{"rank":1,"file":"checkpoint_1.safetensors","bytes":1,"checksum":"xxh3:0000000000000000","round":"stale"}})");
  // Round 2: every rank, new files. Rank 1 comes last, after its stale arrival was seen.
  std::map<int, rank_file> second;
  for (int r = 0; r < 3; ++r) second[r] = write_rank(dir, r, 2.0f);
  auto res2 = run_ranks({0, 1, 2}, [&](int r) {
    if (r == 1) std::this_thread::sleep_for(50ms);  // lets rank 0 meet the stale arrival first
    commit_through_store(*store, store_round{"t/2", "t/1"}, dir, second[r], {r, 3}, quick());
  });
  for (auto& [r, why] : res2) BOOST_TEST(why == "", "rank " << r);
  auto m = verify_checkpoint(dir);
  for (int r = 0; r < 3; ++r) BOOST_TEST(m.ranks[r].round == second[r].round);
  BOOST_TEST(!store->get("t/1/outcome", {}).has_value());  // removed once round 2 gathered
}

BOOST_AUTO_TEST_CASE(ranks_out_of_step_fail_the_round_without_a_manifest) {
  temp_dir tmp;
  auto store = make_memory_store();
  auto a = write_rank(tmp / "a", 0, 1.0f);
  auto b = write_rank(tmp / "b", 1, 1.0f);
  auto res = run_ranks({0, 1}, [&](int r) {
    if (r == 0)
      commit_through_store(*store, store_round{"t/1", ""}, tmp / "a", a, {0, 2}, quick());
    else
      commit_through_store(*store, store_round{"t/1", ""}, tmp / "b", b, {1, 2}, quick());
  });
  BOOST_TEST(res[0].find("saves out of step") != std::string::npos, res[0]);
  BOOST_TEST(res[1].find("rank 0 failed the commit") != std::string::npos, res[1]);
  BOOST_TEST(res[1].find("saves out of step") != std::string::npos, res[1]);
  BOOST_TEST(!fs::exists(tmp / "a" / manifest_name));
  BOOST_TEST(!fs::exists(tmp / "b" / manifest_name));
}

BOOST_AUTO_TEST_CASE(a_manifest_without_this_ranks_token_is_not_success) {
  temp_dir tmp;
  auto dir = tmp / "a";
  auto store = make_memory_store();
  auto f0 = write_rank(dir, 0, 1.0f);
  auto f1 = write_rank(dir, 1, 1.0f);
  auto other = f1;
  other.round = new_round_token();  // rank 0 was told of another round's file of rank 1
  store->set("t/1/arrive/1", R"({"dir":")" + dir.string() + R"(","world_size":2,"entry":)" +
                                 R"({"rank":1,"file":"checkpoint_1.safetensors","bytes":)" +
                                 std::to_string(other.bytes) + R"(,"checksum":")" +
                                 other.checksum + R"(","round":")" + other.round + R"("}})");
  commit_through_store(*store, store_round{"t/1", ""}, dir, f0, {0, 2}, quick());
  expect_err(errc::invalid_argument, "does not list rank 1's file of this round", [&] {
    commit_through_store(*store, store_round{"t/1", ""}, dir, f1, {1, 2}, quick());
  });
}

BOOST_AUTO_TEST_CASE(a_cancelled_commit_stops_with_closed) {
  temp_dir tmp;
  auto store = make_memory_store();
  auto me = write_rank(tmp / "a", 0, 1.0f);
  std::atomic<bool> cancel{false};
  auto o = quick(600s);
  o.cancel = &cancel;
  auto f = std::async(std::launch::async, [&] {
    commit_through_store(*store, store_round{"t/1", ""}, tmp / "a", me, {0, 2}, o);
  });
  cancel = true;
  expect_err(errc::closed, "checkpointer was closed", [&] { f.get(); });
}

// ---- through the checkpointers ------------------------------------------------------------

namespace {

std::mutex g_hook_m;
std::vector<std::string> g_hook_calls;  // "pre <rank> <pid>", "post <rank> <pid>"

class recording_hook : public writer_hook {
 public:
  explicit recording_hook(std::string rank) : rank_(std::move(rank)) {}
  void pre_commit(const fs::path&, const kwargs&) override { note("pre"); }
  void post_commit(const fs::path&, const kwargs&) override { note("post"); }

 private:
  void note(const char* what) {
    std::lock_guard g(g_hook_m);
    g_hook_calls.push_back(std::string(what) + " " + rank_ + " " + std::to_string(::getpid()));
  }
  std::string rank_;
};

checkpointer_config store_config(std::shared_ptr<commit_store> store, const std::string& scope) {
  checkpointer_config c;
  c.process.worker = worker_binary::custom;
  c.process.worker_path = test::test_child();
  c.process.segment_bytes = 32u << 20;
  c.process.shutdown_timeout = 30s;
  c.commit_timeout = 30s;
  c.store = std::move(store);
  c.store_scope = scope;
  return c;
}

}  // namespace

BOOST_AUTO_TEST_CASE(async_checkpointers_commit_through_the_store_and_hooks_run_in_the_parent) {
  register_writer_hook("recording", [](const kwargs& a) {
    return std::make_unique<recording_hook>(a.at("rank"));
  });
  temp_dir tmp;
  auto store = make_memory_store();
  std::vector<std::unique_ptr<async_checkpointer>> cks;
  for (int r = 0; r < 3; ++r) {
    auto c = store_config(store, "async");
    c.process.writer_args["hook"] = "recording";
    cks.push_back(std::make_unique<async_checkpointer>(c, rank_info{r, 3}));
  }
  for (int step : {1, 2}) {
    auto dir = tmp / ("step_" + std::to_string(step));
    std::vector<async_checkpointer::save_futures> f;
    for (int r = 0; r < 3; ++r) f.push_back(cks[r]->save(dir, state(float(step), r)));
    for (auto& x : f) x.write.get();
    auto m = verify_checkpoint(dir);
    BOOST_TEST(m.world_size == 3);
    BOOST_TEST(!fs::exists(dir / ".commit"));
    BOOST_TEST((cks[1]->load(dir).state == state(float(step), 1)));
  }
  for (auto& c : cks) c->close();
  std::lock_guard g(g_hook_m);
  BOOST_TEST(g_hook_calls.size() == 12u);  // pre and post, 3 ranks, 2 saves
  for (auto& call : g_hook_calls)  // in the trainer process, not in a child
    BOOST_TEST(call.substr(call.rfind(' ') + 1) == std::to_string(::getpid()), call);
}

BOOST_AUTO_TEST_CASE(an_async_rank_that_never_saves_fails_the_others_after_commit_timeout) {
  temp_dir tmp;
  auto store = make_memory_store();
  std::vector<std::unique_ptr<async_checkpointer>> cks;
  for (int r = 0; r < 2; ++r) {
    auto c = store_config(store, "absent");
    c.commit_timeout = 2s;
    cks.push_back(std::make_unique<async_checkpointer>(c, rank_info{r, 3}));
  }
  auto dir = tmp / "step_1";
  std::vector<async_checkpointer::save_futures> f;
  for (int r = 0; r < 2; ++r) f.push_back(cks[r]->save(dir, state(1.0f, r)));
  for (auto& x : f)
    expect_err(errc::timeout, "2 of 3 never arrived", [&] { x.write.get(); });
  BOOST_TEST(!fs::exists(dir / manifest_name));
  BOOST_TEST(!fs::exists(dir / ".commit"));
  // The next save reports the failure once, then works again with every rank... here only
  // checks that the checkpointers stay usable after a failed round.
  for (auto& c : cks) BOOST_CHECK_THROW(c->close(), error);
}

BOOST_AUTO_TEST_CASE(a_slow_barrier_does_not_trip_the_childs_progress_watchdog) {
  temp_dir tmp;
  auto store = make_memory_store();
  std::vector<std::unique_ptr<async_checkpointer>> cks;
  for (int r = 0; r < 2; ++r) {
    auto c = store_config(store, "slow");
    c.process.progress_timeout = 1s;
    cks.push_back(std::make_unique<async_checkpointer>(c, rank_info{r, 2}));
  }
  int pid0 = cks[0]->process().child_pid();
  auto dir = tmp / "step_1";
  auto f0 = cks[0]->save(dir, state(1.0f, 0));
  // Rank 1 saves only after more than progress_timeout: the barrier waits, nothing hangs.
  BOOST_TEST((f0.write.wait_for(2500ms) == std::future_status::timeout));
  auto f1 = cks[1]->save(dir, state(1.0f, 1));
  f0.write.get();
  f1.write.get();
  BOOST_TEST(is_complete(dir));
  BOOST_TEST(cks[0]->process().child_pid() == pid0);  // never killed
  for (auto& c : cks) c->close();
}

BOOST_AUTO_TEST_CASE(sync_checkpointers_commit_through_the_store) {
  temp_dir tmp;
  auto store = make_memory_store();
  std::vector<std::unique_ptr<sync_checkpointer>> cks;
  for (int r = 0; r < 3; ++r)
    cks.push_back(std::make_unique<sync_checkpointer>(store_config(store, "sync"), rank_info{r, 3}));
  auto res = run_ranks({0, 1, 2}, [&](int r) { cks[r]->save(tmp / "s", state(3.0f, r)); });
  for (auto& [r, why] : res) BOOST_TEST(why == "", "rank " << r);
  BOOST_TEST(is_complete(tmp / "s"));
  BOOST_TEST(!fs::exists(tmp / "s" / ".commit"));
}

BOOST_AUTO_TEST_CASE(close_abandons_a_commit_waiting_for_ranks_that_never_come) {
  temp_dir tmp;
  auto store = make_memory_store();
  auto c = store_config(store, "close");
  c.commit_timeout = 600s;
  c.process.shutdown_timeout = 2s;
  async_checkpointer ck(c, rank_info{0, 2});
  auto f = ck.save(tmp / "a", state(1.0f, 0));
  f.staging.get();
  BOOST_CHECK_THROW(ck.close(), error);  // within shutdown_timeout, not commit_timeout
  expect_err(errc::closed, "", [&] { f.write.get(); });
  BOOST_TEST(!fs::exists(tmp / "a" / manifest_name));
}

BOOST_AUTO_TEST_CASE(a_save_one_rank_never_made_fails_only_its_own_directory) {
  // Rounds are counted per directory: a save that one rank skipped (it threw before it was
  // counted, say) fails that checkpoint, and the next one commits on every rank again.
  temp_dir tmp;
  auto store = make_memory_store();
  std::vector<std::unique_ptr<sync_checkpointer>> cks;
  for (int r = 0; r < 3; ++r) {
    auto c = store_config(store, "skip");
    c.commit_timeout = 2s;
    cks.push_back(std::make_unique<sync_checkpointer>(c, rank_info{r, 3}));
  }
  auto res = run_ranks({0, 2}, [&](int r) { cks[r]->save(tmp / "d1", state(1.0f, r)); });
  // Rank 1 is named (rank 2 too, should a loaded machine delay it past the timeout).
  BOOST_TEST(res[0].find("rank(s) 1") != std::string::npos, res[0]);
  BOOST_TEST(!fs::exists(tmp / "d1" / manifest_name));
  auto res2 = run_ranks({0, 1, 2}, [&](int r) { cks[r]->save(tmp / "d2", state(2.0f, r)); });
  for (auto& [r, why] : res2) BOOST_TEST(why == "", "rank " << r);
  BOOST_TEST(is_complete(tmp / "d2"));
}
