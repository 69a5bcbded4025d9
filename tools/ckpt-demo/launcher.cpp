#include "launcher.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>
#include <system_error>
#include <utility>

extern char** environ;

namespace ckpt_demo {

namespace {

using steady = std::chrono::steady_clock;

// Tells a rank which process launched it, so it can die with it (exit_with_launcher).
constexpr const char* launcher_pid_variable = "CKPT_DEMO_LAUNCHER_PID";
// After the last rank exited, how long to keep reading its pipes: a grandchild that inherited
// them (a checkpoint child that is still shutting down) must not hold the launcher up.
constexpr auto drain_grace = std::chrono::seconds(2);
// After the deadline's SIGKILL, how long to wait for the kernel to deliver it before giving up.
constexpr auto kill_grace = std::chrono::seconds(10);

class unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~unique_fd() { reset(); }
  int get() const noexcept { return fd_; }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

struct pipe_ends {
  unique_fd read, write;
};

// Both ends close-on-exec: posix_spawn's dup2 gives the rank its copy of the write end, and no
// rank inherits another rank's pipes.
pipe_ends make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    throw std::system_error(errno, std::generic_category(), "cannot create a pipe for a rank");
  return {unique_fd(fds[0]), unique_fd(fds[1])};
}

// One output stream of a rank, split into lines and forwarded with the rank's prefix.
struct output_stream {
  unique_fd fd;
  std::FILE* sink = nullptr;
  std::string partial;  // bytes after the last newline

  void forward(int rank, std::string_view line, std::string& remembered,
               std::string_view remember_prefix) {
    std::fprintf(sink, "[rank %d] %.*s\n", rank, static_cast<int>(line.size()), line.data());
    if (remember_prefix.empty() || line.substr(0, remember_prefix.size()) == remember_prefix)
      remembered = line;
  }
};

// A started rank. Owns the process: destroying a rank that still runs kills and reaps it.
class rank_process {
 public:
  rank_process(int rank, pid_t pid, unique_fd out, unique_fd err) : rank_(rank), pid_(pid) {
    out_.fd = std::move(out);
    out_.sink = stdout;
    err_.fd = std::move(err);
    err_.sink = stderr;
  }
  rank_process(rank_process&& o) noexcept
      : rank_(o.rank_),
        pid_(std::exchange(o.pid_, -1)),
        status_(o.status_),
        out_(std::move(o.out_)),
        err_(std::move(o.err_)),
        final_line_(std::move(o.final_line_)),
        last_error_(std::move(o.last_error_)),
        note_(std::move(o.note_)) {}
  rank_process& operator=(rank_process&&) = delete;
  rank_process(const rank_process&) = delete;
  ~rank_process() {
    if (running()) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
      }
    }
  }

  int rank() const noexcept { return rank_; }
  bool running() const noexcept { return pid_ > 0 && !status_; }
  bool succeeded() const noexcept {
    return status_ && WIFEXITED(*status_) && WEXITSTATUS(*status_) == 0;
  }
  bool failed() const noexcept { return status_ && !succeeded(); }

  // Reaps the rank if it has exited; returns whether it has.
  bool poll_exit() {
    if (!running()) return status_.has_value();
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
    return status_.has_value();
  }

  void signal(int sig, std::string note) {
    if (!running()) return;
    ::kill(pid_, sig);
    if (note_.empty()) note_ = std::move(note);
  }

  // Adds the open pipe ends to `fds` (with this rank's streams in `owners`).
  void watch(std::vector<pollfd>& fds, std::vector<output_stream*>& owners) {
    for (auto* s : {&out_, &err_})
      if (s->fd) {
        fds.push_back({s->fd.get(), POLLIN, 0});
        owners.push_back(s);
      }
  }

  // Reads what is available on `s` and forwards complete lines; closes it at end of file.
  void drain(output_stream& s) {
    char buf[65536];
    const ssize_t n = ::read(s.fd.get(), buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) {
      if (!s.partial.empty()) emit(s, s.partial);
      s.partial.clear();
      s.fd.reset();
      return;
    }
    s.partial.append(buf, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (auto nl = s.partial.find('\n'); nl != std::string::npos;
         nl = s.partial.find('\n', start)) {
      emit(s, std::string_view(s.partial).substr(start, nl - start));
      start = nl + 1;
    }
    s.partial.erase(0, start);
  }

  bool streams_open() const noexcept { return out_.fd || err_.fd; }

  // "exit status 0; final state: ...", or the failure and the rank's last error line.
  std::string result() const {
    std::string r;
    if (!status_) {
      r = "still running";
    } else if (WIFEXITED(*status_)) {
      r = "exit status " + std::to_string(WEXITSTATUS(*status_));
    } else if (WIFSIGNALED(*status_)) {
      r = "killed by signal " + std::to_string(WTERMSIG(*status_));
    } else {
      r = "wait status " + std::to_string(*status_);
    }
    if (!note_.empty()) r += " (" + note_ + ")";
    if (succeeded() && !final_line_.empty()) r += "; " + final_line_;
    if (!succeeded() && !last_error_.empty()) r += "; last error: " + last_error_;
    return r;
  }

 private:
  void emit(output_stream& s, std::string_view line) {
    if (&s == &out_)
      s.forward(rank_, line, final_line_, "final state:");
    else
      s.forward(rank_, line, last_error_, "");
  }

  int rank_;
  pid_t pid_;
  std::optional<int> status_;  // wait status once reaped
  output_stream out_, err_;
  std::string final_line_;  // the rank's "final state: ..." line
  std::string last_error_;  // the rank's last line on stderr
  std::string note_;        // why the launcher signalled it
};

