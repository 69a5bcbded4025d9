#define BOOST_TEST_MODULE checkpointer_test
#include "shmckpt/checkpointer.hpp"

#include <signal.h>

#include <boost/test/unit_test.hpp>
#include <fstream>

#include "shmckpt/commit.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "test_support.hpp"

using namespace shmckpt;
using namespace std::chrono_literals;
using shmckpt::test::env_guard;
using shmckpt::test::expect_error;
using shmckpt::test::temp_dir;
namespace fs = std::filesystem;

namespace {

checkpointer_config config(std::string writer = "default") {
  checkpointer_config c;
  c.process.worker = worker_binary::custom;
  c.process.worker_path = test::test_child();
  c.process.writer_factory = std::move(writer);
  c.process.segment_bytes = 32u << 20;
  c.process.shutdown_timeout = 30s;
  c.commit_timeout = 30s;
  return c;
}

state_dict state(float v, std::int64_t step) {
  auto w = tensor::zeros(dtype::f32, {64, 64});
  for (auto& x : w.data_as<float>()) x = v;
  return state_dict{{"model", dict{{"w", w}}}, {"step", step}};
}

}  // namespace

BOOST_AUTO_TEST_CASE(async_save_is_durable_committed_and_loads_back) {
  temp_dir dir;
  async_checkpointer ck(config());
  auto sd = state(1.0f, 10);
  auto f = ck.save(dir / "step_10", sd);
  f.staging.get();
  sd.at("model").as_dict().at("w").as_tensor().data_as<float>()[0] = 99.0f;  // after staging
  f.write.get();
  BOOST_TEST(is_complete(dir / "step_10"));
  auto back = ck.load(dir / "step_10").state;
  BOOST_TEST((back == state(1.0f, 10)));  // the snapshot, not the later mutation
}

BOOST_AUTO_TEST_CASE(the_next_save_is_staged_while_the_previous_is_written_and_a_third_waits) {
  temp_dir dir;
  async_checkpointer ck(config("gate"));
  auto gate = [&](int i) { return (dir / ("gate" + std::to_string(i))).string(); };
  auto f1 = ck.save(dir / "1", state(1.0f, 1), {{"gate", gate(1)}});
  auto f2 = ck.save(dir / "2", state(2.0f, 2), {{"gate", gate(2)}});
  f1.staging.get();
  f2.staging.get();  // N+1 staged while N is still being written
  BOOST_TEST((f1.write.wait_for(0s) == std::future_status::timeout));
  auto f3 = ck.save(dir / "3", state(3.0f, 3), {{"gate", gate(3)}});
  // Both generations are leased by writes that cannot finish: the third snapshot must wait.
  BOOST_TEST((f3.staging.wait_for(50ms) == std::future_status::timeout));
  std::ofstream(gate(1)).put('x');
  f1.write.get();
  f3.staging.get();  // took over generation 1 only after write 1 was durable
  std::ofstream(gate(2)).put('x');
  std::ofstream(gate(3)).put('x');
  f2.write.get();
  f3.write.get();
  BOOST_TEST((ck.load(dir / "1").state == state(1.0f, 1)));  // not torn by snapshot 3
  BOOST_TEST((ck.load(dir / "2").state == state(2.0f, 2)));
  BOOST_TEST((ck.load(dir / "3").state == state(3.0f, 3)));
}

BOOST_AUTO_TEST_CASE(a_failed_write_surfaces_on_the_next_save) {
  temp_dir dir;
  async_checkpointer ck(config("record"));
  auto f1 = ck.save(dir / "bad", state(1.0f, 1), {{"fail", "quota exceeded"}});
  BOOST_CHECK_THROW(f1.write.get(), error);
  expect_error([&] { ck.save(dir / "next", state(2.0f, 2)); }, errc::child_failed,
               "quota exceeded");
  ck.save(dir / "after", state(3.0f, 3)).write.get();  // reported once, then saving goes on
}

