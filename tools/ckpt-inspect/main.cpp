// ckpt-inspect — look inside shmckpt checkpoint files without writing any code.
//
//   ckpt-inspect [--help] [--version] <command> [<args>]
//
// This file dispatches: global options, the command table, and turning every error into one
// line on stderr with its exit status. The commands are in list.cpp, tree.cpp, show.cpp,
// diff.cpp and verify.cpp; what they share is in inspect.hpp.
#include <algorithm>
#include <iostream>

#include "inspect.hpp"
#include "shmckpt/error.hpp"

namespace {

using namespace ckpt_inspect;

// The command being run, for the usage hint ("ckpt-inspect list --help"); empty before dispatch.
std::string current_command;

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
