// lib/parent/request_queue.hpp — the checkpoint process's requests, from write() to a future.
//
// What it owns. Every request the supervisor has accepted and not yet resolved, as a `job`: its
// promise, its state dict (whose segment copies the job keeps alive until the child answered), its
// frame. A job is *queued* (in call order, waiting to be sent), held by the submit thread
// (`submitting`), or *in flight* (sent to the current child, keyed by request id, until its
// RESPONSE or the child's loss resolves it). The queue also hands out request ids — the
// handshake's too — so ids are unique and increasing for the life of the process, and queue
// order, id order and the child's serving order are one order.
//
// A job's stage says what it still needs before it can be sent: the state dict it waits for
// (`awaiting_state_dict`: a future not yet produced), encoding (`unencoded`: its tree is final and
// in the segment), or nothing (`encoded`). `encode` is the one place a job becomes a frame; a
// frame encoded before its id was assigned gets the id through the protocol codec
// (protocol::set_request_id). A job that goes back to the queue (its child was lost before
// serving it) is `unencoded` again, and so encoded once more for the next child.
//
// Threads. The preparation members (`share`, `all_shared`, `encode`, ...) touch only the job
// given and the segment, and run on any thread without a lock. The bookkeeping members take no
// lock of their own: the supervisor's mutex guards them, because a job must go in flight and
// onto the socket under one lock for in-flight order to be send order. `resolve` and the other
// static members run without that lock: resolving a future releases the job's segment copies
// first, so that a write issued right after get() finds their room, and destroying a job may
// block (the last reference to a std::async state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ipc/protocol.hpp"
#include "shmckpt/state_dict.hpp"
#include "shmckpt/types.hpp"

namespace shmckpt {
class segment;
}

namespace shmckpt::detail {

struct placed_tree;

struct job {
  enum class stage {
    awaiting_state_dict,  // `pending` is not produced yet
    unencoded,            // `prepared` is final; `frame` is empty
    encoded,              // `frame` is the whole frame (with `id` once assigned)
  };
  std::uint64_t id = 0;  // 0 until the queue assigns it
  protocol::message_type type = protocol::message_type::write_checkpoint;
  stage at = stage::unencoded;
  std::promise<void> done;
  std::optional<std::shared_future<state_dict>> pending;  // for awaiting_state_dict
  state_dict prepared;  // all tensors in the segment; keeps copies alive until the response
  std::filesystem::path path;
  kwargs kw;
  std::vector<std::byte> frame;
  std::uint64_t commit_attempt = 0;  // the n-th write() into `path`: its round in the store
};

class request_queue {
 public:
  /// `seg` holds every tensor a frame describes; `segment_number` is its placement mark
  /// (core/placement.hpp). `seg` must outlive the queue.
  request_queue(segment& seg, std::uint64_t segment_number) noexcept
      : seg_(seg), segment_number_(segment_number) {}

  // ---- preparing a job: any thread, no lock ----

  /// Whether `d` carries this segment's placement mark: every tensor is in it, checked when the
  /// mark was set, and the tree is unchanged since.
  bool marked_shared(const dict& d) const noexcept;
  /// Whether every tensor in `d` lies in the segment (no allocation). A tree nested deeper than
  /// max_nesting_depth answers false, so that it takes the copying path, which names it.
  bool all_shared(const dict& d) const;
  /// `d` with every tensor outside the segment replaced by a copy inside it.
  dict share(const dict& d);
  /// Whether `d` is small enough (at most 64 values) to encode in the caller of write(): about a
  /// microsecond, so the frame leaves from that thread without waking another.
  static bool small_tree(const dict& d);
  /// The descriptor `d` carries in this segment (checkpoint_process::mark_shared), or null.
  const placed_tree* placed(const dict& d) const noexcept;
  /// Encodes `d` (every tensor in the segment) into a new block of the segment, for a mark.
  /// Throws what the codec throws, and error(no_space) when the segment has no room.
  std::shared_ptr<const placed_tree> place_tree(const dict& d);
  /// Encodes `j` (a WRITE_CHECKPOINT of `prepared` to `path`, or a bodiless request) with its
  /// current id into `frame`; stage becomes `encoded`. A tree with a placed descriptor is sent
  /// as its place (tens of bytes, in microseconds). Throws what the codec throws (a tree too
  /// deep, a string too long, a payload over the limit).
  void encode(job& j) const;
  /// For a produced state dict: `prepared` = share(sd), then encode.
  void prepare(job& j, const state_dict& sd);

  // ---- bookkeeping: with the supervisor's mutex held ----

  /// The next request id (1, 2, ...).
  std::uint64_t take_id() noexcept { return next_id_++; }
  /// Gives `j` the next id, writing it into an already encoded frame.
  void assign_id(job& j);
  /// Whether nothing is queued and the submit thread holds no job: a ready frame may then be
  /// sent by the caller itself without overtaking anything.
  bool idle() const noexcept { return queue_.empty() && !submitting_; }
  bool empty() const noexcept { return queue_.empty(); }
  /// Appends a job whose id was assigned.
  void push_back(std::shared_ptr<job> j);
  /// The submit thread takes the oldest queued job; `idle()` is false until `release_submit`.
  std::shared_ptr<job> take_for_submit();
  void release_submit() noexcept { submitting_ = false; }
  /// Puts `j` back in id order, unencoded (its child was lost before it was sent).
  void requeue(std::shared_ptr<job> j);
  /// `j` was sent: it is in flight until `take_answered` or `recall`.
  void mark_in_flight(std::shared_ptr<job> j);
  /// The write the child is serving (or will serve next): the oldest write in flight.
  const job* head_write() const noexcept;
  /// Whether `id` is that write.
  bool is_head_write(std::uint64_t id) const noexcept;
  /// Removes and returns the in-flight job `id`; null when no such job is in flight.
  std::shared_ptr<job> take_answered(std::uint64_t id);

  /// The child the in-flight jobs were sent to is gone. `served` is the write it was serving
  /// (null if none). With `requeue`, every other in-flight job goes back to the front of the
  /// queue, in order and unencoded (the child serves in order and never started them), and
  /// `others` is empty; without, they are returned in `others`. Nothing is in flight afterwards.
  struct recall_result {
    std::shared_ptr<job> served;
    std::vector<std::shared_ptr<job>> others;
  };
  recall_result recall(bool requeue);

  /// Removes and returns every queued job (close).
  std::vector<std::shared_ptr<job>> take_unsent();
  /// Removes and returns every job in flight (close, once the child is gone).
  std::vector<std::shared_ptr<job>> take_unanswered();

  // ---- resolving: without the supervisor's mutex ----

  /// Resolves `j`'s future (with `e`, or success when null) after dropping this reference to
  /// the job, so that its segment copies are released first when it was the last.
  static void resolve(std::shared_ptr<job> j, std::exception_ptr e = nullptr);
  /// A future we will never wait for may be the last reference to a std::async state, whose
  /// destruction blocks until the producer finishes: a detached thread absorbs that wait.
  static void abandon_pending(job& j);

 private:
  /// Maps a tensor in the segment to its offset there, for the codec.
  protocol::offset_function offset_in_segment() const;

  segment& seg_;
  const std::uint64_t segment_number_;
  std::uint64_t next_id_ = 1;
  std::deque<std::shared_ptr<job>> queue_;
  bool submitting_ = false;  // the submit thread holds a job it has not yet sent or requeued
  std::map<std::uint64_t, std::shared_ptr<job>> in_flight_;
};

}  // namespace shmckpt::detail
