// ckpt-inspect — look inside shmckpt checkpoint files without writing any code.
//
//   ckpt-inspect [--help] [--version] <command> [<args>]
//
// A git-style front end: global options come before the command, everything after it belongs to
// the command, which parses it with its own Boost.Program_options description. Adding a command
// means writing one `int run_x(const std::vector<std::string>&)` and one line in `commands`.
//
// Exit status (docs/ckpt-inspect.md): 0 ok, 1 a check failed (verify found a checksum
// mismatch, diff found a difference), 2 usage error (including a key `show` cannot find),
// 3 unreadable or corrupt input. Errors are one line on stderr,
// starting "ckpt-inspect: ". All the reading and validation is the library's (reader.hpp); this
// file only formats.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include "shmckpt/error.hpp"
#include "shmckpt/commit.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/state_dict.hpp"
#include "shmckpt/writer.hpp"

namespace {

namespace fs = std::filesystem;
namespace po = boost::program_options;

constexpr int exit_ok = 0;
constexpr int exit_check_failed = 1;
constexpr int exit_usage = 2;
constexpr int exit_bad_input = 3;

// The command being run, for the usage hint ("ckpt-inspect list --help"); empty before dispatch.
std::string current_command;

/// A mistake in the command line; reported with a hint and exit status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- formatting helpers ----------------------------------------------------------------------

// Names and strings come from untrusted files: escape anything that could break a line or a
// terminal, keep valid UTF-8 text readable.
std::string printable(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// Strings in the tree may be arbitrary bytes; show them as JSON-ish quoted text.
std::string quoted_string(std::string_view s) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f || c >= 0x80) {
      // Keep well-formed UTF-8 as is; escape anything else byte by byte.
      std::size_t n = 0;
      if (c >= 0xC2 && c <= 0xF4) {
        n = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (i + n > s.size()) n = 0;
        for (std::size_t k = 1; k < n; ++k)
          if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) n = 0;
      }
      if (n) {
        out.append(s.substr(i, n));
        i += n - 1;
      } else {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", c);
        out += buf;
      }
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// Inspection looks at incomplete checkpoint directories too (a failed save is worth examining).
shmckpt::read_options inspect_options() {
  shmckpt::read_options o;
  o.allow_incomplete = true;
  return o;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  return shmckpt::format_shape(shape);
}

std::string double_text(double d) {
  if (std::isnan(d)) return std::signbit(d) ? "-nan" : "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d);
  std::string s(buf, r.ptr);
  // Keep floats recognisable as floats: "1" would read as an int.
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

// ---- finding the files -----------------------------------------------------------------------

struct checkpoint_ref {
  fs::path path;
  std::optional<int> rank;  // from a checkpoint_<rank>.safetensors name
};

std::optional<int> rank_from_name(const std::string& name) {
  constexpr std::string_view prefix = "checkpoint_", suffix = ".safetensors";
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) ||
      !name.ends_with(suffix))
    return std::nullopt;
  std::string_view digits(name.data() + prefix.size(),
                          name.size() - prefix.size() - suffix.size());
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;  // one spelling per rank
  int rank = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), rank);
  if (ec != std::errc() || end != digits.data() + digits.size() || rank < 0) return std::nullopt;
  return rank;
}

// A file is itself; a directory is every checkpoint_<rank>.safetensors in it, by rank.
std::vector<checkpoint_ref> find_checkpoints(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_directory(p, ec)) return {{p, rank_from_name(p.filename().string())}};
  std::vector<checkpoint_ref> out;
  for (const auto& entry : fs::directory_iterator(p)) {
    auto rank = rank_from_name(entry.path().filename().string());
    if (rank) out.push_back({entry.path(), rank});
  }
  if (out.empty())
    shmckpt::throw_error(shmckpt::errc::not_found, "directory '" + p.string() +
                                                       "' holds no checkpoint_<rank>.safetensors");
  std::sort(out.begin(), out.end(),
            [](const checkpoint_ref& a, const checkpoint_ref& b) { return *a.rank < *b.rank; });
  return out;
}

// ---- the common shape of a command -----------------------------------------------------------

struct parsed_command {
  po::variables_map vm;
  bool help = false;
};

// One positional argument of a command: its variable name and how usage text spells it.
struct positional {
  const char* name;
  const char* shown;
};

// Parses `args` against `desc` plus --help and the positionals (by default one <file|dir>
// stored as "path"); each positional is required.
parsed_command parse_command(const std::string& name, const std::vector<std::string>& args,
                             po::options_description desc,
                             std::initializer_list<positional> positionals = {
                                 {"path", "<file|dir>"}}) {
  desc.add_options()("help,h", "show this help");
  po::options_description hidden;
  po::positional_options_description pos;
  std::string shown;
  for (const auto& p : positionals) {
    hidden.add_options()(p.name, po::value<std::string>(), p.shown);
    pos.add(p.name, 1);
    shown += std::string(" ") + p.shown;
  }
  po::options_description all;
  all.add(desc).add(hidden);
  parsed_command pc;
  po::store(po::command_line_parser(args).options(all).positional(pos).run(), pc.vm);
  po::notify(pc.vm);
  if (pc.vm.count("help")) {
    std::cout << "usage: ckpt-inspect " << name << " [options]" << shown << "\n\n" << desc;
    pc.help = true;
    return pc;
  }
  for (const auto& p : positionals)
    if (!pc.vm.count(p.name)) throw usage_error(name + ": missing " + p.shown);
  return pc;
}

// --rank N, checked: which rank file of a directory a single-file command looks at.
void add_rank_option(po::options_description& desc) {
  desc.add_options()("rank", po::value<int>()->default_value(0),
                     "which checkpoint_<rank>.safetensors to use when given a directory");
}

