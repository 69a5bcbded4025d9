// The checkpoint child on its own (lib/child/worker.cpp): the real `shmckpt-worker` executable,
// started by the test with a socket pair and a segment, spoken to in raw protocol frames. This is
// the trust boundary seen from outside: whatever a parent sends, the child answers or exits with
// a status, never crashes, and keeps serving after a request it refused.
#define BOOST_TEST_MODULE worker
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "ipc/protocol.hpp"
#include "ipc/segment.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/worker.hpp"
#include "test_support.hpp"

using namespace shmckpt;
namespace proto = shmckpt::protocol;
using namespace std::chrono_literals;

namespace {

std::string worker_executable() { return test::arg(1) + "/shmckpt-worker"; }

// A frame read back from the child.
struct frame {
  proto::frame_header header;
  std::vector<std::byte> payload;
};

// One child, started by fork + exec with its two descriptors, reaped on destruction.
class raw_child {
 public:
  explicit raw_child(std::vector<std::string> extra_args = {}, bool standard_args = true)
      : seg_(segment::create(4u << 20)) {
    int sv[2];
    BOOST_REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    sock_ = sv[0];
    int child_end = sv[1];
    int err[2];
    BOOST_REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
    std::vector<std::string> args{worker_executable(), worker_flag};
    if (standard_args) {
      args.insert(args.end(), {"--control-fd", std::to_string(child_end), "--segment-fd",
                               std::to_string(seg_.fd()), "--segment-bytes",
                               std::to_string(seg_.size())});
    }
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int seg_fd = seg_.fd();
    pid_ = ::fork();
    BOOST_REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      // Only async-signal-safe calls between fork and exec.
      ::fcntl(child_end, F_SETFD, 0);
      ::fcntl(seg_fd, F_SETFD, 0);
      ::dup2(err[1], 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(child_end);
    ::close(err[1]);
    stderr_ = err[0];
  }
  raw_child(const raw_child&) = delete;
  raw_child& operator=(const raw_child&) = delete;
  ~raw_child() {
    if (sock_ >= 0) ::close(sock_);
    if (pid_ > 0 && !status_) {
      if (!wait_exit(10s)) {
        ::kill(pid_, SIGKILL);
        wait_exit(10s);
      }
    }
    if (stderr_ >= 0) ::close(stderr_);
  }

  segment& seg() { return seg_; }

  void send_bytes(std::span<const std::byte> bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      ssize_t r = ::send(sock_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      BOOST_REQUIRE_MESSAGE(r > 0, "send to the child failed: " << std::strerror(errno));
      done += static_cast<std::size_t>(r);
    }
  }
  void send(proto::message_type type, std::uint64_t id, std::span<const std::byte> payload) {
    send_bytes(proto::make_frame(type, id, payload));
  }

  // The next frame that is not PROGRESS, or nothing when the child closed the channel. Fails
  // the test when none arrives within the deadline.
  std::optional<frame> next_response(std::chrono::milliseconds limit = 30s) {
    auto end = std::chrono::steady_clock::now() + limit;
    for (;;) {
      std::array<std::byte, proto::header_size> h;
      if (!read_exact(h.data(), h.size(), end)) return std::nullopt;
      frame f;
      f.header = proto::decode_header(h);
      f.payload.resize(f.header.payload_bytes);
      BOOST_REQUIRE(read_exact(f.payload.data(), f.payload.size(), end));
      if (f.header.type == static_cast<std::uint16_t>(proto::message_type::progress)) continue;
      return f;
    }
  }

  proto::response response_to(std::uint64_t id) {
    auto f = next_response();
    BOOST_REQUIRE_MESSAGE(f, "the child closed the channel instead of answering request " << id);
    BOOST_TEST(f->header.type == static_cast<std::uint16_t>(proto::message_type::response));
    BOOST_TEST(f->header.request_id == id);
    return proto::decode_response(f->payload);
  }

  void close_channel() {
    ::close(sock_);
    sock_ = -1;
  }

  // The child's exit status (as from waitpid), waiting at most `limit`.
  std::optional<int> wait_exit(std::chrono::milliseconds limit) {
    if (status_) return status_;
    if (!test::wait_pid_gone(pid_, limit)) return std::nullopt;
    int st = 0;
    if (::waitpid(pid_, &st, 0) == pid_) status_ = st;
    return status_;
  }

  std::string stderr_text() {
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(stderr_, buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
    return out;
  }

  int pid() const { return pid_; }

 private:
  bool read_exact(std::byte* p, std::size_t n, std::chrono::steady_clock::time_point end) {
    std::size_t done = 0;
    while (done < n) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          end - std::chrono::steady_clock::now());
      BOOST_REQUIRE_MESSAGE(left.count() > 0, "no answer from the child within the deadline");
      pollfd pf{sock_, POLLIN, 0};
      if (::poll(&pf, 1, static_cast<int>(left.count())) <= 0) continue;
      ssize_t r = ::recv(sock_, p + done, n - done, 0);
      if (r == 0) {
        BOOST_REQUIRE_MESSAGE(done == 0, "the child closed the channel inside a frame");
        return false;
      }
      if (r < 0 && errno == EINTR) continue;
      BOOST_REQUIRE(r > 0);
      done += static_cast<std::size_t>(r);
    }
    return true;
  }

