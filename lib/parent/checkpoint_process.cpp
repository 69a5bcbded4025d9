// The supervisor of the checkpoint child: handshake and its timeout, the progress watchdog, the
// failure state machine of each child incarnation, the restart of a lost child, and close. The
// parts it supervises live beside it: the process (child_process.hpp), its control socket
// (control_channel.hpp), and the requests (request_queue.hpp).
//
// Threads. `io_thread` spawns the child (so the parent-death signal follows a thread that lives
// as long as this object), later also its replacements, and runs the io_context that owns the
// sockets, the process handles and the timers; every handler below runs on it. `submit_thread`
// takes queued jobs in order, waits for future state dicts, copies private tensors into the
// segment, encodes the frame and sends it. A write whose frame the caller has ready (a small or
// copied tree) with nothing queued ahead is sent by the caller itself, so a round trip wakes only
// the child and, for the response, the io thread.
//
// Children. Each incarnation of the child is an `incarnation`; handlers capture the one they
// belong to, so a late event of a dead child never touches its replacement. An incarnation is
// `starting` until its PING is answered, then `serving`, and `lost` once it died (or was killed)
// and everything it sent has been read: its death shows up twice (EOF on the socket, its exit),
// and the first of the two starts a grace period for the other. When it is lost, the write it
// was serving fails with the cause; writes sent after it had not started, so they go back to the
// front of the queue for the replacement, which is started on the same segment when there is
// work for it: at once when writes were sent back, else by the next write() or wait_ready(). A
// child lost while `starting` ends it all (`final_error`): a start that fails would fail again.
//
// State (guarded by `m`): the queue's bookkeeping, the current incarnation and its facts, the
// close phase, `final_error`. `m` is taken before a channel's send lock, never the reverse.
#include "parent/child_process.hpp"  // first: it includes what Process v2 needs first

#include "shmckpt/checkpoint_process.hpp"

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>

#include "child/priority.hpp"
#include "core/placement.hpp"
#include "ipc/protocol.hpp"
#include "ipc/segment.hpp"
#include "parent/control_channel.hpp"
#include "parent/parent_commit.hpp"
#include "parent/request_queue.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using proto_type = protocol::message_type;
using detail::job;
using detail::request_queue;
using clock_type = std::chrono::steady_clock;

namespace {

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

// now + a + b, saturating instead of overflowing for "wait forever" durations.
clock_type::time_point deadline_after(std::chrono::milliseconds a,
                                      std::chrono::milliseconds b = {}) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::time_point::max() -
                                                                    clock_type::now());
  if (a >= left || b >= left - a) return clock_type::time_point::max();
  return clock_type::now() + a + b;
}