int rank_option(const std::string& name, const parsed_command& pc) {
  int rank = pc.vm["rank"].as<int>();
  if (rank < 0)
    throw usage_error(name + ": --rank must be non-negative, not " + std::to_string(rank));
  return rank;
}

// The file a single-file command reads: the path itself, or a directory's rank file.
fs::path rank_file(const fs::path& p, int rank) {
  std::error_code ec;
  return fs::is_directory(p, ec) ? shmckpt::checkpoint_file_path(p, rank) : p;
}

// ---- list ------------------------------------------------------------------------------------

struct file_listing {
  checkpoint_ref ref;
  std::vector<shmckpt::tensor_entry> entries;
  std::uint64_t bytes = 0;
};

void print_table(const file_listing& f) {
  std::vector<std::array<std::string, 4>> rows;
  rows.push_back({"NAME", "DTYPE", "SHAPE", "BYTES"});
  for (const auto& e : f.entries)
    rows.push_back({printable(e.name), std::string(shmckpt::dtype_name(e.type)),
                    shape_text(e.shape), std::to_string(e.nbytes)});
  std::array<std::size_t, 4> width{};
  for (const auto& r : rows)
    for (std::size_t c = 0; c < 4; ++c) width[c] = std::max(width[c], r[c].size());
  std::cout << f.ref.path.string() << "\n";
  for (const auto& r : rows) {
    std::string line = "  ";
    for (std::size_t c = 0; c < 3; ++c) {
      line += r[c];
      line.append(width[c] - r[c].size() + 2, ' ');
    }
    line.append(width[3] - r[3].size(), ' ');  // bytes right-aligned
    line += r[3];
    std::cout << line << "\n";
  }
  std::cout << "  " << f.entries.size() << (f.entries.size() == 1 ? " tensor, " : " tensors, ")
            << f.bytes << " bytes\n";
}

boost::json::object listing_json(const file_listing& f) {
  boost::json::array tensors;
  for (const auto& e : f.entries) {
    boost::json::array shape;
    for (auto d : e.shape) shape.push_back(d);
    boost::json::object t;
    t["name"] = e.name;
    t["dtype"] = shmckpt::dtype_name(e.type);
    t["shape"] = std::move(shape);
    t["offset"] = e.offset;
    t["bytes"] = e.nbytes;
    if (e.checksum.empty()) t["checksum"] = nullptr;
    else t["checksum"] = e.checksum;
    tensors.push_back(std::move(t));
  }
  boost::json::object o;
  o["path"] = f.ref.path.string();
  if (f.ref.rank) o["rank"] = *f.ref.rank;
  else o["rank"] = nullptr;
  o["tensor_count"] = f.entries.size();
  o["total_bytes"] = f.bytes;
  o["tensors"] = std::move(tensors);
  return o;
}

int run_list(const std::vector<std::string>& args) {
  po::options_description desc("list: every tensor entry (name, dtype, shape, bytes) and totals");
  desc.add_options()("json", "print one JSON document instead of a table");
  auto pc = parse_command("list", args, desc);
  if (pc.help) return exit_ok;

  std::vector<file_listing> files;
  std::uint64_t total_bytes = 0, total_tensors = 0;
  for (auto& ref : find_checkpoints(pc.vm["path"].as<std::string>())) {
    file_listing f{std::move(ref), {}, 0};
    f.entries = shmckpt::list_entries(f.ref.path);
    for (const auto& e : f.entries) f.bytes += e.nbytes;
    total_bytes += f.bytes;
    total_tensors += f.entries.size();
    files.push_back(std::move(f));
  }

  // A directory is a checkpoint only once its manifest is published (commit.hpp).
  const std::filesystem::path root = pc.vm["path"].as<std::string>();
  const bool is_dir = std::filesystem::is_directory(root);
  std::optional<shmckpt::manifest> manifest;
  if (is_dir) manifest = shmckpt::read_manifest(root);
  const bool complete = is_dir && shmckpt::is_complete(root);

  if (pc.vm.count("json")) {
    boost::json::array list;
    for (const auto& f : files) list.push_back(listing_json(f));
    boost::json::object doc;
    doc["files"] = std::move(list);
    doc["tensor_count"] = total_tensors;
    doc["total_bytes"] = total_bytes;
    if (is_dir) {
      boost::json::object m;
      m["present"] = manifest.has_value();
      m["complete"] = complete;
      if (manifest) m["world_size"] = manifest->world_size;
      doc["manifest"] = std::move(m);
    }
    std::cout << boost::json::serialize(doc) << "\n";
    return exit_ok;
  }
  for (std::size_t i = 0; i < files.size(); ++i) {
    if (i) std::cout << "\n";
    print_table(files[i]);
  }
  if (files.size() > 1)
    std::cout << "\ntotal: " << files.size() << " files, " << total_tensors << " tensors, "
              << total_bytes << " bytes\n";
  if (is_dir) {
    if (complete)
      std::cout << "manifest: " << shmckpt::manifest_name << ", world size "
                << manifest->world_size << ", complete\n";
    else if (manifest)
      std::cout << "manifest: " << shmckpt::manifest_name
                << " present but its files do not match it: INCOMPLETE\n";
    else
      std::cout << "manifest: none: INCOMPLETE (a save failed or is still in progress)\n";
  }
  return exit_ok;
}

// ---- tree ------------------------------------------------------------------------------------