  segment seg_;
  int sock_ = -1;
  int stderr_ = -1;
  int pid_ = -1;
  std::optional<int> status_;
};

std::vector<std::byte> default_init(std::size_t segment_bytes) {
  proto::init_request r;
  r.writer_factory = "default";
  r.writer_args["rank"] = "0";
  r.writer_args["world_size"] = "1";
  r.segment_bytes = segment_bytes;
  return proto::encode_init(r);
}

bool exited_with(const std::optional<int>& st, int code) {
  return st && WIFEXITED(*st) && WEXITSTATUS(*st) == code;
}

}  // namespace

BOOST_AUTO_TEST_CASE(ping_is_answered_with_the_childs_pid) {
  raw_child c;
  c.send(proto::message_type::ping, 7, {});
  auto r = c.response_to(7);
  BOOST_TEST(r.ok());
  BOOST_REQUIRE(r.payload.size() == 4);
  std::uint32_t pid;
  std::memcpy(&pid, r.payload.data(), 4);
  BOOST_TEST(static_cast<int>(pid) == c.pid());
}

BOOST_AUTO_TEST_CASE(terminate_is_answered_and_the_child_exits_0) {
  raw_child c;
  c.send(proto::message_type::terminate, 3, {});
  BOOST_TEST(c.response_to(3).ok());
  BOOST_TEST(!c.next_response());  // then EOF
  BOOST_TEST(exited_with(c.wait_exit(20s), 0));
}

BOOST_AUTO_TEST_CASE(the_child_exits_when_the_parent_closes_the_channel) {
  raw_child c;
  c.close_channel();
  BOOST_TEST(exited_with(c.wait_exit(20s), 0));
}

BOOST_AUTO_TEST_CASE(a_write_before_init_is_refused_and_the_child_keeps_serving) {
  raw_child c;
  auto t = c.seg().make_tensor(dtype::f32, {4});
  state_dict sd;
  sd["w"] = t;
  auto payload = proto::encode_write("/nonexistent/x.safetensors", sd, {},
                                     [&](const tensor& x) { return c.seg().offset_of(x.data()); });
  c.send(proto::message_type::write_checkpoint, 1, payload);
  auto r = c.response_to(1);
  BOOST_TEST(r.code == static_cast<std::uint32_t>(errc::protocol_error));
  BOOST_TEST(r.message.find("before a successful INIT") != std::string::npos, r.message);
  c.send(proto::message_type::ping, 2, {});
  BOOST_TEST(c.response_to(2).ok());
}

BOOST_AUTO_TEST_CASE(an_unknown_writer_factory_fails_init_naming_it) {
  raw_child c;
  proto::init_request r;
  r.writer_factory = "no-such-writer";
  r.segment_bytes = c.seg().size();
  c.send(proto::message_type::init, 1, proto::encode_init(r));
  auto resp = c.response_to(1);
  BOOST_TEST(resp.code == static_cast<std::uint32_t>(errc::not_found));
  BOOST_TEST(resp.message.find("no-such-writer") != std::string::npos, resp.message);
}

BOOST_AUTO_TEST_CASE(a_descriptor_pointing_outside_the_segment_is_refused_and_serving_goes_on) {
  raw_child c;
  c.send(proto::message_type::init, 1, default_init(c.seg().size()));
  BOOST_REQUIRE(c.response_to(1).ok());
  test::temp_dir dir;
  auto path = (dir / "x.safetensors").string();
  auto t = c.seg().make_tensor(dtype::f32, {1024});
  state_dict sd;
  sd["w"] = t;
  // The offset lies past the end of the segment: the child must check, not trust.
  auto payload = proto::encode_write(path, sd, {}, [&](const tensor&) {
    return std::uint64_t{c.seg().size()} + 4096;
  });
  c.send(proto::message_type::write_checkpoint, 2, payload);
  auto r = c.response_to(2);
  BOOST_TEST(r.code == static_cast<std::uint32_t>(errc::protocol_error));
  BOOST_TEST(!std::filesystem::exists(path));
  c.send(proto::message_type::ping, 3, {});
  BOOST_TEST(c.response_to(3).ok());
}