std::string seconds_text(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3gs", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

// One incarnation of the checkpoint child.
struct incarnation {
  enum class state {
    starting,  // handshake (INIT, PING) in progress
    serving,   // PING answered: serves writes
    lost,      // dead and fully read; nothing more is sent to it or read from it
  };

  incarnation(asio::io_context& io, std::uint64_t n, detail::child_process p)
      : number(n), proc(std::move(p)), pid(proc.pid()), init_timer(io), grace_timer(io),
        progress_timer(io) {}
  const std::uint64_t number;  // 1: the first child, 2: its first replacement, ...

  // ---- io thread only (set before the incarnation is published) ----
  detail::child_process proc;
  const int pid;
  std::shared_ptr<detail::control_channel> channel;
  asio::steady_timer init_timer;      // bounds the handshake
  asio::steady_timer grace_timer;     // after EOF or exit: waits for the other, or for the kill
  asio::steady_timer progress_timer;  // the progress watchdog
  std::uint64_t init_id = 0;
  std::uint64_t ping_id = 0;

  // ---- guarded by impl::m ----
  state st = state::starting;
  // How it ends: the facts lose() turns into the cause the futures carry.
  bool channel_broken = false;  // EOF, a socket error or a protocol violation
  std::string why;              // the first reason the channel was given up on
  bool exited = false;          // reaped (or the wait failed, see status_known)
  bool status_known = false;
  int exit_status = 0;
  bool killed = false;  // this side sent SIGKILL
  std::string hang;     // set when the watchdog killed it: what the lost write reports
  // The progress watchdog, for the oldest write in flight.
  bool watchdog_armed = false;
  clock_type::time_point last_progress{};
  std::string activity;  // what the child last said it was doing for that write
};

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

  // The close phases, in order: each one implies the ones before.
  enum class phase {
    open,
    closing,   // close() began: no new writes, no replacement child
    stopping,  // the submit thread must stop; queued writes have failed
    closed,    // close() has finished
  };

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
  request_queue requests{seg, segment_number};
  std::shared_ptr<incarnation> cur;  // the current child (possibly lost, awaiting its replacement)
  std::vector<std::shared_ptr<incarnation>> unreaped;  // lost without exiting; detached at close
  bool restarting = false;                             // a replacement child is being started
  std::exception_ptr final_error;  // no child will serve writes any more (failed start, closed)
  phase ph = phase::open;
  bool terminate_acked = false;  // the child answered close()'s TERMINATE
  bool killed_by_close = false;  // close() gave up waiting and killed the child

  bool closing() const { return ph >= phase::closing; }
  bool stopping() const { return ph >= phase::stopping; }
  bool usable_locked() const { return cur && cur->st == incarnation::state::serving; }

  // ---- start-up -------------------------------------------------------------------------------

  void start() {
    if (opts.store) {
      kwargs hook_args = opts.writer_args;
      hook_args["rank"] = std::to_string(opts.rank.rank);
      hook_args["world_size"] = std::to_string(opts.rank.world_size);
      committer = std::make_unique<detail::parent_committer>(detail::parent_committer::settings{
          opts.store, opts.store_scope, opts.rank, opts.commit_timeout, std::move(hook_args)});
    }
    detail::probe_pidfd();
    exe = detail::locate_worker(opts);
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
    const auto number = ++children_started;
    std::vector<std::string> args{"--segment-bytes", std::to_string(seg.size())};
    for (auto& a : detail::priority_args(opts.priority)) args.push_back(std::move(a));
    auto spawned = detail::child_process::spawn(io, exe, std::move(args), seg.fd());
    auto c = std::make_shared<incarnation>(io, number, std::move(spawned.process));
    // Weak: the channel belongs to the incarnation, and must not keep it alive.
    std::weak_ptr<incarnation> w = c;
    c->channel = detail::control_channel::open(
        io, std::move(spawned.control),
        {.response = [this, w](std::uint64_t id,
                               protocol::response r) {
           if (auto c = w.lock()) on_response(c, id, std::move(r));
         },
         .progress = [this, w](std::uint64_t id,
                               std::string what) {
           if (auto c = w.lock()) on_progress(c, id, std::move(what));
         },
         .broken = [this, w](std::string why) {
           if (auto c = w.lock()) on_channel_broken(c, why);
         },
         .violation = [this, w](std::string what) {
           if (auto c = w.lock()) on_protocol_violation(c, what);
         }});
    {
      std::lock_guard g(m);
      // The first child's handshake is ids 1 and 2 (writes start at 3); a replacement's takes
      // the next two ids, so request ids stay unique for the life of this object.
      c->init_id = requests.take_id();
      c->ping_id = requests.take_id();
      cur = c;
      restarting = false;
      cv.notify_all();
    }
    c->proc.async_wait([this, c](boost::system::error_code e) { on_exit(c, e); });
    c->channel->start();

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
    c->channel->send(protocol::make_frame(proto_type::init, c->init_id, protocol::encode_init(init)));
    c->channel->send(protocol::make_frame(proto_type::ping, c->ping_id, {}));
  }

  // Starts a replacement for a lost child, unless one is starting or none may be started.
  void restart_locked() {
    if (restarting || closing() || final_error || !cur || cur->st != incarnation::state::lost)
      return;
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

  // ---- the progress watchdog ------------------------------------------------------------------

  // With m held, right after write `j` went in flight to `c`: when it is the one the child serves
  // next (no other write ahead of it), its clock starts now; the watchdog is armed unless it is
  // (it disarms itself when no write is in flight).
  void start_clock_locked(const std::shared_ptr<incarnation>& c, const job& j) {
    if (j.type != proto_type::write_checkpoint) return;
    if (requests.head_write() == &j) {
      c->last_progress = clock_type::now();
      c->activity.clear();
    }
    if (c->watchdog_armed || opts.progress_timeout == std::chrono::milliseconds::max()) return;
    c->watchdog_armed = true;
    asio::post(io, [this, c, when = c->last_progress + opts.progress_timeout] {
      arm_watchdog(c, when);
    });
  }

  void arm_watchdog(const std::shared_ptr<incarnation>& c, clock_type::time_point when) {
    c->progress_timer.expires_at(when);
    c->progress_timer.async_wait([this, c](boost::system::error_code e) {
      if (!e) check_progress(c);
    });
  }

  void check_progress(const std::shared_ptr<incarnation>& c) {
    clock_type::time_point next;
    {
      std::lock_guard g(m);
      const job* head = requests.head_write();
      if (c->st == incarnation::state::lost || c->killed || c->exited || c->channel_broken ||
          !head) {  // dying anyway, or idle
        c->watchdog_armed = false;
        return;
      }
      next = c->last_progress + opts.progress_timeout;
      if (clock_type::now() >= next) {
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

  // ---- io thread: what the channel reports ----------------------------------------------------

  void on_progress(const std::shared_ptr<incarnation>& c, std::uint64_t id, std::string what) {
    std::lock_guard g(m);
    if (c->st == incarnation::state::lost) return;
    // Only reports on the write being served count; anything else (a late report) is ignored.
    if (!requests.is_head_write(id)) return;
    c->last_progress = clock_type::now();
    c->activity = std::move(what);
  }

  void on_response(const std::shared_ptr<incarnation>& c, std::uint64_t id, protocol::response r) {
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
      if (!final_error && c->st == incarnation::state::starting) {
        c->st = incarnation::state::serving;
        c->init_timer.cancel();
      }
      cv.notify_all();
      return;
    }
    std::shared_ptr<job> j;
    {
      std::lock_guard g(m);
      j = requests.take_answered(id);
      if (!j) {
        // Not ours: the child is confused; treat it as a broken channel (outside this lock).
        asio::post(io, [this, c, what = "response for unknown request id " + std::to_string(id)] {
          on_protocol_violation(c, what);
        });
        return;
      }
      if (j->type == proto_type::terminate) {
        terminate_acked = true;
      } else {
        c->last_progress = clock_type::now();  // the next write starts now
        c->activity.clear();
      }
    }
    auto failure = r.ok() ? nullptr
                          : child_error("checkpoint child failed to write '" + j->path.string() +
                                        "': ");
    if (!failure && committer && j->type == proto_type::write_checkpoint && !r.payload.empty()) {
      // Durable; the commit through the store resolves the future (parent_commit.hpp). The
      // segment copies go first, as in resolve().
      auto done = std::move(j->done);
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
    request_queue::resolve(std::move(j), failure);
  }

  void on_protocol_violation(const std::shared_ptr<incarnation>& c, const std::string& what) {
    // A child that breaks the protocol cannot be trusted with further requests.
    kill_child(c);
    on_channel_broken(c, "protocol violation: " + what);
  }

  // ---- io thread: the failure state machine ---------------------------------------------------

  void on_init_timeout(const std::shared_ptr<incarnation>& c) {
    {
      // cancel() cannot recall a handler already queued: the PING may have won the race.
      std::lock_guard g(m);
      if (c->st != incarnation::state::starting || final_error) return;
    }
    fail_init(c, std::make_exception_ptr(
                     error(errc::timeout, "Timed out after " + seconds_text(opts.init_timeout) +
                                              " waiting for checkpoint subprocess to initialize" +
                                              (c->number == 1 ? "" : " (a replacement child)"))));
    kill_child(c);
  }

  // A child that cannot start ends it all: a replacement would fail the same way.
  void fail_init(const std::shared_ptr<incarnation>& c, std::exception_ptr e) {
    std::lock_guard g(m);
    if (c->st == incarnation::state::starting && !final_error) final_error = e;
    cv.notify_all();
  }

  void kill_child(const std::shared_ptr<incarnation>& c) {
    {
      std::lock_guard g(m);
      if (c->exited) return;
      c->killed = true;
    }
    c->proc.kill();  // the exit then completes on_exit()
  }

  // The child's death shows up twice: as EOF on the socket and as its exit. Responses the child
  // sent before dying are still buffered in the socket, so its loss waits for EOF (everything
  // read); the exit status, if it arrives within the grace period, names how the child died.
  // An exit without EOF loses it after the grace period (a grandchild may hold the socket); an
  // EOF without exit kills it then (a child that closed its channel is of no use).
  void on_channel_broken(const std::shared_ptr<incarnation>& c, const std::string& why) {
    {
      std::lock_guard g(m);
      if (c->st == incarnation::state::lost || c->channel_broken) return;
      c->channel_broken = true;
      if (c->why.empty()) c->why = why;
      if (!c->exited) return start_grace(c);
    }
    lose(c);
  }

  void on_exit(const std::shared_ptr<incarnation>& c, boost::system::error_code e) {
    {
      std::lock_guard g(m);
      c->exited = true;
      c->exit_status = c->proc.native_exit_code();
      c->status_known = !e;  // e.g. ECHILD when the trainer reaps children itself
      cv.notify_all();
      if (c->st == incarnation::state::lost) return;
      if (!c->channel_broken) return start_grace(c);
    }
    lose(c);
  }

  void start_grace(const std::shared_ptr<incarnation>& c) {
    c->grace_timer.expires_after(exit_status_grace);
    c->grace_timer.async_wait([this, c](boost::system::error_code e) {
      if (e != asio::error::operation_aborted) on_grace_expired(c);
    });
  }

  void on_grace_expired(const std::shared_ptr<incarnation>& c) {
    bool exited;
    {
      std::lock_guard g(m);
      if (c->st == incarnation::state::lost) return;
      exited = c->exited;
    }
    if (exited) return lose(c);
    kill_child(c);
    c->grace_timer.expires_after(kill_grace);
    c->grace_timer.async_wait([this, c](boost::system::error_code e) {
      if (e != asio::error::operation_aborted) lose(c);  // even unreaped: give up on it
    });
  }

  // Why `c` died, in the words the futures will carry. With m held.
  std::string cause_locked(const incarnation& c, errc& code) const {
    code = errc::child_terminated;
    if (closing() && (terminate_acked || killed_by_close)) {
      code = errc::closed;
      return killed_by_close ? "checkpoint process was closed: the child did not finish within "
                               "shutdown_timeout and was killed"
                             : "checkpoint process was closed";
    }
    if (!c.hang.empty()) {
      code = errc::timeout;
      return c.hang;
    }
    std::string cause = "Child process terminated unexpectedly";
    if (c.killed && !c.why.empty()) return cause + " (" + c.why + ")";
    if (c.exited && c.status_known) return cause + " (" + detail::describe_status(c.exit_status) + ")";
    if (c.exited) return cause + " (exit status unavailable)";
    if (!c.why.empty()) return cause + " (" + c.why + ")";
    return cause;
  }

  // The child is gone for good: fail the write it was serving (after removing what it left of
  // that write on disk), send the writes behind it back to the queue for a replacement, or fail
  // everything when no replacement may come (failed start, close).
  void lose(const std::shared_ptr<incarnation>& c) {
    std::filesystem::path head_dir;
    bool exited;
    bool served;
    {
      std::lock_guard g(m);
      if (c->st == incarnation::state::lost) return;
      served = c->st == incarnation::state::serving;
      c->st = incarnation::state::lost;
      exited = c->exited;
      if (!exited) unreaped.push_back(c);
      if (const job* h = requests.head_write()) head_dir = h->path;
    }
    c->init_timer.cancel();
    c->grace_timer.cancel();
    c->progress_timer.cancel();
    c->channel->close();
    // A dead writer's temporary file would stay forever (preallocated to the full size); a
    // child that might still live could yet rename it into place, so only when it is reaped.
    if (exited && !head_dir.empty())
      detail::remove_dead_writers_temp_files(head_dir, opts.rank.rank, c->pid);

    std::vector<std::pair<std::shared_ptr<job>, std::exception_ptr>> failed;
    {
      std::lock_guard g(m);
      errc code;
      const std::string cause = cause_locked(*c, code);
      if (!served && !final_error) {
        // It never completed its handshake: a failed start (or restart) is final.
        final_error = std::make_exception_ptr(error(
            code,
            (c->number == 1 ? "" : "the replacement checkpoint child failed to start: ") + cause));
      }
      const bool replaceable = !closing() && !final_error;
      auto lost = requests.recall(replaceable);
      if (lost.served)
        failed.emplace_back(
            lost.served,
            std::make_exception_ptr(error(
                code, cause + "; the checkpoint '" + lost.served->path.string() +
                          "' was not written" +
                          (replaceable ? "; the next write starts a new checkpoint child" : ""))));
      for (auto& j : lost.others)
        failed.emplace_back(j, std::make_exception_ptr(
                                   error(code, cause + "; pending checkpoints were not written")));
      if (replaceable && !requests.empty()) restart_locked();
      cv.notify_all();
    }
    // Outside the lock, copies released first (as on_response does).
    for (auto& [j, e] : failed) request_queue::resolve(std::move(j), e);
  }

  // ---- submit thread --------------------------------------------------------------------------

  void submit_loop() {
    for (;;) {
      std::shared_ptr<job> j;
      {
        std::unique_lock lk(m);
        cv.wait(lk, [&] {
          return stopping() || (!requests.empty() && (usable_locked() || final_error));
        });
        if (stopping() && requests.empty()) return;
        j = requests.take_for_submit();
        if (!j) continue;
      }
      submit(j);
      std::lock_guard g(m);
      requests.release_submit();
    }
  }

  void submit(const std::shared_ptr<job>& j) {
    try {
      if (j->at == job::stage::awaiting_state_dict) {
        // Wait for the producer, but notice close() and a failed child meanwhile.
        // `timeout` only: a deferred future reports `deferred` at once and runs in get() below.
        while (j->pending->wait_for(50ms) == std::future_status::timeout) {
          std::lock_guard g(m);
          if (stopping() || final_error) break;
        }
        {
          std::lock_guard g(m);
          if (final_error) std::rethrow_exception(final_error);
          if (stopping())
            throw error(errc::closed,
                        "checkpoint process was closed before the state dict for '" +
                            j->path.string() + "' was ready");
        }
        requests.prepare(*j, j->pending->get());
        j->pending.reset();
      } else if (j->at == job::stage::unencoded) {
        requests.encode(*j);
      }
      std::lock_guard g(m);
      if (final_error) std::rethrow_exception(final_error);
      if (stopping())
        throw error(errc::closed, "checkpoint process was closed before the write was sent");
      if (!usable_locked()) {
        // The child was lost meanwhile: wait for its replacement, in order.
        requests.requeue(j);
        restart_locked();
        return;
      }
      send_locked(j);  // from this thread, in queue order (the io thread is not woken for it)
    } catch (...) {
      j->done.set_exception(std::current_exception());
      request_queue::abandon_pending(*j);
    }
  }

  // With m held and a serving child: `j` (encoded) goes in flight and onto the socket, under
  // the one lock, so in-flight order is send order.
  void send_locked(const std::shared_ptr<job>& j) {
    requests.mark_in_flight(j);
    start_clock_locked(cur, *j);
    cur->channel->send(std::move(j->frame));
  }

  // ---- public operations ----------------------------------------------------------------------

  // Returns once a child serves writes, starting a replacement for a lost one first.
  void wait_ready() {
    std::unique_lock lk(m);
    for (;;) {
      if (final_error) std::rethrow_exception(final_error);
      if (closing() || usable_locked()) return;  // after close, write() reports it
      restart_locked();
      auto c = cur;
      // The init timer bounds this wait; the extra margin only guards against a stuck io thread.
      if (!cv.wait_until(lk, deadline_after(opts.init_timeout, 5s), [&] {
            return final_error || closing() || usable_locked() || cur != c ||
                   (cur->st == incarnation::state::lost && !restarting);
          }))
        throw error(errc::timeout, "Timed out after " + seconds_text(opts.init_timeout) +
                                       " waiting for checkpoint subprocess to initialize");
    }
  }

  // Queues `j` (its frame already encoded by the caller, or not), or sends it at once when its
  // frame is ready and nothing is ahead of it.
  void enqueue(std::shared_ptr<job> j) {
    std::lock_guard g(m);
    if (closing()) {
      j->done.set_exception(std::make_exception_ptr(
          error(errc::closed, "write to '" + j->path.string() +
                                  "' after the checkpoint process was closed")));
      return;
    }
    if (final_error) {
      j->done.set_exception(final_error);
      return;
    }
    requests.assign_id(*j);
    if (j->at == job::stage::encoded && requests.idle() && usable_locked()) {
      // Nothing is ahead of it on the submit thread: send it from this thread, saving two
      // thread hops (to the submit thread and to the io thread) per request.
      send_locked(j);
      return;
    }
    requests.push_back(std::move(j));
    restart_locked();  // no-op unless the child was lost
    cv.notify_all();
  }

  // Bounded by shutdown_timeout as a whole: queued writes and TERMINATE get all of it but the
  // kill reserve; a child still there then is killed, and waited for until the end.
  void close() noexcept {
    {
      std::unique_lock lk(m);
      if (closing()) {
        // A concurrent close: wait until the first one has finished entirely.
        cv.wait(lk, [&] { return ph == phase::closed; });
        return;
      }
      ph = phase::closing;
    }
    const auto end = deadline_after(opts.shutdown_timeout);
    const auto reserve = std::min(kill_reserve, opts.shutdown_timeout / 4);
    const auto kill_at = end == clock_type::time_point::max() ? end : end - reserve;
    std::shared_ptr<incarnation> c;
    auto gone = [&] { return c->st == incarnation::state::lost; };
    {
      std::unique_lock lk(m);
      // A child still starting (the first one, or a replacement for writes sent back) may
      // finish its handshake first.
      cv.wait_until(lk, kill_at, [&] {
        return final_error || (!restarting && cur && cur->st != incarnation::state::starting);
      });
      c = cur;
      if (usable_locked() && !final_error) {
        // enqueue() refuses after `closing`: TERMINATE goes straight into the queue, behind
        // pending writes.
        auto t = std::make_shared<job>();
        t->type = proto_type::terminate;
        t->path = "<terminate>";
        requests.assign_id(*t);
        requests.encode(*t);
        requests.push_back(t);
        cv.notify_all();
        cv.wait_until(lk, kill_at, gone);
      }
    }
    std::vector<std::shared_ptr<job>> unsent;
    {
      std::unique_lock lk(m);
      if (c && !gone()) {
        if (!c->exited) {
          killed_by_close = true;
          lk.unlock();
          asio::post(io, [this, c] { kill_child(c); });
          lk.lock();
        }
        // Let the io thread read what the child sent before exiting and record how it ended,
        // so a crash during close is reported as such rather than as a plain close.
        cv.wait_until(lk, end, gone);
      }
      ph = phase::stopping;
      unsent = requests.take_unsent();
      cv.notify_all();
    }
    // Outside the lock: destroying a job may block (the last reference to a std::async state).
    auto not_sent = std::make_exception_ptr(
        error(errc::closed, "checkpoint process was closed before the write was sent"));
    for (auto& j : unsent) request_queue::resolve(std::move(j), not_sent);
    unsent.clear();
    if (submit_thread.joinable()) submit_thread.join();
    std::vector<std::shared_ptr<job>> unanswered;
    {
      std::lock_guard g(m);
      unanswered = requests.take_unanswered();
      if (!final_error)
        final_error = std::make_exception_ptr(
            error(errc::closed, "checkpoint process was closed before the write completed"));
    }
    auto not_answered = std::make_exception_ptr(error(
        errc::closed, killed_by_close
                          ? "checkpoint process was closed: the child did not finish within "
                            "shutdown_timeout and was killed"
                          : "checkpoint process was closed before the write completed"));
    for (auto& j : unanswered) request_queue::resolve(std::move(j), not_answered);
    unanswered.clear();
    work.reset();
    asio::post(io, [this, c] {
      if (c) {
        c->channel->close();
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
    if (c && !c->exited) c->proc.detach();
    for (auto& u : unreaped)
      if (!u->exited) u->proc.detach();
    ph = phase::closed;
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
  auto f = j->done.get_future();
  try {
    auto& q = impl_->requests;  // its preparation members need no lock
    if (q.marked_shared(sd) || q.all_shared(sd)) {
      // Zero-copy hand-off: nothing to copy, so the tree moves into the job; with the placement
      // mark (a stager snapshot, mark_shared) not even walked here, so the caller returns in
      // microseconds whatever the tensor count. A small tree is encoded here, so that its frame
      // can leave from this thread; a larger one on the submit thread.
      j->prepared = std::move(sd);
      if (request_queue::small_tree(j->prepared)) q.encode(*j);
    } else {
      j->prepared = q.share(sd);  // the copy of private tensors happens here, in the caller
      q.encode(*j);
    }
  } catch (...) {  // no room, or unrepresentable (too deep, strings too long): fail this write
    j->done.set_exception(std::current_exception());
    return f;
  }
  impl_->enqueue(std::move(j));
  return f;
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
  j->at = job::stage::awaiting_state_dict;
  auto f = j->done.get_future();
  impl_->enqueue(std::move(j));
  return f;
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
  if (impl_->requests.marked_shared(sd)) return true;
  if (!impl_->requests.all_shared(sd)) return false;  // also false for a tree nested too deeply
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