void print_value(const std::string& key, const shmckpt::value& v, int indent) {
  std::cout << std::string(static_cast<std::size_t>(indent) * 2, ' ') << printable(key) << ": ";
  switch (v.type()) {
    case shmckpt::kind::none: std::cout << "none\n"; break;
    case shmckpt::kind::boolean:
      std::cout << "bool " << (v.as_bool() ? "true" : "false") << "\n";
      break;
    case shmckpt::kind::integer: std::cout << "int " << v.as_int() << "\n"; break;
    case shmckpt::kind::real: std::cout << "float " << double_text(v.as_double()) << "\n"; break;
    case shmckpt::kind::string:
      std::cout << "string " << quoted_string(v.as_string()) << "\n";
      break;
    case shmckpt::kind::tensor: {
      const auto& t = v.as_tensor();
      std::cout << "tensor " << shmckpt::dtype_name(t.type()) << " " << shape_text(t.shape())
                << " (" << t.nbytes() << " bytes)\n";
      break;
    }
    case shmckpt::kind::list:
    case shmckpt::kind::tuple: {
      const auto& l = v.as_sequence();
      std::cout << shmckpt::kind_name(v.type()) << " (" << l.size() << ")\n";
      for (std::size_t i = 0; i < l.size(); ++i) print_value(std::to_string(i), l[i], indent + 1);
      break;
    }
    case shmckpt::kind::dict: {
      const auto& d = v.as_dict();
      std::cout << "dict (" << d.size()
                << (d.keys() == shmckpt::key_type::integer ? ", int keys" : "") << ")\n";
      for (const auto& [k, child] : d) print_value(k, child, indent + 1);
      break;
    }
  }
}

// ---- JSON for tree values (tree --json, show --json, diff --json) ---------------------------

// JSON strings must be UTF-8; strings from a checkpoint need not be. Invalid bytes become the
// four characters \xNN (lossy, but the output stays valid JSON and readable).
std::string json_text(std::string_view s) {
  std::string q = quoted_string(s);  // keeps valid UTF-8, escapes the rest as \xNN
  std::string out;
  // Undo quoted_string's own quoting and its escapes of '"' and '\\'; JSON escapes those.
  std::string_view body(q.data() + 1, q.size() - 2);
  for (std::size_t i = 0; i < body.size(); ++i) {
    if (body[i] == '\\' && i + 1 < body.size() && (body[i + 1] == '"' || body[i + 1] == '\\')) {
      out += body[++i];
    } else {
      out += body[i];
    }
  }
  return out;
}

// Finite doubles as JSON numbers; NaN and infinities, which JSON lacks, as strings.
boost::json::value json_double(double d) {
  if (std::isfinite(d)) return d;
  return boost::json::string(double_text(d));
}

boost::json::array json_shape(const std::vector<std::int64_t>& shape) {
  boost::json::array a;
  for (auto d : shape) a.push_back(d);
  return a;
}

// Dicts as objects (key order kept), lists as arrays, tensors as
// {"tensor": name, "dtype", "shape", "bytes"}.
boost::json::value value_json(const shmckpt::value& v, const std::string& path) {
  switch (v.type()) {
    case shmckpt::kind::none: return nullptr;
    case shmckpt::kind::boolean: return v.as_bool();
    case shmckpt::kind::integer: return v.as_int();
    case shmckpt::kind::real: return json_double(v.as_double());
    case shmckpt::kind::string: return boost::json::string(json_text(v.as_string()));
    case shmckpt::kind::tensor: {
      const auto& t = v.as_tensor();
      boost::json::object o;
      o["tensor"] = json_text(path);
      o["dtype"] = shmckpt::dtype_name(t.type());
      o["shape"] = json_shape(t.shape());
      o["bytes"] = t.nbytes();
      return o;
    }
    case shmckpt::kind::list:
    case shmckpt::kind::tuple: {  // JSON has no tuples; the text tree tells them apart
      boost::json::array a;
      const auto& l = v.as_sequence();
      for (std::size_t i = 0; i < l.size(); ++i)
        a.push_back(value_json(l[i], path.empty() ? std::to_string(i)
                                                  : path + "." + std::to_string(i)));
      return a;
    }
    case shmckpt::kind::dict: {
      boost::json::object o;
      for (const auto& [k, child] : v.as_dict())
        o[json_text(k)] = value_json(child, path.empty() ? k : path + "." + k);
      return o;
    }
  }
  return nullptr;
}

int run_tree(const std::vector<std::string>& args) {
  po::options_description desc("tree: the state dict as the trainer saved it, with every value");
  add_rank_option(desc);
  desc.add_options()("json", "print one JSON document instead of an indented tree");
  auto pc = parse_command("tree", args, desc);
  if (pc.help) return exit_ok;
  int rank = rank_option("tree", pc);
  fs::path path = pc.vm["path"].as<std::string>();
  shmckpt::state_dict sd = shmckpt::read(path, inspect_options(), rank);
  if (pc.vm.count("json")) {
    boost::json::object doc;
    doc["path"] = json_text(rank_file(path, rank).string());
    doc["tree"] = value_json(shmckpt::value(sd), "");
    std::cout << boost::json::serialize(doc) << "\n";
    return exit_ok;
  }
  for (const auto& [k, v] : sd) print_value(k, v, 0);
  return exit_ok;
}

// ---- finding a key ---------------------------------------------------------------------------

// Every node of a tree (containers too, not the root) by flattened key path, in tree order.
// Leaves are tensors, non-tensor values and empty containers. A path reachable twice keeps the
// first node.
struct flat_tree {
  std::vector<std::pair<std::string, const shmckpt::value*>> leaves;
  std::unordered_map<std::string, const shmckpt::value*> nodes;

  explicit flat_tree(const shmckpt::dict& root) {
    for (const auto& [k, v] : root) add(v, k);
  }

 private:
  void add(const shmckpt::value& v, const std::string& path) {
    if (!nodes.emplace(path, &v).second) return;
    if (v.type() == shmckpt::kind::dict && !v.as_dict().empty()) {
      for (const auto& [k, child] : v.as_dict()) add(child, path + "." + k);
    } else if (v.is_sequence() && !v.as_sequence().empty()) {
      const auto& l = v.as_sequence();
      for (std::size_t i = 0; i < l.size(); ++i) add(l[i], path + "." + std::to_string(i));
    } else {
      leaves.emplace_back(path, &v);
    }
  }
};

