// Parent side of the checkpoint child: spawn, handshake, ordered writes, death detection, close.
//
// Threads. `io_thread_` spawns the child (so the parent-death signal follows a thread that lives
// as long as this object) and then runs the io_context that owns the socket, the process handle
// and the timers: every socket and process operation happens on it. `submit_thread_` takes
// queued jobs in order, waits for future state dicts, copies private tensors into the segment,
// encodes the frame and posts it to the io thread. Callers of write() only enqueue.
//
// State (guarded by `m_`): jobs wait in `queue_` until submitted, then sit in `in_flight_`
// (keyed by request id) until the child's RESPONSE or the child's death resolves them.
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

#include "shmckpt/error.hpp"
#include "shmckpt/protocol.hpp"
#include "shmckpt/segment.hpp"
#include "shmckpt/worker.hpp"
#include "util.hpp"

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
// Largest RESPONSE payload: code, message, and a small payload.
constexpr std::uint32_t max_response_bytes = 4 + 4 + protocol::max_string_bytes + 4 + 4096;

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
};

}  // namespace

struct checkpoint_process::impl {
  explicit impl(checkpoint_process_options o) : opts(std::move(o)) {}

  checkpoint_process_options opts;
  segment seg = segment::create(opts.segment_bytes, opts.prefault);

  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::optional<asio::local::stream_protocol::socket> sock;
  std::optional<bp2::process> proc;
  unique_fd pidfd;
  asio::steady_timer init_timer{io};
  asio::steady_timer status_timer{io};
  std::deque<std::vector<std::byte>> outbox;  // io thread only
  std::array<std::byte, protocol::header_size> rx_header{};
  std::vector<std::byte> rx_payload;

  std::thread io_thread;
  std::thread submit_thread;

  // ---- guarded by m ----
  std::mutex m;
  std::condition_variable cv;
  int pid = -1;
  bool ready = false;
  std::exception_ptr init_error;  // set when initialisation failed
  std::exception_ptr dead;        // set when the child died or the channel broke
  bool exited = false;
  bool status_known = false;
  int exit_status = 0;
  bool closing = false;     // close() began: no new writes
  bool stopping = false;    // submit thread must stop
  bool terminate_acked = false;
  bool submitting = false;  // the submit thread holds a job it has not yet posted
  bool killed_by_close = false;  // close() gave up waiting and killed the child
  bool closed_done = false;      // close() has finished
  bool channel_broken = false;
  std::string broken_reason;
  std::uint64_t next_id = 1;
  std::deque<std::shared_ptr<job>> queue;
  std::map<std::uint64_t, std::shared_ptr<job>> in_flight;

  // ---- start-up -------------------------------------------------------------------------------

