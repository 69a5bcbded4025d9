// Shared by the ckpt-inspect suites: running the binary (its path arrives after "--") with its
// output captured, and sample checkpoints.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "hostile/hostile_files.hpp"
#include "shmckpt/state_dict.hpp"

extern char** environ;

namespace shmckpt_test {


inline std::string inspect_binary() {
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
inline run_result run_inspect(const scratch_dir& dir, std::vector<std::string> args) {
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

inline shmckpt::tensor seeded_tensor(shmckpt::dtype t, std::vector<std::int64_t> shape,
                                     std::uint64_t seed) {
  shmckpt::tensor x = shmckpt::tensor::zeros(t, std::move(shape));
  std::mt19937_64 rng(seed);
  for (auto& b : x.bytes()) b = static_cast<std::byte>(rng());
  return x;
}

inline shmckpt::state_dict sample(int rank) {
  using shmckpt::dtype;
  return {{"model", shmckpt::dict{{"weight", seeded_tensor(dtype::f32, {4, 4}, 1 + rank)},
                                  {"bias", seeded_tensor(dtype::bf16, {4}, 2 + rank)}}},
          {"step", 100 + rank},
          {"lr", 0.001},
          {"name", "run \"a\""}};
}

inline bool one_line_error(const run_result& r) {
  return r.err.starts_with("ckpt-inspect: ") && r.err.find('\n') == r.err.size() - 1;
}


inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace shmckpt_test
