// read_into_test — partial reads into a template: in place, by path into nested templates, into
// shared-segment tensors; missing keys, strict mode, mismatches, placeholders, checksums.
#define BOOST_TEST_MODULE read_into_test
#include <boost/test/unit_test.hpp>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "hostile/hostile_files.hpp"
#include "ipc/segment.hpp"
#include "reader_support.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/writer.hpp"

using namespace shmckpt;
using shmckpt_test::expect_error;
using shmckpt_test::file_offset_of;
using shmckpt_test::floats;
using shmckpt_test::random_tensor;
using shmckpt_test::read_file;
using shmckpt_test::safetensors_bytes;
using shmckpt_test::scratch_dir;
using shmckpt_test::write_file;
namespace fs = std::filesystem;

namespace {

state_dict training_state() {
  return {{"model", dict{{"w", random_tensor(dtype::f32, {4, 4}, 11)},
                         {"layers", list{dict{{"b", random_tensor(dtype::bf16, {4}, 12)}}}}}},
          {"optim", dict{{"lr", 0.001}, {"step", 1200}, {"betas", list{0.9, 0.999}}}},
          {"name", "run-a"}};
}

}  // namespace

BOOST_AUTO_TEST_CASE(read_into_fills_the_templates_own_buffers_in_place) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  state_dict saved = training_state();
  write_safetensors(file, saved);

  state_dict tmpl{{"model", dict{{"w", tensor::zeros(dtype::f32, {4, 4})},
                                 {"layers", list{dict{{"b", tensor::zeros(dtype::bf16, {4})}}}}}},
                  {"optim", dict{{"step", 0}, {"lr", none}}}};
  std::byte* w_before = tmpl.at("model").as_dict().at("w").as_tensor().data();
  std::byte* b_before =
      tmpl.at("model").as_dict().at("layers").as_list()[0].as_dict().at("b").as_tensor().data();

  read_into_options verify;
  verify.verify_checksums = true;
  read_result r = read_into(file, tmpl, verify);
  BOOST_TEST(r.missing.empty());
  // Only what was asked for: "optim.betas.*" and "name" stay behind.
  BOOST_TEST((r.unexpected == std::vector<std::string>{"optim.betas.0", "optim.betas.1", "name"}));

  const tensor& w = tmpl.at("model").as_dict().at("w").as_tensor();
  BOOST_TEST(w.data() == w_before);  // same buffer, new bytes
  BOOST_TEST((w == saved.at("model").as_dict().at("w").as_tensor()));
  auto layer0_b = [](const state_dict& sd) -> const tensor& {
    return sd.at("model").as_dict().at("layers").as_list()[0].as_dict().at("b").as_tensor();
  };
  BOOST_TEST(layer0_b(tmpl).data() == b_before);
  BOOST_TEST((layer0_b(tmpl) == layer0_b(saved)));
  BOOST_TEST(tmpl.at("optim").as_dict().at("step").as_int() == 1200);
  BOOST_TEST(tmpl.at("optim").as_dict().at("lr").as_double() == 0.001);
  // The result is the template, sharing its memory.
  BOOST_TEST(r.state.at("model").as_dict().at("w").as_tensor().data() == w_before);
  BOOST_TEST((r.state == tmpl));
}

BOOST_AUTO_TEST_CASE(read_into_matches_nested_templates_to_flat_foreign_files_by_path) {
  scratch_dir dir("reader");
  std::string header = R"({"model.w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  fs::path file = dir / "foreign.safetensors";
  write_file(file, safetensors_bytes(header, floats({1.5f, -2})));
  state_dict tmpl{{"model", dict{{"w", tensor::zeros(dtype::f32, {2})}}}};
  read_into(file, tmpl);
  auto w = tmpl.at("model").as_dict().at("w").as_tensor().data_as<float>();
  BOOST_TEST((std::vector<float>(w.begin(), w.end()) == std::vector<float>{1.5f, -2}));
}

