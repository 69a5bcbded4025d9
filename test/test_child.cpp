// shmckpt-test-child: the helper executable of the test suites.
//
// As a checkpoint child (argv[1] == --shmckpt-worker) it registers test init functions and
// writers and runs the real worker loop — unless SHMCKPT_TEST_CHILD_MODE selects a misbehaving
// fake that speaks the protocol itself:
//   ignore-terminate  answers INIT/PING/WRITE, ignores TERMINATE and SIGTERM
//   close-channel     answers INIT/PING, then closes its control socket on the first WRITE and
//                     stays alive
//
// Writers for the lifecycle tests: "gate" (waits for a file, then writes like the default
// writer), "progress" (reports progress until a file appears or for a while, like a healthy
// slow writer), "stall" (the real default writer, stopped for good at its first progress
// report, i.e. with its temporary file on disk).
//
// As a stand-in trainer (argv[1] == parent) it starts a checkpoint_process whose child is this
// executable, prints "<child pid>\n" once the child is ready, and blocks on stdin; the test then
// SIGKILLs it to check that the orphaned child exits.
//
// As a writer stopped mid-write (argv[1] == die-mid-write or stall-mid-write, argv[2] a file):
// write_safetensors of a tensor whose memory faults when first read, i.e. after the temporary
// file is created, locked and preallocated and before its bytes are written. On the fault the
// process SIGKILLs itself (die-mid-write) or prints "stalled\n" and waits to be killed
// (stall-mid-write): a writer killed, or hung, in the middle of a write.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <thread>

#include "core/progress.hpp"  // lib/: to intercept the default writer's progress reports
#include "shmckpt/checkpoint_process.hpp"
#include "shmckpt/error.hpp"
#include "ipc/protocol.hpp"
#include "shmckpt/worker.hpp"
#include "shmckpt/writer.hpp"

namespace {

using namespace shmckpt;

// Writes every kwarg, every factory arg and every tensor name to <path>/record.txt; appends
// the path to the file named by kwarg "log"; throws the text of kwarg "fail".
class record_writer : public checkpoint_writer {
 public:
  explicit record_writer(kwargs args) : args_(std::move(args)) {}
  void write(const state_dict& sd, const std::filesystem::path& path,
             const kwargs& kw) override {
    if (auto it = kw.find("fail"); it != kw.end()) throw std::runtime_error(it->second);
    if (auto it = kw.find("log"); it != kw.end()) std::ofstream(it->second, std::ios::app) << path.string() << "\n";
    std::filesystem::create_directories(path);
    std::ofstream out(path / "record.txt");
    for (const auto& [k, v] : kw) out << "kw " << k << "=" << v << "\n";
    for (const auto& [k, v] : args_) out << "arg " << k << "=" << v << "\n";
    for_each_tensor(sd, [&](const std::string& name, const tensor& t) {
      out << "tensor " << name << " " << t.nbytes() << "\n";
    });
    for (const auto& [k, v] : sd)
      if (v.type() == kind::integer) out << "int " << k << "=" << v.as_int() << "\n";
    if (!out) throw std::runtime_error("cannot write record.txt");
  }

 private:
  kwargs args_;
};

// Sets element [0][0] of the F32 tensor "w" to 42, in the shared memory the parent handed over.
class set_42_writer : public checkpoint_writer {
 public:
  void write(const state_dict& sd, const std::filesystem::path&, const kwargs&) override {
    sd.at("w").as_tensor().data_as<float>()[0] = 42.0f;
  }
};

class failing_writer : public checkpoint_writer {
 public:
  void write(const state_dict&, const std::filesystem::path& path, const kwargs&) override {
    throw std::runtime_error("disk on fire while writing " + path.string());
  }
};

// Announces that it started (a "started" file in path) and then blocks until killed.
class blocking_writer : public checkpoint_writer {
 public:
  void write(const state_dict&, const std::filesystem::path& path, const kwargs&) override {
    std::filesystem::create_directories(path);
    std::ofstream(path / "started") << ::getpid();
    for (;;) ::pause();
  }
};

// Lists the child's open descriptors ("<fd> <target>" per line) in <path>/fds.txt.
class fd_list_writer : public checkpoint_writer {
 public:
  void write(const state_dict&, const std::filesystem::path& path, const kwargs&) override {
    std::vector<std::string> lines;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
      std::error_code ec;
      auto target = std::filesystem::read_symlink(e.path(), ec);
      lines.push_back(e.path().filename().string() + " " + target.string());
    }
    std::filesystem::create_directories(path);
    std::ofstream out(path / "fds.txt");
    for (const auto& l : lines) out << l << "\n";
  }
};

