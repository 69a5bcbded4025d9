// show.cpp — `ckpt-inspect show`: one tensor's metadata, summary statistics and first values
// (or one other value).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>

#include "inspect.hpp"

namespace ckpt_inspect {
namespace {

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

}  // namespace

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
      doc["path"] = shmckpt::detail::utf8_lossy(file.string());
      doc["key"] = shmckpt::detail::utf8_lossy(key);
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
    doc["path"] = shmckpt::detail::utf8_lossy(file.string());
    doc["key"] = shmckpt::detail::utf8_lossy(key);
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
      doc["first_bytes"] = shmckpt::detail::hex_bytes(t.bytes().first(nbytes), " ");
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
  row("shape", shmckpt::format_shape(t.shape()) + " (" + std::to_string(st.elements) +
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
    row("raw", shmckpt::detail::hex_bytes(t.bytes().first(nbytes), " ") +
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

}  // namespace ckpt_inspect
