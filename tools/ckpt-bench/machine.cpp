// machine.cpp — see machine.hpp.
#include "machine.hpp"

#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "stats.hpp"

namespace fs = std::filesystem;

namespace ckpt_bench {

namespace {

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
    case 0xEF53:
      return "ext4";
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x794c7630:
      return "overlayfs";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(st.f_type));
      return buf;
    }
  }
}

}  // namespace

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

// The bracketed choice of a sysfs setting such as "always [madvise] never", or "" without one.
std::string chosen_setting(const char* path) {
  std::ifstream in(path);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto a = all.find('['), b = all.find(']');
  return a == std::string::npos || b == std::string::npos || b < a ? ""
                                                                    : all.substr(a + 1, b - a - 1);
}

// Two settings that move the figures by several times on the machines measured
// (docs/benchmarks.md): whether shared memory gets transparent huge pages (the segment asks
// for them), and how long an idle vCPU of a KVM guest polls before it halts (each wake-up of a
// halted vCPU is an interrupt the hypervisor delivers).
std::string memory_and_idle_settings() {
  std::string out;
  std::string shmem = chosen_setting("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  if (!shmem.empty()) out += ", shmem huge pages " + shmem;
  std::ifstream poll("/sys/module/haltpoll/parameters/guest_halt_poll_ns");
  std::string ns;
  if (poll >> ns) out += ", guest halt polling " + ns + " ns";
  return out;
}

std::string machine_summary(const fs::path& dir) {
  std::ostringstream o;
  std::string cpu = read_first_line_with("/proc/cpuinfo", "model name");
  if (auto c = cpu.find(':'); c != std::string::npos) cpu = cpu.substr(c + 2);
  std::string mem = read_first_line_with("/proc/meminfo", "MemTotal:");
  utsname u{};
  ::uname(&u);
  o << std::thread::hardware_concurrency() << " CPUs (" << cpu << "), "
    << mem.substr(mem.find_first_not_of(" ", 9)) << " RAM, Linux " << u.release << ", scratch "
    << dir.string() << " on " << fs_type_name(dir) << memory_and_idle_settings();
  return o.str();
}

}  // namespace ckpt_bench
