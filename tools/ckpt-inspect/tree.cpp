// tree.cpp — `ckpt-inspect tree`: the state dict as the trainer saved it, with every value.
#include <iostream>

#include "inspect.hpp"

namespace ckpt_inspect {

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
    doc["path"] = shmckpt::detail::utf8_lossy(rank_file(path, rank).string());
    doc["tree"] = value_json(shmckpt::value(sd), "");
    std::cout << boost::json::serialize(doc) << "\n";
    return exit_ok;
  }
  for (const auto& [k, v] : sd) print_value(k, v, 0);
  return exit_ok;
}

}  // namespace ckpt_inspect
