// The checkpoint child: request loop, registries, and parent-death handling.
//
// The loop is single-threaded and serves requests strictly in order. A second thread only
// watches the control socket for the parent's end closing (POLLRDHUP): it raises the cancel flag
// that the default writer checks between chunks (so an in-flight write is abandoned and its
// temporary file removed), and exits the process if the loop has not finished shortly after.
// SIGTERM (also delivered as the parent-death signal set at spawn) raises the same flag.
//
// Progress. The worker installs a progress reporter (progress.hpp) for the life of its loop:
// the writer's data loop and the commit barrier call it, and while a write is served it sends
// PROGRESS frames for that request, at most one per `progress_interval`. Every frame the child
// sends (each RESPONSE and PROGRESS) is written whole by `send_frame_locked` under `send_lock_`,
// whichever thread calls it, so frames never interleave on the socket, and a PROGRESS for a
// request never follows its RESPONSE.
#include "shmckpt/worker.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include "child/priority.hpp"
#include "core/progress.hpp"
#include "core/write_reply.hpp"
#include "shmckpt/error.hpp"
#include "ipc/protocol.hpp"
#include "ipc/segment.hpp"

namespace shmckpt {

namespace asio = boost::asio;
using local_socket = asio::local::stream_protocol::socket;

namespace {

struct registry {
  std::mutex lock;
  std::map<std::string, init_function, std::less<>> inits;
  std::map<std::string, writer_factory, std::less<>> writers;
};

std::atomic<bool> g_cancel{false};     // parent gone or SIGTERM: abandon work
std::atomic<bool> g_terminated{false};  // SIGTERM received: exit with 128 + SIGTERM

registry& reg() {
  static registry r;
  return r;
}

extern "C" void on_sigterm(int) {
  g_terminated.store(true, std::memory_order_relaxed);
  g_cancel.store(true, std::memory_order_relaxed);
}

// How long the loop may keep running once the parent is gone before the watcher ends the
// process: enough for the default writer to notice the cancel flag and clean up.
constexpr auto parent_gone_grace = std::chrono::seconds(2);

// At most one PROGRESS frame per interval: the parent's watchdog (progress_timeout, at least 1 s
// and 300 s by default) needs one now and then, and ten ~100-byte frames a second cost nothing
// next to a write at disk speed, while keeping the description the parent reports on a hang
// at most 0.1 s old. The writer reports every batch (8-64 MiB), i.e. up to a hundred times a
// second on fast storage: the limit keeps most of those from becoming syscalls.
constexpr auto progress_interval = std::chrono::milliseconds(100);

struct worker_args {
  int control_fd = -1;
  int segment_fd = -1;
  std::uint64_t segment_bytes = 0;
  child_priority priority;
};

// Why the priority asked for could not be applied (empty: it was); the INIT request fails with it.
std::string g_priority_error;

worker_args parse_args(int argc, char** argv) {
  worker_args a;
  auto number = [&](int i) -> long long {
    if (i >= argc) throw std::invalid_argument(std::string(argv[i - 1]) + " needs a value");
    return std::stoll(argv[i]);
  };
  for (int i = 2; i < argc; ++i) {
    std::string_view s = argv[i];
    if (s == "--control-fd") a.control_fd = static_cast<int>(number(++i));
    else if (s == "--segment-fd") a.segment_fd = static_cast<int>(number(++i));
    else if (s == "--segment-bytes") a.segment_bytes = static_cast<std::uint64_t>(number(++i));
    else if (detail::parse_priority_arg(argc, argv, i, a.priority)) continue;
    else throw std::invalid_argument("unknown argument '" + std::string(s) + "'");
  }
  if (a.control_fd < 0 || a.segment_fd < 0 || a.segment_bytes == 0)
    throw std::invalid_argument("--control-fd, --segment-fd and --segment-bytes are required");
  return a;
}

// Closes every descriptor except stdio and the two the parent passed: the launcher's own
// close-other-fds is unreliable in Boost 1.81, and a stray copy of a socket would stop the
// parent from ever seeing EOF.
void close_other_fds(int a, int b) {
  int lo = std::min(a, b), hi = std::max(a, b);
  auto close_range = [](unsigned first, unsigned last) {
    if (first > last) return;
    if (::syscall(SYS_close_range, first, last, 0) != 0)
      for (unsigned fd = first; fd <= last && fd < 65536; ++fd) ::close(static_cast<int>(fd));
  };
  close_range(3, static_cast<unsigned>(lo) - 1);
  close_range(static_cast<unsigned>(lo) + 1, static_cast<unsigned>(hi) - 1);
  close_range(static_cast<unsigned>(hi) + 1, ~0u);
}

class worker {
 public:
  worker(const worker_args& a, asio::io_context& io)
      : seg_(segment::attach(a.segment_fd, a.segment_bytes)),
        sock_(io, asio::local::stream_protocol(), a.control_fd) {}

