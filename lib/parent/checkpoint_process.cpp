// Parent side of the checkpoint child: spawn, handshake, ordered writes, progress watchdog,
// death detection, replacement, close.
//
// Threads. `io_thread` spawns the child (so the parent-death signal follows a thread that lives
// as long as this object), later also its replacements, and runs the io_context that owns the
// sockets, the process handles and the timers: every socket and process operation happens on
// it, except sending: a frame is written to the socket by whichever thread has it ready, under
// the child's `send_m` (what the socket does not take at once is left in its outbox for the io
// thread to finish, and later frames queue behind). `submit_thread` takes queued jobs in order,
// waits for future state dicts, copies private tensors into the segment, encodes the frame and
// sends it. A write whose frame the caller has ready (a small or copied tree) with nothing
// queued ahead is sent by the caller itself, so a round trip wakes only the child and, for the
// response, the io thread. A large tree already in the segment is encoded on the submit thread.
//
// Children. Each incarnation of the child is a `child` object; handlers capture the one they
// belong to, so a late event of a dead child never touches its replacement. A child is *lost*
// once it died (or was killed) and everything it sent has been read. Then the write it was
// serving (the oldest in flight) fails with the cause; writes sent after it had not started, so
// they go back to the front of the queue for the replacement. A replacement is started on the
// same segment when there is work for it: at once when writes were sent back, else by the next
// write() or wait_ready(). A child lost before its handshake completed ends it all
// (`final_error`): a start that fails would fail again.
//
// State (guarded by `m`): jobs wait in `queue` until submitted, then sit in `in_flight` (keyed
// by request id) until the child's RESPONSE or its loss resolves them.
#include <boost/optional.hpp>     // Process v2 with BOOST_PROCESS_USE_STD_FS needs these first
#include <boost/type_traits.hpp>  // (Boost 1.81 trap, see docs/design.md)

#include "shmckpt/checkpoint_process.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/process/v2/default_launcher.hpp>
#include <boost/process/v2/process.hpp>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "child/priority.hpp"
#include "shmckpt/error.hpp"
#include "ipc/protocol.hpp"
#include "ipc/segment.hpp"
#include "shmckpt/worker.hpp"
#include "shmckpt/writer.hpp"
#include "core/placement.hpp"
#include "core/util.hpp"
#include "format/layout.hpp"
#include "parent/parent_commit.hpp"

namespace shmckpt {

namespace asio = boost::asio;
namespace bp2 = boost::process::v2;
using namespace std::chrono_literals;
using proto_type = protocol::message_type;

namespace {

// Descriptor numbers of the control socket and the segment inside the child.
constexpr int child_control_fd = 3;
constexpr int child_segment_fd = 4;

// After the control channel breaks, how long to wait for the child's exit status so the error
// can say how it died.
constexpr auto exit_status_grace = 1s;
// After SIGKILL, how long to wait for the kernel to report the exit.
constexpr auto kill_grace = 10s;
// The part of shutdown_timeout close() keeps for killing and reaping a child that did not exit
// by itself (at most a quarter of it), so that close() as a whole never takes longer.
constexpr std::chrono::milliseconds kill_reserve = 1s;
// The progress watchdog cannot be finer than the child's reporting interval (100 ms).
constexpr std::chrono::milliseconds min_progress_timeout = 1s;
// How long the io thread waits for the removal of a dead writer's temporary file (it runs on a
// thread of its own: a directory on a hung file server must not stall the parent).
constexpr auto temp_cleanup_wait = 2s;
// Largest RESPONSE payload: code, message, and a small payload.
constexpr std::uint32_t max_response_bytes = 4 + 4 + protocol::max_string_bytes + 4 + 4096;
// A zero-copy write whose tree holds at most this many values is encoded by the caller of
// write(); larger ones are encoded on the submit thread.
constexpr std::size_t inline_encode_values = 64;
// Largest PROGRESS payload: one string.
constexpr std::uint32_t max_progress_payload_bytes = 4 + protocol::max_progress_bytes;

// now + a + b, saturating instead of overflowing for "wait forever" durations.
std::chrono::steady_clock::time_point deadline_after(std::chrono::milliseconds a,
                                                     std::chrono::milliseconds b = {}) {
  using clock = std::chrono::steady_clock;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(clock::time_point::max() -
                                                                    clock::now());
  if (a >= left || b >= left - a) return clock::time_point::max();
  return clock::now() + a + b;
}

std::string seconds_text(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3gs", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* name = ::sigabbrev_np(sig);
    return "killed by signal " + std::to_string(sig) + (name ? std::string(" (SIG") + name + ")" : "");
  }
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  return "wait status " + std::to_string(status);
}

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
  return p;  // reported as not found below
}

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

struct job {
  std::uint64_t id = 0;
  proto_type type = proto_type::write_checkpoint;
  std::promise<void> done;
  std::optional<std::shared_future<state_dict>> pending;  // not yet produced
  bool encode_on_submit = false;  // `prepared` is final; the submit thread encodes it
  state_dict prepared;  // all tensors in the segment; keeps copies alive until the response
  std::filesystem::path path;
  kwargs kw;
  std::vector<std::byte> frame;
  std::uint64_t commit_attempt = 0;  // the n-th write() into `path`: its round in the store
};

// One incarnation of the checkpoint child.
struct child {
  child(asio::io_context& io, std::uint64_t n)
      : number(n), init_timer(io), grace_timer(io), progress_timer(io) {}
  const std::uint64_t number;  // 1: the first child, 2: its first replacement, ...

  // ---- io thread only ----
  std::optional<bp2::process> proc;
  unique_fd pidfd;
  std::optional<asio::local::stream_protocol::socket> sock;
  asio::steady_timer init_timer;      // bounds the handshake
  asio::steady_timer grace_timer;     // after EOF or exit: waits for the other, or for the kill
  asio::steady_timer progress_timer;  // the progress watchdog
  std::vector<std::byte> rx;  // received bytes not yet parsed into frames: rx[rx_begin, rx_end)
  std::size_t rx_begin = 0;
  std::size_t rx_end = 0;
  std::uint64_t init_id = 0;
  std::uint64_t ping_id = 0;
  std::string hang;  // set when the watchdog killed it: what the lost write reports