BOOST_AUTO_TEST_CASE(read_into_fills_tensors_that_live_in_a_shared_segment) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  state_dict saved = training_state();
  write_safetensors(file, saved);
  segment seg = segment::create(1 << 20);
  tensor in_segment = seg.make_tensor(dtype::f32, {4, 4});
  state_dict tmpl{{"model", dict{{"w", in_segment}}}};
  read_into(file, tmpl);
  BOOST_TEST(tmpl.at("model").as_dict().at("w").as_tensor().data() == in_segment.data());
  BOOST_TEST((in_segment == saved.at("model").as_dict().at("w").as_tensor()));
}

BOOST_AUTO_TEST_CASE(read_into_reports_missing_keys_and_strict_mode_names_them) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  write_safetensors(file, training_state());
  auto make_template = [] {
    return state_dict{{"model", dict{{"w", tensor::zeros(dtype::f32, {4, 4})},
                                     {"extra", tensor::zeros(dtype::f32, {3})}}},
                      {"optim", dict{{"betas", list{0.0, 0.0, 0.0}}, {"gone", 5}}}};
  };
  state_dict tmpl = make_template();
  read_result r = read_into(file, tmpl);
  BOOST_TEST((r.missing ==
              std::vector<std::string>{"model.extra", "optim.betas.2", "optim.gone"}));
  BOOST_TEST(tmpl.at("optim").as_dict().at("betas").as_list()[1].as_double() == 0.999);
  BOOST_TEST(tmpl.at("optim").as_dict().at("gone").as_int() == 5);  // untouched

  state_dict strict_tmpl = make_template();
  read_into_options strict;
  strict.strict = true;
  BOOST_CHECK_EXCEPTION(
      read_into(file, strict_tmpl, strict), error,
      expect_error(errc::not_found, {file.string(), "3 keys of the template are not in the file",
                                     "'model.extra', 'optim.betas.2', 'optim.gone'"}));
  // Nothing was written before the failure.
  BOOST_TEST((strict_tmpl == make_template()));
}

BOOST_AUTO_TEST_CASE(read_into_rejects_shape_dtype_and_kind_mismatches_naming_both) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  write_safetensors(file, training_state());

  state_dict shape{{"model", dict{{"w", tensor::zeros(dtype::f32, {4, 5})}}}};
  BOOST_CHECK_EXCEPTION(
      read_into(file, shape), error,
      expect_error(errc::invalid_argument,
                   {file.string(),
                    "tensor 'model.w': checkpoint has F32 [4, 4], template has F32 [4, 5]"}));

  state_dict type{{"model", dict{{"w", tensor::zeros(dtype::f16, {4, 4})}}},
                  {"optim", dict{{"step", tensor::zeros(dtype::i64, {})}}}};
  BOOST_CHECK_EXCEPTION(
      read_into(file, type), error,
      expect_error(errc::invalid_argument,
                   {"tensor 'model.w': checkpoint has F32 [4, 4], template has F16 [4, 4]",
                    "and 1 more key that do"}));

  state_dict kind{{"optim", dict{{"step", tensor::zeros(dtype::i64, {})}}}};
  BOOST_CHECK_EXCEPTION(
      read_into(file, kind), error,
      expect_error(errc::invalid_argument,
                   {"key 'optim.step': checkpoint has int, template has tensor I64 []"}));
  state_dict container{{"name", dict{{"first", 1}}}};
  BOOST_CHECK_EXCEPTION(read_into(file, container), error,
                        expect_error(errc::invalid_argument,
                                     {"key 'name': checkpoint has string, template has dict"}));

  // A failed request leaves the template's bytes alone, even the keys that did match.
  tensor w = tensor::zeros(dtype::f32, {4, 4});
  state_dict partly{{"model", dict{{"w", w}}},
                    {"optim", dict{{"lr", tensor::zeros(dtype::f32, {1})}}}};
  BOOST_CHECK_THROW(read_into(file, partly), error);
  BOOST_TEST((w == tensor::zeros(dtype::f32, {4, 4})));
}

