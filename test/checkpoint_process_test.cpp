// checkpoint_process_test — the parent side: start-up and handshake, ordered writes and their
// futures, init and writer failures, close, shared tensors, child priority, descriptor order
// (a lost or hung child: child_failure_test).
#define BOOST_TEST_MODULE checkpoint_process_test
#include "shmckpt/checkpoint_process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <boost/test/unit_test.hpp>
#include <fstream>
#include <set>
#include <sstream>

#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "process_test_support.hpp"
#include "test_support.hpp"

using namespace shmckpt;
using namespace std::chrono_literals;
using shmckpt::test::dev_shm_entries;
using shmckpt::test::env_guard;
using shmckpt::test::expect_error;
using shmckpt::test::temp_dir;

using shmckpt::test::child_options;
using shmckpt::test::slurp;
using shmckpt::test::small_state;


BOOST_AUTO_TEST_CASE(config_defaults_match_the_reference) {
  checkpoint_process_options o;
  BOOST_TEST(o.init_timeout.count() == 30000);
  BOOST_TEST(o.shutdown_timeout.count() == 60000);
  BOOST_TEST(o.progress_timeout.count() == 300000);
  BOOST_TEST(o.writer_factory == "default");
  BOOST_TEST(o.init_function.empty());
  BOOST_TEST(o.rank.rank == 0);
  BOOST_TEST(o.rank.world_size == 1);
}

BOOST_AUTO_TEST_CASE(init_then_close_leaves_no_child_behind) {
  checkpoint_process proc(child_options());
  proc.wait_ready();
  int pid = proc.child_pid();
  BOOST_TEST(pid > 0);
  BOOST_TEST(proc.child_running());
  BOOST_TEST(test::pid_alive(pid));
  proc.close();
  BOOST_TEST(!proc.child_running());
  // Reaped, not a zombie: /proc/<pid> is gone (or reused by an unrelated live process).
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (std::getline(stat, line)) BOOST_TEST(line.find(") Z") == std::string::npos);
  proc.close();  // idempotent
}

BOOST_AUTO_TEST_CASE(write_of_a_ready_state_dict_reaches_the_writer_with_kwargs_and_rank) {
  temp_dir dir;
  auto o = child_options();
  o.rank = {2, 4};
  o.writer_args = {{"flavour", "vanilla"}};
  checkpoint_process proc(o);
  auto f = proc.write(small_state(), dir / "ckpt", {{"epoch", "3"}, {"tag", "x y"}});
  f.get();
  auto rec = slurp(dir / "ckpt" / "record.txt");
  BOOST_TEST(rec.find("kw epoch=3\n") != std::string::npos, rec);
  BOOST_TEST(rec.find("kw tag=x y\n") != std::string::npos, rec);
  BOOST_TEST(rec.find("arg flavour=vanilla\n") != std::string::npos, rec);
  BOOST_TEST(rec.find("arg rank=2\n") != std::string::npos, rec);
  BOOST_TEST(rec.find("arg world_size=4\n") != std::string::npos, rec);
  BOOST_TEST(rec.find("tensor model.w 64\n") != std::string::npos, rec);
  BOOST_TEST(rec.find("int step=10\n") != std::string::npos, rec);
}