  int run() {
    // Removed before the worker (and its socket) goes away; a report from a thread that outlives
    // the loop then does nothing.
    struct reporter_guard {
      explicit reporter_guard(worker* w) {
        detail::set_progress_reporter([w](std::string_view what) { w->report_progress(what); });
      }
      ~reporter_guard() { detail::set_progress_reporter({}); }
    } guard(this);
    std::array<std::byte, protocol::header_size> hbuf;
    std::vector<std::byte> payload;
    for (;;) {
      boost::system::error_code ec;
      read_exact(hbuf.data(), hbuf.size(), ec);
      // EOF: the parent closed the channel or died; nothing to answer.
      // (The watcher also raises g_cancel when the parent goes: that is a plain exit.)
      if (ec) return g_terminated.load() ? 128 + SIGTERM : 0;
      protocol::frame_header h;
      try {
        h = protocol::decode_header(hbuf);
      } catch (const error& e) {
        // The stream cannot be resynchronised after a bad header: answer and stop.
        respond(0, errc::protocol_error, e.what());
        return 4;
      }
      payload.resize(h.payload_bytes);
      read_exact(payload.data(), payload.size(), ec);
      if (ec) return 0;
      if (!serve(h, payload)) return 0;
      if (g_terminated.load()) return 128 + SIGTERM;
    }
  }

 private:
  // Fills [p, p + n) from the socket through a small buffer: a request usually arrives whole, so
  // its header and payload come from one system call. Large payloads bypass the buffer.
  void read_exact(std::byte* p, std::size_t n, boost::system::error_code& ec) {
    while (n > 0) {
      if (rx_begin_ == rx_end_) {
        if (n >= rx_.size()) {
          std::size_t got = asio::read(sock_, asio::buffer(p, n), ec);
          (void)got;
          return;
        }
        rx_begin_ = 0;
        rx_end_ = sock_.read_some(asio::buffer(rx_), ec);
        if (ec) return;
      }
      std::size_t k = std::min(n, rx_end_ - rx_begin_);
      std::memcpy(p, rx_.data() + rx_begin_, k);
      rx_begin_ += k;
      p += k;
      n -= k;
    }
  }

  // Returns false after TERMINATE.
  bool serve(const protocol::frame_header& h, std::span<const std::byte> payload) {
    auto type = static_cast<protocol::message_type>(h.type);
    try {
      switch (type) {
        case protocol::message_type::init: init(protocol::decode_init(payload)); break;
        case protocol::message_type::ping: {
          std::uint32_t pid = static_cast<std::uint32_t>(::getpid());
          std::vector<std::byte> p(sizeof pid);
          std::memcpy(p.data(), &pid, sizeof pid);
          respond(h.request_id, {}, {}, std::move(p));
          return true;
        }
        case protocol::message_type::write_checkpoint: {
          // A writer that leaves the commit to the parent describes its file in the response.
          std::string reply = write(h.request_id, payload);
          const auto* b = reinterpret_cast<const std::byte*>(reply.data());
          respond(h.request_id, {}, {}, std::vector<std::byte>(b, b + reply.size()));
          return true;
        }
        case protocol::message_type::terminate:
          respond(h.request_id, {}, {});
          return false;
        case protocol::message_type::response:
          throw_error(errc::protocol_error, "the checkpoint child received a RESPONSE frame");
        case protocol::message_type::progress:
          throw_error(errc::protocol_error, "the checkpoint child received a PROGRESS frame");
      }
      respond(h.request_id, {}, {});
    } catch (const error& e) {
      respond(h.request_id, e.kind(), e.what());
    } catch (const std::exception& e) {
      respond(h.request_id, errc::child_failed, e.what());
    }
    return true;
  }

