// ckpt-bench — every shmckpt performance figure next to the limit it is measured against.
//
// Each figure is measured in the same run as its baseline (a plain memcpy, a raw socket round
// trip, a raw durable write, a plain read()), repetitions interleaved, and reported as
// median [min–max] plus the ratio of the medians. The machine this runs on is shared and noisy;
// ratios taken side by side are what docs/benchmarks.md quotes, not absolute numbers.
//
// The benchmark is its own checkpoint child for the latency figures: main() registers a writer
// factory "bench-stamp" and calls run_worker_if_requested() first. That writer persists nothing;
// it stores CLOCK_MONOTONIC, read the moment it holds a validated descriptor, into a small shared
// tensor "__stamp" that the parent reads back (the clock is system-wide), which gives the
// hand-off time without any disk in the way. Throughput figures use the installed
// shmckpt-worker with the default (durable) writer, as a trainer would.
//
// Everything it creates (segments, children, files under --dir) is removed before it exits.
// Exit status: 0 after a complete run (whatever the figures say), 1 on an error, 2 for usage.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/json.hpp>
#include <boost/program_options.hpp>
#include <xxhash.h>

#include "shmckpt/checkpoint_process.hpp"
#include "shmckpt/checkpointer.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/stager.hpp"
#include "shmckpt/state_dict.hpp"
#include "shmckpt/worker.hpp"
#include "shmckpt/writer.hpp"

#include "compute_load.hpp"

namespace fs = std::filesystem;
namespace po = boost::program_options;
namespace json = boost::json;
using namespace shmckpt;

namespace {

constexpr std::size_t KiB = 1024, MiB = KiB * 1024, GiB = MiB * 1024;
constexpr std::size_t io_chunk = 8 * MiB;  // raw-write baseline chunk (the writer uses 8 MiB)

// ---- clocks and statistics ----------------------------------------------------------------------

std::int64_t mono_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

double seconds_since(std::int64_t t0) { return static_cast<double>(mono_ns() - t0) * 1e-9; }

// Involuntary context switches of the calling thread so far (preemption by other threads).
long involuntary_switches() {
  rusage ru{};
  ::getrusage(RUSAGE_THREAD, &ru);
  return ru.ru_nivcsw;
}

struct stats {
  double median = 0, min = 0, max = 0;
  std::size_t n = 0;
};

stats summarize(std::vector<double> v) {
  stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.n = v.size();
  s.min = v.front();
  s.max = v.back();
  s.median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  return s;
}

// ---- results -------------------------------------------------------------------------------------

enum class unit { seconds, bytes_per_second, bytes, ratio, flops };
enum class status { met, missed, info, skipped };

const char* unit_name(unit u) {
  switch (u) {
    case unit::seconds: return "s";
    case unit::bytes_per_second: return "B/s";
    case unit::bytes: return "B";
    case unit::ratio: return "x";
    case unit::flops: return "FLOP/s";
  }
  return "?";
}

const char* status_name(status s) {
  switch (s) {
    case status::met: return "met";
    case status::missed: return "MISSED";
    case status::info: return "info";
    case status::skipped: return "skipped";
  }
  return "?";
}

struct figure {
  std::string id;       // stable identifier (the smoke test checks every one appears)
  std::string name;     // what is measured
  std::uint64_t size = 0;       // state-dict bytes (0: not size-dependent)
  std::uint64_t tensors = 0;    // tensor count (0: not applicable)
  unit u = unit::seconds;
  stats value;
  std::string baseline_label;  // empty: no baseline
  stats baseline;
  double ratio = 0;           // value / baseline medians (meaning given by `target`)
  bool has_ratio = false;
  std::string target;
  status st = status::info;
  std::string note;

  /// Ratio of the value's median to the baseline's, met when at least `min_ratio`.
  void at_least(double min_ratio) { judge_ratio(">=", min_ratio); }
  /// Ratio of the value's median to the baseline's, met when at most `max_ratio`.
  void at_most(double max_ratio) { judge_ratio("<=", max_ratio); }

