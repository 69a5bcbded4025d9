#include "parent/child_process.hpp"  // first: it includes what Process v2 needs first

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/process/v2/default_launcher.hpp>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <optional>
#include <thread>

#include "format/layout.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/worker.hpp"
#include "shmckpt/writer.hpp"

namespace shmckpt::detail {

namespace bp2 = boost::process::v2;
using namespace std::chrono_literals;

namespace {

// Descriptor numbers of the control socket and the segment inside the child.
constexpr int child_control_fd = 3;
constexpr int child_segment_fd = 4;

// How long the removal of a dead writer's temporary file is waited for.
constexpr auto temp_cleanup_wait = 2s;

// The directory holding libshmckpt itself, to find shmckpt-worker beside it.
std::filesystem::path library_dir() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(&library_dir), &info) && info.dli_fname)
    return std::filesystem::path(info.dli_fname).parent_path();
  return {};
}

std::filesystem::path find_worker(const checkpoint_process_options& o) {
  namespace fs = std::filesystem;
  if (o.worker == worker_binary::this_executable) return fs::read_symlink("/proc/self/exe");
  if (!o.worker_path.empty()) return o.worker_path;
  if (o.worker == worker_binary::custom)
    throw_error(errc::invalid_argument, "worker_binary::custom needs worker_path to be set");
  if (const char* env = std::getenv("SHMCKPT_WORKER"); env && *env) return env;
  auto dir = library_dir();
  auto p = (dir / SHMCKPT_LIB_TO_BIN / "shmckpt-worker").lexically_normal();
  if (fs::exists(p)) return p;
  if (fs::exists(dir / "shmckpt-worker")) return dir / "shmckpt-worker";
  return p;  // reported as not found by locate_worker
}

// Launcher initializer: puts the control socket and the segment at fixed descriptor numbers in
// the child and sets the parent-death signal. Runs between fork and exec: async-signal-safe
// calls only. (Boost 1.81's bind_fd is broken; see docs/design.md.)
struct pass_fds {
  int control;
  int segment;
  pid_t parent;

  template <class Launcher>
  bp2::error_code on_setup(Launcher& l, const std::filesystem::path&, const char* const*) {
    l.fd_whitelist.push_back(child_control_fd);
    l.fd_whitelist.push_back(child_segment_fd);
    return {};
  }

  template <class Launcher>
  bp2::error_code on_exec_setup(Launcher&, const std::filesystem::path&, const char* const*) {
    // Park both above the targets first so neither dup2 clobbers the other's source.
    int c = ::fcntl(control, F_DUPFD, 10);
    int s = ::fcntl(segment, F_DUPFD, 10);
    if (c < 0 || s < 0 || ::dup2(c, child_control_fd) < 0 || ::dup2(s, child_segment_fd) < 0)
      return {errno, bp2::system_category()};
    ::close(c);
    ::close(s);
    // SIGTERM (not SIGKILL) so the child can abandon its write cleanly; then make sure the
    // parent did not die before the signal was armed.
    if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() != parent)
      return {ESRCH, bp2::system_category()};
    return {};
  }

  // A failed exec must not run the trainer's atexit handlers and static destructors in the
  // forked copy (Boost 1.81 calls exit()); leave at once. Variadic: 1.81 detects this hook with
  // one argument list and calls it with another.
  template <class... A>
  void on_exec_error(A&&...) {
    ::_exit(127);
  }
};

// Whether `name` is the default writer's temporary file for `final_name` written by process
// `pid`: `.<final_name>.tmp.<pid>.<n>` (detail::temp_file_name, lib/format/layout.hpp).
bool is_temp_file_of(const std::string& name, const std::string& final_name, int pid) {
  const std::string prefix = temp_prefix(final_name) + std::to_string(pid) + ".";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  return std::all_of(name.begin() + static_cast<std::ptrdiff_t>(prefix.size()), name.end(),
                     [](char ch) { return ch >= '0' && ch <= '9'; });
}

}  // namespace