// "tensor F32 [4, 8]", "int 1200", "string \"x\"", "dict (0)": one value on one line.
std::string describe(const shmckpt::value& v) {
  switch (v.type()) {
    case shmckpt::kind::none: return "none";
    case shmckpt::kind::boolean: return v.as_bool() ? "bool true" : "bool false";
    case shmckpt::kind::integer: return "int " + std::to_string(v.as_int());
    case shmckpt::kind::real: return "float " + double_text(v.as_double());
    case shmckpt::kind::string: return "string " + quoted_string(v.as_string());
    case shmckpt::kind::list: return "list (" + std::to_string(v.as_list().size()) + ")";
    case shmckpt::kind::tuple: return "tuple (" + std::to_string(v.as_tuple().size()) + ")";
    case shmckpt::kind::dict:
      return "dict (" + std::to_string(v.as_dict().size()) +
             (v.as_dict().keys() == shmckpt::key_type::integer ? ", int keys)" : ")");
    case shmckpt::kind::tensor: {
      const auto& t = v.as_tensor();
      return "tensor " + std::string(shmckpt::dtype_name(t.type())) + " " + shape_text(t.shape());
    }
  }
  return "?";
}

// ---- element access for show and diff --------------------------------------------------------

enum class element_class { floating, integer, opaque };

element_class classify(shmckpt::dtype t) {
  using shmckpt::dtype;
  switch (t) {
    case dtype::f16:
    case dtype::bf16:
    case dtype::f32:
    case dtype::f64: return element_class::floating;
    case dtype::boolean:
    case dtype::u8:
    case dtype::i8:
    case dtype::i16:
    case dtype::u16:
    case dtype::i32:
    case dtype::u32:
    case dtype::i64:
    case dtype::u64: return element_class::integer;
    default: return element_class::opaque;  // F8 variants, F4, F6, C64
  }
}

template <class T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // tensors from foreign files may be unaligned copies; be safe
  return v;
}

double half_to_double(std::uint16_t h) {
  int exponent = (h >> 10) & 0x1f;
  int mantissa = h & 0x3ff;
  double v;
  if (exponent == 0) v = std::ldexp(mantissa, -24);  // zero and subnormals
  else if (exponent == 31) v = mantissa ? std::numeric_limits<double>::quiet_NaN()
                                        : std::numeric_limits<double>::infinity();
  else v = std::ldexp(mantissa + 1024, exponent - 25);
  return (h & 0x8000) ? -v : v;
}

double float_at(const shmckpt::tensor& t, std::size_t i) {
  const std::byte* b = t.data();
  switch (t.type()) {
    case shmckpt::dtype::f16: return half_to_double(load<std::uint16_t>(b + 2 * i));
    case shmckpt::dtype::bf16:
      return std::bit_cast<float>(std::uint32_t{load<std::uint16_t>(b + 2 * i)} << 16);
    case shmckpt::dtype::f32: return load<float>(b + 4 * i);
    default: return load<double>(b + 8 * i);
  }
}

__int128 int_at(const shmckpt::tensor& t, std::size_t i) {
  const std::byte* b = t.data();
  switch (t.type()) {
    case shmckpt::dtype::boolean:
    case shmckpt::dtype::u8: return load<std::uint8_t>(b + i);
    case shmckpt::dtype::i8: return load<std::int8_t>(b + i);
    case shmckpt::dtype::i16: return load<std::int16_t>(b + 2 * i);
    case shmckpt::dtype::u16: return load<std::uint16_t>(b + 2 * i);
    case shmckpt::dtype::i32: return load<std::int32_t>(b + 4 * i);
    case shmckpt::dtype::u32: return load<std::uint32_t>(b + 4 * i);
    case shmckpt::dtype::i64: return load<std::int64_t>(b + 8 * i);
    default: return load<std::uint64_t>(b + 8 * i);
  }
}

std::string int128_text(__int128 v) {
  if (v == 0) return "0";
  bool negative = v < 0;
  unsigned __int128 u = negative ? -static_cast<unsigned __int128>(v) : v;
  std::string s;
  for (; u; u /= 10) s += static_cast<char>('0' + static_cast<int>(u % 10));
  if (negative) s += '-';
  return {s.rbegin(), s.rend()};
}

// Integer values of any supported dtype fit in [-2^63, 2^64): JSON as int64 or uint64.
boost::json::value json_int(__int128 v) {
  if (v < 0) return static_cast<std::int64_t>(v);
  return static_cast<std::uint64_t>(v);
}

// A value of a float dtype at that dtype's precision: an F32 0.1 prints as "0.1", not as
// "0.10000000149011612". F16 and BF16 values are exact floats, so float precision covers them.
std::string float_text(double d, shmckpt::dtype t) {
  if (t == shmckpt::dtype::f64 || !std::isfinite(d)) return double_text(d);
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, static_cast<float>(d));
  std::string s(buf, r.ptr);
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

std::string element_text(const shmckpt::tensor& t, std::size_t i) {
  if (classify(t.type()) == element_class::integer) return int128_text(int_at(t, i));
  return float_text(float_at(t, i), t.type());
}

boost::json::value element_json(const shmckpt::tensor& t, std::size_t i) {
  if (classify(t.type()) == element_class::integer) return json_int(int_at(t, i));
  return json_double(float_at(t, i));
}

std::string hex_bytes(std::span<const std::byte> bytes) {
  std::string s;
  char buf[4];
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%02x", static_cast<unsigned>(bytes[i]));
    if (i) s += ' ';
    s += buf;
  }
  return s;
}

