#include "shmckpt/commit.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "shmckpt/error.hpp"
#include "util.hpp"

namespace shmckpt {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

constexpr const char* commit_dir = ".commit";
// Polling the shared filesystem: start fast for a local disk, back off to spare NFS servers.
constexpr auto poll_first = 2ms;
constexpr auto poll_max = 200ms;

[[noreturn]] void os_fail(const std::string& what, const fs::path& p) {
  throw_error(errc::io_error, what + " '" + p.string() + "': " + std::strerror(errno));
}

void fsync_path(const fs::path& p, bool directory) {
  unique_fd fd(::open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC));
  if (!fd) os_fail("cannot open for fsync", p);
  if (::fsync(fd.get()) != 0) os_fail("cannot fsync", p);
}

// Writes `text` to `target` atomically and durably.
void publish_file(const fs::path& target, const std::string& text) {
  auto tmp = target;
  tmp += ".tmp." + std::to_string(::getpid());
  {
    unique_fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) os_fail("cannot create", tmp);
    std::size_t off = 0;
    while (off < text.size()) {
      ssize_t n = ::write(fd.get(), text.data() + off, text.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        errno = e;
        os_fail("cannot write", tmp);
      }
      off += static_cast<std::size_t>(n);
    }
    if (::fsync(fd.get()) != 0) {
      ::unlink(tmp.c_str());
      os_fail("cannot fsync", tmp);
    }
  }
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    errno = e;
    os_fail("cannot rename into place", target);
  }
  fsync_path(target.parent_path(), true);
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json::object to_json(const rank_file& r) {
  return {{"rank", r.rank}, {"file", r.file}, {"bytes", r.bytes}, {"checksum", r.checksum}};
}

rank_file rank_file_from(const json::value& v, const std::string& where) {
  try {
    const auto& o = v.as_object();
    rank_file r;
    r.rank = static_cast<int>(o.at("rank").to_number<std::int64_t>());
    r.file = std::string(o.at("file").as_string());
    r.bytes = o.at("bytes").to_number<std::uint64_t>();
    r.checksum = std::string(o.at("checksum").as_string());
    if (r.file.empty() || r.file.find('/') != std::string::npos || r.file == "." ||
        r.file == "..")
      throw std::runtime_error("file name '" + r.file + "' is not a plain name");
    return r;
  } catch (const std::exception& e) {
    throw error(errc::corrupt_data, where + ": malformed rank entry: " + e.what());
  }
}

std::string missing_ranks(const std::set<int>& present, int world) {
  std::string out;
  int shown = 0, missing = 0;
  for (int r = 0; r < world; ++r)
    if (!present.count(r)) {
      ++missing;
      if (shown < 16) out += (shown++ ? ", " : "") + std::to_string(r);
    }
  if (missing > shown) out += ", ... (" + std::to_string(missing) + " in all)";
  return out;
}

class file_barrier final : public barrier {
 public:
  std::vector<rank_file> arrive(const fs::path& dir, const rank_file& me, rank_info rank,
                                std::chrono::milliseconds timeout) override {
    auto cdir = dir / commit_dir;
    std::error_code ec;
    fs::create_directories(cdir, ec);
    if (ec)
      throw_error(errc::io_error, "cannot create the commit directory '" + cdir.string() +
                                      "': " + ec.message());
    publish_file(cdir / std::to_string(rank.rank), json::serialize(to_json(me)));
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::milliseconds(poll_first);
    const auto mine = cdir / std::to_string(rank.rank);
    for (;;) {
      // Rank 0 removes the arrivals once it has published the manifest: if ours is gone, the
      // round is complete (the caller then checks the manifest for our file).
      if (!fs::exists(mine, ec)) return {};
      std::map<int, rank_file> seen;
      for (const auto& e : fs::directory_iterator(cdir, ec)) {
        auto name = e.path().filename().string();
        if (name.find('.') != std::string::npos) continue;  // temporary files
        int r = -1;
        try {
          r = std::stoi(name);
        } catch (...) {
          continue;
        }
        if (r < 0 || r >= rank.world_size) continue;
        try {
          seen.emplace(r, rank_file_from(json::parse(slurp(e.path())), e.path().string()));
        } catch (const std::exception&) {
          // Being written by another rank right now (rename is atomic on POSIX; NFS may lag).
        }
      }
      if (static_cast<int>(seen.size()) == rank.world_size) {
        std::vector<rank_file> out;
        for (auto& [r, f] : seen) out.push_back(std::move(f));
        return out;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        std::set<int> present;
        for (auto& [r, f] : seen) present.insert(r);
        throw error(errc::timeout,
                    "commit barrier in '" + dir.string() + "' timed out after " +
                        std::to_string(timeout.count()) + " ms: rank(s) " +
                        missing_ranks(present, rank.world_size) + " of " +
                        std::to_string(rank.world_size) +
                        " never arrived (their trainer or checkpoint child failed or is "
                        "stuck); the checkpoint is incomplete and no manifest was published");
      }
      std::this_thread::sleep_for(pause);  // polling a shared filesystem: no event to wait on
      pause = std::min<std::chrono::milliseconds>(pause * 2, poll_max);
    }
  }
};