void probe_pidfd() {
  static const int result = [] {
    int fd = static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0));
    if (fd >= 0) {
      ::close(fd);
      return 0;
    }
    return errno;
  }();
  if (result == ENOSYS)
    throw_error(errc::unsupported,
                "the kernel lacks pidfd_open (Linux 5.3+ is required to supervise the "
                "checkpoint child)");
}

std::filesystem::path locate_worker(const checkpoint_process_options& o) {
  auto exe = find_worker(o);
  if (::access(exe.c_str(), X_OK) != 0)
    throw_error(errc::not_found, "checkpoint worker '" + exe.string() +
                                     "' is missing or not executable (" + std::strerror(errno) +
                                     "); install shmckpt-worker, set SHMCKPT_WORKER, or set "
                                     "checkpoint_process_options::worker_path");
  return exe;
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* name = ::sigabbrev_np(sig);
    return "killed by signal " + std::to_string(sig) +
           (name ? std::string(" (SIG") + name + ")" : "");
  }
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  return "wait status " + std::to_string(status);
}

void remove_dead_writers_temp_files(const std::filesystem::path& dir, int rank, int pid) noexcept {
  namespace fs = std::filesystem;
  try {
    std::string final_name = checkpoint_file_path({}, rank).filename().string();
    auto done = std::make_shared<std::promise<void>>();
    auto finished = done->get_future();
    std::thread([dir, final_name = std::move(final_name), pid, done] {
      std::error_code ec;
      for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        if (!is_temp_file_of(it->path().filename().string(), final_name, pid)) continue;
        std::error_code ignored;
        fs::remove(it->path(), ignored);
      }
      done->set_value();
    }).detach();
    finished.wait_for(temp_cleanup_wait);
  } catch (...) {
    // Out of memory or threads: the file stays for the next sweep.
  }
}

child_process::child_process(bp2::process p, unique_fd pidfd) noexcept
    : proc_(std::move(p)), pidfd_(std::move(pidfd)), pid_(proc_.id()) {}

child_process::spawned child_process::spawn(boost::asio::io_context& io,
                                            const std::filesystem::path& exe,
                                            std::vector<std::string> extra_args, int segment_fd) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw_error(errc::io_error, std::string("socketpair failed: ") + std::strerror(errno));
  unique_fd parent_end(sv[0]), child_end(sv[1]);
  std::vector<std::string> args{worker_flag, "--control-fd", std::to_string(child_control_fd),
                                "--segment-fd", std::to_string(child_segment_fd)};
  for (auto& a : extra_args) args.push_back(std::move(a));
  bp2::posix::default_launcher launcher;
  bp2::error_code ec;
  auto reap_failed_child = [&] {
    // Boost 1.81 neither kills nor reaps a child whose exec failed (or whose pidfd could not
    // be opened): do both, so no zombie remains.
    if (launcher.pid > 0) {
      ::kill(launcher.pid, SIGKILL);
      ::waitpid(launcher.pid, nullptr, 0);
    }
  };
  std::optional<bp2::process> proc;
  try {
    proc.emplace(launcher(io.get_executor(), ec, exe, args,
                          pass_fds{child_end.get(), segment_fd, ::getpid()}));
  } catch (...) {
    reap_failed_child();
    throw;
  }
  if (ec) {
    reap_failed_child();
    throw_error(ec.value() == ENOENT || ec.value() == EACCES ? errc::not_found : errc::io_error,
                "cannot start checkpoint worker '" + exe.string() + "': " + ec.message());
  }
  child_end.reset();  // only the child holds that end now: its death means EOF here
  unique_fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, proc->id(), 0)));
  return spawned{child_process(std::move(*proc), std::move(pidfd)), std::move(parent_end)};
}

void child_process::kill() noexcept {
  // Through the pidfd, so the signal can never reach a recycled pid.
  if (!pidfd_ || ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0) != 0) {
    bp2::error_code ec;
    proc_.terminate(ec);  // SIGKILL by pid; the pending async_wait reaps
  }
}

}  // namespace shmckpt::detail
