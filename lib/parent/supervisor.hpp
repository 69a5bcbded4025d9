// lib/parent/supervisor.hpp — checkpoint_process::impl, the supervisor of the checkpoint child.
//
// What it owns. The segment, the io_context with its two threads, the request queue, and the
// current child *incarnation* (with those lost but not yet reaped): the pieces it supervises are
// objects of their own — the process (child_process.hpp), its control socket
// (control_channel.hpp), the requests (request_queue.hpp). Itself it holds only what ties them
// together: the handshake and its timeout, the progress watchdog, the failure state machine of
// each incarnation, the restart of a lost child, and close. Its members are defined in
// checkpoint_process.cpp (start-up, restart, the submit thread, the public operations, close) and
// child_events.cpp (the io thread's handlers: handshake answers, progress, the watchdog, death).
//
// Threads. `io_thread` spawns the child (so the parent-death signal follows a thread that lives
// as long as this object), later also its replacements, and runs the io_context that owns the
// sockets, the process handles and the timers: every handler runs on it. `submit_thread` takes
// queued jobs in order, waits for future state dicts, copies private tensors into the segment,
// encodes the frame and sends it. A write whose frame the caller has ready (a small or copied
// tree) with nothing queued ahead is sent by the caller itself, so a round trip wakes only the
// child and, for the response, the io thread.
//
// Incarnations. Each child is an `incarnation`; handlers capture the one they belong to, so a late
// event of a dead child never touches its replacement. An incarnation is `starting` until its
// PING is answered, then `serving`, and `lost` once it died (or was killed) and everything it sent
// has been read. Its death shows up twice — EOF on the socket, its exit — and the first of the two
// starts a grace period for the other. When it is lost, the write it was serving fails with the
// cause; writes sent after it had not started, so they go back to the front of the queue for a
// replacement, which starts on the same segment when there is work for it: at once when writes
// went back, else by the next write() or wait_ready(). A child lost while `starting` ends it all
// (`final_error`): a start that fails would fail again.
//
// Invariants. `m` guards the queue's bookkeeping, every incarnation's state and facts, the close
// phase and `final_error`; it is taken before a channel's send lock, never the reverse, and a job
// goes in flight and onto the socket under it, so in-flight order is send order. No thread holds
// it while copying, encoding, resolving a future or waiting on a child. Every wait has a deadline.
#pragma once

#include "parent/child_process.hpp"  // first: it includes what Process v2 needs first

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/placement.hpp"
#include "ipc/protocol.hpp"
#include "ipc/segment.hpp"
#include "parent/control_channel.hpp"
#include "parent/parent_commit.hpp"
#include "parent/request_queue.hpp"
#include "shmckpt/checkpoint_process.hpp"

namespace shmckpt {

namespace detail {

/// "30s", "1.5s": a duration for a message.
std::string seconds_text(std::chrono::milliseconds d);

// One incarnation of the checkpoint child.
struct incarnation {
  using clock_type = std::chrono::steady_clock;
  enum class state {
    starting,  // handshake (INIT, PING) in progress
    serving,   // PING answered: serves writes
    lost,      // dead and fully read; nothing more is sent to it or read from it
  };

  incarnation(boost::asio::io_context& io, std::uint64_t n, child_process p)
      : number(n), proc(std::move(p)), pid(proc.pid()), init_timer(io), grace_timer(io),
        progress_timer(io) {}
  const std::uint64_t number;  // 1: the first child, 2: its first replacement, ...

  // ---- io thread only (set before the incarnation is published) ----
  child_process proc;
  const int pid;
  std::shared_ptr<control_channel> channel;
  boost::asio::steady_timer init_timer;      // bounds the handshake
  boost::asio::steady_timer grace_timer;     // after EOF or exit: waits for the other, or the kill
  boost::asio::steady_timer progress_timer;  // the progress watchdog
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

}  // namespace detail

struct checkpoint_process::impl {
  using clock_type = std::chrono::steady_clock;
  using incarnation = detail::incarnation;
  using job = detail::job;
  using request_queue = detail::request_queue;

  // The close phases, in order: each one implies the ones before.
  enum class phase {
    open,
    closing,   // close() began: no new writes, no replacement child
    stopping,  // the submit thread must stop; queued writes have failed
    closed,    // close() has finished
  };

  explicit impl(checkpoint_process_options o);

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

  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work =
      boost::asio::make_work_guard(io);
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

  // ---- checkpoint_process.cpp ----

  // The n-th write() into `dir`: its round in the commit store.
  std::uint64_t next_attempt(const std::filesystem::path& dir);
  void start();
  void spawn_child();     // io thread
  void restart_locked();  // with m held
  void restart();         // io thread
  void submit_loop();     // submit thread
  void submit(const std::shared_ptr<job>& j);
  void send_locked(const std::shared_ptr<job>& j);
  void wait_ready();
  // How enqueue() may dispatch an encoded job: from the calling thread when nothing is ahead of
  // it (a round trip two thread hops shorter), or always through the submit thread (the caller
  // returns sooner: waking a thread of this process is cheaper than waking the child).
  enum class enqueue_mode { send_if_idle, via_submit_thread };
  void enqueue(std::shared_ptr<job> j, enqueue_mode mode = enqueue_mode::send_if_idle);
  void close() noexcept;

  // ---- child_events.cpp: the io thread's handlers (start_clock_locked: any thread, m held) ----

  void start_clock_locked(const std::shared_ptr<incarnation>& c, const job& j);
  void arm_watchdog(const std::shared_ptr<incarnation>& c, clock_type::time_point when);
  void check_progress(const std::shared_ptr<incarnation>& c);
  void on_progress(const std::shared_ptr<incarnation>& c, std::uint64_t id, std::string what);
  void on_response(const std::shared_ptr<incarnation>& c, std::uint64_t id, protocol::response r);
  void on_protocol_violation(const std::shared_ptr<incarnation>& c, const std::string& what);
  void on_init_timeout(const std::shared_ptr<incarnation>& c);
  void fail_init(const std::shared_ptr<incarnation>& c, std::exception_ptr e);
  void kill_child(const std::shared_ptr<incarnation>& c);
  void on_channel_broken(const std::shared_ptr<incarnation>& c, const std::string& why);
  void on_exit(const std::shared_ptr<incarnation>& c, boost::system::error_code e);
  void start_grace(const std::shared_ptr<incarnation>& c);
  void on_grace_expired(const std::shared_ptr<incarnation>& c);
  std::string cause_locked(const incarnation& c, errc& code) const;
  void lose(const std::shared_ptr<incarnation>& c);
};

}  // namespace shmckpt