BOOST_AUTO_TEST_CASE(read_into_placeholders_take_the_files_tensor_as_it_is) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  state_dict saved = training_state();
  write_safetensors(file, saved);
  state_dict tmpl{{"model", dict{{"w", tensor{}}}}};
  read_into(file, tmpl);
  BOOST_TEST((tmpl.at("model").as_dict().at("w") == saved.at("model").as_dict().at("w")));
}

BOOST_AUTO_TEST_CASE(read_into_verifies_checksums_of_requested_tensors_only) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  write_safetensors(file, training_state());
  std::string bytes = read_file(file);
  bytes[file_offset_of(file, "model.layers.0.b") + 1] ^= 0x10;
  write_file(file, bytes);

  read_into_options verify;
  verify.verify_checksums = true;
  state_dict w_only{{"model", dict{{"w", tensor::zeros(dtype::f32, {4, 4})}}}};
  BOOST_CHECK_NO_THROW(read_into(file, w_only, verify));
  tensor b = tensor::zeros(dtype::bf16, {4});
  state_dict with_b{{"model", dict{{"layers", list{dict{{"b", b}}}}}}};
  BOOST_CHECK_EXCEPTION(read_into(file, with_b, verify), error,
                        expect_error(errc::corrupt_data,
                                     {"tensor 'model.layers.0.b'", "checksum mismatch"}));
  BOOST_TEST((b == tensor::zeros(dtype::bf16, {4})));
}

BOOST_AUTO_TEST_CASE(read_into_errors_for_missing_files_duplicate_leaves_and_hostile_files) {
  scratch_dir dir("reader");
  state_dict tmpl{{"a", tensor::zeros(dtype::f32, {2})}};
  BOOST_CHECK_EXCEPTION(read_into(dir / "nope.safetensors", tmpl), error,
                        expect_error(errc::not_found, {"nope.safetensors", "no such file"}));
  read_into_options rank2;
  rank2.rank = 2;
  rank2.allow_incomplete = true;
  BOOST_CHECK_EXCEPTION(read_into(dir.path(), tmpl, rank2), error,
                        expect_error(errc::not_found, {"checkpoint_2.safetensors"}));

  write_safetensors(dir / "ok.safetensors", {{"a", dict{{"b", 1}}}});
  state_dict twice{{"a.b", 0}, {"a", dict{{"b", 0}}}};
  BOOST_CHECK_EXCEPTION(read_into(dir / "ok.safetensors", twice), error,
                        expect_error(errc::invalid_argument, {"two leaves named 'a.b'"}));

  for (const auto& c : shmckpt_test::hostile_cases()) {
    BOOST_TEST_CONTEXT("hostile case " << c.name) {
      fs::path file = dir / (c.name + ".safetensors");
      write_file(file, c.bytes);
      BOOST_CHECK_EXCEPTION(read_into(file, tmpl), error,
                            expect_error(errc::corrupt_data, {c.expect}));
    }
  }
}

BOOST_AUTO_TEST_CASE(check_checksums_reports_progress_up_to_the_total) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  write_safetensors(file, training_state());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
  check_checksums_options options;
  options.progress = [&](std::uint64_t done, std::uint64_t total) {
    calls.emplace_back(done, total);
  };
  auto checks = check_checksums(file, options);
  BOOST_TEST(checks.size() == 2u);
  BOOST_TEST_REQUIRE(calls.size() >= 2u);
  BOOST_TEST(calls.back().first == 72u);
  BOOST_TEST(calls.back().second == 72u);
  for (std::size_t i = 1; i < calls.size(); ++i) BOOST_TEST(calls[i].first >= calls[i - 1].first);
}