// ---- show ------------------------------------------------------------------------------------

struct tensor_stats {
  std::uint64_t elements = 0;
  // floating: over finite elements only; NaN and infinities are counted instead
  std::uint64_t finite = 0, nan = 0, pos_inf = 0, neg_inf = 0;
  double fmin = 0, fmax = 0;
  // integer
  __int128 imin = 0, imax = 0;
  long double sum = 0;
  double mean() const {
    std::uint64_t n = finite;
    return n ? static_cast<double>(sum / static_cast<long double>(n)) : 0.0;
  }
};

tensor_stats compute_stats(const shmckpt::tensor& t) {
  tensor_stats s;
  s.elements = static_cast<std::uint64_t>(t.numel());
  auto n = static_cast<std::size_t>(s.elements);
  if (classify(t.type()) == element_class::floating) {
    for (std::size_t i = 0; i < n; ++i) {
      double d = float_at(t, i);
      if (std::isnan(d)) {
        ++s.nan;
      } else if (std::isinf(d)) {
        ++(d > 0 ? s.pos_inf : s.neg_inf);
      } else {
        if (s.finite == 0 || d < s.fmin) s.fmin = d;
        if (s.finite == 0 || d > s.fmax) s.fmax = d;
        s.sum += d;
        ++s.finite;
      }
    }
  } else if (classify(t.type()) == element_class::integer) {
    for (std::size_t i = 0; i < n; ++i) {
      __int128 v = int_at(t, i);
      if (i == 0 || v < s.imin) s.imin = v;
      if (i == 0 || v > s.imax) s.imax = v;
      s.sum += static_cast<long double>(v);
    }
    s.finite = s.elements;
  }
  return s;
}

// Thrown for a key the file does not hold: a usage problem (status 2) on valid input, reported
// without the --help hint, since the fix is a different key, not a different option.
struct unknown_key_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int run_show(const std::vector<std::string>& args) {
  po::options_description desc(
      "show: one tensor's metadata, summary statistics and first values (or one other value)");
  add_rank_option(desc);
  desc.add_options()("json", "print one JSON document instead of text")(
      "values,n", po::value<std::size_t>()->default_value(8),
      "how many leading values (or, for F8/F4/F6/C64, bytes × 2) to print");
  auto pc = parse_command("show", args, desc, {{"path", "<file|dir>"}, {"key", "<key>"}});
  if (pc.help) return exit_ok;
  int rank = rank_option("show", pc);
  fs::path file = rank_file(pc.vm["path"].as<std::string>(), rank);
  std::string key = pc.vm["key"].as<std::string>();
  std::size_t shown = pc.vm["values"].as<std::size_t>();

  shmckpt::state_dict sd = shmckpt::read(file, inspect_options());
  flat_tree flat(sd);
  auto found = flat.nodes.find(key);
  if (found == flat.nodes.end())
    throw unknown_key_error("no tensor '" + printable(key) + "' in " + file.string() +
                            "; try 'ckpt-inspect list " + file.string() + "'");
  const shmckpt::value& v = *found->second;
  bool json = pc.vm.count("json") > 0;

  if (v.type() != shmckpt::kind::tensor) {
    if (json) {
      boost::json::object doc;
      doc["path"] = json_text(file.string());
      doc["key"] = json_text(key);
      doc["kind"] = shmckpt::kind_name(v.type());
      doc["value"] = value_json(v, key);
      std::cout << boost::json::serialize(doc) << "\n";
    } else {
      print_value(key, v, 0);
    }
    return exit_ok;
  }

  const shmckpt::tensor& t = v.as_tensor();
  shmckpt::tensor_entry entry;
  for (auto& e : shmckpt::list_entries(file))
    if (e.name == key) entry = std::move(e);
  tensor_stats st = compute_stats(t);
  element_class cls = classify(t.type());
  std::size_t count = static_cast<std::size_t>(std::min<std::uint64_t>(shown, st.elements));
  std::size_t nbytes = cls == element_class::opaque ? std::min(t.nbytes(), 2 * shown) : 0;

  if (json) {
    boost::json::object doc;
    doc["path"] = json_text(file.string());
    doc["key"] = json_text(key);
    doc["kind"] = "tensor";
    doc["dtype"] = shmckpt::dtype_name(t.type());
    doc["shape"] = json_shape(t.shape());
    doc["elements"] = st.elements;
    doc["bytes"] = t.nbytes();
    doc["offset"] = entry.offset;
    if (entry.checksum.empty()) doc["checksum"] = nullptr;
    else doc["checksum"] = entry.checksum;
    if (cls == element_class::opaque) {
      doc["stats"] = nullptr;
      doc["first_bytes"] = hex_bytes(t.bytes().first(nbytes));
    } else {
      boost::json::object stats;
      bool any = st.finite > 0;
      if (cls == element_class::floating) {
        stats["min"] = any ? json_double(st.fmin) : nullptr;
        stats["max"] = any ? json_double(st.fmax) : nullptr;
        stats["mean"] = any ? json_double(st.mean()) : nullptr;
        stats["finite"] = st.finite;
        stats["nan"] = st.nan;
        stats["inf"] = st.pos_inf;
        stats["neg_inf"] = st.neg_inf;
      } else {
        stats["min"] = any ? json_int(st.imin) : nullptr;
        stats["max"] = any ? json_int(st.imax) : nullptr;
        stats["mean"] = any ? json_double(st.mean()) : nullptr;
      }
      doc["stats"] = std::move(stats);
      boost::json::array values;
      for (std::size_t i = 0; i < count; ++i) values.push_back(element_json(t, i));
      doc["values"] = std::move(values);
    }
    std::cout << boost::json::serialize(doc) << "\n";
    return exit_ok;
  }

