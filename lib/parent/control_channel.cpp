#include "parent/control_channel.hpp"

#include <sys/socket.h>

#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <span>

namespace shmckpt::detail {

namespace asio = boost::asio;
using proto_type = protocol::message_type;

namespace {

// Largest RESPONSE payload: code, message, and a small payload.
constexpr std::uint32_t max_response_bytes = 4 + 4 + protocol::max_string_bytes + 4 + 4096;
// Largest PROGRESS payload: one string.
constexpr std::uint32_t max_progress_payload_bytes = 4 + protocol::max_progress_bytes;
// What one read asks the socket for, at least.
constexpr std::size_t read_chunk = 16 << 10;

}  // namespace

std::shared_ptr<control_channel> control_channel::open(asio::io_context& io, unique_fd fd,
                                                       handlers h) {
  return std::make_shared<control_channel>(private_tag{}, io, std::move(fd), std::move(h));
}

control_channel::control_channel(private_tag, asio::io_context& io, unique_fd fd, handlers h)
    : sock_(io, asio::local::stream_protocol(), fd.get()), on_(std::move(h)) {
  send_fd_ = fd.release();  // owned by the socket now
}

void control_channel::start() { read_next(); }

// ---- sending --------------------------------------------------------------------------------

void control_channel::send(std::vector<std::byte> frame) {
  std::lock_guard g(send_m_);
  if (closed_) return;  // the child is gone: its requests were sent back or failed
  if (!outbox_.empty()) {
    outbox_.push_back(std::move(frame));
    return;
  }
  outbox_.push_back(std::move(frame));
  out_offset_ = 0;
  flush_locked();
}

// Writes from the outbox until it is empty or the socket is full (then the io thread waits for
// room). With send_m_ held.
void control_channel::flush_locked() {
  while (!outbox_.empty()) {
    const auto& f = outbox_.front();
    ssize_t r = ::send(send_fd_, f.data() + out_offset_, f.size() - out_offset_,
                       MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!waiting_) {
        waiting_ = true;
        asio::post(sock_.get_executor(), [self = shared_from_this()] { self->wait_writable(); });
      }
      return;
    }
    if (r < 0) {
      std::string why =
          "writing to the control channel failed: " + std::string(std::strerror(errno));
      outbox_.clear();
      asio::post(sock_.get_executor(),
                 [self = shared_from_this(), why] { self->on_.broken(why); });
      return;
    }
    out_offset_ += static_cast<std::size_t>(r);
    if (out_offset_ == f.size()) {
      outbox_.pop_front();
      out_offset_ = 0;
    }
  }
}

// io thread: waits until the socket takes more bytes, then sends what is left.
void control_channel::wait_writable() {
  {
    std::lock_guard g(send_m_);
    if (closed_ || !sock_.is_open()) return;
  }
  sock_.async_wait(asio::socket_base::wait_write,
                   [self = shared_from_this()](boost::system::error_code e) {
                     std::lock_guard g(self->send_m_);
                     self->waiting_ = false;
                     if (self->closed_) return;
                     if (e) {
                       self->outbox_.clear();
                       asio::post(self->sock_.get_executor(),
                                  [self, why = "writing to the control channel failed: " +
                                                   e.message()] { self->on_.broken(why); });
                       return;
                     }
                     self->flush_locked();
                   });
}

void control_channel::close() {
  {
    std::lock_guard g(send_m_);
    closed_ = true;
    outbox_.clear();
  }
  boost::system::error_code ignored;
  sock_.close(ignored);
}

// ---- receiving ------------------------------------------------------------------------------

void control_channel::read_next() {
  if (rx_begin_ == rx_end_) rx_begin_ = rx_end_ = 0;
  if (rx_.size() - rx_end_ < read_chunk) {
    // Move what is left to the front, and make room for at least one more chunk.
    if (rx_begin_ > 0) std::memmove(rx_.data(), rx_.data() + rx_begin_, rx_end_ - rx_begin_);
    rx_end_ -= rx_begin_;
    rx_begin_ = 0;
    if (rx_.size() - rx_end_ < read_chunk) rx_.resize(rx_end_ + read_chunk);
  }
  sock_.async_read_some(asio::buffer(rx_.data() + rx_end_, rx_.size() - rx_end_),
                        [self = shared_from_this()](boost::system::error_code e, std::size_t n) {
                          if (e) return self->on_.broken("control channel closed: " + e.message());
                          self->rx_end_ += n;
                          if (self->parse_frames()) self->read_next();
                        });
}

// Handles every complete frame in rx_; false when the channel was given up on.
bool control_channel::parse_frames() {
  for (;;) {
    std::size_t have = rx_end_ - rx_begin_;
    if (have < protocol::header_size) return true;
    const std::byte* at = rx_.data() + rx_begin_;
    protocol::frame_header h;
    try {
      h = protocol::decode_header(
          std::span<const std::byte, protocol::header_size>(at, protocol::header_size));
      if (h.type != static_cast<std::uint16_t>(proto_type::response) &&
          h.type != static_cast<std::uint16_t>(proto_type::progress))
        throw_error(errc::protocol_error, "checkpoint child sent a request frame, not a response");
    } catch (const error& err) {
      on_.violation(err.what());
      return false;
    }
    const bool progress = h.type == static_cast<std::uint16_t>(proto_type::progress);
    if (h.payload_bytes > (progress ? max_progress_payload_bytes : max_response_bytes)) {
      on_.violation(std::string(progress ? "progress report" : "response") + " claims " +
                    std::to_string(h.payload_bytes) + " payload bytes, more than one can hold");
      return false;
    }
    if (have < protocol::header_size + h.payload_bytes) return true;  // the rest is coming
    std::span<const std::byte> payload(at + protocol::header_size, h.payload_bytes);
    rx_begin_ += protocol::header_size + h.payload_bytes;
    std::string what;
    protocol::response r;
    try {
      if (progress)
        what = protocol::decode_progress(payload);
      else
        r = protocol::decode_response(payload);
    } catch (const error& err) {
      on_.violation(err.what());
      return false;
    }
    if (progress)
      on_.progress(h.request_id, std::move(what));
    else
      on_.response(h.request_id, std::move(r));
  }
}

}  // namespace shmckpt::detail
