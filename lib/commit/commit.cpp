#include "shmckpt/commit.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <mutex>
#include <set>
#include <thread>

#include "core/progress.hpp"
#include "format/layout.hpp"
#include "format/safetensors.hpp"
#include "shmckpt/error.hpp"
#include "io/temp_file.hpp"
#include "io/durable_file.hpp"
#include "io/regular_file.hpp"
#include "core/util.hpp"
#include "commit/manifest.hpp"

namespace shmckpt {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

constexpr std::string_view commit_dir = detail::commit_dir_name;
// Polling the shared filesystem: start fast for a local disk, back off to spare NFS servers.
constexpr auto poll_first = 2ms;
constexpr auto poll_max = 200ms;
// A manifest lists one small entry per rank; anything near this is not one of ours.
constexpr std::uint64_t manifest_cap = 64u << 20;
constexpr int max_world_size = 1 << 20;

[[noreturn]] void os_fail(const std::string& what, const fs::path& p, int err = errno) {
  if (err == ENOSPC || err == EDQUOT)
    throw_error(errc::no_space, what + " '" + p.string() + "': " + std::strerror(err) +
                                    " (free space on that filesystem, then save again)");
  throw_error(errc::io_error, what + " '" + p.string() + "': " + std::strerror(err));
}

// Writes `text` to `target` atomically and durably (lib/io/durable_file.hpp: a locked
// temporary file, fsync, rename, directory fsync). With `enoent_ok`, a directory that vanished
// meanwhile (a .commit/ that rank 0 removed or cleared) makes it return false instead of
// throwing.
bool publish_file(const fs::path& target, const std::string& text, bool enoent_ok = false) {
  return detail::write_file_durably(target, text, "commit: " + target.filename().string(),
                                    {.missing_directory_ok = enoent_ok});
}

// Reads a small file whole, refusing (before reading) one larger than `cap`.
std::optional<std::string> slurp(const fs::path& p, std::uint64_t cap, const char* what) {
  // Never a blocking open: a FIFO named like a manifest must not hang a scan.
  detail::regular_file f;
  try {
    f = detail::open_regular_file(p, std::string(what) + " '" + p.string() + "'");
  } catch (const error& e) {
    if (e.kind() == errc::not_found) return std::nullopt;
    throw;
  }
  unique_fd& fd = f.fd;
  struct stat st {};
  st.st_size = static_cast<off_t>(f.size);
  if (static_cast<std::uint64_t>(st.st_size) > cap)
    throw_error(errc::corrupt_data, std::string(what) + " '" + p.string() + "' is " +
                                        std::to_string(st.st_size) + " bytes, more than the " +
                                        std::to_string(cap) + " bytes one can be");
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) os_fail(std::string("cannot read ") + what, p);
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > cap)  // grew while read
      throw_error(errc::corrupt_data, std::string(what) + " '" + p.string() +
                                          "' grew past " + std::to_string(cap) + " bytes");
  }
  return text;
}

// ---- JSON without Boost's exception texts (they carry source locations) ----------------------

struct json_fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

json::value parse_json(const std::string& text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) throw json_fail("not valid JSON (" + ec.message() + ")");
  return v;
}

const json::object& as_object(const json::value& v, const char* what) {
  if (!v.is_object()) throw json_fail(std::string(what) + " is not a JSON object");
  return v.get_object();
}

const json::value& field(const json::object& o, const char* key) {
  const json::value* v = o.if_contains(key);
  if (!v) throw json_fail(std::string("field '") + key + "' is missing");
  return *v;
}

std::int64_t int_field(const json::object& o, const char* key) {
  const json::value& v = field(o, key);
  boost::system::error_code ec;
  auto n = v.is_number() ? v.to_number<std::int64_t>(ec) : 0;
  if (!v.is_number() || ec)
    throw json_fail(std::string("field '") + key + "' is not an integer that fits 64 bits (" +
                    json::serialize(v).substr(0, 64) + ")");
  return n;
}

