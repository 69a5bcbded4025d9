// The file barrier (shmckpt/commit.hpp): ranks meet through `<dir>/.commit/<rank>` on the
// filesystem they share. Each rank publishes its arrival durably; rank 0 opens the arrivals of
// the ranks it still waits for by exact name, checks each against the file on disk, and returns
// them all; the other ranks wait until a manifest lists their own file of this round.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "commit/manifest.hpp"
#include "core/progress.hpp"
#include "format/layout.hpp"
#include "io/regular_file.hpp"
#include "io/temp_file.hpp"
#include "shmckpt/commit.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view commit_dir = detail::commit_dir_name;
constexpr std::uint64_t arrival_cap = 1u << 20;  // an arrival is one small JSON object

std::vector<int> missing_ranks(const std::set<int>& present, int world) {
  std::vector<int> out;
  for (int r = 0; r < world; ++r)
    if (!present.count(r)) out.push_back(r);
  return out;
}

// The arrivals of `ranks` present in `cdir`, by rank (unparsed). Each is opened by its exact
// name, never found through a directory listing: network filesystems revalidate a name on open
// (NFS close-to-open), while a listing may come from a client cache that is seconds old.
std::map<int, std::string> read_arrivals(const fs::path& cdir, const std::vector<int>& ranks) {
  std::map<int, std::string> out;
  for (int r : ranks) {
    try {
      if (auto text = detail::read_small_regular_file(cdir / std::to_string(r), arrival_cap, "arrival"))
        out.emplace(r, std::move(*text));
    } catch (const error&) {
      // Replaced or removed while read (rename is atomic on POSIX; NFS may lag): next poll.
    }
  }
  return out;
}

std::vector<int> all_ranks(int world) {
  std::vector<int> out;
  for (int r = 0; r < world; ++r) out.push_back(r);
  return out;
}

class file_barrier final : public barrier {
 public:
  void begin(const fs::path& dir, rank_info rank) override {
    if (rank.rank != 0) return;
    // Arrivals of earlier rounds must not count in this one. Ranks of this round that arrived
    // before this point re-create theirs while they wait (see arrive).
    auto cdir = dir / commit_dir;
    // By name (see read_arrivals); a .commit/ that does not exist has nothing to clear.
    std::error_code ec;
    if (!fs::is_directory(cdir, ec)) return;
    for (int r = 0; r < rank.world_size; ++r) {
      auto p = cdir / std::to_string(r);
      if (::unlink(p.c_str()) != 0 && errno != ENOENT)
        detail::commit_os_fail("cannot clear the arrival of an earlier round", p, errno);
    }
    remove_stale_temp_files(cdir);
  }

