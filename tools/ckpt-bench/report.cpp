// report.cpp — see report.hpp.
#include "report.hpp"

#include <cmath>
#include <cstdio>
#include <iostream>

#include <boost/json.hpp>

namespace json = boost::json;

namespace ckpt_bench {

namespace {

// `text` with the first `key` replaced by `by`.
std::string substitute(std::string text, const std::string& key, const std::string& by) {
  if (auto at = text.find(key); at != std::string::npos) text.replace(at, key.size(), by);
  return text;
}

// A number as JSON: null when it is not finite (a window in which a loop never ran gives 0/0),
// since JSON has no NaN or infinity and a reader of the document would refuse it whole.
json::value number(double v) { return std::isfinite(v) ? json::value(v) : json::value(nullptr); }

json::object stats_json(const stats& s) {
  return {{"median", number(s.median)}, {"min", number(s.min)}, {"max", number(s.max)}, {"n", s.n}};
}

}  // namespace

const char* unit_name(unit u) {
  switch (u) {
    case unit::seconds:
      return "s";
    case unit::bytes_per_second:
      return "B/s";
    case unit::bytes:
      return "B";
    case unit::ratio:
      return "x";
    case unit::flops:
      return "FLOP/s";
  }
  return "?";
}

const char* status_name(status s) {
  switch (s) {
    case status::met:
      return "met";
    case status::missed:
      return "MISSED";
    case status::info:
      return "info";
    case status::skipped:
      return "skipped";
  }
  return "?";
}

figure make_figure(const figure_spec& spec, const reading& r) {
  figure f;
  f.id = spec.id + r.id_suffix;
  f.name = substitute(spec.name, "{}", r.detail);
  f.size = r.size;
  f.tensors = r.tensors;
  f.u = spec.u;
  f.value = r.value;
  f.note = r.note;
  if (spec.baseline) {
    f.baseline_label = substitute(spec.baseline, "{}", r.baseline_detail);
    f.baseline = r.baseline;
    f.has_ratio = f.value.n > 0 && f.baseline.n > 0 && f.baseline.median != 0 &&
                  std::isfinite(f.value.median / f.baseline.median);
    if (f.has_ratio) f.ratio = f.value.median / f.baseline.median;
  }
  const double bound = spec.bound != 0 ? spec.bound : r.bound;
  const bool ratio_rule = spec.judge == rule::ratio_at_least || spec.judge == rule::ratio_at_most;
  if (spec.target) {
    f.target = substitute(spec.target, "{bound}", fmt(bound, spec.u));
  } else if (ratio_rule) {
    char t[32];
    std::snprintf(t, sizeof t, "%s %gx", spec.judge == rule::ratio_at_least ? ">=" : "<=", bound);
    f.target = t;
  }
  bool ok = false;
  switch (spec.judge) {
    case rule::info:
      f.st = status::info;
      return f;
    case rule::value_at_most:
      ok = f.value.median <= bound;
      break;
    case rule::ratio_at_least:
      ok = f.has_ratio && f.ratio >= bound;
      break;
    case rule::ratio_at_most:
      ok = f.has_ratio && f.ratio <= bound;
      break;
  }
  f.st = ok ? status::met : status::missed;
  return f;
}

figure skipped_figure(const figure_spec& spec, const reading& r, std::string why) {
  figure f = make_figure(spec, r);
  f.st = status::skipped;
  f.has_ratio = false;
  f.ratio = 0;
  f.note = std::move(why);
  return f;
}

std::string fmt(double v, unit u) {
  char buf[64];
  switch (u) {
    case unit::seconds:
      if (v < 1e-3)
        std::snprintf(buf, sizeof buf, "%.1f µs", v * 1e6);
      else if (v < 1)
        std::snprintf(buf, sizeof buf, "%.2f ms", v * 1e3);
      else
        std::snprintf(buf, sizeof buf, "%.2f s", v);
      break;
    case unit::bytes_per_second:
      std::snprintf(buf, sizeof buf, "%.2f GB/s", v / 1e9);
      break;
    case unit::bytes:
      std::snprintf(buf, sizeof buf, "%.1f MiB", v / MiB);
      break;
    case unit::ratio:
      std::snprintf(buf, sizeof buf, "%.2fx", v);
      break;
    case unit::flops:
      std::snprintf(buf, sizeof buf, "%.2f GFLOP/s", v / 1e9);
      break;
  }
  return buf;
}

std::string fmt_stats(const stats& s, unit u) {
  if (s.n == 0) return "—";
  if (s.n == 1) return fmt(s.median, u);
  return fmt(s.median, u) + " [" + fmt(s.min, u) + "–" + fmt(s.max, u) + "]";
}

std::string size_label(std::uint64_t b) {
  struct step_of {
    std::uint64_t bytes;
    const char* name;
  };
  for (auto [unit_bytes, name] : {step_of{GiB, "GiB"}, step_of{MiB, "MiB"}, step_of{KiB, "KiB"}})
    if (b >= unit_bytes && b % unit_bytes == 0) return std::to_string(b / unit_bytes) + " " + name;
  return std::to_string(b) + " B";
}

void print_json(const std::vector<figure>& figs, const run_summary& run) {
  json::array arr;
  for (const auto& f : figs) {
    json::object o{{"id", f.id},
                   {"figure", f.name},
                   {"unit", unit_name(f.u)},
                   {"target", f.target},
                   {"status", status_name(f.st)}};
    if (f.size) o["size_bytes"] = f.size;
    if (f.tensors) o["tensors"] = f.tensors;
    if (f.value.n) o["value"] = stats_json(f.value);
    if (!f.baseline_label.empty()) {
      json::object b = stats_json(f.baseline);
      b["label"] = f.baseline_label;
      o["baseline"] = b;
    }
    if (f.has_ratio) o["ratio"] = number(f.ratio);
    if (!f.note.empty()) o["note"] = f.note;
    arr.push_back(std::move(o));
  }
  json::array sizes;
  for (auto s : run.sizes) sizes.push_back(s);
  json::object root{
      {"command", run.command}, {"machine", run.machine},           {"reps", run.reps},
      {"sizes", sizes},         {"wall_seconds", number(run.wall_seconds)}, {"figures", arr}};
  std::cout << json::serialize(root) << "\n";
}

void print_table(const std::vector<figure>& figs, const run_summary& run) {
  std::cout << "command: " << run.command << "\nmachine: " << run.machine << "\n\n";
  std::cout << "| shmckpt figure | size | shmckpt: median [min–max] | measured against (same run) "
               "| ratio | target | status |\n|---|---|---|---|---|---|---|\n";
  for (const auto& f : figs) {
    std::string size = f.size ? size_label(f.size) : "";
    if (f.tensors) size += (size.empty() ? "" : ", ") + std::to_string(f.tensors) + " t";
    std::string base =
        f.baseline_label.empty() ? "—" : f.baseline_label + ": " + fmt_stats(f.baseline, f.u);
    std::string ratio = f.has_ratio ? fmt(f.ratio, unit::ratio) : "—";
    std::string value = f.value.n ? fmt_stats(f.value, f.u) : "—";
    std::cout << "| " << f.name << " | " << size << " | " << value << " | " << base << " | "
              << ratio << " | " << f.target << " | " << status_name(f.st)
              << (f.note.empty() ? "" : " — " + f.note) << " |\n";
  }
  std::printf("\nwall time: %.1f s\n", run.wall_seconds);
}

}  // namespace ckpt_bench
