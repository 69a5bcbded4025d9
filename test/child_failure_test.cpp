// child_failure_test — a child that dies, hangs, ignores TERMINATE or outlives its parent: the
// write it served fails with an error naming what happened, the next write gets a new child,
// nothing is left behind (temporary files, /dev/shm entries, descriptors).
#define BOOST_TEST_MODULE child_failure_test
#include "shmckpt/checkpoint_process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <boost/test/unit_test.hpp>
#include <fstream>

#include "shmckpt/error.hpp"
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

BOOST_AUTO_TEST_CASE(child_ignoring_terminate_is_killed_after_the_shutdown_timeout) {
  env_guard mode("SHMCKPT_TEST_CHILD_MODE", "ignore-terminate");
  auto o = child_options();
  o.shutdown_timeout = 1s;
  checkpoint_process proc(o);
  proc.wait_ready();
  int pid = proc.child_pid();
  proc.close();
  BOOST_TEST(!proc.child_running());
  BOOST_TEST(!test::pid_alive(pid));
}

BOOST_AUTO_TEST_CASE(close_kills_a_write_that_outlasts_the_shutdown_timeout) {
  temp_dir dir;
  auto o = child_options("block");
  o.shutdown_timeout = 1s;
  checkpoint_process proc(o);
  auto f = proc.write(small_state(), dir / "slow");
  BOOST_TEST_REQUIRE(test::eventually([&] { return std::filesystem::exists(dir / "slow" / "started"); }));
  proc.close();
  BOOST_TEST(!proc.child_running());
  expect_error([&] { f.get(); }, errc::closed, "did not finish within shutdown_timeout");
}

BOOST_AUTO_TEST_CASE(closed_channel_fails_writes_with_child_terminated) {
  env_guard mode("SHMCKPT_TEST_CHILD_MODE", "close-channel");
  temp_dir dir;
  checkpoint_process proc(child_options());
  auto f = proc.write(small_state(), dir / "x");
  expect_error([&] { f.get(); }, errc::child_terminated, "Child process terminated unexpectedly");
  expect_error([&] { proc.write(small_state(), dir / "y").get(); }, errc::child_terminated,
               "Child process terminated unexpectedly");
  proc.close();  // kills the fake child, which is still alive
  BOOST_TEST(!proc.child_running());
}

BOOST_AUTO_TEST_CASE(a_killed_child_fails_the_write_it_served_and_is_replaced_for_the_rest) {
  temp_dir dir;
  checkpoint_process proc(child_options("gate"));
  auto gate = (dir / "gate").string();
  auto in_progress = proc.write(small_state(), dir / "a", {{"gate", gate}});
  auto queued = proc.write(small_state(), dir / "b");
  BOOST_TEST_REQUIRE(test::eventually([&] { return std::filesystem::exists(gate + ".waiting"); }));
  const int old_pid = proc.child_pid();
  ::kill(old_pid, SIGKILL);
  expect_error([&] { in_progress.get(); }, errc::child_terminated,
               "Child process terminated unexpectedly (killed by signal 9");
  // The queued write had not started in the dead child: its replacement wrote it.
  queued.get();
  BOOST_TEST(std::filesystem::exists(dir / "b" / "checkpoint_0.safetensors"));
  BOOST_TEST(proc.child_pid() != old_pid);
  BOOST_TEST(!test::pid_alive(old_pid));  // killed and reaped
  proc.write(small_state(), dir / "c").get();
  BOOST_TEST(std::filesystem::exists(dir / "c" / "checkpoint_0.safetensors"));
  BOOST_TEST(!std::filesystem::exists(dir / "a" / "checkpoint_0.safetensors"));
  proc.close();
  BOOST_TEST(!proc.child_running());
}

BOOST_AUTO_TEST_CASE(a_child_killed_while_idle_is_replaced_on_the_same_segment_by_the_next_write) {
  temp_dir dir;
  checkpoint_process proc(child_options("set_42"));
  auto w = proc.make_tensor(dtype::f32, {2, 2});
  proc.write(state_dict{{"w", w}}, dir / "1").get();
  const int old_pid = proc.child_pid();
  ::kill(old_pid, SIGKILL);
  BOOST_TEST_REQUIRE(test::eventually([&] { return !proc.child_running(); }));
  w.data_as<float>()[0] = 0.0f;
  // A new child maps the same segment: it sets w[0] in the very memory this process holds.
  proc.write(state_dict{{"w", w}}, dir / "2").get();
  BOOST_TEST(w.data_as<float>()[0] == 42.0f);
  BOOST_TEST(proc.child_pid() != old_pid);
  BOOST_TEST(proc.child_running());
}