  void init(const protocol::init_request& r) {
    if (!g_priority_error.empty()) throw_error(errc::child_failed, g_priority_error);
    init_function fn;
    writer_factory factory;
    {
      std::lock_guard g(reg().lock);
      if (!r.init_function.empty()) {
        auto it = reg().inits.find(r.init_function);
        if (it == reg().inits.end())
          throw_error(errc::not_found,
                      "no init function named '" + r.init_function +
                          "' is registered in the checkpoint child; register it with "
                          "shmckpt::register_init_function before run_worker_if_requested");
        fn = it->second;
      }
      auto it = reg().writers.find(r.writer_factory);
      if (it == reg().writers.end())
        throw_error(errc::not_found,
                    "no writer factory named '" + r.writer_factory +
                        "' is registered in the checkpoint child; register it with "
                        "shmckpt::register_writer_factory before run_worker_if_requested");
      factory = it->second;
    }
    if (fn) run_user("init function '" + r.init_function + "'", [&] { fn(r.init_args); });
    std::unique_ptr<checkpoint_writer> w;
    run_user("writer factory '" + r.writer_factory + "'", [&] { w = factory(r.writer_args); });
    if (!w)
      throw_error(errc::child_failed,
                  "writer factory '" + r.writer_factory + "' returned no writer");
    writer_ = std::move(w);
  }

  std::string write(std::uint64_t id, std::span<const std::byte> payload) {
    if (!writer_)
      throw_error(errc::protocol_error, "WRITE_CHECKPOINT before a successful INIT");
    auto req = protocol::decode_write(
        payload, [this](std::uint64_t off, std::uint64_t len) { return seg_.resolve(off, len); });
    // Progress reports name this request from now until its response is sent (respond() ends
    // it under the same lock, so no PROGRESS can follow the RESPONSE).
    // The first report goes out at once: until then the parent only knows the write was sent.
    {
      std::lock_guard g(send_lock_);
      serving_ = id;
      last_progress_sent_ = {};
    }
    detail::take_write_reply();  // nothing left from an earlier write
    run_user("writer", [&] { writer_->write(req.state, req.path, req.kw); });
    return detail::take_write_reply();
  }

  // The progress reporter: any thread, rate-limited, only while a write is being served.
  void report_progress(std::string_view what) {
    std::lock_guard g(send_lock_);
    if (serving_ == 0) return;
    auto now = std::chrono::steady_clock::now();
    if (now - last_progress_sent_ < progress_interval) return;
    last_progress_sent_ = now;
    send_frame_locked(protocol::make_frame(protocol::message_type::progress, serving_,
                                           protocol::encode_progress(what)));
  }

  // Writes the whole frame (blocking). Errors are ignored: a dead parent shows up as EOF on the
  // next read. MSG_NOSIGNAL: no SIGPIPE from a closed socket, from whichever thread.
  void send_frame_locked(const std::vector<std::byte>& frame) {
    const std::byte* p = frame.data();
    std::size_t left = frame.size();
    while (left > 0) {
      ssize_t r = ::send(sock_.native_handle(), p, left, MSG_NOSIGNAL);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return;
      p += r;
      left -= static_cast<std::size_t>(r);
    }
  }

  // Runs user code, prefixing its error message with what failed.
  template <class F>
  void run_user(const std::string& what, F&& f) {
    try {
      f();
    } catch (const error& e) {
      throw error(e.kind() == errc::invalid_argument ? errc::child_failed : e.kind(),
                  what + " failed: " + e.what());
    } catch (const std::exception& e) {
      throw error(errc::child_failed, what + " failed: " + e.what());
    } catch (...) {
      throw error(errc::child_failed, what + " failed with a non-standard exception");
    }
  }