  // ---- sending, from any thread (guarded by send_m; see impl::send) ----
  std::mutex send_m;
  int send_fd = -1;          // the socket's descriptor while it is open
  bool send_closed = false;  // set before the socket closes: nothing more is sent
  bool send_waiting = false;  // the io thread waits for the socket to take the rest
  std::deque<std::vector<std::byte>> outbox;  // frames the socket has not taken yet
  std::size_t out_offset = 0;                 // bytes of outbox.front() already sent

  // ---- guarded by impl::m ----
  bool watchdog_armed = false;
  int pid = -1;
  bool ready = false;   // PING answered: serves writes
  bool exited = false;  // reaped (or the wait failed, see status_known)
  bool status_known = false;
  int exit_status = 0;
  bool channel_broken = false;
  bool killed = false;  // this side sent SIGKILL
  std::string why;      // first reason the channel was given up on
  bool lost = false;    // dead and fully read; nothing more is sent to it or read from it
  std::chrono::steady_clock::time_point last_progress{};  // of the oldest write in flight
  std::string activity;  // what the child last said it was doing for that write
};

// Whether `name` is the default writer's temporary file for `final_name` written by process
// `pid`: `.<final_name>.tmp.<pid>.<n>` (detail::temp_file_name, lib/format/layout.hpp).
bool is_temp_file_of(const std::string& name, const std::string& final_name, int pid) {
  const std::string prefix = detail::temp_prefix(final_name) + std::to_string(pid) + ".";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  return std::all_of(name.begin() + static_cast<std::ptrdiff_t>(prefix.size()), name.end(),
                     [](char ch) { return ch >= '0' && ch <= '9'; });
}

// Removes, in `dir`, the temporary files of rank `rank`'s checkpoint file that the dead process
// `pid` left behind. Only that exact pattern for that pid: the file of a live writer, or of
// another rank, is never touched. Waits at most temp_cleanup_wait; a file that could not be
// removed meanwhile is left for the next save's sweep of stale temporary files.
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

}  // namespace

struct checkpoint_process::impl {
  explicit impl(checkpoint_process_options o) : opts(std::move(o)) {
    detail::validate_priority(opts.priority);
    if (opts.progress_timeout < min_progress_timeout)
      throw_error(errc::invalid_argument, "checkpoint_process_options::progress_timeout is " +
                                              seconds_text(opts.progress_timeout) +
                                              ", below the minimum of " +
                                              seconds_text(min_progress_timeout) +
                                              " (the child reports progress every 100 ms at most)");
  }

  checkpoint_process_options opts;
  segment seg = segment::create(segment_options{
      .initial_bytes = opts.segment_bytes ? std::min(opts.initial_segment_bytes, opts.segment_bytes)
                                          : opts.initial_segment_bytes,
      .max_bytes = opts.segment_bytes,
      .prefault = opts.prefault});
  // Marks trees whose tensors all lie in `seg` (core/placement.hpp).
  const std::uint64_t segment_number = detail::next_segment_number();
  std::filesystem::path exe;
  // With a commit store: commits in this process after the child made the file durable.
  std::unique_ptr<detail::parent_committer> committer;
  std::mutex attempts_m;
  std::map<std::string, std::uint64_t> attempts;  // (attempts_m) write() calls per directory

  // The n-th write() into `dir`: its round in the commit store (counted even if the write
  // fails later, so that ranks stay in step).
  std::uint64_t next_attempt(const std::filesystem::path& dir) {
    if (!committer) return 0;
    std::lock_guard g(attempts_m);
    return ++attempts[dir.lexically_normal().string()];
  }

  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::uint64_t children_started = 0;  // io thread only

  std::thread io_thread;
  std::thread submit_thread;

  // ---- guarded by m ----
  std::mutex m;
  std::condition_variable cv;
  std::shared_ptr<child> cur;  // the current child (possibly lost, awaiting its replacement)
  std::vector<std::shared_ptr<child>> unreaped;  // lost without exiting; detached at close
  bool restarting = false;                       // a replacement child is being started
  std::exception_ptr final_error;  // no child will serve writes any more (failed start, closed)
  bool closing = false;     // close() began: no new writes
  bool stopping = false;    // submit thread must stop
  bool terminate_acked = false;
  bool submitting = false;  // the submit thread holds a job it has not yet posted
  bool killed_by_close = false;  // close() gave up waiting and killed the child
  bool closed_done = false;      // close() has finished
  std::uint64_t next_id = 1;
  std::deque<std::shared_ptr<job>> queue;
  std::map<std::uint64_t, std::shared_ptr<job>> in_flight;

  bool usable_locked() const { return cur && cur->ready && !cur->lost; }

  // The write the child is serving (or will serve next): the oldest in flight.
  job* head_write_locked() const {
    for (const auto& [id, j] : in_flight)
      if (j->type == proto_type::write_checkpoint) return j.get();
    return nullptr;
  }

  // ---- start-up -------------------------------------------------------------------------------

  void start() {
    if (opts.store) {
      kwargs hook_args = opts.writer_args;
      hook_args["rank"] = std::to_string(opts.rank.rank);
      hook_args["world_size"] = std::to_string(opts.rank.world_size);
      committer = std::make_unique<detail::parent_committer>(detail::parent_committer::settings{
          opts.store, opts.store_scope, opts.rank, opts.commit_timeout, std::move(hook_args)});
    }
    probe_pidfd();
    exe = find_worker(opts);
    if (::access(exe.c_str(), X_OK) != 0)
      throw_error(errc::not_found, "checkpoint worker '" + exe.string() +
                                       "' is missing or not executable (" + std::strerror(errno) +
                                       "); install shmckpt-worker, set SHMCKPT_WORKER, or set "
                                       "checkpoint_process_options::worker_path");
    std::promise<void> spawned;
    auto spawned_f = spawned.get_future();
    // The promise moves into the thread: start() may return while set_value() is still running.
    io_thread = std::thread([this, spawned = std::move(spawned)]() mutable {
      try {
        spawn_child();
        spawned.set_value();
      } catch (...) {
        spawned.set_exception(std::current_exception());
        return;
      }
      io.run();
    });
    try {
      spawned_f.get();
    } catch (...) {
      io_thread.join();
      throw;
    }
    submit_thread = std::thread([this] { submit_loop(); });
  }

