// The parent's end of a control socket on its own (lib/parent/control_channel.hpp), against a
// plain socket standing in for the child.
#define BOOST_TEST_MODULE control_channel_test
#include <boost/test/unit_test.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ipc/protocol.hpp"
#include "parent/control_channel.hpp"

using namespace shmckpt;
using detail::control_channel;
namespace p = shmckpt::protocol;

namespace {

struct event {
  std::string kind;  // "response", "progress", "broken", "violation"
  std::uint64_t id = 0;
  std::string text;
};

struct fixture {
  boost::asio::io_context io;
  unique_fd peer;  // the child's end
  std::shared_ptr<control_channel> channel;
  std::vector<event> events;

  fixture() {
    int sv[2];
    BOOST_REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    peer.reset(sv[1]);
    control_channel::handlers h;
    h.response = [this](std::uint64_t id, p::response r) {
      events.push_back({"response", id, r.message});
    };
    h.progress = [this](std::uint64_t id, std::string what) {
      events.push_back({"progress", id, std::move(what)});
    };
    h.broken = [this](std::string why) { events.push_back({"broken", 0, std::move(why)}); };
    h.violation = [this](std::string what) {
      events.push_back({"violation", 0, std::move(what)});
    };
    channel = control_channel::open(io, unique_fd(sv[0]), std::move(h));
    channel->start();
  }
  ~fixture() {
    channel->close();
    io.restart();
    io.poll();  // the aborted read completes at once
  }

  // Runs the io_context until `n` events arrived, for at most 10 s.
  void run_until(std::size_t n) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (events.size() < n && std::chrono::steady_clock::now() < end)
      io.run_one_for(std::chrono::milliseconds(100));
    BOOST_REQUIRE_EQUAL(events.size(), n);
  }

  void peer_send(const std::vector<std::byte>& bytes) {
    BOOST_REQUIRE(::send(peer.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
                  static_cast<ssize_t>(bytes.size()));
  }

  // Reads exactly `n` bytes on the peer, waiting at most 10 s.
  std::vector<std::byte> peer_read(std::size_t n) {
    std::vector<std::byte> out(n);
    std::size_t have = 0;
    while (have < n) {
      pollfd pfd{peer.get(), POLLIN, 0};
      BOOST_REQUIRE_MESSAGE(::poll(&pfd, 1, 10000) == 1, "nothing to read within 10 s");
      ssize_t r = ::recv(peer.get(), out.data() + have, n - have, 0);
      BOOST_REQUIRE(r > 0);
      have += static_cast<std::size_t>(r);
    }
    return out;
  }
};

std::vector<std::byte> response_frame(std::uint64_t id, const std::string& message) {
  p::response r;
  r.code = message.empty() ? 0 : 5;
  r.message = message;
  return p::make_frame(p::message_type::response, id, p::encode_response(r));
}

}  // namespace

BOOST_FIXTURE_TEST_CASE(frames_reach_the_handlers_in_order_however_the_bytes_arrive, fixture) {
  auto a = response_frame(3, "");
  auto b = p::make_frame(p::message_type::progress, 4, p::encode_progress("half written"));
  auto c = response_frame(4, "disk full");
  // a and b in one write (one read handles both), c one byte at a time.
  std::vector<std::byte> ab(a);
  ab.insert(ab.end(), b.begin(), b.end());
  peer_send(ab);
  run_until(2);
  for (std::byte x : c) peer_send({x});
  run_until(3);
  BOOST_TEST(events[0].kind == "response");
  BOOST_TEST(events[0].id == 3u);
  BOOST_TEST(events[1].kind == "progress");
  BOOST_TEST(events[1].text == "half written");
  BOOST_TEST(events[2].kind == "response");
  BOOST_TEST(events[2].id == 4u);
  BOOST_TEST(events[2].text == "disk full");
}

BOOST_FIXTURE_TEST_CASE(a_request_frame_from_the_child_is_a_violation_and_stops_reading, fixture) {
  auto bad = p::make_frame(p::message_type::ping, 7, {});
  auto after = response_frame(8, "");
  bad.insert(bad.end(), after.begin(), after.end());
  peer_send(bad);
  run_until(1);
  BOOST_TEST(events[0].kind == "violation");
  BOOST_TEST(events[0].text.find("request frame") != std::string::npos, events[0].text);
  // Nothing after it is read, not even the valid response behind it: no read is pending, so the
  // io_context runs out of work at once.
  io.restart();
  io.run_for(std::chrono::seconds(10));
  BOOST_TEST(events.size() == 1u);
}

BOOST_FIXTURE_TEST_CASE(an_oversized_response_is_refused_before_its_payload_arrives, fixture) {
  p::frame_header h;
  h.type = static_cast<std::uint16_t>(p::message_type::response);
  h.request_id = 3;
  h.payload_bytes = 64u << 20;  // within the protocol's limit, far beyond a response's
  std::vector<std::byte> header(p::header_size);
  p::encode_header(h, std::span<std::byte, p::header_size>(header.data(), p::header_size));
  peer_send(header);
  run_until(1);
  BOOST_TEST(events[0].kind == "violation");
  BOOST_TEST(events[0].text.find("67108864 payload bytes") != std::string::npos, events[0].text);
}

BOOST_FIXTURE_TEST_CASE(eof_is_reported_as_a_broken_channel, fixture) {
  peer.reset();
  run_until(1);
  BOOST_TEST(events[0].kind == "broken");
  BOOST_TEST(events[0].text.find("control channel closed") != std::string::npos, events[0].text);
}

BOOST_FIXTURE_TEST_CASE(frames_sent_from_any_thread_leave_whole_and_in_order, fixture) {
  // More than the socket buffer takes at once, so the outbox and the io thread take part.
  std::vector<std::vector<std::byte>> frames;
  for (std::uint64_t id = 1; id <= 64; ++id)
    frames.push_back(p::make_frame(p::message_type::write_checkpoint, id,
                                   std::vector<std::byte>(64 << 10, std::byte(id))));
  std::thread sender([&] {
    for (const auto& f : frames) channel->send(f);
  });
  std::optional<std::thread> io_thread;
  io_thread.emplace([&] { io.run_for(std::chrono::seconds(20)); });
  for (const auto& f : frames) {
    auto got = peer_read(f.size());
    BOOST_REQUIRE((got == f));
  }
  sender.join();
  io.stop();
  io_thread->join();
  io.restart();
  // After close nothing more is sent.
  channel->close();
  channel->send(frames[0]);
  pollfd pfd{peer.get(), POLLIN, 0};
  BOOST_TEST(::poll(&pfd, 1, 100) == 1);  // readable: EOF, not data
  char x;
  BOOST_TEST(::recv(peer.get(), &x, 1, MSG_DONTWAIT) == 0);
}