 private:
  void judge_ratio(const char* op, double bound) {
    ratio = value.median / baseline.median;
    has_ratio = true;
    char t[32];
    std::snprintf(t, sizeof t, "%s %gx", op, bound);
    target = t;
    bool ok = op[0] == '>' ? ratio >= bound : ratio <= bound;
    st = ok ? status::met : status::missed;
  }
};

std::string fmt(double v, unit u) {
  char buf[64];
  switch (u) {
    case unit::seconds:
      if (v < 1e-3) std::snprintf(buf, sizeof buf, "%.1f µs", v * 1e6);
      else if (v < 1) std::snprintf(buf, sizeof buf, "%.2f ms", v * 1e3);
      else std::snprintf(buf, sizeof buf, "%.2f s", v);
      break;
    case unit::bytes_per_second: std::snprintf(buf, sizeof buf, "%.2f GB/s", v / 1e9); break;
    case unit::bytes: std::snprintf(buf, sizeof buf, "%.1f MiB", v / MiB); break;
    case unit::ratio: std::snprintf(buf, sizeof buf, "%.2fx", v); break;
    case unit::flops: std::snprintf(buf, sizeof buf, "%.2f GFLOP/s", v / 1e9); break;
  }
  return buf;
}

std::string fmt_stats(const stats& s, unit u) {
  if (s.n == 0) return "—";
  if (s.n == 1) return fmt(s.median, u);
  return fmt(s.median, u) + " [" + fmt(s.min, u) + "–" + fmt(s.max, u) + "]";
}

std::string size_label(std::uint64_t b) {
  char buf[32];
  if (b >= GiB && b % GiB == 0) std::snprintf(buf, sizeof buf, "%llu GiB", (unsigned long long)(b / GiB));
  else if (b >= MiB && b % MiB == 0) std::snprintf(buf, sizeof buf, "%llu MiB", (unsigned long long)(b / MiB));
  else if (b >= KiB && b % KiB == 0) std::snprintf(buf, sizeof buf, "%llu KiB", (unsigned long long)(b / KiB));
  else std::snprintf(buf, sizeof buf, "%llu B", (unsigned long long)b);
  return buf;
}

// ---- configuration --------------------------------------------------------------------------------

struct config {
  std::vector<std::uint64_t> sizes;  // state-dict sizes, ascending
  int reps = 5;                      // repetitions of every heavy measurement
  fs::path dir;                      // scratch root (a private subdirectory is made in it)
  bool smoke = false;
  bool json = false;
  std::size_t threads = 0;  // stager threads (0: the library default)
  std::uint64_t few_tensors = 256;
  std::uint64_t many_tensors = 65536;
  int latency_samples = 400;  // PING-equivalent and raw round trips per repetition batch
  std::vector<std::string> only;  // sections to run (empty: all), for profiling one figure
  // Writer set-ups the interference section compares, interleaved (see parse_variant).
  std::vector<std::string> variants{"buffered", "default"};
  bool wants(const std::string& section) const {
    return only.empty() || std::find(only.begin(), only.end(), section) != only.end();
  }
};

std::uint64_t parse_size(const std::string& text) {
  std::size_t pos = 0;
  unsigned long long n = std::stoull(text, &pos);
  std::string suffix = text.substr(pos);
  for (auto& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (suffix == "" || suffix == "B") return n;
  if (suffix == "K" || suffix == "KB" || suffix == "KIB") return n * KiB;
  if (suffix == "M" || suffix == "MB" || suffix == "MIB") return n * MiB;
  if (suffix == "G" || suffix == "GB" || suffix == "GIB") return n * GiB;
  throw std::invalid_argument("cannot read size '" + text + "' (use e.g. 64M, 1G)");
}

// A writer set-up for the interference section: "default" (the library's defaults: O_DIRECT
// where possible, the default child priority) or "buffered" / "direct" with no priority change,
// followed by "+"-separated changes: nice<N>, batch, idle (SCHED_IDLE), normal, ioidle,
// iobe<L>, cpu<N>. E.g. "direct+batch+nice10", "buffered+idle+ioidle".
struct writer_variant {
  std::string name;
  kwargs writer_args;
  child_priority priority;
};

writer_variant parse_variant(const std::string& text) {
  writer_variant v;
  v.name = text;
  std::stringstream ss(text);
  std::string part;
  bool first = true;
  while (std::getline(ss, part, '+')) {
    auto number = [&](std::size_t at) { return std::stoi(part.substr(at)); };
    if (first) {
      first = false;
      if (part == "default") continue;
      if (part == "buffered") v.writer_args["io"] = "buffered";
      else if (part != "direct")
        throw std::invalid_argument("variant '" + text + "' must start with default, buffered or direct");
      v.priority = child_priority{};
      v.priority.nice = 0;
      v.priority.policy = child_cpu_policy::inherit;
      v.priority.io_class = child_io_class::inherit;
      continue;
    }
    if (part.rfind("nice", 0) == 0) v.priority.nice = number(4);
    else if (part == "batch") v.priority.policy = child_cpu_policy::batch;
    else if (part == "idle") v.priority.policy = child_cpu_policy::idle;
    else if (part == "normal") v.priority.policy = child_cpu_policy::normal;
    else if (part == "ioidle") v.priority.io_class = child_io_class::idle;
    else if (part.rfind("iobe", 0) == 0) {
      v.priority.io_class = child_io_class::best_effort;
      v.priority.io_level = number(4);
    } else if (part.rfind("cpu", 0) == 0) v.priority.cpus.push_back(number(3));
    else throw std::invalid_argument("variant '" + text + "': unknown part '" + part + "'");
  }
  return v;
}

// The stager's default copy-thread count (stager_options::threads = 0).
std::size_t default_copy_threads() {
  unsigned hw = std::thread::hardware_concurrency();
  return std::clamp<std::size_t>(hw == 0 ? 1 : hw, 1, 4);
}

void progress(const config& c, const std::string& what) {
  std::cerr << "[ckpt-bench] " << what << std::endl;
  (void)c;
}

// ---- /proc helpers --------------------------------------------------------------------------------

// CPU time (user + system, all threads) of process `pid` in seconds; 0 when unreadable.
double proc_cpu_seconds(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line) || line.rfind(')') == std::string::npos) return 0;
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::vector<std::string> f;
  for (std::string w; rest >> w && f.size() < 13;) f.push_back(w);  // fields 3..15
  if (f.size() < 13) return 0;
  double ticks = std::stod(f[11]) + std::stod(f[12]);  // utime, stime
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// Fields of /proc/<pid>/status in bytes ("VmHWM", "RssAnon", ...). Empty when unreadable.
std::map<std::string, std::uint64_t> proc_status(int pid) {
  std::map<std::string, std::uint64_t> out;
  std::ifstream in(pid > 0 ? "/proc/" + std::to_string(pid) + "/status" : "/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    if (line.find(" kB") == std::string::npos) continue;
    try {
      out[key] = std::stoull(line.substr(colon + 1)) * KiB;
    } catch (...) {
    }
  }
  return out;
}

bool reset_own_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

bool can_drop_caches() {
  return ::geteuid() == 0 && ::access("/proc/sys/vm/drop_caches", W_OK) == 0;
}

void drop_caches() {
  ::sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  f << "3";
}

std::string read_first_line_with(const char* path, const char* key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return line;
  return {};
}

std::string fs_type_name(const fs::path& p) {
  struct statfs st {};
  if (::statfs(p.c_str(), &st) != 0) return "unknown";
  switch (static_cast<unsigned long>(st.f_type)) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs";
    case 0x794c7630: return "overlayfs";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(st.f_type));
      return buf;
    }
  }
}

// ---- memory and state dicts -----------------------------------------------------------------------

// Page-aligned private memory (usable as an O_DIRECT source), every page written.
std::shared_ptr<std::byte> private_buffer(std::size_t n, std::uint8_t pattern) {
  void* p = nullptr;
  if (::posix_memalign(&p, 4096, std::max<std::size_t>(n, 4096)) != 0) throw std::bad_alloc();
  std::memset(p, pattern, n);
  return {static_cast<std::byte*>(p), [](std::byte* q) { std::free(q); }};
}

// A trainer-like tree: {"model": {"layer<i>": {"weight", "bias", "norm", "extra"}}, "step", "lr"}
// with `count` F32 tensors of equal size summing to `bytes`. `make(i, nbytes)` supplies the
// memory of tensor i.
state_dict make_tree(std::uint64_t bytes, std::uint64_t count,
                     const std::function<tensor(std::size_t, std::size_t)>& make) {
  static const char* leaf[] = {"weight", "bias", "norm", "extra"};
  const std::size_t per = static_cast<std::size_t>(bytes / count);
  if (per < 4 || per % 4 != 0 || count % 4 != 0)
    throw std::invalid_argument("size " + std::to_string(bytes) + " cannot be split into " +
                                std::to_string(count) + " F32 tensors");
  dict model;
  for (std::size_t l = 0; l < count / 4; ++l) {
    dict layer;
    for (std::size_t k = 0; k < 4; ++k) layer.insert_or_assign(leaf[k], make(l * 4 + k, per));
    model.insert_or_assign("layer" + std::to_string(l), std::move(layer));
  }
  state_dict sd;
  sd.insert_or_assign("model", std::move(model));
  sd.insert_or_assign("step", std::int64_t{1000});
  sd.insert_or_assign("lr", 3e-4);
  return sd;
}

struct private_state {
  std::shared_ptr<std::byte> mem;  // one contiguous page-aligned block
  state_dict sd;
};

private_state make_private_state(std::uint64_t bytes, std::uint64_t count) {
  private_state s;
  s.mem = private_buffer(bytes, 0x3c);
  std::byte* base = s.mem.get();
  auto owner = s.mem;
  s.sd = make_tree(bytes, count, [&](std::size_t i, std::size_t per) {
    return tensor(dtype::f32, {static_cast<std::int64_t>(per / 4)}, {base + i * per, per}, owner);
  });
  return s;
}

state_dict make_shared_state(checkpoint_process& p, std::uint64_t bytes, std::uint64_t count) {
  return make_tree(bytes, count, [&](std::size_t, std::size_t per) {
    tensor t = p.make_tensor(dtype::f32, {static_cast<std::int64_t>(per / 4)});
    std::memset(t.data(), 0x5a, per);
    return t;
  });
}

// Segment room for `bytes` of tensors in `count` allocations (allocator headers, alignment).
std::size_t segment_for(std::uint64_t bytes, std::uint64_t count, std::size_t copies = 1) {
  return static_cast<std::size_t>(copies * (bytes + count * 256) + 16 * MiB);
}

// ---- baselines ------------------------------------------------------------------------------------

// memcpy of n bytes split evenly over `threads` threads (the caller is one of them).
double parallel_memcpy(std::byte* dst, const std::byte* src, std::size_t n, std::size_t threads) {
  threads = std::max<std::size_t>(threads, 1);
  std::size_t part = (n / threads + 4095) / 4096 * 4096;
  auto t0 = mono_ns();
  std::vector<std::thread> helpers;
  for (std::size_t i = 1; i < threads; ++i) {
    std::size_t off = std::min(n, i * part), len = std::min(part, n - off);
    helpers.emplace_back([=] { std::memcpy(dst + off, src + off, len); });
  }
  std::memcpy(dst, src, std::min(part, n));
  for (auto& h : helpers) h.join();
  return seconds_since(t0);
}

