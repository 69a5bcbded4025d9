// list.cpp — `ckpt-inspect list`: every tensor entry (name, dtype, shape, bytes) and totals, and
// for a directory what its manifest and temporary files say.
#include <algorithm>
#include <array>
#include <iostream>

#include "inspect.hpp"

namespace ckpt_inspect {
namespace {

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
                    shmckpt::format_shape(e.shape), std::to_string(e.nbytes)});
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


}  // namespace

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

  // A directory is a checkpoint only once its manifest is published and matches its files
  // (commit.hpp).
  const std::filesystem::path root = pc.vm["path"].as<std::string>();
  const bool is_dir = std::filesystem::is_directory(root);
  const manifest_state mstate = is_dir ? check_manifest(root) : manifest_state{};
  const auto& manifest = mstate.manifest;
  const bool complete = mstate.complete;
  const auto temps = is_dir ? shmckpt::temp_files(root) : std::vector<shmckpt::temp_file_state>{};

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
      if (!mstate.problem.empty()) m["problem"] = mstate.problem;
      doc["manifest"] = std::move(m);
      boost::json::array t;
      for (const auto& f : temps)
        t.push_back({{"path", f.path.string()}, {"bytes", f.bytes}, {"stale", f.stale}});
      doc["temp_files"] = std::move(t);
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
    else if (!mstate.problem.empty() && (manifest || mstate.present))
      std::cout << "manifest: " << shmckpt::manifest_name
                << " does not match the files: INCOMPLETE (" << printable(mstate.problem) << ")\n";
    else
      std::cout << "manifest: none: INCOMPLETE (a save failed or is still in progress)\n";
    for (const auto& f : temps)
      std::cout << "temporary file: " << printable(f.path.filename().string()) << ", " << f.bytes
                << " bytes, "
                << (f.stale ? "stale: its writer is gone (keep_last or the next save removes it)"
                            : "being written")
                << "\n";
  }
  return exit_ok;
}

}  // namespace ckpt_inspect
