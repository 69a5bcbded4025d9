// The manifest: rank entries, fingerprints of rank files, reading and verifying a checkpoint's
// manifest, and publishing one (see manifest.hpp, shmckpt/checkpoint_dir.hpp).
#include "commit/manifest.hpp"

#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/util.hpp"
#include "core/xxh3.hpp"
#include "format/safetensors.hpp"
#include "io/durable_file.hpp"
#include "io/regular_file.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt {

namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

// A manifest lists one small entry per rank; anything near this is not one of ours.
constexpr std::uint64_t manifest_cap = 64u << 20;
constexpr int max_world_size = 1 << 20;

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

// The integer field `key` as a T; json_fail "field '<key>' is not <what> (<value>)" otherwise.
template <class T>
T number_field(const json::object& o, const char* key, const char* what) {
  const json::value& v = field(o, key);
  boost::system::error_code ec;
  T n = v.is_number() ? v.to_number<T>(ec) : T{};
  if (!v.is_number() || ec)
    throw json_fail(std::string("field '") + key + "' is not " + what + " (" +
                    json::serialize(v).substr(0, 64) + ")");
  return n;
}

std::int64_t int_field(const json::object& o, const char* key) {
  return number_field<std::int64_t>(o, key, "an integer that fits 64 bits");
}

std::uint64_t uint_field(const json::object& o, const char* key) {
  return number_field<std::uint64_t>(o, key, "a non-negative 64-bit integer");
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
    if (r < 0) detail::commit_os_fail("cannot read the header of", p, errno);
    if (r == 0) throw_error(errc::corrupt_data, "'" + p.string() + "' ended within its header");
    off += static_cast<std::size_t>(r);
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(header.data(), header.size())));
  return {bytes, std::string("xxh3:") + hex};
}

}  // namespace

namespace detail {

void commit_os_fail(const std::string& what, const fs::path& p, int err) {
  if (err == ENOSPC || err == EDQUOT)
    throw_error(errc::no_space, what + " '" + p.string() + "': " + std::strerror(err) +
                                    " (free space on that filesystem, then save again)");
  throw_error(errc::io_error, what + " '" + p.string() + "': " + std::strerror(err));
}

bool publish_commit_file(const fs::path& target, const std::string& text,
                         bool missing_directory_ok) {
  return write_file_durably(target, text, "commit: " + target.filename().string(),
                            {.missing_directory_ok = missing_directory_ok});
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
  publish_commit_file(dir / manifest_name, text);
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

}  // namespace detail


rank_file describe_rank_file(const fs::path& dir, int rank) {
  reject_nul(dir, "checkpoint directory");
  rank_file r;
  r.rank = rank;
  r.file = rank_file_name(rank);
  std::tie(r.bytes, r.checksum) = header_fingerprint(dir / r.file);
  return r;
}

std::optional<manifest> read_manifest(const fs::path& dir) {
  reject_nul(dir, "checkpoint directory");
  auto p = dir / manifest_name;
  auto text = detail::read_small_regular_file(p, manifest_cap, "manifest");
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

}  // namespace shmckpt
