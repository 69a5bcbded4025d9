// common.cpp — the command line and the files a command reads (inspect.hpp).
#include <algorithm>
#include <iostream>

#include "inspect.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/layout.hpp"

namespace ckpt_inspect {

parsed_command parse_command(const std::string& name, const std::vector<std::string>& args,
                             po::options_description desc,
                             std::initializer_list<positional> positionals) {
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

fs::path rank_file(const fs::path& p, int rank) {
  std::error_code ec;
  return fs::is_directory(p, ec) ? shmckpt::checkpoint_file_path(p, rank) : p;
}

shmckpt::read_options inspect_options() {
  shmckpt::read_options o;
  o.allow_incomplete = true;
  return o;
}

std::vector<checkpoint_ref> find_checkpoints(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_directory(p, ec)) return {{p, shmckpt::rank_from_file_name(p.filename().string())}};
  std::vector<checkpoint_ref> out;
  for (const auto& entry : fs::directory_iterator(p)) {
    auto rank = shmckpt::rank_from_file_name(entry.path().filename().string());
    if (rank) out.push_back({entry.path(), rank});
  }
  if (out.empty())
    shmckpt::throw_error(shmckpt::errc::not_found, "directory '" + p.string() +
                                                       "' holds no checkpoint_<rank>.safetensors");
  std::sort(out.begin(), out.end(),
            [](const checkpoint_ref& a, const checkpoint_ref& b) { return *a.rank < *b.rank; });
  return out;
}

manifest_state check_manifest(const fs::path& dir) {
  manifest_state m;
  m.present = fs::exists(dir / shmckpt::manifest_name);
  if (!m.present) return m;
  try {
    m.manifest = shmckpt::read_manifest(dir);
    shmckpt::verify_checkpoint(dir);
    m.complete = true;
  } catch (const shmckpt::error& e) {
    if (e.kind() != shmckpt::errc::corrupt_data && e.kind() != shmckpt::errc::not_found) throw;
    m.problem = e.what();
  }
  return m;
}

}  // namespace ckpt_inspect