  void respond(std::uint64_t id, std::optional<errc> code, const std::string& message,
               std::vector<std::byte> payload = {}) {
    protocol::response r;
    r.code = code ? static_cast<std::uint32_t>(*code) : 0;
    r.message = message;
    r.payload = std::move(payload);
    auto frame = protocol::make_frame(protocol::message_type::response, id,
                                      protocol::encode_response(r));
    std::lock_guard g(send_lock_);
    serving_ = 0;
    send_frame_locked(frame);
  }

  segment seg_;
  local_socket sock_;
  std::array<std::byte, 16 << 10> rx_{};  // bytes read ahead of the frame being parsed
  std::size_t rx_begin_ = 0;
  std::size_t rx_end_ = 0;
  std::unique_ptr<checkpoint_writer> writer_;
  std::mutex send_lock_;      // held while a frame is written to the socket
  std::uint64_t serving_ = 0;  // (send_lock_) the write being served; 0 between writes
  std::chrono::steady_clock::time_point last_progress_sent_;  // (send_lock_)
};

// Watches for the parent's end of the socket closing. Returns when `done` is set.
void watch_parent(int fd, std::atomic<bool>& done, std::mutex& m, std::condition_variable& cv) {
  pollfd p{fd, POLLRDHUP, 0};
  int status = 3;  // parent gone
  for (;;) {
    // The timeout lets a SIGTERM that arrived while the loop sat idle in read() end the process.
    int r = ::poll(&p, 1, 200);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) break;
    if (g_terminated.load()) {
      status = 128 + SIGTERM;
      break;
    }
  }
  g_cancel.store(true);
  std::unique_lock lk(m);
  if (!cv.wait_for(lk, parent_gone_grace, [&] { return done.load(); })) ::_exit(status);
}

}  // namespace

void report_progress(std::string_view what) noexcept { detail::report_progress(what); }

void register_init_function(std::string name, init_function fn) {
  std::lock_guard g(reg().lock);
  reg().inits.insert_or_assign(std::move(name), std::move(fn));
}

void register_writer_factory(std::string name, writer_factory factory) {
  std::lock_guard g(reg().lock);
  reg().writers.insert_or_assign(std::move(name), std::move(factory));
}

int worker_main(int argc, char** argv) {
  worker_args args;
  try {
    args = parse_args(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "shmckpt worker: " << e.what()
              << "\nThis program is started by shmckpt::checkpoint_process, not by hand.\n";
    return 2;
  }
  close_other_fds(args.control_fd, args.segment_fd);
  // Before any thread exists, so that every thread inherits it.
  g_priority_error = detail::apply_priority(args.priority);

  struct sigaction sa {};
  sa.sa_handler = on_sigterm;
  sa.sa_flags = SA_RESTART;  // an idle read() resumes; the watcher ends an idle process
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  {
    std::lock_guard g(reg().lock);
    reg().writers.try_emplace("default", [](const kwargs& a) {
      return make_default_writer(a, &g_cancel);
    });
  }

  std::atomic<bool> done{false};
  std::mutex m;
  std::condition_variable cv;
  std::thread watcher(watch_parent, args.control_fd, std::ref(done), std::ref(m), std::ref(cv));
  watcher.detach();

  int status = 0;
  try {
    asio::io_context io;
    worker w(args, io);
    status = w.run();
  } catch (const std::exception& e) {
    std::cerr << "shmckpt worker: " << e.what() << "\n";
    status = 1;
  }
  {
    std::lock_guard g(m);
    done = true;
  }
  cv.notify_all();
  // Skip static destructors: the watcher thread may still be blocked in poll().
  std::fflush(nullptr);
  ::_exit(status);
}

void run_worker_if_requested(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], worker_flag) == 0) std::exit(worker_main(argc, argv));
}

}  // namespace shmckpt
