// lib/parent/control_channel.hpp — the parent's end of one child's control socket.
//
// What it owns. A `control_channel` owns the parent's end of the socket pair of one child
// incarnation, as an Asio local stream socket, with everything that turns frames into bytes and
// back: the outbox of frames the socket has not taken yet, and the receive buffer. It is the
// only place in the parent where frames meet the socket; the bytes of a frame come from, and go
// to, the codec in lib/ipc/protocol. It knows nothing of requests or children: what arrives is
// handed, frame by frame, to the `handlers` given at construction.
//
// Sending. `send` may be called from any thread, also with the supervisor's mutex held (that
// mutex before the channel's own send lock, never the reverse): the frame is written at once,
// non-blocking, from the calling thread, so a request goes out without waking the io thread.
// Frames leave in call order: what the socket does not take at once waits in the outbox, which
// the io thread drains when the socket is writable again, and later frames queue behind it. A
// send that fails reports `broken` (posted to the io thread) and drops the outbox.
//
// Receiving (io thread). One read takes whatever the socket holds, and every complete frame in
// it is handled before the next read: one system call and one handler per frame. Only RESPONSE
// and PROGRESS frames are accepted, each with a payload of bounded size; anything else is a
// `violation`, after which nothing more is read. EOF or a read error is `broken`.
//
// Lifetime. Owned by shared_ptr (the pending operations hold it). After `close` (io thread)
// nothing more is sent, and the socket is closed; a handler may still be called for an event
// that was already queued, so handlers must tolerate a closed channel.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/util.hpp"
#include "ipc/protocol.hpp"

namespace shmckpt::detail {

class control_channel : public std::enable_shared_from_this<control_channel> {
 public:
  /// What the channel reports, always on the io thread.
  struct handlers {
    /// A RESPONSE frame for `request_id`.
    std::function<void(std::uint64_t request_id, protocol::response)> response;
    /// A PROGRESS frame: the child is working on `request_id`, doing `what`.
    std::function<void(std::uint64_t request_id, std::string what)> progress;
    /// The socket reached EOF, or reading or writing failed; `why` says which.
    std::function<void(std::string why)> broken;
    /// The child sent a frame it must not send; reading has stopped.
    std::function<void(std::string what)> violation;
  };

  /// Takes the connected socket `fd`, registered with `io`. Call `start` to begin reading.
  static std::shared_ptr<control_channel> open(boost::asio::io_context& io, unique_fd fd,
                                               handlers h);
  control_channel(const control_channel&) = delete;
  control_channel& operator=(const control_channel&) = delete;

  /// io thread: starts reading frames.
  void start();

  /// Any thread: sends `frame` (a whole encoded frame), in call order. A no-op after close.
  void send(std::vector<std::byte> frame);

  /// io thread: closes the socket; nothing is sent after it. Idempotent.
  void close();

 private:
  struct private_tag {};

 public:
  control_channel(private_tag, boost::asio::io_context& io, unique_fd fd, handlers h);

 private:
  void read_next();
  bool parse_frames();
  void flush_locked();
  void wait_writable();

  boost::asio::local::stream_protocol::socket sock_;  // io thread (reads, waits, close)
  const handlers on_;

  // Sending, from any thread (guarded by send_m_).
  std::mutex send_m_;
  int send_fd_ = -1;       // the socket's descriptor while it is open
  bool closed_ = false;    // set before the socket closes: nothing more is sent
  bool waiting_ = false;   // the io thread waits for the socket to take the rest
  std::deque<std::vector<std::byte>> outbox_;  // frames the socket has not taken yet
  std::size_t out_offset_ = 0;                 // bytes of outbox_.front() already sent

  // Receiving, io thread only: bytes not yet parsed into frames are rx_[rx_begin_, rx_end_).
  std::vector<std::byte> rx_;
  std::size_t rx_begin_ = 0;
  std::size_t rx_end_ = 0;
};

}  // namespace shmckpt::detail
