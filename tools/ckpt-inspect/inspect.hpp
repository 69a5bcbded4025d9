// inspect.hpp — what the subcommands of ckpt-inspect share.
//
// ckpt-inspect is a git-style front end (main.cpp): global options come before the command,
// everything after it belongs to the command, which parses it with its own Boost.Program_options
// description (parse_command). Each command lives in its own file (list.cpp, tree.cpp,
// show.cpp, diff.cpp, verify.cpp) as one `int run_<name>(const std::vector<std::string>&)`;
// adding one means writing that function and one line in main.cpp's `commands`.
//
// All reading and validation is the library's (reader.hpp, checkpoint_dir.hpp), and so are the names
// of a checkpoint directory (layout.hpp) and the escaping of untrusted text (lib/format/
// text.hpp: names and strings come from untrusted files). What is here is only how the tool
// shows things: values on one line or as JSON (values.cpp), tensor elements (values.cpp), and
// the command line (common.cpp).
//
// Exit status (docs/ckpt-inspect.md): 0 ok, 1 a check failed (verify found a checksum mismatch,
// diff found a difference), 2 usage error (including a key `show` cannot find), 3 unreadable or
// corrupt input. Errors are one line on stderr, starting "ckpt-inspect: ".
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include "format/text.hpp"  // printable, quote_string, utf8_lossy, hex_bytes, human_bytes
#include "shmckpt/checkpoint_dir.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/state_dict.hpp"

namespace ckpt_inspect {

namespace fs = std::filesystem;
namespace po = boost::program_options;
using shmckpt::detail::printable;

inline constexpr int exit_ok = 0;
inline constexpr int exit_check_failed = 1;
inline constexpr int exit_usage = 2;
inline constexpr int exit_bad_input = 3;

/// A mistake in the command line; reported with a hint and exit status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A key the file does not hold: a usage problem (status 2) on valid input, reported without
/// the --help hint, since the fix is a different key, not a different option.
struct unknown_key_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int run_list(const std::vector<std::string>& args);
int run_tree(const std::vector<std::string>& args);
int run_show(const std::vector<std::string>& args);
int run_diff(const std::vector<std::string>& args);
int run_verify(const std::vector<std::string>& args);

// ---- the command line (common.cpp) -----------------------------------------------------------

struct parsed_command {
  po::variables_map vm;
  bool help = false;
};

/// One positional argument of a command: its variable name and how usage text spells it.
struct positional {
  const char* name;
  const char* shown;
};

/// Parses `args` against `desc` plus --help and the positionals (by default one <file|dir>
/// stored as "path"); each positional is required.
parsed_command parse_command(const std::string& name, const std::vector<std::string>& args,
                             po::options_description desc,
                             std::initializer_list<positional> positionals = {
                                 {"path", "<file|dir>"}});

/// --rank N, checked: which rank file of a directory a single-file command looks at.
void add_rank_option(po::options_description& desc);
int rank_option(const std::string& name, const parsed_command& pc);

// ---- finding the files (common.cpp) ----------------------------------------------------------

struct checkpoint_ref {
  fs::path path;
  std::optional<int> rank;  // from a checkpoint_<rank>.safetensors name
};

/// A file is itself; a directory is every checkpoint_<rank>.safetensors in it, by rank.
std::vector<checkpoint_ref> find_checkpoints(const fs::path& p);

/// The file a single-file command reads: the path itself, or a directory's rank file.
fs::path rank_file(const fs::path& p, int rank);

/// Inspection looks at incomplete checkpoint directories too (a failed save is worth
/// examining).
shmckpt::read_options inspect_options();

/// What the manifest of a directory says about it.
struct manifest_state {
  bool present = false;   // checkpoint.json exists
  bool complete = false;  // and matches the files (shmckpt::verify_checkpoint)
  std::optional<shmckpt::manifest> manifest;  // when it parses
  std::string problem;    // why it is not complete, when it is present
};
manifest_state check_manifest(const fs::path& dir);

// ---- values (values.cpp) ---------------------------------------------------------------------

/// Shortest round-trip text of a double, always recognisable as a float ("1.0", "nan", "-inf").
std::string double_text(double d);

/// One value per line, nested values indented (the text output of `tree`).
void print_value(const std::string& key, const shmckpt::value& v, int indent);

/// "tensor F32 [4, 8]", "int 1200", "string \"x\"", "dict (0)": one value on one line.
std::string describe(const shmckpt::value& v);

/// Finite doubles as JSON numbers; NaN and infinities, which JSON lacks, as strings.
boost::json::value json_double(double d);
boost::json::array json_shape(const std::vector<std::int64_t>& shape);

/// Dicts as objects (key order kept), lists as arrays, tensors as
/// {"tensor": name, "dtype", "shape", "bytes"}; `path` is the value's flattened key path.
boost::json::value value_json(const shmckpt::value& v, const std::string& path);

/// Every node of a tree (containers too, not the root) by flattened key path, in tree order.
/// Leaves are tensors, non-tensor values and empty containers. A path reachable twice keeps the
/// first node.
struct flat_tree {
  std::vector<std::pair<std::string, const shmckpt::value*>> leaves;
  std::unordered_map<std::string, const shmckpt::value*> nodes;

  explicit flat_tree(const shmckpt::dict& root);
};

// ---- tensor elements (values.cpp) ------------------------------------------------------------

enum class element_class { floating, integer, opaque };  // opaque: F8 variants, F4, F6, C64

element_class classify(shmckpt::dtype t);
double float_at(const shmckpt::tensor& t, std::size_t i);  // floating dtypes
__int128 int_at(const shmckpt::tensor& t, std::size_t i);  // integer dtypes
std::string int128_text(__int128 v);
/// Integer values of any supported dtype fit in [-2^63, 2^64): JSON as int64 or uint64.
boost::json::value json_int(__int128 v);
/// A value of a float dtype at that dtype's precision: an F32 0.1 prints as "0.1".
std::string float_text(double d, shmckpt::dtype t);
std::string element_text(const shmckpt::tensor& t, std::size_t i);
boost::json::value element_json(const shmckpt::tensor& t, std::size_t i);

}  // namespace ckpt_inspect