  std::vector<rank_file> arrive(const fs::path& dir, const rank_file& me, rank_info rank,
                                std::chrono::milliseconds timeout) override {
    if (rank.world_size == 1) return {me};
    auto cdir = dir / commit_dir;
    const auto mine = cdir / std::to_string(rank.rank);
    const std::string text = detail::rank_file_json(me);
    auto publish = [&] {
      std::error_code ec;
      fs::create_directories(cdir, ec);
      if (ec && !fs::is_directory(cdir))
        detail::commit_os_fail("cannot create the commit directory", cdir, ec.value());
      detail::publish_commit_file(mine, text, /*missing_directory_ok=*/true);  // removed meanwhile: next poll re-creates
    };
    publish();
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = detail::commit_poll_first;
    // Rank 0: what each arrival said and whether it matched the file on disk.
    std::map<int, std::pair<std::string, std::optional<rank_file>>> checked;
    std::map<int, std::string> mismatch;  // rank -> why its arrival was not accepted
    for (;;) {
      std::vector<int> waiting_for;
      if (rank.rank != 0) {
        if (detail::manifest_lists(dir, me, rank.world_size)) {
          // Our round is committed. Our arrival may have been re-created after rank 0 cleaned
          // up; leave nothing behind.
          if (auto t = slurp_quiet(mine); t && *t == text) ::unlink(mine.c_str());
          ::rmdir(cdir.c_str());
          return {};
        }
        std::error_code ec;
        if (!fs::exists(mine, ec)) publish();  // cleared by rank 0 at the start of its save
      } else {
        // Only the ranks not yet counted are looked at: one open by name each.
        std::vector<int> open;
        for (int r = 1; r < rank.world_size; ++r)
          if (auto c = checked.find(r); c == checked.end() || !c->second.second) open.push_back(r);
        auto arrivals = read_arrivals(cdir, open);
        std::vector<rank_file> all{me};
        for (int r = 1; r < rank.world_size; ++r) {
          if (auto c = checked.find(r); c != checked.end() && c->second.second) {
            all.push_back(*c->second.second);
            continue;
          }
          auto it = arrivals.find(r);
          if (it == arrivals.end()) {
            waiting_for.push_back(r);
            continue;
          }
          auto& c = checked[r];
          // A new arrival is checked once; one that did not match is checked again each poll
          // (its rank may be re-sending it, or the filesystem may lag behind a rename).
          c = {it->second, check_arrival_text(dir, r, it->second, mismatch)};
          if (c.second)
            all.push_back(*c.second);
          else
            waiting_for.push_back(r);
        }
        if (waiting_for.empty()) return all;
        detail::report_progress("waiting at the commit barrier of " + dir.string() +
                                " for rank(s) " + detail::rank_list(waiting_for));
      }
      if (rank.rank != 0)
        detail::report_progress("waiting at the commit barrier of " + dir.string() +
                                " for rank 0 to publish the manifest");
      if (std::chrono::steady_clock::now() >= deadline) timed_out(dir, cdir, rank, timeout, mismatch);
      std::this_thread::sleep_for(pause);  // polling a shared filesystem: no event to wait on
      pause = std::min<std::chrono::milliseconds>(pause * 2, detail::commit_poll_max);
    }
  }

 private:
  static std::optional<std::string> slurp_quiet(const fs::path& p) {
    try {
      return detail::read_small_regular_file(p, arrival_cap, "arrival");
    } catch (const error&) {
      return std::nullopt;
    }
  }

  // Rank 0: the arrival of rank `r`, if it describes the file on disk now.
  static std::optional<rank_file> check_arrival_text(const fs::path& dir, int r,
                                                     const std::string& text,
                                                     std::map<int, std::string>& mismatch) {
    rank_file a;
    try {
      a = detail::rank_file_from_json(text, (dir / commit_dir / std::to_string(r)).string());
    } catch (const std::exception& e) {
      mismatch[r] = e.what();
      return std::nullopt;
    }
    std::string why;
    auto ok = detail::check_arrival(dir, r, a, why);
    if (ok)
      mismatch.erase(r);
    else
      mismatch[r] = why;
    return ok;
  }

  [[noreturn]] static void timed_out(const fs::path& dir, const fs::path& cdir, rank_info rank,
                                     std::chrono::milliseconds timeout,
                                     const std::map<int, std::string>& mismatch) {
    // Ranks re-create an arrival that rank 0 cleared within one poll interval: give those in
    // flight a moment, so that the message names only ranks that really never arrived.
    if (rank.rank != 0) std::this_thread::sleep_for(2 * detail::commit_poll_max);
    std::set<int> present;
    for (auto& [r, t] : read_arrivals(cdir, all_ranks(rank.world_size)))
      if (!mismatch.count(r)) present.insert(r);
    present.insert(rank.rank);
    auto missing = missing_ranks(present, rank.world_size);
    std::string what = "commit barrier in '" + dir.string() + "' timed out after " +
                       std::to_string(timeout.count()) + " ms: ";
    if (!missing.empty())
      what += "rank(s) " + detail::rank_list(missing) + " of " + std::to_string(rank.world_size) +
              " never arrived (their trainer or checkpoint child failed or is stuck)";
    else
      what += "every rank arrived but rank 0 did not publish the manifest (it failed or is "
              "stuck)";
    for (const auto& [r, why] : mismatch) {
      what += "; rank " + std::to_string(r) + " was not counted: " + why;
      break;  // one example is enough
    }
    throw error(errc::timeout, what + "; the checkpoint is incomplete and no manifest was published");
  }
};

}  // namespace

std::unique_ptr<barrier> make_file_barrier() { return std::make_unique<file_barrier>(); }


}  // namespace shmckpt
