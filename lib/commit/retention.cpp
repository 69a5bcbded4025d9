// Retention (shmckpt/checkpoint_dir.hpp): temporary files of gone writers, the newest complete
// checkpoint, and keeping the last N.
#include <algorithm>

#include "core/util.hpp"
#include "format/layout.hpp"
#include "io/temp_file.hpp"
#include "shmckpt/checkpoint_dir.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt {

namespace fs = std::filesystem;

std::vector<temp_file_state> temp_files(const fs::path& dir) {
  reject_nul(dir, "checkpoint directory");
  std::vector<temp_file_state> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!detail::is_temp_name(e.path().filename().string()) || !e.is_regular_file(ec)) continue;
    temp_file_state t;
    t.path = e.path();
    t.bytes = e.file_size(ec);
    if (ec) continue;  // gone meanwhile
    t.stale = detail::probe_temp(e.path()) == detail::temp_owner::gone;
    out.push_back(std::move(t));
  }
  std::sort(out.begin(), out.end(),
            [](const temp_file_state& a, const temp_file_state& b) { return a.path < b.path; });
  return out;
}

std::vector<fs::path> remove_stale_temp_files(const fs::path& dir) {
  reject_nul(dir, "checkpoint directory");
  std::vector<fs::path> removed;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!detail::is_temp_name(e.path().filename().string())) continue;
    if (detail::remove_if_stale(e.path())) removed.push_back(e.path());
  }
  return removed;
}

namespace {

// Complete checkpoints under root, oldest first (manifest time, then name). A directory with
// something named like a manifest that cannot be read or does not match its files is skipped
// and, when `skipped` is given, reported there; one without a manifest is merely incomplete.
std::vector<fs::path> complete_checkpoints(const fs::path& root, std::vector<std::string>* skipped) {
  std::vector<std::pair<fs::file_time_type, fs::path>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (!e.is_directory(ec)) continue;
    std::error_code mec;
    if (!fs::exists(fs::symlink_status(e.path() / manifest_name, mec))) continue;  // incomplete
    try {
      verify_checkpoint(e.path());
    } catch (const error& x) {
      if (skipped) skipped->push_back(x.what());
      continue;
    }
    found.emplace_back(fs::last_write_time(e.path() / manifest_name, ec), e.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

}  // namespace

std::optional<fs::path> latest_checkpoint(const fs::path& root, std::vector<std::string>* skipped) {
  reject_nul(root, "checkpoint root");
  auto all = complete_checkpoints(root, skipped);
  if (all.empty()) return std::nullopt;
  return all.back();
}

std::vector<fs::path> keep_last(const fs::path& root, std::size_t keep,
                                std::vector<std::string>* skipped) {
  reject_nul(root, "checkpoint root");
  auto complete = complete_checkpoints(root, skipped);
  std::vector<fs::path> removed;
  if (complete.empty()) return removed;  // nothing known good: delete nothing
  keep = std::max<std::size_t>(keep, 1);
  std::error_code ec;
  auto newest_time = fs::last_write_time(complete.back() / manifest_name, ec);
  for (std::size_t i = 0; i + keep < complete.size(); ++i) {
    fs::remove_all(complete[i], ec);
    if (!ec) removed.push_back(complete[i]);
  }
  // Incomplete directories that hold rank files (or a dead writer's temporary file) and predate
  // the newest complete one are leftovers of failed saves. Newer ones may still be in progress:
  // leave them, but remove what dead writers left in them.
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (!e.is_directory(ec)) continue;
    if (is_complete(e.path())) {
      remove_stale_temp_files(e.path());
      continue;
    }
    std::error_code mec;
    if (fs::exists(fs::symlink_status(e.path() / manifest_name, mec)))
      continue;  // a manifest it could not verify: reported by the scan above, never deleted
    auto mtime = fs::last_write_time(e.path(), ec);  // before removing anything in it
    if (ec) continue;
    bool leftover = !remove_stale_temp_files(e.path()).empty();
    for (const auto& f : fs::directory_iterator(e.path(), ec))
      if (f.path().filename().string().starts_with(detail::rank_file_prefix)) leftover = true;
    if (leftover && mtime < newest_time) {
      fs::remove_all(e.path(), ec);
      if (!ec) removed.push_back(e.path());
    }
  }
  return removed;
}

}  // namespace shmckpt