  void start() {
    probe_pidfd();
    auto exe = find_worker(opts);
    if (::access(exe.c_str(), X_OK) != 0)
      throw_error(errc::not_found,
                  "checkpoint worker '" + exe.string() + "' is missing or not executable (" +
                      std::strerror(errno) +
                      "); install shmckpt-worker, set SHMCKPT_WORKER, or set "
                      "checkpoint_process_options::worker_path");
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      throw_error(errc::io_error, std::string("socketpair failed: ") + std::strerror(errno));
    unique_fd parent_end(sv[0]), child_end(sv[1]);

    std::promise<void> spawned;
    auto spawned_f = spawned.get_future();
    // The promise moves into the thread: start() may return while set_value() is still running.
    io_thread = std::thread([this, exe, spawned = std::move(spawned), &parent_end,
                             &child_end]() mutable {
      try {
        spawn(exe, parent_end, child_end);
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

  // On the io thread, before io.run(): nothing is registered with the reactor yet, so the
  // fork notification has nothing to redo.
  void spawn(const std::filesystem::path& exe, unique_fd& parent_end, unique_fd& child_end) {
    std::vector<std::string> args{worker_flag,
                                  "--control-fd",
                                  std::to_string(child_control_fd),
                                  "--segment-fd",
                                  std::to_string(child_segment_fd),
                                  "--segment-bytes",
                                  std::to_string(seg.size())};
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
    proc.emplace(std::move(*spawned_proc));
    // Our own pidfd (Boost 1.81 does not expose its own): signals sent through it can never
    // reach a recycled pid.
    pidfd.reset(static_cast<int>(::syscall(SYS_pidfd_open, proc->id(), 0)));
    {
      std::lock_guard g(m);
      pid = proc->id();
    }
    sock.emplace(io, asio::local::stream_protocol(), parent_end.get());
    parent_end.release();  // owned by the socket now

    proc->async_wait([this](bp2::error_code e, int) { on_exit(e); });
    read_next();

    init_timer.expires_after(opts.init_timeout);
    init_timer.async_wait([this](boost::system::error_code e) {
      if (!e) on_init_timeout();
    });
    protocol::init_request init;
    init.init_function = opts.init_function;
    init.init_args = opts.init_args;
    init.writer_factory = opts.writer_factory;
    init.writer_args = opts.writer_args;
    init.writer_args["rank"] = std::to_string(opts.rank.rank);
    init.writer_args["world_size"] = std::to_string(opts.rank.world_size);
    init.segment_bytes = seg.size();
    // Ids 1 and 2 are the handshake; writes start at 3.
    send(protocol::make_frame(proto_type::init, 1, protocol::encode_init(init)));
    send(protocol::make_frame(proto_type::ping, 2, {}));
    std::lock_guard g(m);
    next_id = 3;
  }

  // ---- io thread: sending ---------------------------------------------------------------------

  void send(std::vector<std::byte> frame) {
    outbox.push_back(std::move(frame));
    if (outbox.size() == 1) write_next();
  }

  void write_next() {
    asio::async_write(*sock, asio::buffer(outbox.front()),
                      [this](boost::system::error_code e, std::size_t) {
                        if (e) {
                          outbox.clear();
                          on_channel_broken("writing to the control channel failed: " +
                                            e.message());
                          return;
                        }
                        outbox.pop_front();
                        if (!outbox.empty()) write_next();
                      });
  }

  // ---- io thread: receiving -------------------------------------------------------------------

  void read_next() {
    asio::async_read(*sock, asio::buffer(rx_header),
                     [this](boost::system::error_code e, std::size_t) {
                       if (e) return on_channel_broken("control channel closed: " + e.message());
                       protocol::frame_header h;
                       try {
                         h = protocol::decode_header(rx_header);
                         if (h.type != static_cast<std::uint16_t>(proto_type::response))
                           throw_error(errc::protocol_error,
                                       "checkpoint child sent a request frame, not a response");
                       } catch (const error& err) {
                         return on_protocol_violation(err.what());
                       }
                       if (h.payload_bytes > max_response_bytes)
                         return on_protocol_violation(
                             "response claims " + std::to_string(h.payload_bytes) +
                             " payload bytes, more than a response can hold");
                       rx_payload.resize(h.payload_bytes);
                       asio::async_read(*sock, asio::buffer(rx_payload),
                                        [this, id = h.request_id](boost::system::error_code e2,
                                                                  std::size_t) {
                                          if (e2)
                                            return on_channel_broken("control channel closed: " +
                                                                     e2.message());
                                          protocol::response r;
                                          try {
                                            r = protocol::decode_response(rx_payload);
                                          } catch (const error& err) {
                                            return on_protocol_violation(err.what());
                                          }
                                          on_response(id, std::move(r));
                                          read_next();
                                        });
                     });
  }

  void on_response(std::uint64_t id, protocol::response r) {
    auto child_error = [&](const std::string& prefix) {
      auto code = r.code <= static_cast<std::uint32_t>(errc::unsupported)
                      ? static_cast<errc>(r.code)
                      : errc::child_failed;
      return std::make_exception_ptr(error(code, prefix + r.message));
    };
    if (id == 1) {  // INIT
      if (!r.ok()) {
        init_timer.cancel();
        fail_init(child_error("checkpoint subprocess failed to initialize: "));
        kill_child();
      }
      return;
    }
    if (id == 2) {  // PING: the handshake is complete
      std::lock_guard g(m);
      if (!init_error && !dead) {
        ready = true;
        init_timer.cancel();
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
        return on_protocol_violation_locked("response for unknown request id " +
                                            std::to_string(id));
      }
      j = std::move(it->second);
      in_flight.erase(it);
      if (j->type == proto_type::terminate) terminate_acked = true;
    }
    // Release the segment copies before the caller can see the result, so that a write issued
    // right after get() finds the room this one used.
    auto done = std::move(j->done);
    auto failure = r.ok() ? nullptr
                          : child_error("checkpoint child failed to write '" + j->path.string() +
                                        "': ");
    j.reset();
    if (failure)
      done.set_exception(failure);
    else
      done.set_value();
  }

  void on_protocol_violation_locked(const std::string& what) {
    // Called with m held from on_response; defer to the io loop to avoid re-locking.
    asio::post(io, [this, what] { on_protocol_violation(what); });
  }

  void on_protocol_violation(const std::string& what) {
    // A child that breaks the protocol cannot be trusted with further requests.
    kill_child();
    on_channel_broken("protocol violation: " + what);
  }

  // ---- io thread: failure handling ------------------------------------------------------------

  void on_init_timeout() {
    {
      // cancel() cannot recall a handler already queued: the PING may have won the race.
      std::lock_guard g(m);
      if (ready || init_error) return;
    }
    fail_init(std::make_exception_ptr(
        error(errc::timeout, "Timed out after " + seconds_text(opts.init_timeout) +
                                 " waiting for checkpoint subprocess to initialize")));
    kill_child();
  }

  void fail_init(std::exception_ptr e) {
    std::lock_guard g(m);
    if (!ready && !init_error) init_error = e;
    cv.notify_all();
  }

  void kill_child() {
    bool running;
    {
      std::lock_guard g(m);
      running = !exited;
    }
    if (running && proc) {
      // Through the pidfd, so the signal can never reach a recycled pid.
      if (!pidfd ||
          ::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0) != 0) {
        bp2::error_code ec;
        proc->terminate(ec);  // SIGKILL by pid; on_exit() reaps
      }
    }
  }

  // The child's death shows up twice: as EOF on the socket and as its exit. Responses the child
  // sent before dying are still buffered in the socket, so failures wait for EOF (everything
  // read); the exit status, if it arrives within the grace period, names how the child died.
  // Either event alone fails everything after the grace period (EOF may never come if a
  // grandchild inherited the socket; the exit may lag the EOF).
  void on_channel_broken(const std::string& why) {
    {
      std::lock_guard g(m);
      if (dead || channel_broken) return;
      channel_broken = true;
      broken_reason = why;
      if (exited) return fail_all_locked(why);
    }
    arm_failure_timer();
  }

  void on_exit(bp2::error_code e) {
    {
      std::lock_guard g(m);
      exited = true;
      exit_status = proc->native_exit_code();
      status_known = !e;  // e.g. ECHILD when the trainer reaps children itself
      cv.notify_all();
      if (channel_broken) return fail_all_locked(broken_reason);
    }
    arm_failure_timer();
  }

  void arm_failure_timer() {
    status_timer.expires_after(exit_status_grace);
    status_timer.async_wait([this](boost::system::error_code e) {
      if (e == asio::error::operation_aborted) return;
      std::lock_guard g(m);
      fail_all_locked(broken_reason);
    });
  }

  // Fails everything pending and every later write. Expected after a clean TERMINATE.
  void fail_all_locked(const std::string& why) {
    if (dead) return;
    std::string msg;
    errc code = errc::child_terminated;
    if (terminate_acked || killed_by_close) {
      code = errc::closed;
      msg = killed_by_close ? "checkpoint process was closed: the child did not finish within "
                              "shutdown_timeout and was killed"
                            : "checkpoint process was closed";
    } else {
      msg = "Child process terminated unexpectedly";
      if (exited && status_known)
        msg += " (" + describe_status(exit_status) + ")";
      else if (exited)
        msg += " (exit status unavailable)";
      else if (!why.empty())
        msg += " (" + why + ")";
      msg += "; pending checkpoints were not written";
    }
    dead = std::make_exception_ptr(error(code, msg));
    if (!ready && !init_error) init_error = dead;
    for (auto& [id, j] : in_flight) j->done.set_exception(dead);
    in_flight.clear();
    cv.notify_all();
  }

  // ---- submit thread --------------------------------------------------------------------------

  void submit_loop() {
    for (;;) {
      std::shared_ptr<job> j;
      {
        std::unique_lock lk(m);
        cv.wait(lk, [&] { return stopping || (!queue.empty() && (ready || dead || init_error)); });
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
        // Wait for the producer, but notice close() and a dead child meanwhile.
        // `timeout` only: a deferred future reports `deferred` at once and runs in get() below.
        while (j->pending->wait_for(50ms) == std::future_status::timeout) {
          std::lock_guard g(m);
          if (stopping || dead || init_error) break;
        }
        {
          std::lock_guard g(m);
          if (auto e = dead ? dead : init_error) std::rethrow_exception(e);
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
      std::lock_guard g(m);
      if (auto e = dead ? dead : init_error) std::rethrow_exception(e);
      in_flight.emplace(j->id, j);
      asio::post(io, [this, frame = std::move(j->frame)]() mutable { send(std::move(frame)); });
    } catch (...) {
      j->done.set_exception(std::current_exception());
      abandon_pending(*j);
    }
  }

  // Copies every tensor not already in the segment into it and encodes the WRITE frame.
  void prepare(job& j, const state_dict& sd) {
    j.prepared = share(sd);
    j.frame = protocol::make_frame(
        proto_type::write_checkpoint, j.id,
        protocol::encode_write(j.path.string(), j.prepared, j.kw,
                               [this](const tensor& t) { return seg.offset_of(t.data()); }));
  }

  // Whether every tensor in the tree already lies in the segment (no allocation: this runs in
  // the caller of write()).
  bool all_shared(const value& v) const {
    switch (v.type()) {
      case kind::tensor: return seg.contains(v.as_tensor().data(), v.as_tensor().nbytes());
      case kind::dict: return all_shared(v.as_dict());
      case kind::list:
      case kind::tuple:
        for (const auto& e : v.as_sequence())
          if (!all_shared(e)) return false;
        return true;
      default: return true;
    }
  }
  bool all_shared(const dict& d) const {
    for (const auto& [k, v] : d)
      if (!all_shared(v)) return false;
    return true;
  }

  // The tree with every tensor outside the segment replaced by a copy inside it.
  dict share(const dict& d) {
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

  void wait_ready() {
    std::unique_lock lk(m);
    // The init timer bounds this wait; the extra margin only guards against a stuck io thread.
    auto deadline = deadline_after(opts.init_timeout, 5s);
    if (!cv.wait_until(lk, deadline, [&] { return ready || init_error || dead; }))
      throw error(errc::timeout, "Timed out after " + seconds_text(opts.init_timeout) +
                                     " waiting for checkpoint subprocess to initialize");
    if (init_error) std::rethrow_exception(init_error);
    if (!ready && dead) std::rethrow_exception(dead);
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
    if (dead) {
      j->done.set_exception(dead);
      return f;
    }
    j->id = next_id++;
    if (!j->pending && !j->encode_on_submit) set_frame_id(j->frame, j->id);
    if (!j->pending && queue.empty() && !submitting && ready) {
      // Nothing is ahead of this job on the submit thread: hand it straight to the io thread
      // (posts run in order there), saving a thread hop on every request.
      in_flight.emplace(j->id, j);
      asio::post(io, [this, j] {
        if (j->encode_on_submit) {
          try {
            encode_now(*j);
          } catch (...) {
            std::lock_guard g(m);
            if (in_flight.erase(j->id)) j->done.set_exception(std::current_exception());
            return;
          }
        }
        send(std::move(j->frame));
      });
      return f;
    }
    queue.push_back(std::move(j));
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
    bool graceful;
    {
      // Closing during the handshake: let it finish (bounded by the init timer) first.
      std::unique_lock lk(m);
      cv.wait_until(lk, deadline_after(opts.init_timeout, 5s),
                    [&] { return ready || init_error || dead; });
      graceful = ready && !dead && !exited;
    }
    if (graceful) {
      auto t = std::make_shared<job>();
      t->type = proto_type::terminate;
      t->path = "<terminate>";
      {
        // enqueue() refuses after `closing`; queue TERMINATE directly, behind pending writes.
        std::lock_guard g(m);
        t->id = next_id++;
        t->frame = protocol::make_frame(proto_type::terminate, t->id, {});
        queue.push_back(t);
        cv.notify_all();
      }
      std::unique_lock lk(m);
      cv.wait_until(lk, deadline_after(opts.shutdown_timeout), [&] { return exited; });
    }
    std::deque<std::shared_ptr<job>> unsent;
    {
      std::unique_lock lk(m);
      if (!exited) {
        killed_by_close = true;
        lk.unlock();
        asio::post(io, [this] { kill_child(); });
        lk.lock();
        cv.wait_for(lk, kill_grace, [&] { return exited; });
      }
      // Let the io thread read what the child sent before exiting and record how it ended, so
      // a crash during close is reported as such rather than as a plain close.
      cv.wait_for(lk, exit_status_grace + 1s, [&] { return dead != nullptr; });
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
      if (!dead)
        dead = std::make_exception_ptr(
            error(errc::closed, "checkpoint process was closed before the write completed"));
    }
    for (auto& [id, j] : unanswered)
      j->done.set_exception(std::make_exception_ptr(
          error(errc::closed, "checkpoint process was closed before the write completed")));
    unanswered.clear();
    work.reset();
    asio::post(io, [this] {
      boost::system::error_code ignored;
      if (sock) sock->close(ignored);
      init_timer.cancel();
      status_timer.cancel();
      io.stop();
    });
    if (io_thread.joinable()) io_thread.join();
    // If the child could not be reaped even after SIGKILL, detach so ~process does not block.
    if (proc && !exited) proc->detach();
    std::lock_guard g(m);
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
  wait_ready();
  auto j = std::make_shared<job>();
  j->path = std::move(path);
  j->kw = std::move(kw);
  try {
    if (impl_->all_shared(sd)) {
      // Zero-copy hand-off: nothing to copy, so the tree moves into the job and is encoded on
      // the submit thread; the caller returns in microseconds whatever the tensor count.
      j->prepared = std::move(sd);
      j->encode_on_submit = true;
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
  wait_ready();
  auto j = std::make_shared<job>();
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

std::size_t checkpoint_process::segment_free_bytes() const { return impl_->seg.free_bytes(); }

int checkpoint_process::child_pid() const noexcept {
  std::lock_guard g(impl_->m);
  return impl_->pid;
}

bool checkpoint_process::child_running() const {
  std::lock_guard g(impl_->m);
  return !impl_->exited;
}

void checkpoint_process::close() noexcept { impl_->close(); }

}  // namespace shmckpt