BOOST_AUTO_TEST_CASE(one_set_of_read_options_serves_read_and_read_into) {
  static_assert(std::is_same_v<read_options, read_into_options>);
  scratch_dir dir("reader");
  write_safetensors(checkpoint_file_path(dir.path(), 1), {{"w", random_tensor(dtype::f32, {4}, 9)}});
  read_options o;
  o.rank = 1;
  o.allow_incomplete = true;  // no manifest: the file was written without the commit
  o.copy = true;
  state_dict a = read(dir.path(), o);
  BOOST_TEST((a.at("w").as_tensor() == random_tensor(dtype::f32, {4}, 9)));
  BOOST_TEST((read(dir.path(), read_options{.allow_incomplete = true}, 1) == a));  // rank apart

  // A placeholder is replaced by a private copy with `copy`, by a view of the mapping without.
  state_dict tmpl{{"w", tensor{}}}, tmpl2 = tmpl;
  read_result copied = read_into(dir.path(), tmpl, o);
  read_options view = o;
  view.copy = false;
  read_result viewed = read_into(dir.path(), tmpl2, view);
  const tensor& c = copied.state.at("w").as_tensor();
  const tensor& v = viewed.state.at("w").as_tensor();
  BOOST_TEST((c == v));
  BOOST_TEST(c.data() != v.data());
  auto file = read_file(checkpoint_file_path(dir.path(), 1));
  BOOST_TEST(std::memcmp(c.data(), file.data() + file.size() - 16, 16) == 0);
}

namespace {

// This process's peak resident memory since the last reset, in bytes (/proc/self/status VmHWM).
std::uint64_t peak_rss() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  return static_cast<bool>(f.flush());
}

}  // namespace

// With `copy`, read_into copies the placeholders it fills and nothing else: not the tensors the
// template does not name, nor those copied into the template's own memory.
BOOST_AUTO_TEST_CASE(read_into_with_copy_copies_only_the_placeholders_it_fills) {
  scratch_dir dir("reader");
  fs::path file = dir / "ckpt.safetensors";
  constexpr std::int64_t big = 16 << 20;  // 64 MiB of F32 in each of two large tensors
  {
    state_dict sd{{"unnamed", tensor::zeros(dtype::f32, {big})},
                  {"into", tensor::zeros(dtype::f32, {big})},
                  {"small", random_tensor(dtype::f32, {256}, 3)}};
    write_safetensors(file, sd);
  }
  state_dict tmpl{{"into", tensor::zeros(dtype::f32, {big})}, {"small", tensor{}}};
  tensor into = tmpl.at("into").as_tensor();
  std::memset(into.data(), 1, into.nbytes());  // resident before the peak is reset
  read_options o;
  o.copy = true;
  BOOST_TEST_REQUIRE(reset_peak_rss());
  const std::uint64_t before = peak_rss();
  read_result r = read_into(file, tmpl, o);
  const std::uint64_t grown = peak_rss() - before;
  BOOST_TEST((r.state.at("small").as_tensor() == random_tensor(dtype::f32, {256}, 3)));
  BOOST_TEST(r.unexpected == std::vector<std::string>{"unnamed"});
  // Copying the two large tensors the template does not take as placeholders would add 128 MiB
  // (and fault in 64 MiB more of the mapping for "into"): only the mapping's pages of "into",
  // read once for its copy into the template, may show.
#ifdef __SANITIZE_THREAD__
  // ThreadSanitizer's shadow of every byte memcpy reads or writes would count here too.
  BOOST_TEST_MESSAGE("peak RSS grew by " << (grown >> 20) << " MiB (not checked under TSan)");
#else
  BOOST_TEST(grown < std::uint64_t{96} << 20, "peak RSS grew by " << (grown >> 20) << " MiB");
#endif
  // The placeholder is a private copy: emptying the file changes nothing.
  fs::resize_file(file, 0);
  BOOST_TEST((r.state.at("small").as_tensor() == random_tensor(dtype::f32, {256}, 3)));
}
