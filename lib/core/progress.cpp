#include "core/progress.hpp"

#include <mutex>
#include <utility>

namespace shmckpt::detail {
namespace {
std::mutex g_lock;
std::function<void(std::string_view)> g_reporter;
}  // namespace

void report_progress(std::string_view what) noexcept {
  std::function<void(std::string_view)> fn;
  {
    std::lock_guard g(g_lock);
    fn = g_reporter;
  }
  if (!fn) return;
  try {
    fn(what);
  } catch (...) {
    // A reporter that fails must not fail the write it reports on.
  }
}

std::function<void(std::string_view)> set_progress_reporter(
    std::function<void(std::string_view)> fn) {
  std::lock_guard g(g_lock);
  return std::exchange(g_reporter, std::move(fn));
}

}  // namespace shmckpt::detail
