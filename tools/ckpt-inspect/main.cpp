// ckpt-inspect — look inside shmckpt checkpoint files without writing any code.
//
//   ckpt-inspect [--help] [--version] <command> [<args>]
//
// A git-style front end: global options come before the command, everything after it belongs to
// the command, which parses it with its own Boost.Program_options description. Adding a command
// means writing one `int run_x(const std::vector<std::string>&)` and one line in `commands`.
//
// Exit status (docs/ckpt-inspect.md): 0 ok, 1 a check failed (verify found a checksum
// mismatch), 2 usage error, 3 unreadable or corrupt input. Errors are one line on stderr,
// starting "ckpt-inspect: ". All the reading and validation is the library's (reader.hpp); this
// file only formats.
#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/state_dict.hpp"

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

// Parses `args` against `desc` plus --help and one positional <file|dir>.
parsed_command parse_command(const std::string& name, const std::vector<std::string>& args,
                             po::options_description desc) {
  desc.add_options()("help,h", "show this help");
  po::options_description hidden;
  hidden.add_options()("path", po::value<std::string>(), "checkpoint file or directory");
  po::options_description all;
  all.add(desc).add(hidden);
  po::positional_options_description pos;
  pos.add("path", 1);
  parsed_command pc;
  po::store(po::command_line_parser(args).options(all).positional(pos).run(), pc.vm);
  po::notify(pc.vm);
  if (pc.vm.count("help")) {
    std::cout << "usage: ckpt-inspect " << name << " [options] <file|dir>\n\n" << desc;
    pc.help = true;
  } else if (!pc.vm.count("path")) {
    throw usage_error(name + ": missing <file|dir>");
  }
  return pc;
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

  if (pc.vm.count("json")) {
    boost::json::array list;
    for (const auto& f : files) list.push_back(listing_json(f));
    boost::json::object doc;
    doc["files"] = std::move(list);
    doc["tensor_count"] = total_tensors;
    doc["total_bytes"] = total_bytes;
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
    case shmckpt::kind::list: {
      const auto& l = v.as_list();
      std::cout << "list (" << l.size() << ")\n";
      for (std::size_t i = 0; i < l.size(); ++i) print_value(std::to_string(i), l[i], indent + 1);
      break;
    }
    case shmckpt::kind::dict: {
      const auto& d = v.as_dict();
      std::cout << "dict (" << d.size() << ")\n";
      for (const auto& [k, child] : d) print_value(k, child, indent + 1);
      break;
    }
  }
}

int run_tree(const std::vector<std::string>& args) {
  po::options_description desc("tree: the state dict as the trainer saved it, with every value");
  desc.add_options()("rank", po::value<int>()->default_value(0),
                     "which checkpoint_<rank>.safetensors to show when given a directory");
  auto pc = parse_command("tree", args, desc);
  if (pc.help) return exit_ok;
  int rank = pc.vm["rank"].as<int>();
  if (rank < 0) throw usage_error("tree: --rank must be non-negative, not " + std::to_string(rank));
  shmckpt::state_dict sd = shmckpt::read(pc.vm["path"].as<std::string>(), {}, rank);
  for (const auto& [k, v] : sd) print_value(k, v, 0);
  return exit_ok;
}

// ---- verify ----------------------------------------------------------------------------------

int run_verify(const std::vector<std::string>& args) {
  po::options_description desc("verify: recompute every tensor's XXH3-64 and compare it");
  auto pc = parse_command("verify", args, desc);
  if (pc.help) return exit_ok;
  // Check every file before printing, so that unreadable input prints nothing on stdout.
  std::vector<std::pair<checkpoint_ref, std::vector<shmckpt::checksum_check>>> results;
  for (auto& ref : find_checkpoints(pc.vm["path"].as<std::string>())) {
    auto checks = shmckpt::check_checksums(ref.path);
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
    {"verify", "recompute and compare every tensor's checksum", run_verify},
};

void print_usage(std::ostream& os, const po::options_description& global) {
  os << "usage: ckpt-inspect [--help] [--version] <command> [<args>]\n\ncommands:\n";
  for (const auto& c : commands)
    os << "  " << c.name << std::string(8 - c.name.size(), ' ') << c.summary << "\n";
  os << "\n" << global
     << "\nRun 'ckpt-inspect <command> --help' for a command's options.\n"
        "Exit status: 0 ok, 1 verify found a mismatch, 2 usage error, 3 unreadable or corrupt "
        "input.\n";
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