// A memory file of n bytes mapped shared and never touched: the first write into it faults.
struct fresh_shm {
  int fd = -1;
  std::byte* p = nullptr;
  std::size_t n = 0;
  explicit fresh_shm(std::size_t bytes) : n(bytes) {
    fd = ::memfd_create("ckpt-bench-fresh", MFD_CLOEXEC);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(n)) != 0)
      throw std::runtime_error(std::string("memfd for the fresh-pages baseline: ") + std::strerror(errno));
    void* a = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (a == MAP_FAILED) throw std::runtime_error("mmap for the fresh-pages baseline failed");
    p = static_cast<std::byte*>(a);
  }
  ~fresh_shm() {
    if (p) ::munmap(p, n);
    if (fd >= 0) ::close(fd);
  }
  fresh_shm(const fresh_shm&) = delete;
  fresh_shm& operator=(const fresh_shm&) = delete;
};

void check_io(bool ok, const char* what, const fs::path& p) {
  if (!ok)
    throw std::runtime_error(std::string(what) + " '" + p.string() + "': " + std::strerror(errno));
}

void pwrite_all(int fd, const std::byte* p, std::size_t n, std::uint64_t off, const fs::path& path) {
  while (n > 0) {
    ssize_t r = ::pwrite(fd, p, std::min(n, io_chunk), static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    check_io(r > 0, "write", path);
    p += r;
    n -= static_cast<std::size_t>(r);
    off += static_cast<std::uint64_t>(r);
  }
}

// Raw durable write: open, write in 8 MiB chunks, fsync, close. `direct` uses O_DIRECT (the
// source must be page aligned and n a multiple of 4096). Returns seconds.
double raw_durable_write(const fs::path& file, const std::byte* src, std::size_t n, bool direct) {
  auto t0 = mono_ns();
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (direct ? O_DIRECT : 0), 0644);
  check_io(fd >= 0, "open", file);
  pwrite_all(fd, src, n, 0, file);
  check_io(::fsync(fd) == 0, "fsync", file);
  ::close(fd);
  double t = seconds_since(t0);
  fs::remove(file);
  return t;
}

// read() of a whole file into fresh anonymous memory; returns seconds.
double raw_read_file(const fs::path& file) {
  auto t0 = mono_ns();
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  check_io(fd >= 0, "open", file);
  struct stat st {};
  ::fstat(fd, &st);
  std::size_t n = static_cast<std::size_t>(st.st_size);
  void* a = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (a == MAP_FAILED) throw std::bad_alloc();
  auto* p = static_cast<char*>(a);
  std::size_t done = 0;
  while (done < n) {
    ssize_t r = ::read(fd, p + done, std::min<std::size_t>(n - done, 1u << 30));
    if (r < 0 && errno == EINTR) continue;
    check_io(r > 0, "read", file);
    done += static_cast<std::size_t>(r);
  }
  ::close(fd);
  double t = seconds_since(t0);
  ::munmap(a, n);
  return t;
}

// read() of a whole safetensors file the way a plain loader would: the header, then every tensor
// of `per` bytes into its own `new std::byte[]` (the allocation the library's copying read uses,
// so both pay the same allocator and first-touch costs). Returns seconds.
double raw_read_tensors(const fs::path& file, std::size_t per) {
  auto t0 = mono_ns();
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  check_io(fd >= 0, "open", file);
  auto read_full = [&](void* dst, std::size_t n) {
    auto* p = static_cast<char*>(dst);
    std::size_t done = 0;
    while (done < n) {
      ssize_t r = ::read(fd, p + done, n - done);
      if (r < 0 && errno == EINTR) continue;
      check_io(r > 0, "read", file);
      done += static_cast<std::size_t>(r);
    }
  };
  std::uint64_t header = 0;
  read_full(&header, sizeof header);
  std::string text(static_cast<std::size_t>(header), '\0');
  read_full(text.data(), text.size());
  struct stat st {};
  ::fstat(fd, &st);
  std::size_t left = static_cast<std::size_t>(st.st_size) - 8 - text.size();
  std::vector<std::unique_ptr<std::byte[]>> tensors;
  while (left > 0) {
    std::size_t n = std::min(per, left);
    tensors.emplace_back(new std::byte[n]);
    read_full(tensors.back().get(), n);
    left -= n;
  }
  ::close(fd);
  double t = seconds_since(t0);
  return t;
}

// A forked echo process on a socket pair: the raw unix-socket round trip between two processes.
// Forked first thing in main, before any thread exists.
class echo_peer {
 public:
  echo_peer() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      throw std::runtime_error("socketpair failed");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::close(sv[0]);
      char buf[64];
      for (;;) {
        std::size_t got = 0;
        while (got < sizeof buf) {
          ssize_t r = ::read(sv[1], buf + got, sizeof buf - got);
          if (r <= 0) ::_exit(0);
          got += static_cast<std::size_t>(r);
        }
        if (::write(sv[1], buf, sizeof buf) != static_cast<ssize_t>(sizeof buf)) ::_exit(0);
      }
    }
    ::close(sv[1]);
    fd_ = sv[0];
  }
  ~echo_peer() {
    ::close(fd_);
    int st;
    ::waitpid(pid_, &st, 0);
  }
  echo_peer(const echo_peer&) = delete;
  echo_peer& operator=(const echo_peer&) = delete;

  // One 64-byte round trip, seconds.
  double round_trip() {
    char buf[64] = {1};
    auto t0 = mono_ns();
    if (::write(fd_, buf, sizeof buf) != static_cast<ssize_t>(sizeof buf))
      throw std::runtime_error("echo write failed");
    std::size_t got = 0;
    while (got < sizeof buf) {
      ssize_t r = ::read(fd_, buf + got, sizeof buf - got);
      if (r <= 0) throw std::runtime_error("echo read failed");
      got += static_cast<std::size_t>(r);
    }
    return seconds_since(t0);
  }

 private:
  int fd_ = -1;
  pid_t pid_ = -1;
};

// ---- the benchmark's own checkpoint writer --------------------------------------------------------

// Persists nothing: stores the CLOCK_MONOTONIC time at which it received the (already validated)
// descriptor into the I64 tensor "__stamp", when the state dict has one.
class stamp_writer final : public checkpoint_writer {
 public:
  void write(const state_dict& sd, const fs::path&, const kwargs&) override {
    std::int64_t now = mono_ns();
    if (const value* v = sd.find("__stamp"); v && v->type() == kind::tensor) {
      const tensor& t = v->as_tensor();
      if (t.nbytes() == sizeof now) std::memcpy(t.data(), &now, sizeof now);
    }
  }
};

// ---- the runner -----------------------------------------------------------------------------------

class bench {
 public:
  bench(config c, echo_peer& echo) : c_(std::move(c)), echo_(echo) {
    threads_ = c_.threads ? c_.threads : default_copy_threads();
  }

  std::vector<figure>& figures() { return figs_; }

  void run() {
    if (c_.wants("startup")) startup();
    if (c_.wants("ping")) ping();
    if (c_.wants("open")) open_many();
    for (std::uint64_t s : c_.sizes) {
      bool largest = s == c_.sizes.back();
      if (c_.wants("handoff")) handoff(s);
      auto priv = make_private_state(s, c_.few_tensors);
      if (c_.wants("staging")) {
        staging_steady(s, priv);
        staging_first(s, priv);
      }
      if (c_.wants("persist") || c_.wants("e2e") || c_.wants("load")) persist(s, largest);
      if (c_.wants("e2e")) end_to_end(s, priv);
      if (c_.wants("load")) load(s, largest);
      if (largest && c_.wants("memory")) parent_memory(s, priv);
      if (c_.wants("interference") && (c_.smoke || s >= 256 * MiB)) interference(s);
    }
    flatness();
  }

