// inspect_show_diff_test — ckpt-inspect's show and diff subcommands: values, statistics and
// dtypes; differences of every kind; their exit statuses and --json documents.
#define BOOST_TEST_MODULE inspect_show_diff_test
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>
#include <limits>

#include <boost/json.hpp>

#include "shmckpt/reader.hpp"
#include "shmckpt/writer.hpp"
#include "inspect_support.hpp"

using namespace shmckpt;
using namespace shmckpt_test;
namespace fs = std::filesystem;

namespace {

template <class T>
tensor tensor_of(dtype type, std::initializer_list<T> values) {
  auto t = tensor::zeros(type, {static_cast<std::int64_t>(values.size())});
  std::memcpy(t.data(), values.begin(), t.nbytes());
  return t;
}

}  // namespace

BOOST_AUTO_TEST_CASE(show_prints_metadata_statistics_and_first_values_of_a_float_tensor) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto w = tensor_of<float>(dtype::f32, {1, -2, 3.5f, nan, inf, -inf, 0.1f});
  write_safetensors(file, {{"model", dict{{"w", w}}}});
  auto r = run_inspect(dir, {"show", file.string(), "model.w"});
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  BOOST_TEST(r.err.empty());
  BOOST_TEST(contains(r.out, file.string() + ": tensor 'model.w'\n"), r.out);
  BOOST_TEST(contains(r.out, "  dtype     F32\n"), r.out);
  BOOST_TEST(contains(r.out, "  shape     [7] (7 elements)\n"), r.out);
  BOOST_TEST(contains(r.out, "  bytes     28 at offset 0"), r.out);
  BOOST_TEST(contains(r.out, "  checksum  xxh3:"), r.out);
  BOOST_TEST(contains(r.out, "  min       -2.0\n"), r.out);
  BOOST_TEST(contains(r.out, "  max       3.5\n"), r.out);
  BOOST_TEST(contains(r.out, "  mean      0.65"), r.out);  // (1 - 2 + 3.5 + 0.1) / 4
  BOOST_TEST(contains(r.out, "  nan       1\n"), r.out);
  BOOST_TEST(contains(r.out, "  inf       2 (+1, -1)\n"), r.out);
  BOOST_TEST(contains(r.out, "  values    [1.0, -2.0, 3.5, nan, inf, -inf, 0.1]\n"), r.out);

  auto few = run_inspect(dir, {"show", "-n", "2", file.string(), "model.w"});
  BOOST_TEST(contains(few.out, "  values    [1.0, -2.0, ...] (first 2 of 7)\n"), few.out);
}

BOOST_AUTO_TEST_CASE(show_decodes_half_precision_and_integer_dtypes) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  write_safetensors(
      file, {{"h", tensor_of<std::uint16_t>(dtype::f16, {0x3C00, 0xC000, 0x3555, 0x7E00})},
             {"b", tensor_of<std::uint16_t>(dtype::bf16, {0x3F80, 0x4049, 0xFF80})},
             {"i", tensor_of<std::int64_t>(dtype::i64, {-5, 7, INT64_MAX})},
             {"u", tensor_of<std::uint64_t>(dtype::u64, {UINT64_MAX, 0})},
             {"m", tensor_of<std::uint8_t>(dtype::boolean, {1, 0, 1})}});
  auto h = run_inspect(dir, {"show", file.string(), "h"});
  BOOST_TEST(contains(h.out, "  values    [1.0, -2.0, 0.33325195, nan]\n"), h.out);
  BOOST_TEST(contains(h.out, "  nan       1\n"), h.out);
  auto b = run_inspect(dir, {"show", file.string(), "b"});
  BOOST_TEST(contains(b.out, "  values    [1.0, 3.140625, -inf]\n"), b.out);
  BOOST_TEST(contains(b.out, "  max       3.140625\n"), b.out);
  auto i = run_inspect(dir, {"show", file.string(), "i"});
  BOOST_TEST(contains(i.out, "  min       -5\n"), i.out);
  BOOST_TEST(contains(i.out, "  max       9223372036854775807\n"), i.out);
  BOOST_TEST(!contains(i.out, "nan"), i.out);
  auto u = run_inspect(dir, {"show", file.string(), "u"});
  BOOST_TEST(contains(u.out, "  max       18446744073709551615\n"), u.out);
  auto m = run_inspect(dir, {"show", file.string(), "m"});
  BOOST_TEST(contains(m.out, "  mean      0.6666666666666666\n"), m.out);
  BOOST_TEST(contains(m.out, "  values    [1, 0, 1]\n"), m.out);
}