BOOST_AUTO_TEST_CASE(rank_is_detected_from_each_launcher_family) {
  BOOST_TEST(detect_rank_info().rank == 0);
  BOOST_TEST(detect_rank_info().world_size == 1);
  const std::pair<const char*, const char*> families[] = {{"RANK", "WORLD_SIZE"},
                                                          {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                                                          {"PMI_RANK", "PMI_SIZE"},
                                                          {"SLURM_PROCID", "SLURM_NTASKS"}};
  for (auto [r, s] : families) {
    BOOST_TEST_CONTEXT(r) {
      env_guard a(r, "3"), b(s, "8");
      auto info = detect_rank_info();
      BOOST_TEST(info.rank == 3);
      BOOST_TEST(info.world_size == 8);
    }
  }
  {
    env_guard a("RANK", "8"), b("WORLD_SIZE", "8");
    expect_error([] { detect_rank_info(); }, errc::invalid_argument, "RANK=8");
  }
  {
    env_guard a("PMI_RANK", "1");
    expect_error([] { detect_rank_info(); }, errc::invalid_argument, "PMI_SIZE is missing");
  }
}

BOOST_AUTO_TEST_CASE(four_ranks_in_separate_processes_commit_one_checkpoint) {
  temp_dir dir;
  std::vector<std::unique_ptr<async_checkpointer>> ranks;
  for (int r = 0; r < 4; ++r) ranks.push_back(make_async_checkpointer(config(), rank_info{r, 4}));
  std::vector<std::shared_future<void>> writes;
  for (int r = 0; r < 4; ++r)
    writes.push_back(ranks[r]->save(dir / "step_1", state(float(r), 1)).write);
  for (auto& w : writes) w.get();
  auto m = read_manifest(dir / "step_1");
  BOOST_TEST_REQUIRE(m.has_value());
  BOOST_TEST(m->world_size == 4);
  BOOST_TEST_REQUIRE(m->ranks.size() == 4u);
  for (int r = 0; r < 4; ++r) {
    BOOST_TEST(m->ranks[r].file == "checkpoint_" + std::to_string(r) + ".safetensors");
    BOOST_TEST(m->ranks[r].bytes == fs::file_size(dir / "step_1" / m->ranks[r].file));
    BOOST_TEST((ranks[r]->load(dir / "step_1").state == state(float(r), 1)));
  }
  BOOST_TEST(!fs::exists(dir / "step_1" / ".commit"));
}

BOOST_AUTO_TEST_CASE(a_dead_rank_fails_the_others_at_the_barrier_and_publishes_nothing) {
  temp_dir dir;
  auto c = config();
  c.commit_timeout = 1500ms;
  std::vector<std::unique_ptr<async_checkpointer>> ranks;
  for (int r = 0; r < 4; ++r)
    ranks.push_back(make_async_checkpointer(r == 2 ? [&] {
      auto g = c;
      g.process.writer_factory = "gate";  // rank 2 can be held inside its write
      return g;
    }() : c, rank_info{r, 4}));
  std::vector<std::shared_future<void>> good;
  for (int r = 0; r < 4; ++r) good.push_back(ranks[r]->save(dir / "step_1", state(1.0f, 1)).write);
  for (auto& w : good) w.get();

  // Rank 2's child dies in the middle of its step_2 write.
  auto gate = (dir / "gate").string();
  std::vector<std::shared_future<void>> writes;
  for (int r = 0; r < 4; ++r)
    writes.push_back(
        ranks[r]
            ->save(dir / "step_2", state(2.0f, 2), r == 2 ? kwargs{{"gate", gate}} : kwargs{})
            .write);
  BOOST_TEST_REQUIRE(test::eventually([&] { return fs::exists(gate + ".waiting"); }));
  ::kill(ranks[2]->process().child_pid(), SIGKILL);
  expect_error([&] { writes[2].get(); }, errc::child_terminated,
               "Child process terminated unexpectedly");
  for (int r : {0, 1, 3})
    expect_error([&] { writes[r].get(); }, errc::timeout, "rank(s) 2 of 4 never arrived");
  BOOST_TEST(!fs::exists(dir / "step_2" / manifest_name));
  BOOST_TEST(!is_complete(dir / "step_2"));
  expect_error([&] { ranks[0]->load(dir / "step_2"); }, errc::not_found, "incomplete");
  // The previous complete checkpoint is untouched and still the latest.
  BOOST_TEST((latest_checkpoint(dir.path()) == std::optional<fs::path>(dir / "step_1")));
  BOOST_TEST((ranks[0]->load(dir / "step_1").state == state(1.0f, 1)));
}

BOOST_AUTO_TEST_CASE(the_checkpointer_survives_its_child_being_killed) {
  temp_dir dir;
  async_checkpointer ck(config("gate"));
  ck.save(dir / "step_1", state(1.0f, 1)).write.get();
  auto gate = (dir / "gate").string();
  auto lost = ck.save(dir / "step_2", state(2.0f, 2), {{"gate", gate}});
  BOOST_TEST_REQUIRE(test::eventually([&] { return fs::exists(gate + ".waiting"); }));
  const int old_pid = ck.process().child_pid();
  ::kill(old_pid, SIGKILL);
  expect_error([&] { lost.write.get(); }, errc::child_terminated,
               "Child process terminated unexpectedly (killed by signal 9");
  // Reported once more by the next save, which then goes on with a new child.
  expect_error([&] { ck.save(dir / "step_3", state(3.0f, 3)); }, errc::child_terminated,
               "Child process terminated unexpectedly");
  ck.save(dir / "step_3", state(3.0f, 3)).write.get();
  BOOST_TEST(ck.process().child_pid() != old_pid);
  BOOST_TEST(!is_complete(dir / "step_2"));
  BOOST_TEST((latest_checkpoint(dir.path()) == std::optional<fs::path>(dir / "step_3")));
  BOOST_TEST((ck.load(dir / "step_3").state == state(3.0f, 3)));
  ck.close();  // nothing unreported is left
}

BOOST_AUTO_TEST_CASE(close_throws_a_failure_that_no_save_reported) {
  temp_dir dir;
  async_checkpointer ck(config("record"));
  ck.save(dir / "ok", state(1.0f, 1));
  ck.save(dir / "bad", state(2.0f, 2), {{"fail", "quota exceeded"}});  // never looked at
  expect_error([&] { ck.close(); }, errc::child_failed, "quota exceeded");
  ck.close();  // reported once
  expect_error([&] { ck.save(dir / "late", state(3.0f, 3)); }, errc::closed, "closed");
}

BOOST_AUTO_TEST_CASE(close_after_every_failure_was_reported_does_not_throw) {
  temp_dir dir;
  async_checkpointer ck(config("record"));
  ck.save(dir / "bad", state(1.0f, 1), {{"fail", "quota exceeded"}}).write.wait();
  expect_error([&] { ck.save(dir / "next", state(2.0f, 2)); }, errc::child_failed,
               "quota exceeded");
  ck.save(dir / "good", state(3.0f, 3));
  ck.close();
  BOOST_TEST(fs::exists(dir / "good" / "record.txt"));
}

BOOST_AUTO_TEST_CASE(sync_checkpointer_writes_in_process_and_loads_partially) {
  temp_dir dir;
  sync_checkpointer ck;
  auto sd = state(4.0f, 7);
  sd["extra"] = tensor::zeros(dtype::i32, {2});
  ck.save(dir / "s", sd);
  BOOST_TEST(is_complete(dir / "s"));
  auto target = tensor::zeros(dtype::f32, {64, 64});
  auto* addr = target.data();
  state_dict tmpl{{"model", dict{{"w", target}}}, {"step", 0}, {"missing", 1}};
  auto r = ck.load(dir / "s", tmpl);
  BOOST_TEST(target.data() == addr);
  BOOST_TEST(target.data_as<float>()[100] == 4.0f);  // filled in place
  BOOST_TEST(r.state.at("step").as_int() == 7);
  BOOST_TEST((r.missing == std::vector<std::string>{"missing"}));
  expect_error([&] { ck.load(dir / "s", tmpl, {.strict = true}); }, errc::not_found, "missing");
}

BOOST_AUTO_TEST_CASE(latest_checkpoint_and_keep_last_only_trust_complete_checkpoints) {
  temp_dir dir;
  sync_checkpointer ck;
  BOOST_TEST(!latest_checkpoint(dir.path()).has_value());
  for (int i = 1; i <= 4; ++i) ck.save(dir / ("step_" + std::to_string(i)), state(1.0f * i, i));
  // A crashed save: a rank file but no manifest.
  fs::create_directories(dir / "step_0");
  std::ofstream(dir / "step_0" / "checkpoint_0.safetensors") << "partial";
  fs::last_write_time(dir / "step_0", fs::file_time_type::clock::now() - 1h);
  BOOST_TEST((latest_checkpoint(dir.path()) == std::optional<fs::path>(dir / "step_4")));
  auto removed = keep_last(dir.path(), 2);
  BOOST_TEST(removed.size() == 3u);
  BOOST_TEST(!fs::exists(dir / "step_0"));
  BOOST_TEST(!fs::exists(dir / "step_1"));
  BOOST_TEST(!fs::exists(dir / "step_2"));
  BOOST_TEST(is_complete(dir / "step_3"));
  BOOST_TEST(is_complete(dir / "step_4"));
  BOOST_TEST((ck.load(dir / "step_4").state == state(4.0f, 4)));
}