  void add(figure f) { figs_.push_back(std::move(f)); }

  fs::path scratch() const { return c_.dir; }

 private:
  int reps() const { return c_.reps; }
  bool strategy_reported_ = false;

  checkpoint_process_options process_opts(std::size_t seg, bool stamp) const {
    checkpoint_process_options o;
    o.segment_bytes = seg;
    if (stamp) {
      o.worker = worker_binary::this_executable;
      o.writer_factory = "bench-stamp";
    }
    return o;
  }

  // ---- child start-up ----
  void startup() {
    progress(c_, "child start-up");
    std::vector<double> t;
    for (int r = 0; r < std::max(reps(), 3); ++r) {
      auto t0 = mono_ns();
      checkpoint_process p(process_opts(4 * MiB, false));
      p.wait_ready();
      t.push_back(seconds_since(t0));
      p.close();
    }
    figure f;
    f.id = "startup";
    f.name = "child start-up: spawn to ready (shmckpt-worker, 4 MiB segment)";
    f.value = summarize(t);
    f.target = "<= 20 ms (reference: 1.2-1.8 s)";
    f.st = f.value.median <= 20e-3 ? status::met : status::missed;
    add(f);
  }

  std::vector<double> raw_rtts(int n) {
    std::vector<double> v;
    for (int i = 0; i < n; ++i) v.push_back(echo_.round_trip());
    return v;
  }

  // ---- PING-equivalent round trip ----
  // checkpoint_process has no public ping; an empty WRITE to the bench-stamp writer is the same
  // round trip through every thread and the child's request loop.
  void ping() {
    progress(c_, "PING-equivalent round trip");
    checkpoint_process p(process_opts(4 * MiB, true));
    p.wait_ready();
    std::vector<double> shm, raw;
    int n = c_.latency_samples;
    for (int i = 0; i < 20; ++i) p.write(state_dict{}, "unused").get();  // warm up
    for (int batch = 0; batch < 4; ++batch) {
      auto r = raw_rtts(n / 4);
      raw.insert(raw.end(), r.begin(), r.end());
      for (int i = 0; i < n / 4; ++i) {
        auto t0 = mono_ns();
        p.write(state_dict{}, "unused").get();
        shm.push_back(seconds_since(t0));
      }
    }
    p.close();
    raw_rtt_ = summarize(raw);
    figure f;
    f.id = "ping_round_trip";
    f.name = "PING round trip (empty WRITE to a null writer: caller→child→caller)";
    f.value = summarize(shm);
    f.baseline_label = "raw unix-socket round trip, 64 B, two processes";
    f.baseline = raw_rtt_;
    f.ratio = f.value.median / f.baseline.median;
    f.has_ratio = true;
    f.target = "<= 2x";
    f.st = f.ratio <= 2 ? status::met : status::missed;
    add(f);
  }

  // ---- write() return time and hand-off ----
  void handoff(std::uint64_t s) {
    for (std::uint64_t count : {c_.few_tensors, c_.many_tensors}) {
      progress(c_, "write() return and hand-off: " + size_label(s) + " in " +
                       std::to_string(count) + " tensors");
      checkpoint_process p(process_opts(segment_for(s, count), true));
      p.wait_ready();
      state_dict sd = make_shared_state(p, s, count);
      tensor stamp = p.make_tensor(dtype::i64, {1});
      sd.insert_or_assign("__stamp", stamp);
      // Every tensor is in the segment: one walk records it on the tree (as a stager snapshot
      // carries it), so each write() below hands it over without walking it.
      state_dict unmarked = sd;
      p.mark_shared(sd);
      int n = c_.smoke ? 2 : std::max(reps() * 3, 11);
      std::vector<double> ret, hand, ret_future, hand_future, ret_unmarked, raw;
      int preempted = 0, preempted_future = 0;
      auto stamp_value = [&] {
        std::int64_t v;
        std::memcpy(&v, stamp.data(), sizeof v);
        return v;
      };
      for (int i = 0; i < n + 1; ++i) {
        // write(state_dict): the caller moves a ready copy in (the copy is made before timing).
        state_dict arg = sd;
        long cs = involuntary_switches();
        auto t0 = mono_ns();
        auto fut = p.write(std::move(arg), "unused");
        auto t1 = mono_ns();
        if (i > 0) preempted += involuntary_switches() != cs;
        fut.get();
        if (i > 0) {  // the first is a warm-up
          ret.push_back(static_cast<double>(t1 - t0) * 1e-9);
          hand.push_back(static_cast<double>(stamp_value() - t0) * 1e-9);
        }
        // write(shared_future<state_dict>): returns before the descriptor is even encoded.
        std::promise<state_dict> ready;
        ready.set_value(sd);
        auto sf = ready.get_future().share();
        cs = involuntary_switches();
        t0 = mono_ns();
        auto fut2 = p.write(std::move(sf), "unused");
        t1 = mono_ns();
        if (i > 0) preempted_future += involuntary_switches() != cs;
        fut2.get();
        if (i > 0) {
          ret_future.push_back(static_cast<double>(t1 - t0) * 1e-9);
          hand_future.push_back(static_cast<double>(stamp_value() - t0) * 1e-9);
        }
        // write(state_dict) of the same tree without the mark: walked in the caller.
        arg = unmarked;
        t0 = mono_ns();
        auto fut3 = p.write(std::move(arg), "unused");
        t1 = mono_ns();
        fut3.get();
        if (i > 0) ret_unmarked.push_back(static_cast<double>(t1 - t0) * 1e-9);
        auto r = raw_rtts(20);
        raw.insert(raw.end(), r.begin(), r.end());
      }
      sd = {};
      unmarked = {};
      p.close();
      auto rtt = summarize(raw);

      figure f;
      f.id = "write_return";
      f.name = "write() return, state dict already shared";
      f.size = s;
      f.tensors = count;
      f.value = summarize(ret);
      f.target = "<= 50 µs";
      f.st = f.value.median <= 50e-6 ? status::met : status::missed;
      f.note = std::to_string(preempted) + " of " + std::to_string(n) + " calls preempted";
      add(f);
      write_return_[{s, count}] = f.value;

      figure u = f;
      u.id = "write_return_unmarked";
      u.name = "write() return, already shared but not marked (mark_shared not called)";
      u.value = summarize(ret_unmarked);
      u.st = status::info;
      u.target = "(no target: the caller walks the tree once)";
      u.note.clear();
      add(u);

      figure g = f;
      g.id = "write_return_future";
      g.name = "write(shared_future) return, state dict already shared";
      g.value = summarize(ret_future);
      g.st = status::info;
      g.target = "(same target; alternative overload)";
      g.note = "defers sharing and encoding to the submit thread; " +
               std::to_string(preempted_future) + " of " + std::to_string(n) + " calls preempted";
      add(g);

      figure h;
      h.id = "handoff";
      h.name = "hand-off: write() to child holding a validated descriptor";
      h.size = s;
      h.tensors = count;
      h.value = summarize(hand);
      h.baseline_label = "raw unix-socket round trip";
      h.baseline = rtt;
      h.ratio = h.value.median / rtt.median;
      h.has_ratio = true;
      double bound = 3 * rtt.median + 1e-6 * static_cast<double>(count);
      h.target = "<= 3 RTT + 1 µs/tensor = " + fmt(bound, unit::seconds);
      h.st = h.value.median <= bound ? status::met : status::missed;
      add(h);

      figure k = h;
      k.id = "handoff_future";
      k.name = "hand-off via write(shared_future)";
      k.value = summarize(hand_future);
      k.ratio = k.value.median / rtt.median;
      k.st = status::info;
      k.target = "(same target; alternative overload)";
      add(k);
    }
  }

