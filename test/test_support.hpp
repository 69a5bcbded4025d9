// Shared helpers of the test suites: paths passed by CTest, unique temp dirs, bounded waits.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "shmckpt/error.hpp"

namespace shmckpt::test {

/// The i-th argument after "--" on the test's command line (CTest passes helper paths there).
inline std::string arg(int i) {
  auto& s = boost::unit_test::framework::master_test_suite();
  for (int k = 1; k < s.argc; ++k)
    if (std::string(s.argv[k]) == "--") {
      if (k + 1 + i < s.argc) return s.argv[k + 1 + i];
      break;
    }
  if (i < s.argc - 1 && std::string(s.argv[1]) != "--") return s.argv[1 + i];
  BOOST_FAIL("missing test argument " << i << " (run through ctest)");
  return {};
}

/// Path of shmckpt-test-child.
inline std::filesystem::path test_child() { return arg(0); }

/// A unique directory under the system temp dir, removed on destruction.
class temp_dir {
 public:
  temp_dir() {
    auto tmpl = (std::filesystem::temp_directory_path() / "shmckpt-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

 private:
  std::filesystem::path path_;
};

/// Polls `cond` until it holds or `limit` passes (a watchdog, not a timing assertion).
inline bool eventually(const std::function<bool()>& cond,
                       std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return cond();
}

/// Waits (bounded) for an unrelated process to exit, via a pidfd. True when it has exited.
inline bool wait_pid_gone(int pid, std::chrono::milliseconds limit) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;
  pollfd p{fd, POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(limit.count()));
  ::close(fd);
  return r == 1;
}

/// True when /proc/<pid> exists and the process is not a zombie.
inline bool pid_alive(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

/// Runs `f`, expecting shmckpt::error of `kind` whose message contains `fragment`.
template <class F>
void expect_error(F&& f, errc kind, const std::string& fragment) {
  try {
    f();
    BOOST_FAIL("expected an error containing '" << fragment << "'");
  } catch (const error& e) {
    BOOST_TEST(static_cast<int>(e.kind()) == static_cast<int>(kind), "error was: " << e.what());
    BOOST_TEST(std::string(e.what()).find(fragment) != std::string::npos,
               "'" << e.what() << "' lacks '" << fragment << "'");
  }
}

/// Sets an environment variable for the lifetime of the guard.
struct env_guard {
  env_guard(const char* k, const char* v) : key(k) { ::setenv(k, v, 1); }
  ~env_guard() { ::unsetenv(key); }
  env_guard(const env_guard&) = delete;
  env_guard& operator=(const env_guard&) = delete;
  const char* key;
};

/// Names in /dev/shm (to show nothing was left there).
inline std::set<std::string> dev_shm_entries() {
  std::set<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm"))
    out.insert(e.path().filename());
  return out;
}

/// Names of the files in `dir`, sorted.
inline std::vector<std::string> listing(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

/// A BOOST_CHECK_EXCEPTION predicate: the error has code `want` and its message contains `phrase`
/// (the message is logged when it fails).
inline auto expect_error(errc want, std::string phrase) {
  return [want, phrase](const error& e) {
    BOOST_TEST_INFO("message: " << e.what());
    return e.kind() == want && std::string_view(e.what()).find(phrase) != std::string_view::npos;
  };
}

}  // namespace shmckpt::test