  // On the io thread: the first child before io.run() (nothing is registered with the reactor
  // yet), replacements from a handler (the reactor's fork hooks re-create its descriptors in
  // the forked copy, which then execs at once).
  void spawn_child() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      throw_error(errc::io_error, std::string("socketpair failed: ") + std::strerror(errno));
    unique_fd parent_end(sv[0]), child_end(sv[1]);
    auto c = std::make_shared<child>(io, ++children_started);
    std::vector<std::string> args{worker_flag,
                                  "--control-fd",
                                  std::to_string(child_control_fd),
                                  "--segment-fd",
                                  std::to_string(child_segment_fd),
                                  "--segment-bytes",
                                  std::to_string(seg.size())};
    for (auto& a : detail::priority_args(opts.priority)) args.push_back(std::move(a));
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
    std::optional<bp2::process> spawned_proc;
    try {
      spawned_proc.emplace(launcher(io.get_executor(), ec, exe, args,
                                    pass_fds{child_end.get(), seg.fd(), ::getpid()}));
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
    c->proc.emplace(std::move(*spawned_proc));
    // Our own pidfd (Boost 1.81 does not expose its own): signals sent through it can never
    // reach a recycled pid.
    c->pidfd.reset(static_cast<int>(::syscall(SYS_pidfd_open, c->proc->id(), 0)));
    c->sock.emplace(io, asio::local::stream_protocol(), parent_end.get());
    c->send_fd = parent_end.release();  // owned by the socket now
    {
      std::lock_guard g(m);
      c->pid = c->proc->id();
      // The first child's handshake is ids 1 and 2 (writes start at 3); a replacement's takes
      // the next two ids, so request ids stay unique for the life of this object.
      c->init_id = next_id++;
      c->ping_id = next_id++;
      cur = c;
      restarting = false;
      cv.notify_all();
    }
    c->proc->async_wait([this, c](bp2::error_code e, int) { on_exit(c, e); });
    read_next(c);

    c->init_timer.expires_after(opts.init_timeout);
    c->init_timer.async_wait([this, c](boost::system::error_code e) {
      if (!e) on_init_timeout(c);
    });
    protocol::init_request init;
    init.init_function = opts.init_function;
    init.init_args = opts.init_args;
    init.writer_factory = opts.writer_factory;
    init.writer_args = opts.writer_args;
    init.writer_args["rank"] = std::to_string(opts.rank.rank);
    init.writer_args["world_size"] = std::to_string(opts.rank.world_size);
    if (committer) init.writer_args["commit"] = "parent";
    init.segment_bytes = seg.size();
    send(c, protocol::make_frame(proto_type::init, c->init_id, protocol::encode_init(init)));
    send(c, protocol::make_frame(proto_type::ping, c->ping_id, {}));
  }

  // Starts a replacement for a lost child, unless one is starting or none may be started.
  void restart_locked() {
    if (restarting || closing || final_error || !cur || !cur->lost) return;
    restarting = true;
    asio::post(io, [this] { restart(); });
  }

  void restart() {
    std::exception_ptr failure;
    try {
      spawn_child();
      return;
    } catch (const error& e) {
      failure = std::make_exception_ptr(
          error(e.kind(), std::string("cannot start a replacement checkpoint child: ") + e.what()));
    } catch (const std::exception& e) {
      failure = std::make_exception_ptr(error(
          errc::io_error, std::string("cannot start a replacement checkpoint child: ") + e.what()));
    }
    std::lock_guard g(m);
    restarting = false;
    if (!final_error) final_error = failure;
    cv.notify_all();
  }

  // ---- io thread: sending ---------------------------------------------------------------------

  // Sends `frame` from the calling thread (any thread): the request goes out without waking the
  // io thread, which saves a thread hop on every round trip. Frames leave in call order: what
  // the socket does not take at once waits in the outbox, which the io thread drains when the
  // socket is writable again, and later frames queue behind it. Never called with send_m held;
  // may be called with m held (m before send_m, never the reverse).
  void send(const std::shared_ptr<child>& c, std::vector<std::byte> frame) {
    std::lock_guard g(c->send_m);
    if (c->send_closed) return;  // lost: the job was sent back or failed
    if (!c->outbox.empty()) {
      c->outbox.push_back(std::move(frame));
      return;
    }
    c->outbox.push_back(std::move(frame));
    c->out_offset = 0;
    flush_locked(c);
  }