// The launcher's environment without any rank variables of its own, for the ranks to extend.
std::vector<std::string> base_environment() {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string_view v(*e);
    if (v.starts_with("RANK=") || v.starts_with("WORLD_SIZE=") ||
        v.starts_with(std::string(launcher_pid_variable) + "="))
      continue;
    env.emplace_back(v);
  }
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Starts rank `rank`; throws std::system_error when posix_spawn fails.
rank_process spawn_rank(int rank, const launch_options& o, const std::vector<std::string>& base) {
  auto out = make_pipe(), err = make_pipe();
  auto env = base;
  env.push_back("RANK=" + std::to_string(rank));
  env.push_back("WORLD_SIZE=" + std::to_string(o.ranks));
  env.push_back(std::string(launcher_pid_variable) + "=" + std::to_string(::getpid()));
  auto args = o.args;
  auto argv = c_strings(args);
  auto envp = c_strings(env);

  posix_spawn_file_actions_t actions;
  ::posix_spawn_file_actions_init(&actions);
  ::posix_spawn_file_actions_adddup2(&actions, out.write.get(), STDOUT_FILENO);
  ::posix_spawn_file_actions_adddup2(&actions, err.write.get(), STDERR_FILENO);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), envp.data());
  ::posix_spawn_file_actions_destroy(&actions);
  if (rc != 0)
    throw std::system_error(rc, std::generic_category(),
                            "cannot start rank " + std::to_string(rank) + " (/proc/self/exe)");
  // The write ends close when `out` and `err` go out of scope: only the rank holds them now, so
  // its exit is seen as end of file.
  return rank_process(rank, pid, std::move(out.read), std::move(err.read));
}

}  // namespace

int launch_ranks(const launch_options& o) {
  std::printf("ckpt-demo: launching %d ranks (RANK and WORLD_SIZE set for each); deadline %lld s\n",
              o.ranks, static_cast<long long>(o.deadline.count()));
  std::fflush(stdout);
  const auto base = base_environment();
  std::vector<rank_process> ranks;
  ranks.reserve(static_cast<std::size_t>(o.ranks));
  bool stopping = false;
  for (int r = 0; r < o.ranks; ++r) {
    try {
      ranks.push_back(spawn_rank(r, o, base));
    } catch (const std::system_error& e) {
      std::fprintf(stderr, "ckpt-demo: %s\n", e.what());
      for (auto& p : ranks) p.signal(SIGTERM, "stopped: not every rank could be started");
      stopping = true;
      break;
    }
  }
  const bool all_started = static_cast<int>(ranks.size()) == o.ranks;

  const auto deadline = steady::now() + o.deadline;
  bool killed_at_deadline = false;
  std::optional<steady::time_point> all_exited_at;
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<output_stream*> owners;
    std::vector<rank_process*> owner_ranks;
    for (auto& p : ranks) {
      const auto before = owners.size();
      p.watch(fds, owners);
      owner_ranks.insert(owner_ranks.end(), owners.size() - before, &p);
    }
    const int ready = ::poll(fds.data(), fds.size(), 100);
    if (ready > 0)
      for (std::size_t i = 0; i < fds.size(); ++i)
        if (fds[i].revents != 0) owner_ranks[i]->drain(*owners[i]);

    bool all_exited = true;
    for (auto& p : ranks) {
      if (!p.poll_exit()) {
        all_exited = false;
        continue;
      }
      if (p.failed() && !stopping) {
        // The others would wait at the commit barrier for this rank until their commit timeout.
        stopping = true;
        for (auto& q : ranks)
          q.signal(SIGTERM, "stopped after rank " + std::to_string(p.rank()) + " failed");
      }
    }
    const auto now = steady::now();
    if (all_exited) {
      if (!all_exited_at) all_exited_at = now;
      bool open = false;
      for (auto& p : ranks) open = open || p.streams_open();
      if (!open || now - *all_exited_at > drain_grace) break;
      continue;
    }
    if (now > deadline && !killed_at_deadline) {
      killed_at_deadline = true;
      for (auto& p : ranks)
        p.signal(SIGKILL, "killed at the deadline of " + std::to_string(o.deadline.count()) + " s");
    }
    if (killed_at_deadline && now > deadline + kill_grace) break;
  }

  int failed = all_started ? 0 : o.ranks - static_cast<int>(ranks.size());
  for (auto& p : ranks) {
    std::printf("rank %d: %s\n", p.rank(), p.result().c_str());
    if (!p.succeeded()) ++failed;
  }
  if (failed == 0) {
    std::printf("ckpt-demo: all %d ranks succeeded\n", o.ranks);
    return 0;
  }
  std::fflush(stdout);
  std::fprintf(stderr, "ckpt-demo: %d of %d ranks failed\n", failed, o.ranks);
  return 1;
}

void exit_with_launcher() {
  const char* v = std::getenv(launcher_pid_variable);
  if (!v) return;
  const auto launcher = static_cast<pid_t>(std::strtol(v, nullptr, 10));
  ::unsetenv(launcher_pid_variable);
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  // The launcher may have died before the line above took effect.
  if (::getppid() != launcher) {
    std::fprintf(stderr, "ckpt-demo: the launcher (pid %d) is gone; exiting\n",
                 static_cast<int>(launcher));
    std::exit(1);
  }
}

}  // namespace ckpt_demo
