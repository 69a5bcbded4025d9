// priority.cpp — see priority.hpp.
#include "child/priority.hpp"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <system_error>

#include "shmckpt/error.hpp"

namespace shmckpt::detail {
namespace {

// From linux/ioprio.h, which Debian 12's headers lack.
constexpr int ioprio_class_shift = 13;
constexpr int ioprio_class_be = 2;
constexpr int ioprio_class_idle = 3;
constexpr int ioprio_who_process = 1;

std::string cpu_list(const std::vector<int>& cpus) {
  std::string s;
  for (int c : cpus) s += (s.empty() ? "" : ",") + std::to_string(c);
  return s;
}

int to_int(std::string_view flag, const char* text) {
  std::size_t used = 0;
  int v = std::stoi(text, &used);
  if (text[used] != '\0')
    throw std::invalid_argument(std::string(flag) + " takes an integer, not '" + text + "'");
  return v;
}

const char* policy_name(child_cpu_policy p) {
  switch (p) {
    case child_cpu_policy::normal: return "normal";
    case child_cpu_policy::batch: return "batch";
    case child_cpu_policy::idle: return "idle";
    case child_cpu_policy::inherit: break;
  }
  return "inherit";
}

std::string os_message(int err) { return std::system_category().message(err); }

}  // namespace

void validate_priority(const child_priority& p) {
  if (p.nice < -20 || p.nice > 19)
    throw_error(errc::invalid_argument, "child_priority::nice is " + std::to_string(p.nice) +
                                            ", not within -20..19");
  if (p.io_level < 0 || p.io_level > 7)
    throw_error(errc::invalid_argument, "child_priority::io_level is " +
                                            std::to_string(p.io_level) + ", not within 0..7");
  for (int c : p.cpus)
    if (c < 0 || c >= CPU_SETSIZE)
      throw_error(errc::invalid_argument, "child_priority::cpus holds " + std::to_string(c) +
                                              ", not a CPU number (0.." +
                                              std::to_string(CPU_SETSIZE - 1) + ")");
}

std::vector<std::string> priority_args(const child_priority& p) {
  std::vector<std::string> a;
  if (p.nice != 0) a.insert(a.end(), {"--nice", std::to_string(p.nice)});
  if (p.policy != child_cpu_policy::inherit) a.insert(a.end(), {"--sched", policy_name(p.policy)});
  if (p.io_class == child_io_class::best_effort)
    a.insert(a.end(), {"--io-class", "best-effort", "--io-level", std::to_string(p.io_level)});
  if (p.io_class == child_io_class::idle) a.insert(a.end(), {"--io-class", "idle"});
  if (!p.cpus.empty()) a.insert(a.end(), {"--cpus", cpu_list(p.cpus)});
  return a;
}

bool parse_priority_arg(int argc, char** argv, int& i, child_priority& p) {
  std::string_view flag = argv[i];
  if (flag != "--nice" && flag != "--sched" && flag != "--io-class" && flag != "--io-level" &&
      flag != "--cpus")
    return false;
  if (i + 1 >= argc) throw std::invalid_argument(std::string(flag) + " needs a value");
  const char* v = argv[++i];
  std::string_view s = v;
  if (flag == "--nice") {
    p.nice = to_int(flag, v);
  } else if (flag == "--sched") {
    if (s == "normal") p.policy = child_cpu_policy::normal;
    else if (s == "batch") p.policy = child_cpu_policy::batch;
    else if (s == "idle") p.policy = child_cpu_policy::idle;
    else throw std::invalid_argument("--sched takes normal, batch or idle, not '" + std::string(s) + "'");
  } else if (flag == "--io-class") {
    if (s == "best-effort") p.io_class = child_io_class::best_effort;
    else if (s == "idle") p.io_class = child_io_class::idle;
    else throw std::invalid_argument("--io-class takes best-effort or idle, not '" + std::string(s) + "'");
  } else if (flag == "--io-level") {
    p.io_level = to_int(flag, v);
  } else {
    p.cpus.clear();
    std::string list(s);
    for (std::size_t at = 0; at <= list.size();) {
      std::size_t comma = std::min(list.find(',', at), list.size());
      p.cpus.push_back(to_int(flag, list.substr(at, comma - at).c_str()));
      at = comma + 1;
    }
  }
  return true;
}

std::string apply_priority(const child_priority& p) {
  // The policy first: leaving SCHED_IDLE or an RT policy resets nothing we set afterwards.
  if (p.policy != child_cpu_policy::inherit) {
    int policy = p.policy == child_cpu_policy::batch  ? SCHED_BATCH
                 : p.policy == child_cpu_policy::idle ? SCHED_IDLE
                                                      : SCHED_OTHER;
    sched_param sp{};
    if (::sched_setscheduler(0, policy, &sp) != 0)
      return std::string("cannot set the checkpoint child's scheduling policy to ") +
             policy_name(p.policy) + ": " + os_message(errno);
  }
  if (p.nice != 0) {
    errno = 0;
    int now = ::getpriority(PRIO_PROCESS, 0);
    if (now == -1 && errno != 0)
      return "cannot read the checkpoint child's nice value: " + os_message(errno);
    int want = std::clamp(now + p.nice, -20, 19);
    if (::setpriority(PRIO_PROCESS, 0, want) != 0)
      return "cannot set the checkpoint child's nice value to " + std::to_string(want) + ": " +
             os_message(errno) +
             (errno == EACCES || errno == EPERM ? " (a negative nice needs CAP_SYS_NICE)" : "");
  }
  if (p.io_class != child_io_class::inherit) {
    int value = p.io_class == child_io_class::idle
                    ? ioprio_class_idle << ioprio_class_shift
                    : (ioprio_class_be << ioprio_class_shift) | p.io_level;
    if (::syscall(SYS_ioprio_set, ioprio_who_process, 0, value) != 0)
      return std::string("cannot set the checkpoint child's I/O class to ") +
             (p.io_class == child_io_class::idle ? "idle" : "best-effort") + ": " +
             os_message(errno);
  }
  if (!p.cpus.empty()) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c : p.cpus)
      if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &set);
    if (::sched_setaffinity(0, sizeof set, &set) != 0)
      return "cannot set the checkpoint child's CPU affinity to " + cpu_list(p.cpus) + ": " +
             os_message(errno);
  }
  return {};
}

}  // namespace shmckpt::detail