  // Writes from the outbox until it is empty or the socket is full (then the io thread waits
  // for room). With send_m held.
  void flush_locked(const std::shared_ptr<child>& c) {
    while (!c->outbox.empty()) {
      const auto& f = c->outbox.front();
      ssize_t r = ::send(c->send_fd, f.data() + c->out_offset, f.size() - c->out_offset,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!c->send_waiting) {
          c->send_waiting = true;
          asio::post(io, [this, c] { wait_writable(c); });
        }
        return;
      }
      if (r < 0) {
        std::string why = "writing to the control channel failed: " + std::string(std::strerror(errno));
        c->outbox.clear();
        asio::post(io, [this, c, why] { on_channel_broken(c, why); });
        return;
      }
      c->out_offset += static_cast<std::size_t>(r);
      if (c->out_offset == f.size()) {
        c->outbox.pop_front();
        c->out_offset = 0;
      }
    }
  }

  // io thread: waits until the socket takes more bytes, then sends what is left.
  void wait_writable(const std::shared_ptr<child>& c) {
    {
      std::lock_guard g(c->send_m);
      if (c->send_closed || !c->sock || !c->sock->is_open()) return;
    }
    c->sock->async_wait(asio::socket_base::wait_write, [this, c](boost::system::error_code e) {
      std::lock_guard g(c->send_m);
      c->send_waiting = false;
      if (c->send_closed) return;
      if (e) {
        c->outbox.clear();
        asio::post(io, [this, c, why = "writing to the control channel failed: " + e.message()] {
          on_channel_broken(c, why);
        });
        return;
      }
      flush_locked(c);
    });
  }

  // io thread: closes the socket; no thread sends on it afterwards.
  void close_socket(const std::shared_ptr<child>& c) {
    {
      std::lock_guard g(c->send_m);
      c->send_closed = true;
      c->outbox.clear();
    }
    boost::system::error_code ignored;
    if (c->sock) c->sock->close(ignored);
  }

  // ---- the progress watchdog ------------------------------------------------------------------

  // With m held, right after write `j` went in flight to `c`: when it is the one the child serves
  // next (no other write ahead of it), its clock starts now; the watchdog is armed unless it is
  // (it disarms itself when no write is in flight).
  void start_clock_locked(const std::shared_ptr<child>& c, const job& j) {
    if (j.type != proto_type::write_checkpoint) return;
    if (head_write_locked() == &j) {
      c->last_progress = std::chrono::steady_clock::now();
      c->activity.clear();
    }
    if (c->watchdog_armed || opts.progress_timeout == std::chrono::milliseconds::max()) return;
    c->watchdog_armed = true;
    asio::post(io, [this, c, when = c->last_progress + opts.progress_timeout] {
      arm_watchdog(c, when);
    });
  }

  void arm_watchdog(const std::shared_ptr<child>& c, std::chrono::steady_clock::time_point when) {
    c->progress_timer.expires_at(when);
    c->progress_timer.async_wait([this, c](boost::system::error_code e) {
      if (!e) check_progress(c);
    });
  }

  void check_progress(const std::shared_ptr<child>& c) {
    std::chrono::steady_clock::time_point next;
    {
      std::lock_guard g(m);
      const job* head = head_write_locked();
      if (c->lost || c->killed || c->exited || c->channel_broken || !head) {  // dying anyway
        c->watchdog_armed = false;
        return;
      }
      next = c->last_progress + opts.progress_timeout;
      if (std::chrono::steady_clock::now() >= next) {
        c->hang = "checkpoint child (pid " + std::to_string(c->pid) + ") made no progress for " +
                  seconds_text(opts.progress_timeout) + " while " +
                  (c->activity.empty() ? "starting the write to '" + head->path.string() + "'"
                                       : "'" + c->activity + "'") +
                  " and was killed";
      }
    }
    if (!c->hang.empty()) return kill_child(c);  // its exit then loses it
    arm_watchdog(c, next);
  }

  // ---- io thread: receiving -------------------------------------------------------------------

  // One read takes whatever the socket holds (usually one whole RESPONSE), and every complete
  // frame in it is handled before the next read: one system call and one handler per frame,
  // where reading header and payload separately took three calls and two handlers.
  void read_next(const std::shared_ptr<child>& c) {
    constexpr std::size_t chunk = 16 << 10;
    if (c->rx_begin == c->rx_end) c->rx_begin = c->rx_end = 0;
    if (c->rx.size() - c->rx_end < chunk) {
      // Move what is left to the front, and make room for at least one more chunk.
      if (c->rx_begin > 0)
        std::memmove(c->rx.data(), c->rx.data() + c->rx_begin, c->rx_end - c->rx_begin);
      c->rx_end -= c->rx_begin;
      c->rx_begin = 0;
      if (c->rx.size() - c->rx_end < chunk) c->rx.resize(c->rx_end + chunk);
    }
    c->sock->async_read_some(
        asio::buffer(c->rx.data() + c->rx_end, c->rx.size() - c->rx_end),
        [this, c](boost::system::error_code e, std::size_t n) {
          if (e) return on_channel_broken(c, "control channel closed: " + e.message());
          c->rx_end += n;
          if (parse_frames(c)) read_next(c);
        });
  }

  // Handles every complete frame in c->rx; false when the channel was given up on.
  bool parse_frames(const std::shared_ptr<child>& c) {
    for (;;) {
      std::size_t have = c->rx_end - c->rx_begin;
      if (have < protocol::header_size) return true;
      const std::byte* at = c->rx.data() + c->rx_begin;
      protocol::frame_header h;
      try {
        h = protocol::decode_header(std::span<const std::byte, protocol::header_size>(
            at, protocol::header_size));
        if (h.type != static_cast<std::uint16_t>(proto_type::response) &&
            h.type != static_cast<std::uint16_t>(proto_type::progress))
          throw_error(errc::protocol_error,
                      "checkpoint child sent a request frame, not a response");
      } catch (const error& err) {
        on_protocol_violation(c, err.what());
        return false;
      }
      const bool progress = h.type == static_cast<std::uint16_t>(proto_type::progress);
      if (h.payload_bytes > (progress ? max_progress_payload_bytes : max_response_bytes)) {
        on_protocol_violation(c, std::string(progress ? "progress report" : "response") +
                                     " claims " + std::to_string(h.payload_bytes) +
                                     " payload bytes, more than one can hold");
        return false;
      }
      if (have < protocol::header_size + h.payload_bytes) return true;  // the rest is coming
      std::span<const std::byte> payload(at + protocol::header_size, h.payload_bytes);
      c->rx_begin += protocol::header_size + h.payload_bytes;
      std::string what;
      protocol::response r;
      try {
        if (progress)
          what = protocol::decode_progress(payload);
        else
          r = protocol::decode_response(payload);
      } catch (const error& err) {
        on_protocol_violation(c, err.what());
        return false;
      }
      if (progress)
        on_progress(c, h.request_id, std::move(what));
      else
        on_response(c, h.request_id, std::move(r));
    }
  }

  void on_progress(const std::shared_ptr<child>& c, std::uint64_t id, std::string what) {
    std::lock_guard g(m);
    if (c->lost) return;
    // Only reports on the write being served count; anything else (a late report) is ignored.
    auto it = in_flight.find(id);
    if (it == in_flight.end() || it->second.get() != head_write_locked()) return;
    c->last_progress = std::chrono::steady_clock::now();
    c->activity = std::move(what);
  }

  void on_response(const std::shared_ptr<child>& c, std::uint64_t id, protocol::response r) {
    auto child_error = [&](const std::string& prefix) {
      return std::make_exception_ptr(error(protocol::errc_from_wire(r.code), prefix + r.message));
    };
    if (id == c->init_id) {
      if (!r.ok()) {
        c->init_timer.cancel();
        fail_init(c, child_error(c->number == 1 ? "checkpoint subprocess failed to initialize: "
                                                : "the replacement checkpoint subprocess failed to "
                                                  "initialize: "));
        kill_child(c);
      }
      return;
    }
    if (id == c->ping_id) {  // the handshake is complete
      std::lock_guard g(m);
      if (!final_error && !c->lost) {
        c->ready = true;
        c->init_timer.cancel();
      }
      cv.notify_all();
      return;
    }
    std::shared_ptr<job> j;
    {
      std::lock_guard g(m);
      auto it = in_flight.find(id);
      if (it == in_flight.end()) {
        // Not ours: the child is confused; treat as a broken channel.
        return on_protocol_violation_locked(
            c, "response for unknown request id " + std::to_string(id));
      }
      j = std::move(it->second);
      in_flight.erase(it);
      if (j->type == proto_type::terminate) {
        terminate_acked = true;
      } else {
        c->last_progress = std::chrono::steady_clock::now();  // the next write starts now
        c->activity.clear();
      }
    }
    // Release the segment copies before the caller can see the result, so that a write issued
    // right after get() finds the room this one used.
    auto done = std::move(j->done);
    auto failure = r.ok() ? nullptr
                          : child_error("checkpoint child failed to write '" + j->path.string() +
                                        "': ");
    if (!failure && committer && j->type == proto_type::write_checkpoint && !r.payload.empty()) {
      // Durable; the commit through the store resolves the future (parent_commit.hpp).
      auto attempt = j->commit_attempt;
      auto path = j->path;
      auto kw = j->kw;
      j.reset();
      committer->submit(attempt, std::move(path), std::move(kw),
                        std::string(reinterpret_cast<const char*>(r.payload.data()),
                                    r.payload.size()),
                        std::move(done));
      return;
    }
    j.reset();
    if (failure)
      done.set_exception(failure);
    else
      done.set_value();
  }

  void on_protocol_violation_locked(const std::shared_ptr<child>& c, const std::string& what) {
    // Called with m held from on_response; defer to the io loop to avoid re-locking.
    asio::post(io, [this, c, what] { on_protocol_violation(c, what); });
  }

  void on_protocol_violation(const std::shared_ptr<child>& c, const std::string& what) {
    // A child that breaks the protocol cannot be trusted with further requests.
    kill_child(c);
    on_channel_broken(c, "protocol violation: " + what);
  }

  // ---- io thread: failure handling ------------------------------------------------------------

  void on_init_timeout(const std::shared_ptr<child>& c) {
    {
      // cancel() cannot recall a handler already queued: the PING may have won the race.
      std::lock_guard g(m);
      if (c->ready || c->lost || final_error) return;
    }
    fail_init(c, std::make_exception_ptr(
                     error(errc::timeout, "Timed out after " + seconds_text(opts.init_timeout) +
                                              " waiting for checkpoint subprocess to initialize" +
                                              (c->number == 1 ? "" : " (a replacement child)"))));
    kill_child(c);
  }

  // A child that cannot start ends it all: a replacement would fail the same way.
  void fail_init(const std::shared_ptr<child>& c, std::exception_ptr e) {
    std::lock_guard g(m);
    if (!c->ready && !final_error) final_error = e;
    cv.notify_all();
  }

  void kill_child(const std::shared_ptr<child>& c) {
    {
      std::lock_guard g(m);
      if (c->exited || !c->proc) return;
      c->killed = true;
    }
    // Through the pidfd, so the signal can never reach a recycled pid.
    if (!c->pidfd || ::syscall(SYS_pidfd_send_signal, c->pidfd.get(), SIGKILL, nullptr, 0) != 0) {
      bp2::error_code ec;
      c->proc->terminate(ec);  // SIGKILL by pid; on_exit() reaps
    }
  }

  // The child's death shows up twice: as EOF on the socket and as its exit. Responses the child
  // sent before dying are still buffered in the socket, so its loss waits for EOF (everything
  // read); the exit status, if it arrives within the grace period, names how the child died.
  // An exit without EOF loses it after the grace period (a grandchild may hold the socket); an
  // EOF without exit kills it then (a child that closed its channel is of no use).
  void on_channel_broken(const std::shared_ptr<child>& c, const std::string& why) {
    {
      std::lock_guard g(m);
      if (c->lost || c->channel_broken) return;
      c->channel_broken = true;
      if (c->why.empty()) c->why = why;
      if (!c->exited) {
        c->grace_timer.expires_after(exit_status_grace);
        c->grace_timer.async_wait([this, c](boost::system::error_code e) {
          if (e != asio::error::operation_aborted) on_grace_expired(c);
        });
        return;
      }
    }
    lose(c);
  }

  void on_exit(const std::shared_ptr<child>& c, bp2::error_code e) {
    {
      std::lock_guard g(m);
      c->exited = true;
      c->exit_status = c->proc->native_exit_code();
      c->status_known = !e;  // e.g. ECHILD when the trainer reaps children itself
      cv.notify_all();
      if (c->lost) return;
      if (!c->channel_broken) {
        c->grace_timer.expires_after(exit_status_grace);
        c->grace_timer.async_wait([this, c](boost::system::error_code e2) {
          if (e2 != asio::error::operation_aborted) on_grace_expired(c);
        });
        return;
      }
    }
    lose(c);
  }

  void on_grace_expired(const std::shared_ptr<child>& c) {
    bool exited;
    {
      std::lock_guard g(m);
      if (c->lost) return;
      exited = c->exited;
    }
    if (exited) return lose(c);
    kill_child(c);
    c->grace_timer.expires_after(kill_grace);
    c->grace_timer.async_wait([this, c](boost::system::error_code e) {
      if (e != asio::error::operation_aborted) lose(c);  // even unreaped: give up on it
    });
  }

  // The child is gone for good: fail the write it was serving (after removing what it left of
  // that write on disk), send the writes behind it back to the queue for a replacement, or fail
  // everything when no replacement may come (failed start, close).
  void lose(const std::shared_ptr<child>& c) {
    std::filesystem::path head_dir;
    int pid;
    bool exited;
    {
      std::lock_guard g(m);
      if (c->lost) return;
      c->lost = true;
      pid = c->pid;
      exited = c->exited;
      if (!exited) unreaped.push_back(c);
      if (const job* h = head_write_locked()) head_dir = h->path;
    }
    c->init_timer.cancel();
    c->grace_timer.cancel();
    c->progress_timer.cancel();
    close_socket(c);
    // A dead writer's temporary file would stay forever (preallocated to the full size); a
    // child that might still live could yet rename it into place, so only when it is reaped.
    if (exited && !head_dir.empty()) remove_dead_writers_temp_files(head_dir, opts.rank.rank, pid);

    std::vector<std::pair<std::shared_ptr<job>, std::exception_ptr>> failed;
    {
      std::lock_guard g(m);
      // Why it died, in the words the futures will carry.
      errc code = errc::child_terminated;
      std::string cause;
      if (closing && (terminate_acked || killed_by_close)) {
        code = errc::closed;
        cause = killed_by_close ? "checkpoint process was closed: the child did not finish within "
                                  "shutdown_timeout and was killed"
                                : "checkpoint process was closed";
      } else if (!c->hang.empty()) {
        code = errc::timeout;
        cause = c->hang;
      } else {
        cause = "Child process terminated unexpectedly";
        if (c->killed && !c->why.empty())
          cause += " (" + c->why + ")";
        else if (c->exited && c->status_known)
          cause += " (" + describe_status(c->exit_status) + ")";
        else if (c->exited)
          cause += " (exit status unavailable)";
        else if (!c->why.empty())
          cause += " (" + c->why + ")";
      }
      if (!c->ready && !final_error) {
        // It never completed its handshake: a failed start (or restart) is final.
        final_error = std::make_exception_ptr(error(
            code,
            (c->number == 1 ? "" : "the replacement checkpoint child failed to start: ") + cause));
      }
      const bool replaceable = !closing && !final_error;
      bool head_done = false;
      std::deque<std::shared_ptr<job>> back;
      for (auto& [id, j] : in_flight) {
        if (j->type == proto_type::write_checkpoint && !head_done) {
          head_done = true;
          failed.emplace_back(
              j, std::make_exception_ptr(error(
                     code,
                     cause + "; the checkpoint '" + j->path.string() + "' was not written" +
                         (replaceable ? "; the next write starts a new checkpoint child" : ""))));
        } else if (replaceable) {
          // Sent, but the child serves in order and never started it: the replacement will.
          j->encode_on_submit = true;
          j->frame.clear();
          back.push_back(j);
        } else {
          failed.emplace_back(j, std::make_exception_ptr(error(
                                     code, cause + "; pending checkpoints were not written")));
        }
      }
      in_flight.clear();
      queue.insert(queue.begin(), back.begin(), back.end());
      if (replaceable && !queue.empty()) restart_locked();
      cv.notify_all();
    }
    // Outside the lock, copies released first (as on_response does).
    for (auto& [j, e] : failed) {
      auto done = std::move(j->done);
      j.reset();
      done.set_exception(e);
    }
  }

  // ---- submit thread --------------------------------------------------------------------------

  void submit_loop() {
    for (;;) {
      std::shared_ptr<job> j;
      {
        std::unique_lock lk(m);
        cv.wait(lk,
                [&] { return stopping || (!queue.empty() && (usable_locked() || final_error)); });
        if (stopping && queue.empty()) return;
        if (queue.empty()) continue;
        j = queue.front();
        queue.pop_front();
        submitting = true;
      }
      submit(j);
      std::lock_guard g(m);
      submitting = false;
    }
  }

  void submit(const std::shared_ptr<job>& j) {
    try {
      if (j->pending) {
        // Wait for the producer, but notice close() and a failed child meanwhile.
        // `timeout` only: a deferred future reports `deferred` at once and runs in get() below.
        while (j->pending->wait_for(50ms) == std::future_status::timeout) {
          std::lock_guard g(m);
          if (stopping || final_error) break;
        }
        {
          std::lock_guard g(m);
          if (final_error) std::rethrow_exception(final_error);
          if (stopping)
            throw error(errc::closed,
                        "checkpoint process was closed before the state dict for '" +
                            j->path.string() + "' was ready");
        }
        prepare(*j, j->pending->get());
        j->pending.reset();
      } else if (j->encode_on_submit) {
        encode_now(*j);
      }
      {
        std::lock_guard g(m);
        if (final_error) std::rethrow_exception(final_error);
        if (stopping)
          throw error(errc::closed, "checkpoint process was closed before the write was sent");
        if (!usable_locked()) {
          // The child was lost meanwhile: wait for its replacement, in order.
          j->encode_on_submit = true;
          j->frame.clear();
          auto at = std::find_if(queue.begin(), queue.end(),
                                 [&](const auto& q) { return q->id > j->id; });
          queue.insert(at, j);
          restart_locked();
          return;
        }
        in_flight.emplace(j->id, j);
        start_clock_locked(cur, *j);
        // Sent from this thread, in queue order (the io thread is not woken for it).
        send(cur, std::move(j->frame));
      }
    } catch (...) {
      j->done.set_exception(std::current_exception());
      abandon_pending(*j);
    }
  }

  // Copies every tensor not already in the segment into it and encodes the WRITE frame.
  void prepare(job& j, const state_dict& sd) {
    j.prepared = share(sd);
    encode_now(j);
  }

  // Whether every tensor in the tree already lies in the segment (no allocation: this runs in
  // the caller of write()). A tree deeper than the limit answers false, so that it takes the
  // copying path, whose walk rejects it with the path named.
  bool all_shared(const value& v, std::size_t level) const {
    switch (v.type()) {
      case kind::tensor: return seg.contains(v.as_tensor().data(), v.as_tensor().nbytes());
      case kind::dict: return all_shared(v.as_dict(), level + 1);
      case kind::list:
      case kind::tuple:
        if (level + 1 > max_nesting_depth) return false;
        for (const auto& e : v.as_sequence())
          if (!all_shared(e, level + 1)) return false;
        return true;
      default: return true;
    }
  }
  bool all_shared(const dict& d, std::size_t level = 1) const {
    if (level > max_nesting_depth) return false;
    for (const auto& [k, v] : d)
      if (!all_shared(v, level)) return false;
    return true;
  }

  // Whether `d` holds at most `budget` values in all (a bounded walk: it stops at the limit).
  static bool at_most_values(const dict& d, std::size_t& budget) {
    for (const auto& [k, v] : d) {
      if (budget == 0) return false;
      --budget;
      if (v.type() == kind::dict && !at_most_values(v.as_dict(), budget)) return false;
      if (v.is_sequence())
        for (const auto& e : v.as_sequence()) {
          if (budget == 0) return false;
          --budget;
          if (e.type() == kind::dict && !at_most_values(e.as_dict(), budget)) return false;
          if (e.is_sequence()) return false;  // nested sequences: not worth counting here
        }
    }
    return true;
  }

  // Whether `d` carries this segment's placement mark: every tensor is in it, checked when the
  // mark was set, and the tree is unchanged since.
  bool marked_shared(const dict& d) const noexcept {
    return detail::dict_placement::get(d) == segment_number;
  }

  // The tree with every tensor outside the segment replaced by a copy inside it.
  dict share(const dict& d) {
    if (marked_shared(d)) return d;
    return map_tensors(d, [this](const tensor& t) {
      return seg.contains(t.data(), t.nbytes()) ? t : seg.copy_in(t);
    });
  }

  static void fail_jobs(std::deque<std::shared_ptr<job>>& jobs, const std::string& why) {
    auto e = std::make_exception_ptr(error(errc::closed, why));
    for (auto& j : jobs) {
      j->done.set_exception(e);
      abandon_pending(*j);
    }
  }

  // A future we will never wait for may be the last reference to a std::async state, whose
  // destruction blocks until the producer finishes: let a detached thread absorb that wait.
  static void abandon_pending(job& j) {
    if (j.pending) std::thread([f = std::move(*j.pending)] {}).detach();
    j.pending.reset();
  }

  // ---- public operations ----------------------------------------------------------------------

  // Returns once a child serves writes, starting a replacement for a lost one first.
  void wait_ready() {
    std::unique_lock lk(m);
    for (;;) {
      if (final_error) std::rethrow_exception(final_error);
      if (closing || usable_locked()) return;  // after close, write() reports it
      restart_locked();
      auto c = cur;
      // The init timer bounds this wait; the extra margin only guards against a stuck io thread.
      if (!cv.wait_until(lk, deadline_after(opts.init_timeout, 5s), [&] {
            return final_error || closing || usable_locked() || cur != c ||
                   (cur->lost && !restarting);
          }))
        throw error(errc::timeout, "Timed out after " + seconds_text(opts.init_timeout) +
                                       " waiting for checkpoint subprocess to initialize");
    }
  }

  std::future<void> enqueue(std::shared_ptr<job> j) {
    auto f = j->done.get_future();
    // Encode before taking the lock (it can take milliseconds for large trees); the request id
    // is patched into the header once assigned, in queue order.
    try {
      if (!j->pending && !j->encode_on_submit)
        j->frame = protocol::make_frame(
            j->type, 0,
            j->type == proto_type::write_checkpoint
                ? protocol::encode_write(
                      j->path.string(), j->prepared, j->kw,
                      [this](const tensor& t) { return seg.offset_of(t.data()); })
                : std::vector<std::byte>{});
    } catch (...) {  // unrepresentable state dict (too deep, strings too long): fail this write
      j->done.set_exception(std::current_exception());
      return f;
    }
    std::lock_guard g(m);
    if (closing) {
      j->done.set_exception(std::make_exception_ptr(
          error(errc::closed, "write to '" + j->path.string() +
                                  "' after the checkpoint process was closed")));
      return f;
    }
    if (final_error) {
      j->done.set_exception(final_error);
      return f;
    }
    j->id = next_id++;
    if (!j->pending && !j->encode_on_submit) set_frame_id(j->frame, j->id);
    if (!j->pending && !j->encode_on_submit && queue.empty() && !submitting && usable_locked()) {
      // Its frame is ready and nothing is ahead of it on the submit thread: send it from this
      // thread, saving two thread hops (to the submit thread and to the io thread) per request.
      in_flight.emplace(j->id, j);
      start_clock_locked(cur, *j);
      send(cur, std::move(j->frame));
      return f;
    }
    queue.push_back(std::move(j));
    restart_locked();  // no-op unless the child was lost
    cv.notify_all();
    return f;
  }

  void encode_now(job& j) {
    j.frame = protocol::make_frame(
        proto_type::write_checkpoint, j.id,
        protocol::encode_write(j.path.string(), j.prepared, j.kw,
                               [this](const tensor& t) { return seg.offset_of(t.data()); }));
  }

  static void set_frame_id(std::vector<std::byte>& frame, std::uint64_t id) {
    std::memcpy(frame.data() + 8, &id, sizeof id);  // request_id: bytes 8..15 of the header
  }

  // Bounded by shutdown_timeout as a whole: queued writes and TERMINATE get all of it but the
  // kill reserve; a child still there then is killed, and waited for until the end.
  void close() noexcept {
    {
      std::unique_lock lk(m);
      if (closing) {
        // A concurrent close: wait until the first one has finished entirely.
        cv.wait(lk, [&] { return closed_done; });
        return;
      }
      closing = true;
    }
    using clock = std::chrono::steady_clock;
    const auto end = deadline_after(opts.shutdown_timeout);
    const auto reserve = std::min(kill_reserve, opts.shutdown_timeout / 4);
    const auto kill_at = end == clock::time_point::max() ? end : end - reserve;
    std::shared_ptr<child> c;
    {
      std::unique_lock lk(m);
      // A child still starting (the first one, or a replacement for writes sent back) may
      // finish its handshake first.
      cv.wait_until(lk, kill_at, [&] {
        return final_error || (!restarting && cur && (cur->ready || cur->lost));
      });
      c = cur;
      if (c && c->ready && !c->lost && !final_error) {
        auto t = std::make_shared<job>();
        t->type = proto_type::terminate;
        t->path = "<terminate>";
        // enqueue() refuses after `closing`; queue TERMINATE directly, behind pending writes.
        t->id = next_id++;
        t->frame = protocol::make_frame(proto_type::terminate, t->id, {});
        queue.push_back(t);
        cv.notify_all();
        cv.wait_until(lk, kill_at, [&] { return c->lost; });
      }
    }
    std::deque<std::shared_ptr<job>> unsent;
    {
      std::unique_lock lk(m);
      if (c && !c->lost) {
        if (!c->exited) {
          killed_by_close = true;
          lk.unlock();
          asio::post(io, [this, c] { kill_child(c); });
          lk.lock();
        }
        // Let the io thread read what the child sent before exiting and record how it ended,
        // so a crash during close is reported as such rather than as a plain close.
        cv.wait_until(lk, end, [&] { return c->lost; });
      }
      stopping = true;
      unsent.swap(queue);
      cv.notify_all();
    }
    // Outside the lock: destroying a job may block (the last reference to a std::async state).
    fail_jobs(unsent, "checkpoint process was closed before the write was sent");
    unsent.clear();
    if (submit_thread.joinable()) submit_thread.join();
    std::map<std::uint64_t, std::shared_ptr<job>> unanswered;
    {
      std::lock_guard g(m);
      unanswered.swap(in_flight);
      if (!final_error)
        final_error = std::make_exception_ptr(
            error(errc::closed, "checkpoint process was closed before the write completed"));
    }
    for (auto& [id, j] : unanswered)
      j->done.set_exception(std::make_exception_ptr(error(
          errc::closed, killed_by_close
                            ? "checkpoint process was closed: the child did not finish within "
                              "shutdown_timeout and was killed"
                            : "checkpoint process was closed before the write completed")));
    unanswered.clear();
    work.reset();
    asio::post(io, [this, c] {
      if (c) {
        close_socket(c);
        c->init_timer.cancel();
        c->grace_timer.cancel();
        c->progress_timer.cancel();
      }
      io.stop();
    });
    if (io_thread.joinable()) io_thread.join();
    if (committer) committer->close(end);  // commits of writes the child finished
    std::lock_guard g(m);
    // Children that could not be reaped even after SIGKILL: detach, so ~process does not block.
    if (c && c->proc && !c->exited) c->proc->detach();
    for (auto& u : unreaped)
      if (u->proc && !u->exited) u->proc->detach();
    closed_done = true;
    cv.notify_all();
  }
};