  void flatness() {
    std::uint64_t lo = c_.sizes.front(), hi = c_.sizes.back();
    for (std::uint64_t count : {c_.few_tensors, c_.many_tensors}) {
      auto a = write_return_.find({hi, count});
      auto b = write_return_.find({lo, count});
      if (a == write_return_.end() || b == write_return_.end()) continue;
      figure f;
      f.id = "write_return_flatness";
      f.name = "write() return, " + size_label(hi) + " vs " + size_label(lo);
      f.size = hi;
      f.tensors = count;
      f.value = a->second;
      f.baseline_label = "write() return at " + size_label(lo);
      f.baseline = b->second;
      f.ratio = f.value.median / f.baseline.median;
      f.has_ratio = true;
      f.target = "<= 1.5x (flat in bytes)";
      f.st = f.ratio <= 1.5 ? status::met : status::missed;
      add(f);
    }
  }

  // ---- staging, steady state ----
  void staging_steady(std::uint64_t s, private_state& priv) {
    progress(c_, "staging, steady state: " + size_label(s));
    checkpoint_process p(process_opts(segment_for(s, c_.few_tensors, 2), false));
    stager_options so;
    so.threads = c_.threads;
    stager st(p, so);
    for (int i = 0; i < 2; ++i) st.stage(priv.sd);  // both generations allocated and faulted
    auto dst = private_buffer(s, 0);
    parallel_memcpy(dst.get(), priv.mem.get(), s, threads_);  // warm
    std::vector<double> shm, base;
    for (int r = 0; r < std::max(reps(), 3); ++r) {
      base.push_back(static_cast<double>(s) / parallel_memcpy(dst.get(), priv.mem.get(), s, threads_));
      auto t0 = mono_ns();
      auto snap = st.stage(priv.sd);
      double t = seconds_since(t0);
      snap = {};  // releases the generation
      shm.push_back(static_cast<double>(s) / t);
    }
    st.close();
    p.close();
    memcpy_time_[s] = static_cast<double>(s) / summarize(base).median;
    figure f;
    f.id = "staging_steady";
    f.name = "staging throughput, steady state (reused buffers), " + std::to_string(threads_) + " threads";
    f.size = s;
    f.tensors = c_.few_tensors;
    f.u = unit::bytes_per_second;
    f.value = summarize(shm);
    f.baseline_label = "plain memcpy, " + std::to_string(threads_) + " threads, into faulted memory";
    f.baseline = summarize(base);
    f.at_least(0.9);
    add(f);
    if (!strategy_reported_) copy_strategy_figure(s == c_.sizes.back());
  }

  // Which copy strategy the stager's automatic mode chose in this process, and why.
  void copy_strategy_figure(bool last) {
    auto c = automatic_copy_strategy();
    if (!c.decided && !last) return;  // still measuring: report after a later size
    figure f;
    f.id = "copy_strategy";
    f.name = "staging copy strategy (automatic, chosen once per process)";
    f.u = unit::bytes_per_second;
    f.note = c.reason;
    f.target = "(the faster of the two, streaming only when >= 1.05x)";
    if (!c.decided || c.memcpy_bytes_per_second == 0) {
      f.st = status::skipped;
      if (c.decided) f.note = c.reason;
      add(f);
      return;
    }
    strategy_reported_ = true;
    f.name += ": " + std::string(c.strategy == copy_strategy::streaming ? "streaming" : "memcpy");
    f.value = summarize({c.streaming_bytes_per_second});
    f.baseline_label = "memcpy, same copies";
    f.baseline = summarize({c.memcpy_bytes_per_second});
    f.ratio = f.value.median / f.baseline.median;
    f.has_ratio = true;
    f.st = status::info;
    add(f);
  }

  // ---- staging, first checkpoint ----
  void staging_first(std::uint64_t s, private_state& priv) {
    progress(c_, "staging, first checkpoint: " + size_label(s));
    std::vector<double> shm, base, create;
    for (int r = 0; r < reps(); ++r) {
      {
        fresh_shm fresh(s);
        base.push_back(static_cast<double>(s) / parallel_memcpy(fresh.p, priv.mem.get(), s, threads_));
      }
      auto t0 = mono_ns();
      checkpoint_process p(process_opts(segment_for(s, c_.few_tensors), false));
      create.push_back(seconds_since(t0));
      stager_options so;
      so.threads = c_.threads;
      stager st(p, so);
      t0 = mono_ns();
      auto snap = st.stage(priv.sd);
      shm.push_back(static_cast<double>(s) / seconds_since(t0));
      snap = {};
      st.close();
      p.close();
    }
    figure f;
    f.id = "staging_first";
    f.name = "staging throughput, first checkpoint (new process, new pool)";
    f.size = s;
    f.tensors = c_.few_tensors;
    f.u = unit::bytes_per_second;
    f.value = summarize(shm);
    f.baseline_label = "memcpy, " + std::to_string(threads_) + " threads, into fresh shared memory";
    f.baseline = summarize(base);
    f.at_least(0.9);
    add(f);

    figure g;
    g.id = "segment_create";
    g.name = "checkpoint_process construction incl. prefaulted segment (off the save path)";
    g.size = s;
    g.value = summarize(create);
    g.target = "(where the first-touch cost went)";
    g.st = status::info;
    add(g);
  }

  // ---- persist ----
  //
  // The default writer (O_DIRECT where the filesystem allows it) and the buffered writer (the
  // previous default, writer argument io=buffered) side by side, interleaved with the raw writes.
  void persist(std::uint64_t s, bool largest) {
    progress(c_, "persist: " + size_label(s));
    checkpoint_process p(process_opts(segment_for(s, c_.few_tensors), false));
    p.wait_ready();
    state_dict sd = make_shared_state(p, s, c_.few_tensors);
    auto buffered_opts = process_opts(segment_for(s, c_.few_tensors), false);
    buffered_opts.writer_args["io"] = "buffered";
    checkpoint_process pb(buffered_opts);
    pb.wait_ready();
    state_dict sdb = make_shared_state(pb, s, c_.few_tensors);
    auto src = private_buffer(s, 0x5a);
    std::vector<double> shm, shm_buffered, buffered, direct, best, hash;
    fs::path raw_file = scratch() / "raw.bin";
    volatile std::uint64_t sink = 0;
    for (int r = 0; r < reps(); ++r) {
      auto th = mono_ns();
      sink = sink + XXH3_64bits(src.get(), s);
      hash.push_back(static_cast<double>(s) / seconds_since(th));
      double b = raw_durable_write(raw_file, src.get(), s, false);
      double d = raw_durable_write(raw_file, src.get(), s, true);
      buffered.push_back(static_cast<double>(s) / b);
      direct.push_back(static_cast<double>(s) / d);
      best.push_back(static_cast<double>(s) / std::min(b, d));
      fs::path dirb = scratch() / ("persist-buffered-" + std::to_string(r));
      fs::remove_all(dirb);
      auto tb = mono_ns();
      pb.write(sdb, dirb).get();
      shm_buffered.push_back(static_cast<double>(s) / seconds_since(tb));
      fs::remove_all(dirb);
      fs::path dir = scratch() / ("persist-" + std::to_string(r));
      fs::remove_all(dir);  // a complete checkpoint of the previous size: not saved over
      auto t0 = mono_ns();
      p.write(sd, dir).get();
      shm.push_back(static_cast<double>(s) / seconds_since(t0));
      if (r + 1 < reps()) fs::remove_all(dir);
    }
    persisted_[s] = checkpoint_file_path(scratch() / ("persist-" + std::to_string(reps() - 1)), 0);
    raw_write_time_[s] = static_cast<double>(s) / summarize(best).median;
    sdb = {};
    pb.close();

    if (largest) child_rss(p, sd, s);
    sd = {};
    p.close();

    char note[256];
    std::snprintf(note, sizeof note,
                  "buffered+fsync %s, O_DIRECT %s; XXH3 checksum pass alone (one thread) %s",
                  fmt_stats(summarize(buffered), unit::bytes_per_second).c_str(),
                  fmt_stats(summarize(direct), unit::bytes_per_second).c_str(),
                  fmt_stats(summarize(hash), unit::bytes_per_second).c_str());
    figure f;
    f.id = "persist";
    f.name = "persist throughput (write() to durable, default writer, checksums on)";
    f.size = s;
    f.tensors = c_.few_tensors;
    f.u = unit::bytes_per_second;
    f.value = summarize(shm);
    f.baseline_label = "raw durable write, best of buffered+fsync and O_DIRECT";
    f.baseline = summarize(best);
    f.at_least(0.9);
    f.note = note;
    add(f);

    figure g = f;
    g.id = "persist_buffered_writer";
    g.name = "persist throughput, default writer with io=buffered (the page-cache path)";
    g.value = summarize(shm_buffered);
    g.at_least(0.9);
    g.st = status::info;
    g.target = "(the previous default, for comparison)";
    add(g);
  }