BOOST_AUTO_TEST_CASE(show_prints_raw_bytes_for_dtypes_without_arithmetic) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  auto f8 = tensor::zeros(dtype::f8_e4m3, {20});
  for (std::size_t i = 0; i < 20; ++i) f8.bytes()[i] = static_cast<std::byte>(i * 16 + 1);
  write_safetensors(file, {{"f8", f8}, {"c", tensor::zeros(dtype::c64, {1})}});
  auto r = run_inspect(dir, {"show", file.string(), "f8"});
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  BOOST_TEST(contains(r.out, "  raw       01 11 21 31 41 51 61 71 81 91 a1 b1 c1 d1 e1 f1 ... "
                             "(first 16 of 20 bytes)\n"),
             r.out);
  BOOST_TEST(!contains(r.out, "min"), r.out);
  auto c = run_inspect(dir, {"show", "--json", file.string(), "c"});
  BOOST_TEST_REQUIRE(c.status == 0, c.err);
  auto doc = boost::json::parse(c.out);
  BOOST_TEST(doc.at("stats").is_null());
  BOOST_TEST(doc.at("first_bytes").as_string() == "00 00 00 00 00 00 00 00");
}

BOOST_AUTO_TEST_CASE(show_json_is_a_document_with_stats_and_values) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  const float nan = std::numeric_limits<float>::quiet_NaN();
  write_safetensors(file, {{"w", tensor_of<float>(dtype::f32, {0.5f, nan, -1.5f})}, {"step", 7}});
  auto r = run_inspect(dir, {"show", "--json", file.string(), "w"});
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  boost::json::value doc = boost::json::parse(r.out);
  BOOST_TEST(doc.at("key").as_string() == "w");
  BOOST_TEST(doc.at("dtype").as_string() == "F32");
  BOOST_TEST(doc.at("elements").to_number<int>() == 3);
  BOOST_TEST(doc.at("checksum").as_string() == list_entries(file)[0].checksum);
  const auto& stats = doc.at("stats");
  BOOST_TEST(stats.at("min").to_number<double>() == -1.5);
  BOOST_TEST(stats.at("max").to_number<double>() == 0.5);
  BOOST_TEST(stats.at("mean").to_number<double>() == -0.5);
  BOOST_TEST(stats.at("nan").to_number<int>() == 1);
  const auto& values = doc.at("values").as_array();
  BOOST_TEST_REQUIRE(values.size() == 3u);
  BOOST_TEST(values[1].as_string() == "nan");  // JSON has no NaN

  auto step = run_inspect(dir, {"show", "--json", file.string(), "step"});
  BOOST_TEST_REQUIRE(step.status == 0, step.err);
  boost::json::value s = boost::json::parse(step.out);
  BOOST_TEST(s.at("kind").as_string() == "int");
  BOOST_TEST(s.at("value").to_number<int>() == 7);
  auto text = run_inspect(dir, {"show", file.string(), "step"});
  BOOST_TEST(text.out == "step: int 7\n");
}

BOOST_AUTO_TEST_CASE(show_of_an_unknown_key_exits_two_pointing_to_list) {
  scratch_dir dir("inspect");
  fs::path file = dir / "c.safetensors";
  write_safetensors(file, sample(0));
  auto r = run_inspect(dir, {"show", file.string(), "model.nope"});
  BOOST_TEST(r.status == 2);
  BOOST_TEST(r.out.empty());
  BOOST_TEST(r.err == "ckpt-inspect: no tensor 'model.nope' in " + file.string() +
                          "; try 'ckpt-inspect list " + file.string() + "'\n");
  auto no_key = run_inspect(dir, {"show", file.string()});
  BOOST_TEST(no_key.status == 2);
  BOOST_TEST(contains(no_key.err, "show: missing <key>"), no_key.err);
  auto missing = run_inspect(dir, {"show", (dir / "none.safetensors").string(), "w"});
  BOOST_TEST(missing.status == 3);
  BOOST_TEST(one_line_error(missing), missing.err);
}

// ---- diff ------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(diff_of_identical_checkpoints_exits_zero) {
  scratch_dir dir("inspect");
  write_safetensors(dir / "a.safetensors", sample(0));
  write_safetensors(dir / "b.safetensors", sample(0), {.checksums = false});
  auto r = run_inspect(dir, {"diff", (dir / "a.safetensors").string(),
                             (dir / "b.safetensors").string()});
  BOOST_TEST(r.status == 0, r.out << r.err);
  BOOST_TEST(contains(r.out, "identical: 5 keys\n"), r.out);
  auto json = run_inspect(dir, {"diff", "--json", (dir / "a.safetensors").string(),
                                (dir / "b.safetensors").string()});
  BOOST_TEST(json.status == 0);
  BOOST_TEST(boost::json::parse(json.out).at("identical").as_bool());
}