checkpoint_process::checkpoint_process(checkpoint_process_options options)
    : impl_(std::make_unique<impl>(std::move(options))) {
  impl_->start();
}

checkpoint_process::~checkpoint_process() {
  if (impl_) impl_->close();
}

void checkpoint_process::wait_ready() { impl_->wait_ready(); }

std::future<void> checkpoint_process::write(state_dict sd, std::filesystem::path path,
                                            kwargs kw) {
  const auto attempt = impl_->next_attempt(path);  // counted even if it fails: ranks stay in step
  wait_ready();
  auto j = std::make_shared<job>();
  j->commit_attempt = attempt;
  j->path = std::move(path);
  j->kw = std::move(kw);
  try {
    if (impl_->marked_shared(sd) || impl_->all_shared(sd)) {
      // Zero-copy hand-off: nothing to copy, so the tree moves into the job and is encoded off
      // this thread; with the placement mark (a stager snapshot, mark_shared) not even walked
      // here, so the caller returns in microseconds whatever the tensor count.
      // A tree this small encodes in about a microsecond: here, so that the frame leaves from
      // this thread without waking another (the PING-sized round trip); larger ones on the
      // submit thread.
      std::size_t budget = inline_encode_values;
      j->prepared = std::move(sd);
      j->encode_on_submit = !impl::at_most_values(j->prepared, budget);
    } else {
      j->prepared = impl_->share(sd);  // the copy of private tensors happens here, in the caller
    }
  } catch (...) {
    j->done.set_exception(std::current_exception());
    return j->done.get_future();
  }
  return impl_->enqueue(std::move(j));
}