  auto row = [](const char* label, const std::string& text) {
    std::cout << "  " << label << std::string(10 - std::strlen(label), ' ') << text << "\n";
  };
  std::cout << file.string() << ": tensor '" << printable(key) << "'\n";
  row("dtype", std::string(shmckpt::dtype_name(t.type())));
  row("shape", shape_text(t.shape()) + " (" + std::to_string(st.elements) +
                   (st.elements == 1 ? " element)" : " elements)"));
  row("bytes", std::to_string(t.nbytes()) + " at offset " + std::to_string(entry.offset) +
                   " of the data section");
  row("checksum", entry.checksum.empty() ? "none recorded" : entry.checksum);
  if (cls == element_class::floating) {
    bool any = st.finite > 0;
    row("min", any ? float_text(st.fmin, t.type()) : "n/a (no finite values)");
    row("max", any ? float_text(st.fmax, t.type()) : "n/a (no finite values)");
    row("mean", any ? double_text(st.mean()) : "n/a (no finite values)");
    row("nan", std::to_string(st.nan));
    row("inf", std::to_string(st.pos_inf + st.neg_inf) + " (+" + std::to_string(st.pos_inf) +
                   ", -" + std::to_string(st.neg_inf) + ")");
  } else if (cls == element_class::integer) {
    bool any = st.elements > 0;
    row("min", any ? int128_text(st.imin) : "n/a (empty)");
    row("max", any ? int128_text(st.imax) : "n/a (empty)");
    row("mean", any ? double_text(st.mean()) : "n/a (empty)");
  }
  if (cls == element_class::opaque) {
    row("raw", hex_bytes(t.bytes().first(nbytes)) +
                   (nbytes < t.nbytes() ? " ... (first " + std::to_string(nbytes) + " of " +
                                              std::to_string(t.nbytes()) + " bytes)"
                                        : ""));
  } else {
    std::string values = "[";
    for (std::size_t i = 0; i < count; ++i) values += (i ? ", " : "") + element_text(t, i);
    values += count < st.elements ? ", ...]" : "]";
    if (count < st.elements)
      values += " (first " + std::to_string(count) + " of " + std::to_string(st.elements) + ")";
    row("values", values);
  }
  return exit_ok;
}

// ---- diff ------------------------------------------------------------------------------------

// How two tensors of the same dtype and shape differ.
struct tensor_difference {
  std::uint64_t elements = 0;       // compared units: elements, or bytes for opaque dtypes
  std::uint64_t differ = 0;         // of those, how many differ
  std::uint64_t nan_mismatch = 0;   // floating: NaN on one side only
  double max_abs_float = 0;         // floating: largest |a - b| over non-NaN pairs
  unsigned __int128 max_abs_int = 0;  // integer
  bool bytes_differ = false;
};

tensor_difference compare_tensors(const shmckpt::tensor& a, const shmckpt::tensor& b) {
  tensor_difference d;
  d.bytes_differ = a.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) != 0;
  element_class cls = classify(a.type());
  if (cls == element_class::opaque) {
    d.elements = a.nbytes();
    for (std::size_t i = 0; d.bytes_differ && i < a.nbytes(); ++i)
      d.differ += a.data()[i] != b.data()[i];
    return d;
  }
  d.elements = static_cast<std::uint64_t>(a.numel());
  if (!d.bytes_differ) return d;
  auto n = static_cast<std::size_t>(d.elements);
  for (std::size_t i = 0; i < n; ++i) {
    if (cls == element_class::floating) {
      double x = float_at(a, i), y = float_at(b, i);
      if (std::isnan(x) || std::isnan(y)) {
        if (std::isnan(x) && std::isnan(y)) continue;
        ++d.nan_mismatch;
        ++d.differ;
      } else if (x != y) {
        ++d.differ;
        d.max_abs_float = std::max(d.max_abs_float, std::fabs(x - y));
      }
    } else {
      __int128 x = int_at(a, i), y = int_at(b, i);
      if (x != y) {
        ++d.differ;
        auto diff = static_cast<unsigned __int128>(x > y ? x - y : y - x);
        d.max_abs_int = std::max(d.max_abs_int, diff);
      }
    }
  }
  return d;
}

// One line about a tensor pair that differs ("32 of 32 elements differ, max |a-b| 1.5").
std::string difference_text(const shmckpt::tensor& t, const tensor_difference& d) {
  element_class cls = classify(t.type());
  if (cls == element_class::opaque)
    return std::to_string(d.differ) + " of " + std::to_string(d.elements) + " bytes differ";
  if (d.differ == 0)
    return "values equal, bytes differ (signed zeros or NaN payloads)";
  std::string s = std::to_string(d.differ) + " of " + std::to_string(d.elements) +
                  (d.elements == 1 ? " element differs" : " elements differ");
  if (d.differ > d.nan_mismatch) {
    s += ", max |a - b| = ";
    s += cls == element_class::floating
             ? double_text(d.max_abs_float)
             : int128_text(static_cast<__int128>(d.max_abs_int));
  }
  if (d.nan_mismatch) s += ", " + std::to_string(d.nan_mismatch) + " NaN on one side only";
  return s;
}

boost::json::object difference_json(const std::string& key, const shmckpt::tensor& t,
                                    const tensor_difference& d) {
  boost::json::object o;
  o["key"] = json_text(key);
  o["dtype"] = shmckpt::dtype_name(t.type());
  o["shape"] = json_shape(t.shape());
  if (classify(t.type()) == element_class::opaque) {
    o["change"] = "bytes";
    o["bytes"] = d.elements;
    o["bytes_differ"] = d.differ;
    return o;
  }
  o["change"] = "values";
  o["elements"] = d.elements;
  o["elements_differ"] = d.differ;
  if (d.differ == d.nan_mismatch) o["max_abs_diff"] = nullptr;
  else if (classify(t.type()) == element_class::floating)
    o["max_abs_diff"] = json_double(d.max_abs_float);
  else o["max_abs_diff"] = static_cast<std::uint64_t>(d.max_abs_int);
  o["nan_mismatches"] = d.nan_mismatch;
  return o;
}