BOOST_AUTO_TEST_CASE(write_of_a_future_state_dict_waits_for_it) {
  temp_dir dir;
  checkpoint_process proc(child_options());
  std::promise<state_dict> produce;
  auto f = proc.write(produce.get_future().share(), dir / "later");
  // The state dict does not exist yet, so the write cannot have completed.
  BOOST_TEST((f.wait_for(0s) != std::future_status::ready));
  produce.set_value(small_state());
  f.get();
  BOOST_TEST(slurp(dir / "later" / "record.txt").find("tensor model.w 64") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_failed_future_state_dict_fails_only_its_write) {
  temp_dir dir;
  checkpoint_process proc(child_options());
  std::promise<state_dict> produce;
  auto f1 = proc.write(produce.get_future().share(), dir / "a");
  auto f2 = proc.write(small_state(), dir / "b");
  produce.set_exception(std::make_exception_ptr(std::runtime_error("staging failed")));
  BOOST_CHECK_EXCEPTION(f1.get(), std::runtime_error, [](const std::runtime_error& e) {
    return std::string(e.what()) == "staging failed";
  });
  f2.get();
  BOOST_TEST(std::filesystem::exists(dir / "b" / "record.txt"));
}

BOOST_AUTO_TEST_CASE(a_deferred_future_state_dict_is_produced_and_written) {
  temp_dir dir;
  checkpoint_process proc(child_options());
  auto deferred = std::async(std::launch::deferred, [] { return small_state(); }).share();
  proc.write(deferred, dir / "d").get();
  proc.write(small_state(), dir / "after").get();  // the queue did not stall behind it
  BOOST_TEST(std::filesystem::exists(dir / "d" / "record.txt"));
}

BOOST_AUTO_TEST_CASE(writes_are_served_in_submission_order) {
  temp_dir dir;
  checkpoint_process proc(child_options());
  auto log = (dir / "order.log").string();
  std::promise<state_dict> slow;
  std::vector<std::future<void>> fs;
  fs.push_back(proc.write(small_state(), dir / "1", {{"log", log}}));
  fs.push_back(proc.write(slow.get_future().share(), dir / "2", {{"log", log}}));
  fs.push_back(proc.write(small_state(), dir / "3", {{"log", log}}));
  fs.push_back(proc.write(small_state(), dir / "4", {{"log", log}}));
  // Write 3 and 4 are ready long before 2, yet must wait behind it.
  slow.set_value(small_state());
  for (auto& f : fs) f.get();
  std::string expect;
  for (auto n : {"1", "2", "3", "4"}) expect += (dir / n).string() + "\n";
  BOOST_TEST(slurp(log) == expect);
}

BOOST_AUTO_TEST_CASE(init_slower_than_the_timeout_fails_with_timed_out) {
  auto o = child_options();
  o.init_function = "sleep";
  o.init_args = {{"ms", "3000"}};
  o.init_timeout = 1s;
  checkpoint_process proc(o);
  expect_error([&] { proc.wait_ready(); }, errc::timeout,
               "Timed out after 1s waiting for checkpoint subprocess to initialize");
  expect_error([&] { proc.write(small_state(), "/nonexistent"); }, errc::timeout,
               "Timed out after");
  proc.close();
  BOOST_TEST(!proc.child_running());
}

BOOST_AUTO_TEST_CASE(init_function_runs_with_its_arguments) {
  temp_dir dir;
  auto o = child_options();
  o.init_function = "touch";
  o.init_args = {{"file", (dir / "init-ran").string()}};
  checkpoint_process proc(o);
  proc.wait_ready();
  BOOST_TEST(slurp(dir / "init-ran") == "init");
}

BOOST_AUTO_TEST_CASE(init_failure_carries_the_childs_message) {
  auto o = child_options();
  o.init_function = "fail";
  o.init_args = {{"message", "no GPU here"}};
  checkpoint_process proc(o);
  expect_error([&] { proc.wait_ready(); }, errc::child_failed, "init exploded: no GPU here");
}

BOOST_AUTO_TEST_CASE(writer_factory_failure_carries_the_childs_message) {
  checkpoint_process proc(child_options("fail_factory"));
  expect_error([&] { proc.wait_ready(); }, errc::child_failed, "writer factory exploded");
}

BOOST_AUTO_TEST_CASE(unknown_writer_factory_is_named_in_the_error) {
  checkpoint_process proc(child_options("no_such_writer"));
  expect_error([&] { proc.wait_ready(); }, errc::not_found, "'no_such_writer'");
}

BOOST_AUTO_TEST_CASE(missing_worker_executable_fails_construction_clearly) {
  auto o = child_options();
  o.worker_path = "/nonexistent/shmckpt-worker";
  expect_error([&] { checkpoint_process proc(o); }, errc::not_found,
               "'/nonexistent/shmckpt-worker'");
}

BOOST_AUTO_TEST_CASE(writer_failure_fails_that_write_only) {
  temp_dir dir;
  checkpoint_process proc(child_options());
  auto bad = proc.write(small_state(), dir / "bad", {{"fail", "disk on fire"}});
  auto good = proc.write(small_state(), dir / "good");
  expect_error([&] { bad.get(); }, errc::child_failed, "disk on fire");
  good.get();
  BOOST_TEST(std::filesystem::exists(dir / "good" / "record.txt"));
  BOOST_TEST(proc.child_running());
}

BOOST_AUTO_TEST_CASE(graceful_close_finishes_queued_writes_first) {
  temp_dir dir;
  checkpoint_process proc(child_options());
  std::vector<std::future<void>> fs;
  for (int i = 0; i < 5; ++i) fs.push_back(proc.write(small_state(), dir / std::to_string(i)));
  proc.close();
  for (auto& f : fs) f.get();  // every queued write completed before TERMINATE
  for (int i = 0; i < 5; ++i)
    BOOST_TEST(std::filesystem::exists(dir / std::to_string(i) / "record.txt"));
  BOOST_TEST(!proc.child_running());
  expect_error([&] { proc.write(small_state(), dir / "late").get(); }, errc::closed, "closed");
}

BOOST_AUTO_TEST_CASE(shared_tensor_is_the_same_memory_in_parent_and_child) {
  temp_dir dir;
  checkpoint_process proc(child_options("set_42"));
  auto w = proc.make_tensor(dtype::f32, {2, 2});
  BOOST_TEST(proc.is_shared(w));
  float* addr = w.data_as<float>().data();
  auto priv = tensor::zeros(dtype::f32, {2, 2});
  proc.write(state_dict{{"w", w}}, dir / "s").get();
  proc.write(state_dict{{"w", priv}}, dir / "p").get();
  BOOST_TEST(w.data_as<float>().data() == addr);
  BOOST_TEST(addr[0] == 42.0f);  // the child wrote into the very pages we hold
  BOOST_TEST(addr[1] == 0.0f);
  // A private tensor is copied into the segment, so the child's change does not reach it.
  BOOST_TEST(priv.data_as<float>()[0] == 0.0f);
  BOOST_TEST(!proc.is_shared(priv));
}

BOOST_AUTO_TEST_CASE(state_dict_too_big_for_the_segment_fails_that_write_clearly) {
  temp_dir dir;
  auto o = child_options();
  o.segment_bytes = 1u << 20;
  checkpoint_process proc(o);
  auto big = tensor::zeros(dtype::u8, {4 << 20});
  expect_error([&] { proc.write(state_dict{{"big", big}}, dir / "x").get(); }, errc::no_space,
               "raise segment_bytes");
  // Copies of a failed write are released: a small write still fits.
  proc.write(small_state(), dir / "y").get();
}

BOOST_AUTO_TEST_CASE(default_writer_output_round_trips_to_an_identical_state_dict) {
  temp_dir dir;
  checkpoint_process_options o;
  o.worker_path = std::filesystem::path(test::arg(1)) / "shmckpt-worker";
  o.segment_bytes = 16u << 20;
  checkpoint_process proc(o);
  auto shared = proc.make_tensor(dtype::bf16, {3, 5});
  shared.data_as<std::uint16_t>()[7] = 0x3f80;
  state_dict sd{
      {"model", dict{{"shared", shared}, {"private", tensor::zeros(dtype::i64, {2, 2})}}},
      {"optimizer", dict{{"param_groups", list{dict{{"lr", 1e-3}, {"betas", list{0.9, 0.999}}}}}}},
      {"step", 1234},
      {"done", false},
      {"name", "run"},
      {"nothing", none},
  };
  sd.at("model").as_dict().at("private").as_tensor().data_as<std::int64_t>()[3] = -5;
  proc.write(sd, dir.path()).get();
  auto file = dir / "checkpoint_0.safetensors";
  BOOST_TEST_REQUIRE(std::filesystem::exists(file));
  auto back = read(file, {.copy = false, .verify_checksums = true});
  BOOST_TEST((back == sd));
}

namespace {

// Fields of /proc/<pid>/stat counted from 1 as in proc(5); the name (field 2) may hold spaces.
std::vector<std::string> stat_fields(int pid) {
  std::string line = slurp("/proc/" + std::to_string(pid) + "/stat");
  std::vector<std::string> f{line.substr(0, line.find(' ')), "(comm)"};
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  for (std::string w; rest >> w;) f.push_back(w);
  return f;
}
int stat_nice(int pid) { return std::stoi(stat_fields(pid).at(18)); }
int stat_policy(int pid) { return std::stoi(stat_fields(pid).at(40)); }
int io_priority(int pid) { return static_cast<int>(::syscall(SYS_ioprio_get, 1, pid)); }

}  // namespace

BOOST_AUTO_TEST_CASE(child_runs_with_the_requested_nice_policy_io_class_and_affinity) {
  cpu_set_t mine;
  BOOST_TEST_REQUIRE(::sched_getaffinity(0, sizeof mine, &mine) == 0);
  int last_cpu = -1;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &mine)) last_cpu = c;
  BOOST_TEST_REQUIRE(last_cpu >= 0);
  const int my_nice = stat_nice(::getpid());

  struct variant {
    child_cpu_policy policy;
    int want_policy;
    child_io_class io;
    int want_ioprio;
  };
  for (variant v : {variant{child_cpu_policy::batch, SCHED_BATCH, child_io_class::idle, 3 << 13},
                    variant{child_cpu_policy::idle, SCHED_IDLE, child_io_class::best_effort,
                            (2 << 13) | 6}}) {
    BOOST_TEST_CONTEXT("policy " << v.want_policy) {
      auto o = child_options();
      o.priority.nice = 5;
      o.priority.policy = v.policy;
      o.priority.io_class = v.io;
      o.priority.io_level = 6;
      o.priority.cpus = {last_cpu};
      checkpoint_process proc(o);
      proc.wait_ready();
      int pid = proc.child_pid();
      BOOST_TEST(stat_nice(pid) == std::min(my_nice + 5, 19));
      BOOST_TEST(stat_policy(pid) == v.want_policy);
      BOOST_TEST(io_priority(pid) == v.want_ioprio);
      cpu_set_t set;
      BOOST_TEST_REQUIRE(::sched_getaffinity(pid, sizeof set, &set) == 0);
      BOOST_TEST(CPU_COUNT(&set) == 1);
      BOOST_TEST(CPU_ISSET(last_cpu, &set));
      // And it still works.
      temp_dir dir;
      proc.write(small_state(), dir / "ckpt").get();
      BOOST_TEST(std::filesystem::exists(dir / "ckpt" / "record.txt"));
    }
  }
}