BOOST_AUTO_TEST_CASE(a_stopped_child_fails_its_write_with_timeout_and_is_replaced) {
  temp_dir dir;
  auto o = child_options("progress");
  o.progress_timeout = 1s;
  checkpoint_process proc(o);
  auto gate = (dir / "gate").string();
  auto hung = proc.write(small_state(), dir / "hung", {{"gate", gate}});
  BOOST_TEST_REQUIRE(test::eventually([&] { return std::filesystem::exists(gate + ".waiting"); }));
  const int old_pid = proc.child_pid();
  ::kill(old_pid, SIGSTOP);  // as if stuck on a dead file server
  // Watchdog only (the library's own bound is progress_timeout plus a report interval).
  BOOST_TEST_REQUIRE((hung.wait_for(30s) == std::future_status::ready));
  expect_error([&] { hung.get(); }, errc::timeout,
               "made no progress for 1s while 'waiting for the gate, round ");
  BOOST_TEST(test::wait_pid_gone(old_pid, 10s));
  proc.write(small_state(), dir / "next", {{"ms", "0"}}).get();
  BOOST_TEST(std::filesystem::exists(dir / "next" / "done"));
  BOOST_TEST(proc.child_pid() != old_pid);
}

BOOST_AUTO_TEST_CASE(a_write_that_keeps_reporting_progress_outlives_progress_timeout) {
  temp_dir dir;
  auto o = child_options("progress");
  o.progress_timeout = 1s;
  checkpoint_process proc(o);
  proc.wait_ready();
  const int pid = proc.child_pid();
  proc.write(small_state(), dir / "slow", {{"ms", "2500"}}).get();  // 2.5 progress_timeouts
  BOOST_TEST(std::filesystem::exists(dir / "slow" / "done"));
  BOOST_TEST(proc.child_pid() == pid);
}

BOOST_AUTO_TEST_CASE(a_progress_timeout_under_a_second_is_refused) {
  auto o = child_options();
  o.progress_timeout = 200ms;
  expect_error([&] { checkpoint_process proc(o); }, errc::invalid_argument, "progress_timeout");
}

BOOST_AUTO_TEST_CASE(a_child_killed_mid_write_leaves_no_temporary_file) {
  namespace fs = std::filesystem;
  temp_dir dir;
  checkpoint_process proc(child_options("stall"));
  fs::create_directories(dir / "ckpt");
  // Another live writer's temporary file (pid 1, and locked the way writers lock their temp
  // files) must survive both clean-ups: the parent's and the next save's.
  auto foreign = dir / "ckpt" / ".checkpoint_0.safetensors.tmp.1.0";
  std::ofstream(foreign) << "not ours";
  int held = ::open(foreign.c_str(), O_RDWR | O_CLOEXEC);
  BOOST_TEST_REQUIRE(held >= 0);
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  BOOST_TEST_REQUIRE(::fcntl(held, F_OFD_SETLK, &lk) == 0);
  auto f = proc.write(small_state(), dir / "ckpt");
  BOOST_TEST_REQUIRE(test::eventually([&] { return fs::exists(dir / "ckpt" / "stalled"); }));
  const int pid = proc.child_pid();
  const std::string prefix = ".checkpoint_0.safetensors.tmp." + std::to_string(pid) + ".";
  auto temp_files = [&] {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(dir / "ckpt"))
      if (e.path().filename().string().rfind(prefix, 0) == 0) out.push_back(e.path());
    return out;
  };
  BOOST_TEST_REQUIRE(temp_files().size() == 1u);  // the stalled write's, preallocated
  ::kill(pid, SIGKILL);
  expect_error([&] { f.get(); }, errc::child_terminated, "Child process terminated unexpectedly");
  BOOST_TEST(temp_files().empty());
  BOOST_TEST(fs::exists(foreign));
  BOOST_TEST(!fs::exists(dir / "ckpt" / "checkpoint_0.safetensors"));
  ::close(held);
}