std::uint64_t uint_field(const json::object& o, const char* key) {
  const json::value& v = field(o, key);
  boost::system::error_code ec;
  auto n = v.is_number() ? v.to_number<std::uint64_t>(ec) : 0;
  if (!v.is_number() || ec)
    throw json_fail(std::string("field '") + key + "' is not a non-negative 64-bit integer (" +
                    json::serialize(v).substr(0, 64) + ")");
  return n;
}

std::string string_field(const json::object& o, const char* key) {
  const json::value& v = field(o, key);
  if (!v.is_string()) throw json_fail(std::string("field '") + key + "' is not a string");
  return std::string(v.get_string());
}

json::object to_json(const rank_file& r) {
  json::object o{{"rank", r.rank}, {"file", r.file}, {"bytes", r.bytes}, {"checksum", r.checksum}};
  if (!r.round.empty()) o["round"] = r.round;
  return o;
}

rank_file rank_file_from(const json::value& v, const std::string& where) {
  try {
    const auto& o = as_object(v, "a rank entry");
    rank_file r;
    auto rank = int_field(o, "rank");
    if (rank < 0 || rank >= max_world_size)
      throw json_fail("rank " + std::to_string(rank) + " is not valid");
    r.rank = static_cast<int>(rank);
    r.file = string_field(o, "file");
    r.bytes = uint_field(o, "bytes");
    r.checksum = string_field(o, "checksum");
    if (o.if_contains("round")) r.round = string_field(o, "round");
    if (r.file.empty() || r.file.find('/') != std::string::npos ||
        r.file.find('\0') != std::string::npos || r.file == "." || r.file == "..")
      throw json_fail("file name '" + printable_path(r.file) + "' is not a plain name");
    return r;
  } catch (const json_fail& e) {
    throw error(errc::corrupt_data, where + ": malformed rank entry: " + e.what());
  }
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string out;
  std::size_t shown = 0;
  for (int r : ranks) {
    if (shown == 16) break;
    out += (shown++ ? ", " : "") + std::to_string(r);
  }
  if (ranks.size() > shown) out += ", ... (" + std::to_string(ranks.size()) + " in all)";
  return out;
}

std::vector<int> missing_ranks(const std::set<int>& present, int world) {
  std::vector<int> out;
  for (int r = 0; r < world; ++r)
    if (!present.count(r)) out.push_back(r);
  return out;
}

// Whether `dir`'s manifest lists `me` (same file, size, checksum and round): the round `me`
// belongs to is committed.
bool manifest_lists(const fs::path& dir, const rank_file& me, int world_size) {
  std::optional<manifest> m;
  try {
    m = read_manifest(dir);
  } catch (const error&) {
    return false;  // being replaced, or damaged: not ours
  }
  if (!m || m->world_size != world_size) return false;
  return std::any_of(m->ranks.begin(), m->ranks.end(), [&](const rank_file& r) {
    return r.rank == me.rank && r.file == me.file && r.bytes == me.bytes &&
           r.checksum == me.checksum && r.round == me.round;
  });
}