std::future<void> checkpoint_process::write(std::shared_future<state_dict> sd,
                                            std::filesystem::path path, kwargs kw) {
  const auto attempt = impl_->next_attempt(path);
  wait_ready();
  auto j = std::make_shared<job>();
  j->commit_attempt = attempt;
  j->path = std::move(path);
  j->kw = std::move(kw);
  j->pending = std::move(sd);
  return impl_->enqueue(std::move(j));
}

tensor checkpoint_process::make_tensor(dtype type, std::vector<std::int64_t> shape) {
  return impl_->seg.make_tensor(type, std::move(shape));
}

std::shared_ptr<std::byte> checkpoint_process::allocate(std::size_t n) {
  return impl_->seg.allocate(n);
}

bool checkpoint_process::is_shared(const tensor& t) const noexcept {
  return impl_->seg.contains(t.data(), t.nbytes());
}

bool checkpoint_process::mark_shared(state_dict& sd) const {
  if (impl_->marked_shared(sd)) return true;
  if (!impl_->all_shared(sd)) return false;  // also false for a tree nested too deeply
  detail::dict_placement::set(sd, impl_->segment_number);
  return true;
}

std::uint64_t detail::process_placement::segment_number(const checkpoint_process& p) noexcept {
  return p.impl_->segment_number;
}

std::size_t checkpoint_process::segment_free_bytes() const { return impl_->seg.free_bytes(); }

int checkpoint_process::child_pid() const noexcept {
  std::lock_guard g(impl_->m);
  return impl_->cur ? impl_->cur->pid : -1;
}

bool checkpoint_process::child_running() const {
  std::lock_guard g(impl_->m);
  return impl_->cur && !impl_->cur->exited;
}

void checkpoint_process::close() noexcept { impl_->close(); }

}  // namespace shmckpt