BOOST_AUTO_TEST_CASE(diff_names_every_kind_of_difference_and_exits_one) {
  scratch_dir dir("inspect");
  state_dict a{{"w", tensor_of<float>(dtype::f32, {1, 2, 3})},
               {"i", tensor_of<std::int32_t>(dtype::i32, {5, -5})},
               {"s", tensor_of<float>(dtype::f32, {1, 2})},
               {"f8", tensor_of<std::uint8_t>(dtype::f8_e5m2, {1, 2, 3})},
               {"optim", dict{{"step", 10}, {"lr", 0.5}, {"betas", list{0.9}}}},
               {"gone", "x"}};
  state_dict b{{"w", tensor_of<float>(dtype::f32, {1, 2.5f, 1})},
               {"i", tensor_of<std::int32_t>(dtype::i32, {5, 5})},
               {"s", tensor_of<float>(dtype::f32, {1, 2, 3})},
               {"f8", tensor_of<std::uint8_t>(dtype::f8_e5m2, {1, 9, 3})},
               {"optim", dict{{"step", 11}, {"lr", 0.5}, {"betas", list{0.9, 0.99}}}},
               {"new", tensor::zeros(dtype::bf16, {2})}};
  fs::path fa = dir / "a.safetensors", fb = dir / "b.safetensors";
  write_safetensors(fa, a);
  write_safetensors(fb, b);
  auto r = run_inspect(dir, {"diff", fa.string(), fb.string()});
  BOOST_TEST(r.status == 1, r.out << r.err);
  BOOST_TEST(r.err.empty(), r.err);
  BOOST_TEST(contains(r.out, "--- a: " + fa.string() + "\n+++ b: " + fb.string() + "\n"), r.out);
  BOOST_TEST(contains(r.out, "~ w: F32 [3]: 2 of 3 elements differ, max |a - b| = 2.0\n"), r.out);
  BOOST_TEST(contains(r.out, "~ i: I32 [2]: 1 of 2 elements differ, max |a - b| = 10\n"), r.out);
  BOOST_TEST(contains(r.out, "~ s: F32 [2] -> F32 [3]\n"), r.out);
  BOOST_TEST(contains(r.out, "~ f8: F8_E5M2 [3]: 1 of 3 bytes differ\n"), r.out);
  BOOST_TEST(contains(r.out, "~ optim.step: int 10 -> int 11\n"), r.out);
  BOOST_TEST(!contains(r.out, "optim.lr"), r.out);
  BOOST_TEST(contains(r.out, "- gone: string \"x\"\n"), r.out);
  BOOST_TEST(contains(r.out, "+ optim.betas.1: float 0.99\n"), r.out);
  BOOST_TEST(contains(r.out, "+ new: tensor BF16 [2]\n"), r.out);
  BOOST_TEST(contains(r.out, "1 only in a, 2 only in b, 5 changed, 2 same\n"), r.out);

  auto j = run_inspect(dir, {"diff", "--json", fa.string(), fb.string()});
  BOOST_TEST_REQUIRE(j.status == 1, j.err);
  boost::json::value doc = boost::json::parse(j.out);
  BOOST_TEST(!doc.at("identical").as_bool());
  BOOST_TEST(doc.at("only_in_a").as_array().size() == 1u);
  BOOST_TEST(doc.at("only_in_b").as_array().size() == 2u);
  const auto& changed = doc.at("changed").as_array();
  BOOST_TEST_REQUIRE(changed.size() == 5u);
  BOOST_TEST(changed[0].at("key").as_string() == "w");
  BOOST_TEST(changed[0].at("change").as_string() == "values");
  BOOST_TEST(changed[0].at("max_abs_diff").to_number<double>() == 2.0);
  BOOST_TEST(changed[1].at("max_abs_diff").to_number<int>() == 10);
  BOOST_TEST(changed[2].at("change").as_string() == "layout");
  BOOST_TEST(changed[3].at("change").as_string() == "bytes");
  BOOST_TEST(changed[4].at("a").to_number<int>() == 10);
  BOOST_TEST(changed[4].at("b").to_number<int>() == 11);
}

BOOST_AUTO_TEST_CASE(diff_usage_and_input_errors) {
  scratch_dir dir("inspect");
  write_safetensors(dir / "a.safetensors", sample(0));
  auto one = run_inspect(dir, {"diff", (dir / "a.safetensors").string()});
  BOOST_TEST(one.status == 2);
  BOOST_TEST(contains(one.err, "diff: missing <b>"), one.err);
  write_file(dir / "bad.safetensors", "garbage!garbage!");
  auto bad = run_inspect(dir, {"diff", (dir / "a.safetensors").string(),
                               (dir / "bad.safetensors").string()});
  BOOST_TEST(bad.status == 3);
  BOOST_TEST(bad.out.empty(), bad.out);
  BOOST_TEST(one_line_error(bad), bad.err);
}

// ---- tree --json -----------------------------------------------------------------------------