  // One more write with the child's /proc status sampled every millisecond.
  void child_rss(checkpoint_process& p, const state_dict& sd, std::uint64_t s) {
    progress(c_, "child peak RSS while writing " + size_label(s));
    int pid = p.child_pid();
    std::atomic<bool> stop{false};
    std::uint64_t peak_private = 0, peak_total = 0;
    std::thread sampler([&] {
      while (!stop.load()) {
        auto st = proc_status(pid);
        peak_private = std::max(peak_private, st["RssAnon"] + st["RssFile"]);
        peak_total = std::max(peak_total, st["VmRSS"]);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
    fs::path dir = scratch() / "rss";
    p.write(sd, dir).get();
    stop = true;
    sampler.join();
    auto st = proc_status(pid);  // right before close
    fs::remove_all(dir);
    figure f;
    f.id = "child_peak_rss";
    f.name = "child peak RSS while writing (own memory: RssAnon + RssFile, sampled 1 ms)";
    f.size = s;
    f.tensors = c_.few_tensors;
    f.u = unit::bytes;
    f.value.median = f.value.min = f.value.max = static_cast<double>(peak_private);
    f.value.n = 1;
    f.target = "<= 64 MiB";
    f.st = peak_private <= 64 * MiB ? status::met : status::missed;
    char note[256];
    std::snprintf(note, sizeof note,
                  "VmHWM %.1f MiB includes the shared segment pages it reads (RssShmem %.1f MiB "
                  "at close); those are the trainer's staged bytes, not extra memory",
                  static_cast<double>(st["VmHWM"]) / MiB, static_cast<double>(st["RssShmem"]) / MiB);
    f.note = note;
    add(f);
  }

  // ---- interference: the trainer's own speed while the child persists ----
  //
  // A compute-bound loop stands in for the trainer (compute_load.hpp): its rate while the child
  // persists a state dict already in shared memory (so no staging copy is involved) against its
  // rate with nothing else running, on one thread (a core left free for the child) and on every
  // core; and the persist's own time with and without that load. Idle windows, lone persists and
  // loaded persists alternate within each repetition so that drift hits all three alike.
  void interference(std::uint64_t s) {
    progress(c_, "interference: " + size_label(s));
    struct setup {
      writer_variant v;
      std::unique_ptr<checkpoint_process> p;
      state_dict sd;
      std::vector<double> idle, busy, alone, loaded, cpu;
    };
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    std::vector<unsigned> loads{1};
    if (cores > 1) loads.push_back(cores);
    for (unsigned threads : loads) {
      std::vector<setup> setups;
      for (const auto& name : c_.variants) {
        setup u;
        u.v = parse_variant(name);
        auto o = process_opts(segment_for(s, c_.few_tensors), false);
        for (const auto& [k, val] : u.v.writer_args) o.writer_args[k] = val;
        if (name != "default") o.priority = u.v.priority;
        u.p = std::make_unique<checkpoint_process>(o);
        u.p->wait_ready();
        u.sd = make_shared_state(*u.p, s, c_.few_tensors);
        setups.push_back(std::move(u));
      }
      // Variants interleaved within each repetition, so that drift hits all of them alike.
      for (int r = 0; r < reps(); ++r) {
        for (auto& u : setups) {
          fs::path dir = scratch() / ("interference-" + std::to_string(r));
          double cpu0 = proc_cpu_seconds(u.p->child_pid());
          auto t0 = mono_ns();
          u.p->write(u.sd, dir).get();
          double lone = seconds_since(t0);
          u.alone.push_back(lone);
          u.cpu.push_back(proc_cpu_seconds(u.p->child_pid()) - cpu0);
          fs::remove_all(dir);
          {
            // The idle window lasts as long as a persist, so both rates see the same turbo and
            // thermal state. Sleeping here is the measurement window, not a synchronisation.
            ckpt_bench::compute_load load(threads);
            std::this_thread::sleep_for(std::chrono::duration<double>(std::max(lone, 0.05)));
            u.idle.push_back(load.stop() * ckpt_bench::compute_load::flops_per_block);
          }
          {
            ckpt_bench::compute_load load(threads);
            auto t1 = mono_ns();
            u.p->write(u.sd, dir).get();
            u.loaded.push_back(seconds_since(t1));
            u.busy.push_back(load.stop() * ckpt_bench::compute_load::flops_per_block);
          }
          fs::remove_all(dir);
        }
      }
      for (auto& u : setups) {
        const bool main_variant = u.v.name == "default";
        const std::string suffix = main_variant ? "" : "@" + u.v.name;
        const std::string label = main_variant ? "" : " [" + u.v.name + "]";
        bool core_free = threads < cores;
        figure f;
        f.id = (threads == 1 ? "interference_one_thread" : "interference_all_cores") + suffix;
        f.name = "trainer compute while the child persists, " + std::to_string(threads) +
                 (threads == 1 ? " thread" : " threads") +
                 (core_free ? " (a core left free)" : " (every core busy)") + label;
        f.size = s;
        f.tensors = c_.few_tensors;
        f.u = unit::flops;
        f.value = summarize(u.busy);
        f.baseline_label = "the same loop with nothing else running";
        f.baseline = summarize(u.idle);
        f.at_least(core_free ? 0.95 : 0.90);
        add(f);

        figure g;
        g.id = (threads == 1 ? "persist_under_load_one_thread" : "persist_under_load_all_cores") +
               suffix;
        g.name = "persist time beside that trainer load, " + std::to_string(threads) +
                 (threads == 1 ? " thread" : " threads") + label;
        g.size = s;
        g.tensors = c_.few_tensors;
        g.value = summarize(u.loaded);
        g.baseline_label = "the same persist with no trainer load";
        g.baseline = summarize(u.alone);
        g.at_most(1.5);
        add(g);

        if (threads == loads.front()) {
          figure h;
          h.id = "child_cpu_per_persist" + suffix;
          h.name = "checkpoint child CPU time (user + system) per lone persist" + label;
          h.size = s;
          h.tensors = c_.few_tensors;
          h.value = summarize(u.cpu);
          h.st = status::info;
          h.target = "(what the child takes from the trainer's cores; 10 ms ticks)";
          char note[128];
          std::snprintf(note, sizeof note, "%.0f%% of the lone persist's wall time",
                        100.0 * summarize(u.cpu).median / summarize(u.alone).median);
          h.note = note;
          add(h);
        }
      }
      for (auto& u : setups) {
        u.sd = {};
        u.p->close();
      }
    }
  }

  // ---- end to end ----
  void end_to_end(std::uint64_t s, private_state& priv) {
    progress(c_, "end-to-end save: " + size_label(s));
    checkpointer_config cfg;
    cfg.process.segment_bytes = segment_for(s, c_.few_tensors, 2);
    cfg.staging.threads = c_.threads;
    auto ck = make_async_checkpointer(cfg, rank_info{});
    ck->save(scratch() / "e2e-warm", priv.sd).write.get();  // first save: child and pool warm
    fs::remove_all(scratch() / "e2e-warm");
    std::vector<double> shm;
    for (int r = 0; r < reps(); ++r) {
      fs::path dir = scratch() / ("e2e-" + std::to_string(r));
      auto t0 = mono_ns();
      auto fut = ck->save(dir, priv.sd);
      fut.write.get();
      shm.push_back(seconds_since(t0));
      fs::remove_all(dir);
    }
    ck->close();
    figure f;
    f.id = "end_to_end_save";
    f.name = "end-to-end save, private memory to durable (async_checkpointer)";
    f.size = s;
    f.tensors = c_.few_tensors;
    f.value = summarize(shm);
    f.baseline_label = "memcpy time + raw durable write time (medians above)";
    double base = memcpy_time_.count(s) ? memcpy_time_[s] + raw_write_time_[s] : 0;
    f.baseline.median = f.baseline.min = f.baseline.max = base;
    f.baseline.n = 1;
    f.has_ratio = base > 0;
    f.ratio = f.has_ratio ? f.value.median / base : 0;
    f.target = "<= 1.15x";
    f.st = !f.has_ratio ? status::skipped : f.ratio <= 1.15 ? status::met : status::missed;
    if (!f.has_ratio) f.note = "needs the staging section for its baseline";
    add(f);
  }

  // ---- load ----
  void load(std::uint64_t s, bool largest) {
    progress(c_, "load: " + size_label(s));
    const fs::path file = persisted_.at(s);
    const std::size_t per = static_cast<std::size_t>(s / c_.few_tensors);
    // Reads every byte of every tensor (a consumer of a mapped view pays the faults here).
    auto read_all = [](const state_dict& sd) {
      std::uint64_t sum = 0;
      for_each_tensor(sd, [&](const std::string&, const tensor& t) {
        const auto* w = reinterpret_cast<const std::uint64_t*>(t.data());
        for (std::size_t i = 0; i < t.nbytes() / 8; ++i) sum ^= w[i];
      });
      return sum;
    };
    read_options copy;
    copy.copy = true;
    raw_read_file(file);  // in page cache now
    std::vector<double> shm, view, base, base_one;
    volatile std::uint64_t sink = 0;
    for (int r = 0; r < std::max(reps(), 3); ++r) {
      base.push_back(static_cast<double>(s) / raw_read_tensors(file, per));
      base_one.push_back(static_cast<double>(s) / raw_read_file(file));
      auto t0 = mono_ns();
      {
        auto sd = read(file, copy);
        shm.push_back(static_cast<double>(s) / seconds_since(t0));
      }
      t0 = mono_ns();
      {
        auto sd = read(file);
        sink = sink + read_all(sd);
        view.push_back(static_cast<double>(s) / seconds_since(t0));
      }
    }
    figure f;
    f.id = "load_page_cache";
    f.name = "load, full read from page cache (read(copy=true))";
    f.size = s;
    f.tensors = c_.few_tensors;
    f.u = unit::bytes_per_second;
    f.value = summarize(shm);
    f.baseline_label = "read() of the same file, one new[] per tensor";
    f.baseline = summarize(base);
    f.at_least(0.9);
    f.note = "read() into one fresh mmap'd buffer: " + fmt_stats(summarize(base_one), unit::bytes_per_second);
    add(f);

    figure g = f;
    g.id = "load_view_touch";
    g.name = "load from page cache, default mapped view, every byte read by the caller";
    g.value = summarize(view);
    g.ratio = g.value.median / g.baseline.median;
    g.st = status::info;
    g.note.clear();
    add(g);

    if (!largest) return;
    figure cold;
    cold.id = "load_cold";
    cold.name = "load from disk, cold cache (read(copy=true))";
    cold.size = s;
    cold.tensors = c_.few_tensors;
    cold.u = unit::bytes_per_second;
    cold.baseline_label = "read() of the same file, one new[] per tensor, cold cache";
    cold.target = ">= 0.9x";
    if (!can_drop_caches()) {
      cold.st = status::skipped;
      cold.note = "needs root to drop the page cache";
      add(cold);
      return;
    }
    progress(c_, "load, cold cache: " + size_label(s));
    std::vector<double> cshm, cbase;
    for (int r = 0; r < std::max(reps() / 2, 1) + (c_.smoke ? 0 : 1); ++r) {
      drop_caches();
      cbase.push_back(static_cast<double>(s) / raw_read_tensors(file, static_cast<std::size_t>(s / c_.few_tensors)));
      drop_caches();
      auto t0 = mono_ns();
      {
        auto sd = read(file, copy);
        cshm.push_back(static_cast<double>(s) / seconds_since(t0));
      }
    }
    cold.value = summarize(cshm);
    cold.baseline = summarize(cbase);
    cold.ratio = cold.value.median / cold.baseline.median;
    cold.has_ratio = true;
    cold.st = cold.ratio >= 0.9 ? status::met : status::missed;
    add(cold);
  }

  // ---- open a checkpoint of many tensors ----
  void open_many() {
    std::uint64_t count = c_.many_tensors;
    progress(c_, "open a checkpoint of " + std::to_string(count) + " tensors");
    std::uint64_t bytes = count * 256;
    auto priv = make_private_state(bytes, count);
    fs::path file = scratch() / "many.safetensors";
    write_safetensors(file, priv.sd);
    std::vector<double> t;
    for (int r = 0; r < std::max(reps(), 5); ++r) {
      auto t0 = mono_ns();
      auto sd = read(file);
      t.push_back(seconds_since(t0));
    }
    fs::remove(file);
    figure f;
    f.id = "open_many_tensors";
    f.name = "open a checkpoint (header parsed, tree rebuilt, tensors mapped)";
    f.size = bytes;
    f.tensors = count;
    f.value = summarize(t);
    f.target = "<= 50 ms";
    f.st = f.value.median <= 50e-3 ? status::met : status::missed;
    add(f);
  }

  // ---- parent memory beyond the staged bytes ----
  void parent_memory(std::uint64_t s, private_state& priv) {
    progress(c_, "parent extra memory: " + size_label(s));
    // One generation in a segment sized to it: the smallest configuration for one save.
    std::size_t seg = static_cast<std::size_t>(s + 4 * MiB);
    auto before = proc_status(0)["VmRSS"];
    bool reset = reset_own_peak_rss();
    std::uint64_t hwm = 0;
    {
      checkpointer_config cfg;
      cfg.process.segment_bytes = seg;
      cfg.staging.threads = c_.threads;
      cfg.staging.generations = 1;
      auto ck = make_async_checkpointer(cfg, rank_info{});
      ck->save(scratch() / "mem", priv.sd).write.get();
      hwm = proc_status(0)["VmHWM"];
      ck->close();
    }
    fs::remove_all(scratch() / "mem");
    double extra = static_cast<double>(hwm) - static_cast<double>(before) - static_cast<double>(s);
    double limit = 0.05 * static_cast<double>(s) + 16.0 * MiB;
    figure f;
    f.id = "parent_extra_memory";
    f.name = "parent extra memory beyond the staged bytes (peak RSS growth − staged bytes)";
    f.size = s;
    f.tensors = c_.few_tensors;
    f.u = unit::bytes;
    f.value.median = f.value.min = f.value.max = extra;
    f.value.n = 1;
    f.target = "<= 5% + 16 MiB = " + fmt(limit, unit::bytes);
    f.st = reset ? (extra <= limit ? status::met : status::missed) : status::skipped;
    f.note = "segment_bytes = staged + 4 MiB, one generation; double buffering doubles the staged bytes by design";
    if (!reset) f.note = "cannot reset the peak RSS (/proc/self/clear_refs)";
    add(f);
  }

  config c_;
  echo_peer& echo_;
  std::size_t threads_ = 1;
  stats raw_rtt_;
  std::vector<figure> figs_;
  std::map<std::pair<std::uint64_t, std::uint64_t>, stats> write_return_;
  std::map<std::uint64_t, double> memcpy_time_, raw_write_time_;
  std::map<std::uint64_t, fs::path> persisted_;
};

// ---- output ---------------------------------------------------------------------------------------

std::string machine_summary(const fs::path& dir) {
  std::ostringstream o;
  std::string cpu = read_first_line_with("/proc/cpuinfo", "model name");
  if (auto c = cpu.find(':'); c != std::string::npos) cpu = cpu.substr(c + 2);
  std::string mem = read_first_line_with("/proc/meminfo", "MemTotal:");
  utsname u{};
  ::uname(&u);
  o << std::thread::hardware_concurrency() << " CPUs (" << cpu << "), "
    << mem.substr(mem.find_first_not_of(" ", 9)) << " RAM, Linux " << u.release << ", scratch "
    << dir.string() << " on " << fs_type_name(dir);
  return o.str();
}

json::object stats_json(const stats& s) {
  return {{"median", s.median}, {"min", s.min}, {"max", s.max}, {"n", s.n}};
}

void print_json(const std::vector<figure>& figs, const std::string& command,
                const std::string& machine, const config& c, double wall) {
  json::array arr;
  for (const auto& f : figs) {
    json::object o{{"id", f.id}, {"figure", f.name}, {"unit", unit_name(f.u)},
                   {"target", f.target}, {"status", status_name(f.st)}};
    if (f.size) o["size_bytes"] = f.size;
    if (f.tensors) o["tensors"] = f.tensors;
    if (f.value.n) o["value"] = stats_json(f.value);
    if (!f.baseline_label.empty()) {
      json::object b = stats_json(f.baseline);
      b["label"] = f.baseline_label;
      o["baseline"] = b;
    }
    if (f.has_ratio) o["ratio"] = f.ratio;
    if (!f.note.empty()) o["note"] = f.note;
    arr.push_back(std::move(o));
  }
  json::array sizes;
  for (auto s : c.sizes) sizes.push_back(s);
  json::object root{{"command", command}, {"machine", machine}, {"reps", c.reps},
                    {"sizes", sizes},     {"wall_seconds", wall}, {"figures", arr}};
  std::cout << json::serialize(root) << "\n";
}

void print_table(const std::vector<figure>& figs, const std::string& command,
                 const std::string& machine, double wall) {
  std::cout << "command: " << command << "\nmachine: " << machine << "\n\n";
  std::cout << "| shmckpt figure | size | shmckpt: median [min–max] | measured against (same run) "
               "| ratio | target | status |\n|---|---|---|---|---|---|---|\n";
  for (const auto& f : figs) {
    std::string size = f.size ? size_label(f.size) : "";
    if (f.tensors) size += (size.empty() ? "" : ", ") + std::to_string(f.tensors) + " t";
    std::string base = f.baseline_label.empty() ? "—" : f.baseline_label + ": " + fmt_stats(f.baseline, f.u);
    std::string ratio = f.has_ratio ? fmt(f.ratio, unit::ratio) : "—";
    std::string value = f.value.n ? fmt_stats(f.value, f.u) : "—";
    std::cout << "| " << f.name << " | " << size << " | " << value << " | " << base << " | "
              << ratio << " | " << f.target << " | " << status_name(f.st)
              << (f.note.empty() ? "" : " — " + f.note) << " |\n";
  }
  std::printf("\nwall time: %.1f s\n", wall);
}

// Removes the scratch directory on every exit path.
struct scratch_guard {
  fs::path p;
  ~scratch_guard() {
    std::error_code ec;
    if (!p.empty()) fs::remove_all(p, ec);
  }
};

}  // namespace

int main(int argc, char** argv) {
  register_writer_factory("bench-stamp", [](const kwargs&) -> std::unique_ptr<checkpoint_writer> {
    return std::make_unique<stamp_writer>();
  });
  run_worker_if_requested(argc, argv);

  config c;
  std::string sizes_text, dir_text;
  po::options_description desc(
      "ckpt-bench: every shmckpt performance figure next to its baseline, from one run");
  desc.add_options()
      ("help,h", "this help")
      ("sizes", po::value(&sizes_text)->default_value("64M,256M,1G"), "state-dict sizes, comma separated")
      ("reps", po::value(&c.reps)->default_value(5), "repetitions of every heavy measurement")
      ("dir", po::value(&dir_text), "scratch directory (default: the system temp directory)")
      ("threads", po::value(&c.threads)->default_value(0), "stager copy threads (0: library default)")
      ("smoke", po::bool_switch(&c.smoke), "tiny sizes, one repetition (for CTest)")
      ("json", po::bool_switch(&c.json), "print JSON instead of the table")
      ("only", po::value(&c.only)->multitoken(),
       "run only these sections (startup ping open handoff staging persist e2e load memory interference)")
      ("variants", po::value(&c.variants)->multitoken(),
       "writer set-ups the interference section compares (default: buffered default); each is "
       "default, buffered or direct, then +nice<N> +batch +idle +normal +ioidle +iobe<L> +cpu<N>");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
    if (vm.count("help")) {
      std::cout << desc << "\n";
      return 0;
    }
    if (c.smoke) {
      if (vm["sizes"].defaulted()) sizes_text = "1M,4M";
      if (vm["reps"].defaulted()) c.reps = 1;
      c.latency_samples = 40;
    }
    for (const auto& v : c.variants) parse_variant(v);  // reject a bad one before running
    std::stringstream ss(sizes_text);
    for (std::string part; std::getline(ss, part, ',');)
      if (!part.empty()) c.sizes.push_back(parse_size(part));
    std::sort(c.sizes.begin(), c.sizes.end());
    if (c.sizes.empty()) throw std::invalid_argument("--sizes is empty");
    if (c.reps < 1) throw std::invalid_argument("--reps must be at least 1");
    for (auto s : c.sizes)
      if (s % (c.many_tensors * 4) != 0)
        throw std::invalid_argument("size " + std::to_string(s) + " is not a multiple of " +
                                    std::to_string(c.many_tensors * 4) +
                                    " bytes (it is split into up to 65536 F32 tensors)");
  } catch (const std::exception& e) {
    std::cerr << "ckpt-bench: " << e.what() << "\n" << desc << "\n";
    return 2;
  }

  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);

  try {
    // Before any thread exists: fork() is only safe now.
    echo_peer echo;
    fs::path root = dir_text.empty() ? fs::temp_directory_path() : fs::path(dir_text);
    scratch_guard guard{root / ("ckpt-bench." + std::to_string(::getpid()))};
    fs::create_directories(guard.p);
    c.dir = guard.p;
    std::string machine = machine_summary(root);
    auto t0 = mono_ns();
    bench b(c, echo);
    b.run();
    double wall = seconds_since(t0);
    if (c.json) print_json(b.figures(), command, machine, c, wall);
    else print_table(b.figures(), command, machine, wall);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "ckpt-bench: " << e.what() << "\n";
    return 1;
  }
}