bool same_value(const shmckpt::value& a, const shmckpt::value& b) {
  if (a.type() != b.type()) return false;
  if (a.type() == shmckpt::kind::dict) return a.as_dict().empty() && b.as_dict().empty();
  if (a.is_sequence()) return a.as_sequence().empty() && b.as_sequence().empty();
  return a == b;  // bit-exact for floats
}

int run_diff(const std::vector<std::string>& args) {
  po::options_description desc(
      "diff: compare two checkpoints key by key (exit 0 identical, 1 different)");
  add_rank_option(desc);
  desc.add_options()("json", "print one JSON document instead of text");
  auto pc = parse_command("diff", args, desc, {{"a", "<a>"}, {"b", "<b>"}});
  if (pc.help) return exit_ok;
  int rank = rank_option("diff", pc);
  fs::path path_a = rank_file(pc.vm["a"].as<std::string>(), rank);
  fs::path path_b = rank_file(pc.vm["b"].as<std::string>(), rank);
  shmckpt::state_dict sd_a = shmckpt::read(path_a, inspect_options());
  shmckpt::state_dict sd_b = shmckpt::read(path_b, inspect_options());
  flat_tree a(sd_a), b(sd_b);
  std::unordered_map<std::string, const shmckpt::value*> leaves_b(b.leaves.begin(),
                                                                  b.leaves.end());
  std::unordered_map<std::string, const shmckpt::value*> leaves_a(a.leaves.begin(),
                                                                  a.leaves.end());
  bool json = pc.vm.count("json") > 0;
  std::vector<std::string> lines;
  boost::json::array only_a, only_b, changed;
  std::uint64_t same = 0;

  for (const auto& [key, va] : a.leaves) {
    auto it = leaves_b.find(key);
    if (it == leaves_b.end()) {
      lines.push_back("- " + printable(key) + ": " + describe(*va));
      only_a.push_back({{"key", json_text(key)}, {"value", value_json(*va, key)}});
      continue;
    }
    const shmckpt::value& vb = *it->second;
    if (va->type() == shmckpt::kind::tensor && vb.type() == shmckpt::kind::tensor) {
      const auto& ta = va->as_tensor();
      const auto& tb = vb.as_tensor();
      auto layout = [](const shmckpt::tensor& t) {
        return std::string(shmckpt::dtype_name(t.type())) + " " + shape_text(t.shape());
      };
      std::string layout_a = layout(ta), layout_b = layout(tb);
      if (ta.type() != tb.type() || ta.shape() != tb.shape()) {
        lines.push_back("~ " + printable(key) + ": " + layout_a + " -> " + layout_b);
        changed.push_back({{"key", json_text(key)}, {"change", "layout"},
                           {"a", value_json(*va, key)}, {"b", value_json(vb, key)}});
        continue;
      }
      tensor_difference d = compare_tensors(ta, tb);
      if (!d.bytes_differ) {
        ++same;
        continue;
      }
      lines.push_back("~ " + printable(key) + ": " + layout_a + ": " + difference_text(ta, d));
      changed.push_back(difference_json(key, ta, d));
      continue;
    }
    if (same_value(*va, vb)) {
      ++same;
      continue;
    }
    lines.push_back("~ " + printable(key) + ": " + describe(*va) + " -> " + describe(vb));
    changed.push_back({{"key", json_text(key)}, {"change", "value"},
                       {"a", value_json(*va, key)}, {"b", value_json(vb, key)}});
  }
  for (const auto& [key, vb] : b.leaves) {
    if (leaves_a.contains(key)) continue;
    lines.push_back("+ " + printable(key) + ": " + describe(*vb));
    only_b.push_back({{"key", json_text(key)}, {"value", value_json(*vb, key)}});
  }

  bool identical = only_a.empty() && only_b.empty() && changed.empty();
  if (json) {
    boost::json::object doc;
    doc["a"] = json_text(path_a.string());
    doc["b"] = json_text(path_b.string());
    doc["identical"] = identical;
    doc["only_in_a"] = std::move(only_a);
    doc["only_in_b"] = std::move(only_b);
    doc["changed"] = std::move(changed);
    doc["same"] = same;
    std::cout << boost::json::serialize(doc) << "\n";
  } else {
    std::cout << "--- a: " << path_a.string() << "\n+++ b: " << path_b.string() << "\n";
    for (const auto& l : lines) std::cout << l << "\n";
    if (identical)
      std::cout << "identical: " << same << (same == 1 ? " key\n" : " keys\n");
    else
      std::cout << only_a.size() << " only in a, " << only_b.size() << " only in b, "
                << changed.size() << " changed, " << same << " same\n";
  }
  return identical ? exit_ok : exit_check_failed;
}

// ---- verify ----------------------------------------------------------------------------------