struct hook_registry {
  std::mutex m;
  std::map<std::string, std::function<std::unique_ptr<writer_hook>(const kwargs&)>> factories;
};
hook_registry& hooks() {
  static hook_registry r;
  return r;
}

}  // namespace

rank_file describe_rank_file(const fs::path& dir, int rank) {
  rank_file r;
  r.rank = rank;
  r.file = "checkpoint_" + std::to_string(rank) + ".safetensors";
  auto p = dir / r.file;
  unique_fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) os_fail("cannot open", p);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) os_fail("cannot stat", p);
  r.bytes = static_cast<std::uint64_t>(st.st_size);
  std::uint64_t n = 0;
  if (::pread(fd.get(), &n, 8, 0) != 8 || n > r.bytes - 8)
    throw_error(errc::corrupt_data, "'" + p.string() + "' has no valid safetensors header");
  std::string header(static_cast<std::size_t>(n) + 8, '\0');
  if (::pread(fd.get(), header.data(), header.size(), 0) != static_cast<ssize_t>(header.size()))
    os_fail("cannot read the header of", p);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(header.data(), header.size())));
  r.checksum = std::string("xxh3:") + hex;
  return r;
}

std::unique_ptr<barrier> make_file_barrier() { return std::make_unique<file_barrier>(); }

void register_writer_hook(std::string name,
                          std::function<std::unique_ptr<writer_hook>(const kwargs&)> factory) {
  std::lock_guard g(hooks().m);
  hooks().factories.insert_or_assign(std::move(name), std::move(factory));
}

std::unique_ptr<writer_hook> make_writer_hook(const std::string& name, const kwargs& args) {
  std::function<std::unique_ptr<writer_hook>(const kwargs&)> f;
  {
    std::lock_guard g(hooks().m);
    auto it = hooks().factories.find(name);
    if (it == hooks().factories.end())
      throw_error(errc::not_found, "no writer hook named '" + name +
                                       "' is registered; register it with "
                                       "shmckpt::register_writer_hook before "
                                       "run_worker_if_requested");
    f = it->second;
  }
  return f(args);
}

void commit_checkpoint(const fs::path& dir, const rank_file& me, rank_info rank, barrier& b,
                       writer_hook* hook, const kwargs& kw, std::chrono::milliseconds timeout) {
  if (rank.world_size < 1 || rank.rank < 0 || rank.rank >= rank.world_size)
    throw_error(errc::invalid_argument, "rank " + std::to_string(rank.rank) + " of world size " +
                                            std::to_string(rank.world_size) + " is not valid");
  if (hook) hook->pre_commit(dir, kw);
  auto all = b.arrive(dir, me, rank, timeout);
  auto mpath = dir / manifest_name;
  if (rank.rank == 0) {
    json::array ranks;
    for (const auto& r : all) ranks.push_back(to_json(r));
    json::object m{{"format", "shmckpt"},
                   {"format_version", 1},
                   {"world_size", rank.world_size},
                   {"ranks", std::move(ranks)}};
    publish_file(mpath, json::serialize(m) + "\n");
    std::error_code ec;
    fs::remove_all(dir / commit_dir, ec);  // best effort: the manifest is what counts
  } else {
    // Complete means published: wait for rank 0's manifest of this very round.
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::milliseconds(poll_first);
    for (;;) {
      std::optional<manifest> m;
      try {
        m = read_manifest(dir);
      } catch (const error&) {
      }
      if (m && m->world_size == rank.world_size &&
          std::any_of(m->ranks.begin(), m->ranks.end(), [&](const rank_file& r) {
            return r.rank == me.rank && r.checksum == me.checksum && r.bytes == me.bytes;
          }))
        break;
      if (std::chrono::steady_clock::now() >= deadline)
        throw error(errc::timeout, "rank 0 did not publish the manifest of '" + dir.string() +
                                       "' within " + std::to_string(timeout.count()) +
                                       " ms; the checkpoint is incomplete");
      std::this_thread::sleep_for(pause);
      pause = std::min<std::chrono::milliseconds>(pause * 2, poll_max);
    }
  }
  if (hook) hook->post_commit(dir, kw);
}

