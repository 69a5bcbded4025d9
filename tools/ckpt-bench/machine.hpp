// machine — what ckpt-bench reads about the machine and its processes from /proc and /sys.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

namespace ckpt_bench {

/// CPU time (user + system, all threads) of process `pid` in seconds; 0 when unreadable.
double proc_cpu_seconds(int pid);

/// Fields of /proc/<pid>/status given in kB, in bytes ("VmHWM", "RssAnon", ...); pid 0: this
/// process. Empty when unreadable.
std::map<std::string, std::uint64_t> proc_status(int pid);

/// Resets this process's peak RSS (VmHWM) through /proc/self/clear_refs; false when refused.
bool reset_own_peak_rss();

/// Whether drop_caches() can work (root, /proc/sys/vm/drop_caches writable).
bool can_drop_caches();
/// sync, then drops the page cache, dentries and inodes.
void drop_caches();

/// One line: CPUs and model, RAM, kernel, and the filesystem of `scratch`.
std::string machine_summary(const std::filesystem::path& scratch);

}  // namespace ckpt_bench