// Waits until the file named by kwarg "gate" exists (bounded), then writes like the default
// writer: lets tests hold a write "in progress" for as long as they need. Creates
// "<gate>.waiting" when it starts waiting.
class gate_writer : public checkpoint_writer {
 public:
  explicit gate_writer(const kwargs& args) : inner_(make_default_writer(args)) {}
  void write(const state_dict& sd, const std::filesystem::path& path,
             const kwargs& kw) override {
    if (auto it = kw.find("gate"); it != kw.end()) {
      std::ofstream(it->second + ".waiting") << ::getpid();
      auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (!std::filesystem::exists(it->second)) {
        if (std::chrono::steady_clock::now() > end) throw std::runtime_error("gate never opened");
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
    inner_->write(sd, path, kw);
  }

 private:
  std::unique_ptr<checkpoint_writer> inner_;
};

// A healthy writer that takes its time: reports progress every 10 ms while it waits for the file
// named by kwarg "gate" (creating "<gate>.waiting" after its first report), or for kwarg "ms"
// milliseconds; then creates <path>/done. Bounded at 60 s.
class progress_writer : public checkpoint_writer {
 public:
  void write(const state_dict&, const std::filesystem::path& path, const kwargs& kw) override {
    using clock = std::chrono::steady_clock;
    auto gate = kw.find("gate");
    auto ms = kw.find("ms");
    auto end = clock::now() + (ms != kw.end() ? std::chrono::milliseconds(std::stol(ms->second))
                                              : std::chrono::milliseconds(60000));
    int n = 0;
    // The first report is on the socket before <gate>.waiting appears: a test that stops this
    // child once it sees the file knows the parent has been told what the child was doing.
    report_progress("waiting for the gate, round " + std::to_string(++n));
    if (gate != kw.end()) std::ofstream(gate->second + ".waiting") << ::getpid();
    while (clock::now() < end && !(gate != kw.end() && std::filesystem::exists(gate->second))) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      report_progress("waiting for the gate, round " + std::to_string(++n));
    }
    std::filesystem::create_directories(path);
    std::ofstream(path / "done") << n;
  }
};

// The default writer, stopped for good at its first progress report (after its first chunk of
// data, with its temporary file on disk): creates <path>/stalled and pauses until killed.
class stall_writer : public checkpoint_writer {
 public:
  explicit stall_writer(const kwargs& args) : inner_(make_default_writer(args)) {}
  void write(const state_dict& sd, const std::filesystem::path& path, const kwargs& kw) override {
    auto worker_reporter = detail::set_progress_reporter({});
    detail::set_progress_reporter([worker_reporter, marker = path / "stalled"](std::string_view w) {
      if (worker_reporter) worker_reporter(w);
      std::ofstream(marker) << w;
      for (;;) ::pause();
    });
    inner_->write(sd, path, kw);
  }