std::optional<manifest> read_manifest(const fs::path& dir) {
  auto p = dir / manifest_name;
  std::error_code ec;
  if (!fs::exists(p, ec)) return std::nullopt;
  manifest m;
  try {
    auto text = slurp(p);
    if (text.size() > (64u << 20)) throw std::runtime_error("manifest larger than 64 MiB");
    auto v = json::parse(text);
    const auto& o = v.as_object();
    if (o.at("format").as_string() != "shmckpt") throw std::runtime_error("not a shmckpt manifest");
    m.format_version = static_cast<int>(o.at("format_version").to_number<std::int64_t>());
    if (m.format_version != 1)
      throw std::runtime_error("format_version " + std::to_string(m.format_version) +
                               " is not supported (this release reads 1)");
    m.world_size = static_cast<int>(o.at("world_size").to_number<std::int64_t>());
    if (m.world_size < 1 || m.world_size > (1 << 20))
      throw std::runtime_error("world_size " + std::to_string(m.world_size) + " is not valid");
    for (const auto& r : o.at("ranks").as_array()) m.ranks.push_back(rank_file_from(r, p.string()));
  } catch (const error&) {
    throw;
  } catch (const std::exception& e) {
    throw error(errc::corrupt_data, "manifest '" + p.string() + "' is malformed: " + e.what());
  }
  std::sort(m.ranks.begin(), m.ranks.end(),
            [](const rank_file& a, const rank_file& b) { return a.rank < b.rank; });
  for (int r = 0; r < m.world_size; ++r)
    if (static_cast<int>(m.ranks.size()) != m.world_size || m.ranks[r].rank != r)
      throw error(errc::corrupt_data, "manifest '" + p.string() + "' lists " +
                                          std::to_string(m.ranks.size()) +
                                          " rank files for world size " +
                                          std::to_string(m.world_size));
  return m;
}

bool is_complete(const fs::path& dir) {
  std::optional<manifest> m;
  try {
    m = read_manifest(dir);
  } catch (const error&) {
    return false;
  }
  if (!m) return false;
  for (const auto& r : m->ranks) {
    std::error_code ec;
    auto size = fs::file_size(dir / r.file, ec);
    if (ec || size != r.bytes) return false;
  }
  return true;
}

namespace {

// Complete checkpoints under root, oldest first (manifest time, then name).
std::vector<fs::path> complete_checkpoints(const fs::path& root) {
  std::vector<std::pair<fs::file_time_type, fs::path>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (!e.is_directory(ec) || !is_complete(e.path())) continue;
    found.emplace_back(fs::last_write_time(e.path() / manifest_name, ec), e.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

}  // namespace

std::optional<fs::path> latest_checkpoint(const fs::path& root) {
  auto all = complete_checkpoints(root);
  if (all.empty()) return std::nullopt;
  return all.back();
}

std::vector<fs::path> keep_last(const fs::path& root, std::size_t keep) {
  auto complete = complete_checkpoints(root);
  std::vector<fs::path> removed;
  if (complete.empty()) return removed;  // nothing known good: delete nothing
  keep = std::max<std::size_t>(keep, 1);
  std::error_code ec;
  auto newest_time = fs::last_write_time(complete.back() / manifest_name, ec);
  for (std::size_t i = 0; i + keep < complete.size(); ++i) {
    fs::remove_all(complete[i], ec);
    if (!ec) removed.push_back(complete[i]);
  }
  // Incomplete directories that hold checkpoint files and predate the newest complete one are
  // leftovers of failed saves. Newer ones may still be in progress: leave them.
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (!e.is_directory(ec) || is_complete(e.path())) continue;
    bool has_rank_file = false;
    for (const auto& f : fs::directory_iterator(e.path(), ec))
      if (f.path().filename().string().rfind("checkpoint_", 0) == 0) has_rank_file = true;
    if (has_rank_file && fs::last_write_time(e.path(), ec) < newest_time) {
      fs::remove_all(e.path(), ec);
      if (!ec) removed.push_back(e.path());
    }
  }
  return removed;
}

}  // namespace shmckpt