// The arrivals of `ranks` present in `cdir`, by rank (unparsed). Each is opened by its exact
// name, never found through a directory listing: network filesystems revalidate a name on open
// (NFS close-to-open), while a listing may come from a client cache that is seconds old.
std::map<int, std::string> read_arrivals(const fs::path& cdir, const std::vector<int>& ranks) {
  std::map<int, std::string> out;
  for (int r : ranks) {
    try {
      if (auto text = slurp(cdir / std::to_string(r), 1u << 20, "arrival"))
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
        os_fail("cannot clear the arrival of an earlier round", p);
    }
    remove_stale_temp_files(cdir);
  }

  std::vector<rank_file> arrive(const fs::path& dir, const rank_file& me, rank_info rank,
                                std::chrono::milliseconds timeout) override {
    if (rank.world_size == 1) return {me};
    auto cdir = dir / commit_dir;
    const auto mine = cdir / std::to_string(rank.rank);
    const std::string text = json::serialize(to_json(me));
    auto publish = [&] {
      std::error_code ec;
      fs::create_directories(cdir, ec);
      if (ec && !fs::is_directory(cdir))
        os_fail("cannot create the commit directory", cdir, ec.value());
      publish_file(mine, text, /*enoent_ok=*/true);  // removed meanwhile: next poll re-creates
    };
    publish();
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::milliseconds(poll_first);
    // Rank 0: what each arrival said and whether it matched the file on disk.
    std::map<int, std::pair<std::string, std::optional<rank_file>>> checked;
    std::map<int, std::string> mismatch;  // rank -> why its arrival was not accepted
    for (;;) {
      std::vector<int> waiting_for;
      if (rank.rank != 0) {
        if (manifest_lists(dir, me, rank.world_size)) {
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
                                " for rank(s) " + rank_list(waiting_for));
      }
      if (rank.rank != 0)
        detail::report_progress("waiting at the commit barrier of " + dir.string() +
                                " for rank 0 to publish the manifest");
      if (std::chrono::steady_clock::now() >= deadline) timed_out(dir, cdir, rank, timeout, mismatch);
      std::this_thread::sleep_for(pause);  // polling a shared filesystem: no event to wait on
      pause = std::min<std::chrono::milliseconds>(pause * 2, poll_max);
    }
  }

 private:
  static std::optional<std::string> slurp_quiet(const fs::path& p) {
    try {
      return slurp(p, 1u << 20, "arrival");
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
      a = rank_file_from(parse_json(text), (dir / commit_dir / std::to_string(r)).string());
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
    if (rank.rank != 0) std::this_thread::sleep_for(2 * poll_max);
    std::set<int> present;
    for (auto& [r, t] : read_arrivals(cdir, all_ranks(rank.world_size)))
      if (!mismatch.count(r)) present.insert(r);
    present.insert(rank.rank);
    auto missing = missing_ranks(present, rank.world_size);
    std::string what = "commit barrier in '" + dir.string() + "' timed out after " +
                       std::to_string(timeout.count()) + " ms: ";
    if (!missing.empty())
      what += "rank(s) " + rank_list(missing) + " of " + std::to_string(rank.world_size) +
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

struct hook_registry {
  std::mutex m;
  std::map<std::string, std::function<std::unique_ptr<writer_hook>(const kwargs&)>> factories;
};
hook_registry& hooks() {
  static hook_registry r;
  return r;
}

}  // namespace

namespace {

// Size and header checksum of `dir/file` ("xxh3:<16 hex>" of the 8-byte length and the header).
std::pair<std::uint64_t, std::string> header_fingerprint(const fs::path& p) {
  detail::regular_file f = detail::open_regular_file(p, "'" + p.string() + "'");
  unique_fd& fd = f.fd;
  auto bytes = f.size;
  unsigned char prefix[8] = {};
  if (bytes >= 8 && ::pread(fd.get(), prefix, 8, 0) != 8)
    throw_error(errc::corrupt_data, "'" + p.string() + "' has no valid safetensors header");
  std::uint64_t n = detail::parse_header_length(prefix, bytes, "'" + p.string() + "'");
  std::string header(static_cast<std::size_t>(n) + 8, '\0');
  std::size_t off = 0;
  while (off < header.size()) {
    ssize_t r = ::pread(fd.get(), header.data() + off, header.size() - off,
                        static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) os_fail("cannot read the header of", p);
    if (r == 0) throw_error(errc::corrupt_data, "'" + p.string() + "' ended within its header");
    off += static_cast<std::size_t>(r);
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(header.data(), header.size())));
  return {bytes, std::string("xxh3:") + hex};
}

}  // namespace

rank_file describe_rank_file(const fs::path& dir, int rank) {
  reject_nul(dir, "checkpoint directory");
  rank_file r;
  r.rank = rank;
  r.file = rank_file_name(rank);
  std::tie(r.bytes, r.checksum) = header_fingerprint(dir / r.file);
  return r;
}

std::string new_round_token() {
  unsigned char bytes[16];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw_error(errc::unsupported, std::string("getrandom failed: ") + std::strerror(errno) +
                                         "; a commit round needs a random token");
    got += static_cast<std::size_t>(n);
  }
  char hex[33];
  for (std::size_t i = 0; i < sizeof bytes; ++i) std::snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
  return std::string(hex, 32);
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

namespace detail {

std::string rank_file_json(const rank_file& me) { return json::serialize(to_json(me)); }

rank_file rank_file_from_json(const std::string& text, const std::string& where) {
  try {
    return rank_file_from(parse_json(text), where);
  } catch (const json_fail& e) {
    throw error(errc::corrupt_data, where + ": " + e.what());
  }
}

std::optional<rank_file> check_arrival(const fs::path& dir, int r, const rank_file& a,
                                       std::string& why) {
  if (a.rank != r || a.file != rank_file_name(r)) {
    why = "its arrival names rank " + std::to_string(a.rank) + " file '" +
          printable_path(a.file) + "'";
    return std::nullopt;
  }
  rank_file disk;
  try {
    disk = describe_rank_file(dir, r);
  } catch (const error& e) {
    why = e.what();
    return std::nullopt;
  }
  if (disk.bytes != a.bytes || disk.checksum != a.checksum) {
    // An arrival whose file has since been replaced: not this round's (or not yet re-sent).
    why = "its arrival says " + std::to_string(a.bytes) + " bytes " + a.checksum +
          ", the file on disk has " + std::to_string(disk.bytes) + " bytes " + disk.checksum;
    return std::nullopt;
  }
  return a;
}

std::string publish_manifest(const fs::path& dir, std::vector<rank_file> all, int world_size) {
  std::sort(all.begin(), all.end(),
            [](const rank_file& a, const rank_file& c) { return a.rank < c.rank; });
  json::array ranks;
  for (const auto& r : all) ranks.push_back(to_json(r));
  json::object m{{"format", "shmckpt"},
                 {"format_version", 1},
                 {"world_size", world_size},
                 {"ranks", std::move(ranks)}};
  std::string text = json::serialize(m) + "\n";
  publish_file(dir / manifest_name, text);
  return text;
}

bool manifest_text_lists(const std::string& text, const rank_file& me, int world_size) {
  try {
    auto v = parse_json(text);
    const auto& o = as_object(v, "the manifest");
    if (int_field(o, "world_size") != world_size) return false;
    const auto& ranks = field(o, "ranks");
    if (!ranks.is_array()) return false;
    for (const auto& e : ranks.get_array()) {
      rank_file r = rank_file_from(e, "manifest");
      if (r.rank == me.rank)
        return r.file == me.file && r.bytes == me.bytes && r.checksum == me.checksum &&
               r.round == me.round;
    }
  } catch (const std::exception&) {
  }
  return false;
}

std::string rank_list(const std::vector<int>& ranks) { return shmckpt::rank_list(ranks); }

}  // namespace detail

void commit_checkpoint(const fs::path& dir, const rank_file& me, rank_info rank, barrier& b,
                       writer_hook* hook, const kwargs& kw, std::chrono::milliseconds timeout) {
  if (rank.world_size < 1 || rank.rank < 0 || rank.rank >= rank.world_size)
    throw_error(errc::invalid_argument, "rank " + std::to_string(rank.rank) + " of world size " +
                                            std::to_string(rank.world_size) + " is not valid");
  reject_nul(dir, "checkpoint directory");
  if (hook) hook->pre_commit(dir, kw);
  auto all = b.arrive(dir, me, rank, timeout);
  auto mpath = dir / manifest_name;
  if (rank.rank == 0) {
    detail::publish_manifest(dir, std::move(all), rank.world_size);
    // Best effort: the manifest is what counts. Other ranks remove what they re-create; our own
    // arrival goes first and by name, since remove_all stops at the first entry that vanishes
    // under it (another rank removing its own arrival meanwhile).
    ::unlink((dir / commit_dir / "0").c_str());
    for (int attempt = 0; attempt < 3; ++attempt) {
      std::error_code ec;
      fs::remove_all(dir / commit_dir, ec);
      if (!ec) break;
    }
  } else {
    // Complete means published: wait for rank 0's manifest of this very round (our token).
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::milliseconds(poll_first);
    while (!manifest_lists(dir, me, rank.world_size)) {
      if (std::chrono::steady_clock::now() >= deadline)
        throw error(errc::timeout, "rank 0 did not publish the manifest of '" + dir.string() +
                                       "' listing rank " + std::to_string(me.rank) +
                                       "'s file of this round within " +
                                       std::to_string(timeout.count()) +
                                       " ms; the checkpoint is incomplete");
      detail::report_progress("waiting for rank 0 to publish the manifest of " + dir.string());
      std::this_thread::sleep_for(pause);
      pause = std::min<std::chrono::milliseconds>(pause * 2, poll_max);
    }
  }
  if (hook) hook->post_commit(dir, kw);
}

std::optional<manifest> read_manifest(const fs::path& dir) {
  reject_nul(dir, "checkpoint directory");
  auto p = dir / manifest_name;
  auto text = slurp(p, manifest_cap, "manifest");
  if (!text) return std::nullopt;
  manifest m;
  try {
    auto v = parse_json(*text);
    const auto& o = as_object(v, "the manifest");
    if (field(o, "format") != json::value("shmckpt")) throw json_fail("not a shmckpt manifest");
    auto version = int_field(o, "format_version");
    if (version != 1)
      throw json_fail("format_version " + std::to_string(version) +
                      " is not supported (this release reads 1)");
    m.format_version = 1;
    auto world = int_field(o, "world_size");
    if (world < 1 || world > max_world_size)
      throw json_fail("world_size " + std::to_string(world) + " is not valid (1 to " +
                      std::to_string(max_world_size) + ")");
    m.world_size = static_cast<int>(world);
    const auto& ranks = field(o, "ranks");
    if (!ranks.is_array()) throw json_fail("field 'ranks' is not an array");
    for (const auto& r : ranks.get_array()) m.ranks.push_back(rank_file_from(r, p.string()));
  } catch (const json_fail& e) {
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

manifest verify_checkpoint(const fs::path& dir) {
  auto m = read_manifest(dir);
  if (!m)
    throw_error(errc::not_found,
                "checkpoint '" + dir.string() + "' is incomplete: it has no " + manifest_name +
                    " (a save failed or is still in progress)");
  const std::string where = "checkpoint '" + dir.string() + "': ";
  for (const auto& r : m->ranks) {
    const std::string rank = "rank " + std::to_string(r.rank);
    if (r.file != rank_file_name(r.rank))
      throw_error(errc::corrupt_data, where + "the manifest names '" + printable_path(r.file) +
                                          "' as " + rank + "'s file, not '" +
                                          rank_file_name(r.rank) + "'");
    std::pair<std::uint64_t, std::string> disk;
    try {
      disk = header_fingerprint(dir / r.file);
    } catch (const error& e) {
      if (e.kind() != errc::not_found) throw;
      throw_error(errc::corrupt_data,
                  where + "the manifest lists " + rank + "'s file '" + r.file +
                      "', which does not exist");
    }
    if (disk.first != r.bytes)
      throw_error(errc::corrupt_data, where + "the manifest says " + rank + "'s file '" + r.file +
                                          "' has " + std::to_string(r.bytes) +
                                          " bytes, the file has " + std::to_string(disk.first));
    if (disk.second != r.checksum)
      throw_error(errc::corrupt_data, where + "the manifest records header checksum " +
                                          r.checksum + " for " + rank + "'s file '" + r.file +
                                          "', the file's header has " + disk.second +
                                          " (a file from another save)");
  }
  return *m;
}

bool is_complete(const fs::path& dir) {
  try {
    verify_checkpoint(dir);
    return true;
  } catch (const error&) {
    return false;
  }
}

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