BOOST_AUTO_TEST_CASE(a_valid_write_is_persisted_from_the_segment_and_reads_back) {
  raw_child c;
  c.send(proto::message_type::init, 1, default_init(c.seg().size()));
  BOOST_REQUIRE(c.response_to(1).ok());
  test::temp_dir dir;
  auto path = (dir / "x.safetensors").string();
  auto t = c.seg().make_tensor(dtype::i32, {3});
  for (int i = 0; i < 3; ++i) t.data_as<std::int32_t>()[i] = 10 + i;
  state_dict sd;
  sd["w"] = t;
  sd["step"] = std::int64_t{42};
  auto payload = proto::encode_write(path, sd, {}, [&](const tensor& x) {
    return c.seg().offset_of(x.data());
  });
  c.send(proto::message_type::write_checkpoint, 2, payload);
  auto r = c.response_to(2);
  BOOST_TEST(r.ok(), r.message);
  auto back = read(path);
  BOOST_TEST(back.at("step").as_int() == 42);
  auto w = back.at("w").as_tensor();
  BOOST_REQUIRE(w.nbytes() == 12);
  BOOST_TEST(w.data_as<std::int32_t>()[2] == 12);
}

BOOST_AUTO_TEST_CASE(a_response_frame_sent_to_the_child_is_a_protocol_error) {
  raw_child c;
  c.send(proto::message_type::response, 5, proto::encode_response({}));
  auto r = c.response_to(5);
  BOOST_TEST(r.code == static_cast<std::uint32_t>(errc::protocol_error));
  c.send(proto::message_type::ping, 6, {});
  BOOST_TEST(c.response_to(6).ok());
}

BOOST_AUTO_TEST_CASE(a_garbled_header_is_answered_then_the_child_exits_4) {
  raw_child c;
  std::array<std::byte, proto::header_size> junk;
  junk.fill(std::byte{0x5a});
  c.send_bytes(junk);
  auto r = c.response_to(0);
  BOOST_TEST(r.code == static_cast<std::uint32_t>(errc::protocol_error));
  BOOST_TEST(!c.next_response());
  BOOST_TEST(exited_with(c.wait_exit(20s), 4));
}

BOOST_AUTO_TEST_CASE(a_frame_cut_short_by_the_parent_dying_ends_the_child_quietly) {
  raw_child c;
  auto f = proto::make_frame(proto::message_type::write_checkpoint, 1,
                             std::vector<std::byte>(100, std::byte{1}));
  c.send_bytes(std::span<const std::byte>(f).first(proto::header_size + 10));
  c.close_channel();
  BOOST_TEST(exited_with(c.wait_exit(20s), 0));
}

BOOST_AUTO_TEST_CASE(a_malformed_init_payload_is_refused_and_serving_goes_on) {
  raw_child c;
  std::vector<std::byte> junk(7, std::byte{0xff});
  c.send(proto::message_type::init, 1, junk);
  auto r = c.response_to(1);
  BOOST_TEST(!r.ok());
  BOOST_TEST(r.code == static_cast<std::uint32_t>(errc::protocol_error));
  c.send(proto::message_type::ping, 2, {});
  BOOST_TEST(c.response_to(2).ok());
}

BOOST_AUTO_TEST_CASE(started_by_hand_it_says_what_it_is_and_exits_2) {
  raw_child c({}, /*standard_args=*/false);
  BOOST_TEST(exited_with(c.wait_exit(20s), 2));
  auto text = c.stderr_text();
  BOOST_TEST(text.find("started by shmckpt::checkpoint_process") != std::string::npos, text);
}

BOOST_AUTO_TEST_CASE(an_unknown_argument_is_named_and_exits_2) {
  raw_child c({"--frobnicate"});
  BOOST_TEST(exited_with(c.wait_exit(20s), 2));
  auto text = c.stderr_text();
  BOOST_TEST(text.find("--frobnicate") != std::string::npos, text);
}