BOOST_AUTO_TEST_CASE(child_left_at_inherit_runs_like_its_parent) {
  auto o = child_options();
  o.priority = child_priority{};
  o.priority.nice = 0;
  o.priority.policy = child_cpu_policy::inherit;
  o.priority.io_class = child_io_class::inherit;
  checkpoint_process proc(o);
  proc.wait_ready();
  int pid = proc.child_pid();
  BOOST_TEST(stat_nice(pid) == stat_nice(::getpid()));
  BOOST_TEST(stat_policy(pid) == stat_policy(::getpid()));
  BOOST_TEST(io_priority(pid) == io_priority(::getpid()));
}

BOOST_AUTO_TEST_CASE(priority_the_child_cannot_apply_fails_its_start_naming_it) {
  auto bad = child_options();
  bad.priority.nice = 40;
  expect_error([&] { checkpoint_process proc(bad); }, errc::invalid_argument,
               "child_priority::nice is 40");
  bad = child_options();
  bad.priority.io_level = 9;
  expect_error([&] { checkpoint_process proc(bad); }, errc::invalid_argument, "io_level is 9");

  // A CPU this machine does not have (or may not use): the child reports it at INIT.
  auto o = child_options();
  o.priority.cpus = {CPU_SETSIZE - 1};
  checkpoint_process proc(o);
  expect_error([&] { proc.wait_ready(); }, errc::child_failed,
               "cannot set the checkpoint child's CPU affinity to " +
                   std::to_string(CPU_SETSIZE - 1));
}