BOOST_AUTO_TEST_CASE(close_of_a_stopped_child_kills_it_and_fails_its_write) {
  temp_dir dir;
  auto o = child_options("progress");
  o.shutdown_timeout = 2s;  // progress_timeout stays 300 s: close() must not wait for it
  checkpoint_process proc(o);
  auto gate = (dir / "gate").string();
  auto f = proc.write(small_state(), dir / "x", {{"gate", gate}});
  BOOST_TEST_REQUIRE(test::eventually([&] { return std::filesystem::exists(gate + ".waiting"); }));
  const int pid = proc.child_pid();
  ::kill(pid, SIGSTOP);
  auto t0 = std::chrono::steady_clock::now();
  proc.close();
  BOOST_TEST_MESSAGE("close() took " << std::chrono::duration_cast<std::chrono::milliseconds>(
                                            std::chrono::steady_clock::now() - t0)
                                            .count()
                                     << " ms with shutdown_timeout 2 s");
  BOOST_TEST(!proc.child_running());
  BOOST_TEST(!test::pid_alive(pid));
  expect_error([&] { f.get(); }, errc::closed, "did not finish within shutdown_timeout");
}

BOOST_AUTO_TEST_CASE(parent_killed_makes_the_child_exit_and_leaves_nothing_in_dev_shm) {
  auto shm_before = dev_shm_entries();
  int out[2];
  BOOST_TEST_REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  int in[2];
  BOOST_TEST_REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  auto child = test::test_child().string();
  char* argv[] = {child.data(), const_cast<char*>("parent"), nullptr};
  pid_t parent = -1;
  BOOST_TEST_REQUIRE(::posix_spawn(&parent, child.c_str(), &fa, nullptr, argv, environ) == 0);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  ::close(in[0]);
  std::string line;
  char c;
  while (::read(out[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(out[0]);
  BOOST_TEST_REQUIRE(!line.empty(), "stand-in parent printed no child pid");
  int grandchild = std::stoi(line);
  BOOST_TEST(test::pid_alive(grandchild));
  ::kill(parent, SIGKILL);
  ::waitpid(parent, nullptr, 0);
  ::close(in[1]);
  BOOST_TEST(test::wait_pid_gone(grandchild, 10s), "checkpoint child outlived its parent");
  BOOST_TEST((dev_shm_entries() == shm_before));
}

BOOST_AUTO_TEST_CASE(child_inherits_no_descriptors_but_its_own_two) {
  temp_dir dir;
  int leak[2];
  BOOST_TEST_REQUIRE(::pipe(leak) == 0);  // deliberately not close-on-exec
  // Move it above the child's fixed descriptors 3 and 4 (which are overwritten at spawn) and
  // below the launcher's own descriptors (above which Boost closes everything itself).
  for (int& fd : leak) {
    int moved = ::fcntl(fd, F_DUPFD, 5);
    ::close(fd);
    fd = moved;
  }
  struct stat st {};
  ::fstat(leak[0], &st);
  std::string leaked_pipe = "pipe:[" + std::to_string(st.st_ino) + "]";
  {
    checkpoint_process proc(child_options("fds"));
    proc.write(small_state(), dir.path()).get();
  }
  ::close(leak[0]);
  ::close(leak[1]);
  std::ifstream in(dir / "fds.txt");
  std::string line;
  int sockets = 0, memfds = 0;
  while (std::getline(in, line)) {
    auto space = line.find(' ');
    std::string fd = line.substr(0, space), target = line.substr(space + 1);
    BOOST_TEST(target != leaked_pipe, "child inherited the parent's pipe as fd " << fd);
    if (target.rfind("socket:", 0) == 0) {
      ++sockets;
      BOOST_TEST(fd == "3", "unexpected socket at fd " << fd);
    }
    if (target.find("memfd:") != std::string::npos) {
      ++memfds;
      BOOST_TEST(fd == "4", "unexpected memfd at fd " << fd);
    }
  }
  BOOST_TEST(sockets == 1);
  BOOST_TEST(memfds == 1);
}
