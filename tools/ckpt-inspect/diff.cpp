// diff.cpp — `ckpt-inspect diff`: two checkpoints compared key by key (exit 0 identical,
// 1 different).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>

#include "inspect.hpp"

namespace ckpt_inspect {
namespace {

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
  o["key"] = shmckpt::detail::utf8_lossy(key);
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

}  // namespace

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
      only_a.push_back({{"key", shmckpt::detail::utf8_lossy(key)}, {"value", value_json(*va, key)}});
      continue;
    }
    const shmckpt::value& vb = *it->second;
    if (va->type() == shmckpt::kind::tensor && vb.type() == shmckpt::kind::tensor) {
      const auto& ta = va->as_tensor();
      const auto& tb = vb.as_tensor();
      auto layout = [](const shmckpt::tensor& t) {
        return std::string(shmckpt::dtype_name(t.type())) + " " + shmckpt::format_shape(t.shape());
      };
      std::string layout_a = layout(ta), layout_b = layout(tb);
      if (ta.type() != tb.type() || ta.shape() != tb.shape()) {
        lines.push_back("~ " + printable(key) + ": " + layout_a + " -> " + layout_b);
        changed.push_back({{"key", shmckpt::detail::utf8_lossy(key)}, {"change", "layout"},
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
    changed.push_back({{"key", shmckpt::detail::utf8_lossy(key)}, {"change", "value"},
                       {"a", value_json(*va, key)}, {"b", value_json(vb, key)}});
  }
  for (const auto& [key, vb] : b.leaves) {
    if (leaves_a.contains(key)) continue;
    lines.push_back("+ " + printable(key) + ": " + describe(*vb));
    only_b.push_back({{"key", shmckpt::detail::utf8_lossy(key)}, {"value", value_json(*vb, key)}});
  }

  bool identical = only_a.empty() && only_b.empty() && changed.empty();
  if (json) {
    boost::json::object doc;
    doc["a"] = shmckpt::detail::utf8_lossy(path_a.string());
    doc["b"] = shmckpt::detail::utf8_lossy(path_b.string());
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

}  // namespace ckpt_inspect