BOOST_AUTO_TEST_CASE(mark_shared_marks_only_trees_wholly_in_the_segment) {
  temp_dir dir;
  checkpoint_process p(child_options());
  p.wait_ready();
  auto s = p.make_tensor(dtype::f32, {4});
  state_dict shared{{"model", dict{{"s", s}}}, {"step", 3}};
  BOOST_TEST(p.mark_shared(shared));
  state_dict mixed{{"model", dict{{"s", s}, {"w", tensor::zeros(dtype::f32, {2})}}}};
  BOOST_TEST(!p.mark_shared(mixed));
  // Another process's segment is not this one's.
  checkpoint_process other(child_options());
  BOOST_TEST(!other.mark_shared(shared));
  // The marked tree (and copies of it) hand over as before.
  p.write(shared, dir.path() / "m").get();
  p.write(state_dict(shared), dir.path() / "n").get();
  BOOST_TEST(slurp(dir.path() / "m" / "record.txt").find("tensor model.s 16") != std::string::npos);
  BOOST_TEST(slurp(dir.path() / "n" / "record.txt").find("int step=3") != std::string::npos);
  // mixed was not marked: its private tensor is copied in, as for any tree.
  p.write(mixed, dir.path() / "x").get();
  BOOST_TEST(slurp(dir.path() / "x" / "record.txt").find("tensor model.w 8") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_marked_large_tree_is_written_from_its_descriptor_in_the_segment) {
  temp_dir dir;
  auto o = child_options();
  o.segment_bytes = 16u << 20;
  checkpoint_process p(o);
  p.wait_ready();
  dict layers;
  for (int i = 0; i < 500; ++i)
    layers.insert_or_assign("layer" + std::to_string(i), p.make_tensor(dtype::f32, {2}));
  state_dict sd{{"model", std::move(layers)}, {"step", 11}};
  const state_dict unmarked = sd;  // holds the tensors' room to the end
  const auto free_unmarked = p.segment_free_bytes();
  BOOST_TEST(p.mark_shared(sd));
  BOOST_TEST(p.segment_free_bytes() < free_unmarked);  // its descriptor lies in the segment
  // Written twice (the tree and a copy): the child reads the tree where it lies.
  p.write(sd, dir.path() / "a").get();
  p.write(state_dict(sd), dir.path() / "b").get();
  for (const char* name : {"a", "b"}) {
    const auto rec = slurp(dir.path() / name / "record.txt");
    BOOST_TEST(rec.find("tensor model.layer0 8") != std::string::npos);
    BOOST_TEST(rec.find("tensor model.layer499 8") != std::string::npos);
    BOOST_TEST(rec.find("int step=11") != std::string::npos);
  }
  // A change after marking is what gets written, not the descriptor of the tree before it.
  state_dict changed = sd;
  changed.at("step") = 12;
  changed.insert_or_assign("extra", p.make_tensor(dtype::u8, {3}));
  p.write(changed, dir.path() / "c").get();
  const auto rec = slurp(dir.path() / "c" / "record.txt");
  BOOST_TEST(rec.find("int step=12") != std::string::npos);
  BOOST_TEST(rec.find("tensor extra 3") != std::string::npos);
  // Its room returns with the last marked copy (each future resolved after its job let go).
  sd = {};
  changed = {};
  BOOST_TEST(p.segment_free_bytes() == free_unmarked);
}

BOOST_AUTO_TEST_CASE(large_descriptors_and_small_writes_go_out_in_order) {
  // A descriptor of many tensors is larger than the socket buffer: it leaves in pieces through
  // the io thread while small writes sent from the caller's thread queue behind it.
  temp_dir dir;
  auto log = dir.path() / "order.log";
  auto o = child_options();
  o.segment_bytes = 64u << 20;
  checkpoint_process p(o);
  p.wait_ready();
  dict many;
  for (int i = 0; i < 20000; ++i) many.insert_or_assign("tensor_number_" + std::to_string(i),
                                                        p.make_tensor(dtype::u8, {1}));
  state_dict big{{"many", std::move(many)}};
  BOOST_TEST(p.mark_shared(big));
  state_dict big_unmarked{{"again", big.at("many")}};  // walked in the caller
  std::vector<std::future<void>> fs;
  std::vector<std::string> expected;
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 5; ++i) {
      auto name = "s" + std::to_string(round) + "_" + std::to_string(i);
      fs.push_back(p.write(state_dict{}, dir.path() / name, {{"log", log.string()}}));
      expected.push_back((dir.path() / name).string());
    }
    auto name = "big" + std::to_string(round);
    fs.push_back(p.write(round == 1 ? big_unmarked : big, dir.path() / name,
                         {{"log", log.string()}}));
    expected.push_back((dir.path() / name).string());
  }
  for (auto& f : fs) f.get();
  std::vector<std::string> got;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) got.push_back(line);
  BOOST_TEST(got == expected, boost::test_tools::per_element());
  BOOST_TEST(slurp(dir.path() / "big2" / "record.txt").find("tensor many.tensor_number_19999 1") !=
             std::string::npos);
}