 private:
  std::unique_ptr<checkpoint_writer> inner_;
};

void register_all() {
  register_writer_factory("progress",
                          [](const kwargs&) { return std::make_unique<progress_writer>(); });
  register_writer_factory("stall",
                          [](const kwargs& a) { return std::make_unique<stall_writer>(a); });
  register_writer_factory("gate", [](const kwargs& a) { return std::make_unique<gate_writer>(a); });
  register_writer_factory("fds", [](const kwargs&) { return std::make_unique<fd_list_writer>(); });
  register_init_function("sleep", [](const kwargs& a) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::stol(a.at("ms"))));
  });
  register_init_function("fail", [](const kwargs& a) {
    throw std::runtime_error("init exploded: " + a.at("message"));
  });
  register_init_function("touch", [](const kwargs& a) { std::ofstream(a.at("file")) << "init"; });
  register_writer_factory("record", [](const kwargs& a) {
    return std::make_unique<record_writer>(a);
  });
  register_writer_factory("set_42", [](const kwargs&) { return std::make_unique<set_42_writer>(); });
  register_writer_factory("fail_write", [](const kwargs&) {
    return std::make_unique<failing_writer>();
  });
  register_writer_factory("block", [](const kwargs&) {
    return std::make_unique<blocking_writer>();
  });
  register_writer_factory("fail_factory", [](const kwargs&) -> std::unique_ptr<checkpoint_writer> {
    throw std::runtime_error("writer factory exploded");
  });
}

// ---- fake children --------------------------------------------------------------------------

bool read_exact(int fd, void* p, std::size_t n) {
  auto* c = static_cast<char*>(p);
  while (n) {
    ssize_t r = ::read(fd, c, n);
    if (r <= 0) return false;
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

void answer(int fd, std::uint64_t id) {
  auto frame = protocol::make_frame(protocol::message_type::response, id,
                                    protocol::encode_response({}));
  if (::write(fd, frame.data(), frame.size()) != static_cast<ssize_t>(frame.size())) std::_Exit(9);
}

int fake_child(const std::string& mode) {
  ::signal(SIGTERM, SIG_IGN);
  const int fd = 3;  // where checkpoint_process puts the control socket
  for (;;) {
    std::array<std::byte, protocol::header_size> hb;
    if (!read_exact(fd, hb.data(), hb.size())) break;
    auto h = protocol::decode_header(hb);
    std::vector<std::byte> payload(h.payload_bytes);
    if (!read_exact(fd, payload.data(), payload.size())) break;
    auto type = static_cast<protocol::message_type>(h.type);
    if (type == protocol::message_type::terminate) continue;  // ignored on purpose
    if (type == protocol::message_type::write_checkpoint && mode == "close-channel") {
      ::close(fd);
      break;
    }
    answer(fd, h.request_id);
  }
  for (;;) ::pause();  // stay alive until killed
}

int stand_in_parent(char* self) {
  checkpoint_process_options o;
  o.worker = worker_binary::custom;
  o.worker_path = self;
  o.segment_bytes = 8u << 20;
  checkpoint_process proc(o);
  proc.wait_ready();
  std::cout << proc.child_pid() << std::endl;
  std::string line;
  std::getline(std::cin, line);  // blocks until the test kills us
  return 0;
}

bool die_on_fault = false;

void on_fault(int) {
  if (die_on_fault) ::kill(::getpid(), SIGKILL);
  const char msg[] = "stalled\n";
  if (::write(STDOUT_FILENO, msg, sizeof msg - 1) < 0) ::_exit(9);
  for (;;) ::pause();
}

int stop_mid_write(const char* file, bool die) {
  die_on_fault = die;
  struct sigaction sa {};
  sa.sa_handler = on_fault;
  ::sigaction(SIGSEGV, &sa, nullptr);
  const std::size_t n = 1u << 20;
  void* p = ::mmap(nullptr, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 3;
  tensor t(dtype::u8, {static_cast<std::int64_t>(n)}, {static_cast<std::byte*>(p), n});
  write_safetensors(file, {{"w", t}});
  return 4;  // not reached: the first read of the tensor faults
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "parent") == 0) return stand_in_parent(argv[0]);
  if (argc > 2 && std::strcmp(argv[1], "die-mid-write") == 0) return stop_mid_write(argv[2], true);
  if (argc > 2 && std::strcmp(argv[1], "stall-mid-write") == 0)
    return stop_mid_write(argv[2], false);
  if (const char* mode = std::getenv("SHMCKPT_TEST_CHILD_MODE");
      mode && *mode && argc > 1 && std::strcmp(argv[1], worker_flag) == 0)
    return fake_child(mode);
  register_all();
  run_worker_if_requested(argc, argv);
  std::cerr << "shmckpt-test-child: run me as a checkpoint child or with 'parent'\n";
  return 2;
}