std::string human_bytes(std::uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  else std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

// A one-line progress bar on stderr, redrawn in place with '\r' when the percentage changes
// (so at most ~100 redraws per file, whatever its size) and erased when done or on unwinding,
// so an error message that follows starts on a clean line. Only used when stderr is a terminal.
class progress_bar {
 public:
  explicit progress_bar(std::string label) : label_(std::move(label)) {}
  progress_bar(const progress_bar&) = delete;
  progress_bar& operator=(const progress_bar&) = delete;
  ~progress_bar() { clear(); }

  void update(std::uint64_t done, std::uint64_t total) {
    int percent = total ? static_cast<int>(done * 100 / total) : 100;
    if (percent == last_percent_) return;
    last_percent_ = percent;
    constexpr int width = 30;
    int filled = percent * width / 100;
    std::string line = "\r" + label_ + " [" + std::string(static_cast<std::size_t>(filled), '#') +
                       std::string(static_cast<std::size_t>(width - filled), '.') + "] " +
                       std::to_string(percent) + "% " + human_bytes(done) + " / " +
                       human_bytes(total);
    std::cerr << line << std::flush;
    drawn_ = true;
  }

  void clear() {
    if (drawn_) std::cerr << "\r\033[K" << std::flush;
    drawn_ = false;
  }

 private:
  std::string label_;
  int last_percent_ = -1;
  bool drawn_ = false;
};


int run_verify(const std::vector<std::string>& args) {
  po::options_description desc("verify: recompute every tensor's XXH3-64 and compare it");
  auto pc = parse_command("verify", args, desc);
  if (pc.help) return exit_ok;
  // Check every file before printing, so that unreadable input prints nothing on stdout.
  std::vector<std::pair<checkpoint_ref, std::vector<shmckpt::checksum_check>>> results;
  bool terminal = ::isatty(STDERR_FILENO) == 1;
  for (auto& ref : find_checkpoints(pc.vm["path"].as<std::string>())) {
    shmckpt::check_checksums_options options;
    std::optional<progress_bar> bar;
    if (terminal) {
      bar.emplace(printable(ref.path.string()));
      options.progress = [&](std::uint64_t done, std::uint64_t total) { bar->update(done, total); };
    }
    auto checks = shmckpt::check_checksums(ref.path, options);
    results.emplace_back(std::move(ref), std::move(checks));
  }
  bool all_ok = true;
  for (const auto& [ref, checks] : results) {
    std::size_t recorded = 0, bad = 0;
    for (const auto& c : checks) {
      if (!c.recorded.empty()) ++recorded;
      if (!c.ok()) {
        ++bad;
        std::cout << ref.path.string() << ": tensor '" << printable(c.name)
                  << "': checksum mismatch: recorded " << c.recorded << ", computed " << c.actual
                  << "\n";
      }
    }
    std::cout << ref.path.string() << ": ";
    if (recorded == 0)
      std::cout << "no checksums recorded; " << checks.size() << " tensors not verified\n";
    else if (bad == 0)
      std::cout << "ok, " << recorded << " tensors verified\n";
    else
      std::cout << bad << " of " << recorded << " tensors do not match\n";
    all_ok &= bad == 0;
  }
  return all_ok ? exit_ok : exit_check_failed;
}

// ---- dispatch --------------------------------------------------------------------------------

struct command {
  std::string_view name;
  std::string_view summary;
  int (*run)(const std::vector<std::string>&);
};

constexpr command commands[] = {
    {"list", "list the tensors of a checkpoint file, or of every rank file in a directory",
     run_list},
    {"tree", "print the state-dict tree of a checkpoint (keys, values, tensor shapes)", run_tree},
    {"show", "one tensor's metadata, statistics and first values (or one other value)",
     run_show},
    {"diff", "compare two checkpoints: keys, dtypes, shapes, values", run_diff},
    {"verify", "recompute and compare every tensor's checksum", run_verify},
};

void print_usage(std::ostream& os, const po::options_description& global) {
  os << "usage: ckpt-inspect [--help] [--version] <command> [<args>]\n\ncommands:\n";
  for (const auto& c : commands)
    os << "  " << c.name << std::string(8 - c.name.size(), ' ') << c.summary << "\n";
  os << "\n" << global
     << "\nRun 'ckpt-inspect <command> --help' for a command's options.\n"
        "Exit status: 0 ok, 1 verify found a mismatch or diff a difference, 2 usage error (also\n"
        "an unknown key), 3 unreadable or corrupt input.\n";
}

int run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  // Global options are those before the command; everything after belongs to the command.
  auto first = std::find_if(args.begin(), args.end(),
                            [](const std::string& a) { return a.empty() || a[0] != '-'; });
  std::vector<std::string> global_args(args.begin(), first);
  std::vector<std::string> command_args(first == args.end() ? first : first + 1, args.end());

  po::options_description global("global options");
  global.add_options()("help,h", "show this help")("version", "show the version");
  po::variables_map vm;
  po::store(po::command_line_parser(global_args).options(global).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    print_usage(std::cout, global);
    return exit_ok;
  }
  if (vm.count("version")) {
    std::cout << "ckpt-inspect (shmckpt) " << shmckpt::library_version() << "\n";
    return exit_ok;
  }
  if (first == args.end()) throw usage_error("missing command");
  for (const auto& c : commands) {
    if (c.name == *first) {
      current_command = c.name;
      return c.run(command_args);
    }
  }
  throw usage_error("unknown command '" + printable(*first) + "'");
}

// One line, whatever the message holds.
std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

int usage_failure(const char* what) {
  std::string help = current_command.empty() ? "--help" : current_command + " --help";
  std::cerr << "ckpt-inspect: " << one_line(what) << "\nTry 'ckpt-inspect " << help << "'.\n";
  return exit_usage;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const unknown_key_error& e) {
    std::cerr << "ckpt-inspect: " << one_line(e.what()) << "\n";
    return exit_usage;
  } catch (const usage_error& e) {
    return usage_failure(e.what());
  } catch (const po::error& e) {
    return usage_failure(e.what());
  } catch (const shmckpt::error& e) {
    std::cerr << "ckpt-inspect: " << one_line(e.what()) << "\n";
    return exit_bad_input;
  } catch (const std::exception& e) {
    // Directory iteration and stream errors: the input could not be read.
    std::cerr << "ckpt-inspect: " << one_line(e.what()) << "\n";
    return exit_bad_input;
  }
}
