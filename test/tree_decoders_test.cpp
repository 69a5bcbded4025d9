// tree_decoders_test — the one-pass tree decoder and the exact decoder must agree on every input.
//
// The "shmckpt.tree" document is decoded by two paths (lib/format/tree.hpp): decode_tree_fast,
// which builds the state dict from the JSON parser's events while the header is read and gives
// up at anything unexpected, and the exact path (parse_strict's DOM, then decode_tree), which
// names every error. Readers take the fast one and fall back to the exact one, so a tree the
// fast decoder accepts but the exact one would reject is a malformed file let in, and a tree
// they build differently is a wrong state dict. This suite reads the fuzz corpus (our writer's
// files and every hostile file), files written from random state dicts (every node kind, odd
// keys, NaN payloads, non-UTF-8 strings, tensors in lists and tuples), and thousands of
// mutations of their trees, through parse_header and build_state_dict both ways, and requires
// the same state dict (tensors included, each at its own place) or the same error.
#define BOOST_TEST_MODULE tree_decoders
#include <boost/test/unit_test.hpp>

#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "format/safetensors.hpp"
#include "format/tree.hpp"
#include "fuzz/corpus.hpp"
#include "fuzz/header_cases.hpp"
#include "shmckpt/error.hpp"

namespace {

using namespace shmckpt;
namespace json = boost::json;

const std::string label = "checkpoint 'tree-differential'";

// A whole file: header text and data-section size (files whose length prefix fails are skipped).
using file_case = shmckpt_test::header_case;

std::optional<file_case> from_file(std::string name, const std::string& bytes) {
  return shmckpt_test::header_case_of(std::move(name), bytes, label);
}

// What reading one file produced: the state dict (tensors as markers naming their entry), or
// the error's code and message; and whether the one-pass decoder read the tree.
struct outcome {
  std::optional<state_dict> sd;
  errc code{};
  std::string message;
  bool decoded_fast = false;
};

value marker(std::size_t i) { return std::string("\x01tensor#") + std::to_string(i); }

outcome read_with(const file_case& c, detail::header_parser how, int builds = 1) {
  outcome o;
  try {
    detail::parsed_header h = detail::parse_header(c.text, c.data_size, label, how);
    o.decoded_fast = h.decoded != nullptr;
    for (int b = 0; b < builds; ++b) {
      state_dict sd = detail::build_state_dict(h, marker, label);
      if (o.sd && !(*o.sd == sd)) {
        o.message = "a second build_state_dict gave a different tree";
        o.sd.reset();
        return o;
      }
      o.sd = std::move(sd);
    }
  } catch (const error& e) {
    o.sd.reset();
    o.code = e.kind();
    o.message = e.what();
  }
  return o;
}

struct tally {
  std::size_t cases = 0, fast_decoded = 0, rejected = 0;
  std::size_t plain_decoded = 0;  // taken whole by the by-hand decoder (decode_tree_plain)
};

// The by-hand decoder alone, on the tree of a file the exact path accepted, with tensors as
// markers; nullopt when it gave up. (Inside the fast path it runs first, so the agreement
// checks below hold it to the exact decoder already; this shows that it is reached.)
std::optional<state_dict> plain_decoded(const file_case& c) {
  detail::parsed_header h = detail::parse_header(c.text, c.data_size, label, detail::header_parser::exact);
  const std::string* tree = detail::find_metadata(h, "shmckpt.tree");
  const std::string* version = detail::find_metadata(h, "shmckpt.version");
  if (!tree || !version) return std::nullopt;
  auto d = detail::decode_tree_plain(*tree, h.entries, *version == "2" ? 2 : 1);
  if (!d) return std::nullopt;
  for (auto [slot, i] : d->tensors) *slot = marker(i);
  return std::move(d->root);
}

void check_agreement(const file_case& c, tally& t) {
  ++t.cases;
  outcome fast = read_with(c, detail::header_parser::fast, 2);
  outcome exact = read_with(c, detail::header_parser::exact);
  std::string shown = c.name + ": " + detail::printable(c.text.substr(0, 300));
  if (fast.sd.has_value() != exact.sd.has_value())
    BOOST_ERROR("fast " << (fast.sd ? "accepts" : "rejects (" + fast.message + ")") << ", exact "
                        << (exact.sd ? "accepts" : "rejects (" + exact.message + ")") << ": "
                        << shown);
  else if (fast.sd && !(*fast.sd == *exact.sd))
    BOOST_ERROR("fast and exact decoders build different trees: " << shown);
  else if (!fast.sd && (fast.code != exact.code || fast.message != exact.message))
    BOOST_ERROR("different errors: fast '" << fast.message << "', exact '" << exact.message
                                           << "': " << shown);
  if (fast.decoded_fast && !fast.sd)
    BOOST_ERROR("the one-pass decoder accepted a tree that is then rejected: " << shown);
  if (exact.decoded_fast) BOOST_ERROR("the exact parser ran the one-pass decoder: " << shown);
  t.fast_decoded += fast.decoded_fast;
  t.rejected += !exact.sd.has_value();
  if (exact.sd) {
    if (auto plain = plain_decoded(c)) {
      ++t.plain_decoded;
      if (!(*plain == *exact.sd))
        BOOST_ERROR("the by-hand and the exact decoder build different trees: " << shown);
    }
  }
}

// ---- inputs ----------------------------------------------------------------------------------

std::vector<file_case> corpus() {
  std::vector<file_case> out;
  for (const auto& [name, bytes] : shmckpt_test::fuzz_corpus())
    if (auto c = from_file(name, bytes)) out.push_back(std::move(*c));
  return out;
}

// A random tree of every node kind the format has, `depth` levels at most below `d`.
void fill(dict& d, std::mt19937_64& rng, int depth, int& tensors);

value random_value(std::mt19937_64& rng, int depth, int& tensors) {
  switch (rng() % (depth > 0 ? 11 : 7)) {
    case 0: return none;
    case 1: return rng() % 2 == 0;
    case 2: return static_cast<std::int64_t>(rng());
    case 3: {
      const double specials[] = {0.5, -0.0, std::numeric_limits<double>::infinity(),
                                 std::bit_cast<double>(std::uint64_t{0x7ff8000000000123})};
      return specials[rng() % 4];
    }
    case 4: {
      const char* strings[] = {"", "run", "é\"\\\n", "\xff\xfe", "tab\t"};
      return std::string(strings[rng() % 5]);
    }
    case 5:
    case 6: {
      ++tensors;
      std::vector<std::int64_t> shape;
      for (std::size_t k = rng() % 3; k > 0; --k) shape.push_back(static_cast<std::int64_t>(rng() % 3));
      const dtype types[] = {dtype::f32, dtype::bf16, dtype::u8, dtype::f64, dtype::f4};
      dtype type = types[rng() % 5];
      if (type == dtype::f4) shape.push_back(2);  // two per byte
      return tensor::zeros(type, shape);
    }
    case 7:
    case 8: {
      dict d;
      if (rng() % 3 == 0) d.set_key_type(key_type::integer);
      fill(d, rng, depth - 1, tensors);
      return d;
    }
    case 9: {
      list l;
      for (std::size_t k = rng() % 4; k > 0; --k) l.push_back(random_value(rng, depth - 1, tensors));
      return l;
    }
    default: {
      tuple tu;
      for (std::size_t k = rng() % 3; k > 0; --k) tu.push_back(random_value(rng, depth - 1, tensors));
      return tu;
    }
  }
}

void fill(dict& d, std::mt19937_64& rng, int depth, int& tensors) {
  const char* keys[] = {"w", "layer", "é", "a\"q", "back\\slash", "x y", "\xff", "__m", "b.c"};
  for (std::size_t k = rng() % 5; k > 0; --k) {
    std::string key = d.keys() == key_type::integer
                          ? std::to_string(static_cast<std::int64_t>(rng() % 7) - 3)
                          : std::string(keys[rng() % std::size(keys)]) + std::to_string(k);
    d.insert_or_assign(key, random_value(rng, depth, tensors));
  }
}

// The file our writer makes of a random state dict (tensors whose names clash are dropped: the
// writer refuses them).
std::optional<file_case> generated_file(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  state_dict sd;
  int tensors = 0;
  fill(sd, rng, 4, tensors);
  detail::encoded_header enc;
  try {
    enc = detail::encode_header(sd, rng() % 2 == 0);
  } catch (const error&) {
    return std::nullopt;  // two tensors flattening to one name, a non-UTF-8 tensor name
  }
  std::string file = enc.bytes;
  for (const auto& t : enc.tensors)
    file.append(reinterpret_cast<const char*>(t.source->data()), t.source->nbytes());
  return from_file("generated_" + std::to_string(seed), file);
}

// `c` with its tree document replaced by `tree` (nullopt when `c` has none to replace).
std::optional<file_case> with_tree(const file_case& c, const std::string& tree, std::string name) {
  json::error_code ec;
  json::value doc = json::parse(c.text, ec);
  if (ec || !doc.is_object()) return std::nullopt;
  auto* meta = doc.get_object().if_contains("__metadata__");
  if (!meta || !meta->is_object() || !meta->get_object().contains("shmckpt.tree")) return std::nullopt;
  meta->get_object()["shmckpt.tree"] = tree;
  return file_case{std::move(name), json::serialize(doc), c.data_size};
}

std::optional<std::string> tree_of(const file_case& c) {
  json::error_code ec;
  json::value doc = json::parse(c.text, ec);
  if (ec || !doc.is_object()) return std::nullopt;
  auto* meta = doc.get_object().if_contains("__metadata__");
  if (!meta || !meta->is_object()) return std::nullopt;
  auto* tree = meta->get_object().if_contains("shmckpt.tree");
  if (!tree || !tree->is_string()) return std::nullopt;
  return std::string(tree->get_string());
}

// One random mutation of a tree document.
std::string mutated(std::string s, std::mt19937_64& rng) {
  static const char* tokens[] = {
      "{\"dict\":[", "{\"idict\":[", "{\"tuple\":[", "{\"float\":\"", "{\"bytes\":\"",
      "{\"tensor\":\"", "[", "]", "{", "}", ",", "\"", ":", "null", "true", "-1", "0", "1.5",
      "18446744073709551615", "9223372036854775807", "\"00\"", "\"0000000000000000\"",
      "\"zz\"", "[\"k\",1]", "[1,2]", "{\"dict\":[]}", "{\"x\":1}", "\\u0000", "\\\"", "\xff",
      "\"dict\"", "\"tensor\""};
  auto at = [&](std::size_t extra = 0) { return s.empty() ? 0 : rng() % (s.size() + extra); };
  switch (rng() % 5) {
    case 0:
      if (!s.empty()) s[at()] = static_cast<char>(rng());
      break;
    case 1:
      s.erase(at(), 1 + rng() % 12);
      break;
    case 2: {
      std::string piece = s.substr(at(), 1 + rng() % 48);
      s.insert(at(1), piece);
      break;
    }
    case 3:
      s.insert(at(1), tokens[rng() % std::size(tokens)]);
      break;
    default: {
      std::size_t i = at();
      s.replace(i, std::min<std::size_t>(1 + rng() % 6, s.size() - i),
                tokens[rng() % std::size(tokens)]);
      break;
    }
  }
  return s;
}

}  // namespace

BOOST_AUTO_TEST_CASE(fast_and_exact_tree_decoders_agree_on_the_fuzz_corpus_and_hostile_files) {
  tally t;
  for (const auto& c : corpus()) check_agreement(c, t);
  BOOST_TEST(t.fast_decoded >= 4u);  // the valid files
  BOOST_TEST(t.plain_decoded >= 4u);
  BOOST_TEST(t.rejected > 10u);
}

BOOST_AUTO_TEST_CASE(fast_and_exact_tree_decoders_agree_on_generated_trees) {
  tally t;
  for (std::uint64_t seed = 0; seed < 1500; ++seed)
    if (auto c = generated_file(seed)) check_agreement(*c, t);
  BOOST_TEST_MESSAGE(t.cases << " generated files, " << t.fast_decoded << " decoded in one pass");
  BOOST_TEST(t.cases > 500u);
  BOOST_TEST(t.fast_decoded == t.cases);  // everything our writer writes takes the one-pass path
  BOOST_TEST(t.plain_decoded == t.cases);  // and its by-hand first try
  BOOST_TEST(t.rejected == 0u);
}

BOOST_AUTO_TEST_CASE(fast_and_exact_tree_decoders_agree_on_mutated_trees) {
  std::vector<file_case> seeds;
  for (auto& c : corpus())
    if (c.name.starts_with("valid_")) seeds.push_back(std::move(c));
  for (std::uint64_t seed = 5000; seed < 5300; ++seed)
    if (auto c = generated_file(seed)) seeds.push_back(std::move(*c));
  std::mt19937_64 rng(7);
  tally t;
  std::size_t index = 0;
  for (int round = 0; round < 60; ++round) {
    for (const auto& c : seeds) {
      auto tree = tree_of(c);
      if (!tree) continue;
      std::string m = mutated(*tree, rng);
      if (rng() % 3 == 0) m = mutated(m, rng);
      if (auto mc = with_tree(c, m, c.name + "/mutation_" + std::to_string(index++)))
        check_agreement(*mc, t);
    }
  }
  BOOST_TEST_MESSAGE(t.cases << " mutated trees: " << t.fast_decoded << " decoded in one pass, "
                             << t.rejected << " rejected");
  BOOST_TEST(t.fast_decoded > 250u);
  BOOST_TEST(t.plain_decoded > 250u);
  BOOST_TEST(t.rejected > 5000u);
}

// ---- large trees ------------------------------------------------------------------------------
//
// Files of 16 000 tensors (a tree document over 256 KiB), through the one-pass decoder and the
// exact path: valid, broken in the tree's structure or in the names of its tensors, broken in
// the entries or the layout around a valid tree, and randomly mutated.

namespace {

// Our writer's file of a state dict with `blocks` × 32 tensors (and a list, a tuple, scalars):
// a tree document of about 40 bytes per tensor.
file_case large_file(int blocks, bool checksums) {
  state_dict sd;
  dict layers;
  layers.set_key_type(key_type::integer);
  for (int b = 0; b < blocks; ++b) {
    dict block;
    for (int w = 0; w < 32; ++w)
      block.insert_or_assign("weight_" + std::to_string(w), tensor::zeros(dtype::f32, {1}));
    block.insert_or_assign("scale", 0.5);
    layers.insert_or_assign(std::to_string(b), std::move(block));
  }
  sd.insert_or_assign("layers", std::move(layers));
  list l;
  l.push_back(tensor::zeros(dtype::u8, {3}));
  l.push_back(tuple{std::string("x"), tensor::zeros(dtype::bf16, {2})});
  sd.insert_or_assign("extra", std::move(l));
  detail::encoded_header enc = detail::encode_header(sd, checksums);
  std::string file = enc.bytes;
  for (const auto& t : enc.tensors)
    file.append(reinterpret_cast<const char*>(t.source->data()), t.source->nbytes());
  auto c = from_file("large_" + std::to_string(blocks), file);
  BOOST_REQUIRE(c);
  return std::move(*c);
}

// `s` with the first `from` replaced by `to` (which must be there).
std::string replaced(std::string s, const std::string& from, const std::string& to) {
  std::size_t i = s.find(from);
  BOOST_REQUIRE(i != std::string::npos);
  return s.replace(i, from.size(), to);
}

}  // namespace

BOOST_AUTO_TEST_CASE(fast_and_exact_tree_decoders_agree_on_large_trees) {
  for (bool checksums : {false, true}) {
    file_case c = large_file(512, checksums);
    auto tree = tree_of(c);
    BOOST_REQUIRE(tree);
    BOOST_REQUIRE(tree->size() >= 256u * 1024);
    tally t;

    check_agreement(c, t);  // valid: decoded in one pass
    BOOST_TEST(t.fast_decoded == 1u);
    BOOST_TEST(t.plain_decoded == 1u);
    BOOST_TEST(t.rejected == 0u);

    // The tree's structure is fine but a tensor it names has no entry (its key renamed with it).
    std::string renamed = replaced(*tree, R"(["weight_7",{"tensor":"layers.300.weight_7"}])",
                                   R"(["weightX7",{"tensor":"layers.300.weightX7"}])");
    check_agreement(*with_tree(c, renamed, "renamed tensor"), t);
    // A tensor dropped from the tree: an entry named nowhere.
    std::string dropped = replaced(*tree, R"(["weight_7",{"tensor":"layers.300.weight_7"}],)", "");
    check_agreement(*with_tree(c, dropped, "dropped tensor"), t);
    // One tensor named twice (a second key flattening to the same path).
    std::string twice = replaced(*tree, R"(["weight_7",{"tensor":"layers.300.weight_7"}])",
                                 R"(["weight_7",{"tensor":"layers.300.weight_7"}],)"
                                 R"(["weight_7",{"tensor":"layers.300.weight_7"}])");
    check_agreement(*with_tree(c, twice, "tensor twice"), t);
    // A name that is not its own path.
    std::string moved = replaced(*tree, R"({"tensor":"layers.300.weight_7"})",
                                 R"({"tensor":"layers.301.weight_7"})");
    check_agreement(*with_tree(c, moved, "tensor not at its path"), t);
    // A syntax error at the very end of the tree.
    check_agreement(*with_tree(c, tree->substr(0, tree->size() - 1), "truncated tree"), t);
    // The tree is fine; the entries after it are not (the one-pass entry reader gives up, or
    // the layout check fails).
    check_agreement(file_case{"unknown entry field", replaced(c.text, R"("dtype":"F32")",
                                                              R"("dtype":"F32","x":1)"),
                              c.data_size},
                    t);
    check_agreement(file_case{"wrong dtype", replaced(c.text, R"("dtype":"F32")",
                                                      R"("dtype":"F64")"),
                              c.data_size},
                    t);
    check_agreement(file_case{"data section too long", c.text, c.data_size + 4}, t);
    check_agreement(file_case{"newer version", replaced(c.text, R"("shmckpt.version":"2")",
                                                        R"("shmckpt.version":"3")"),
                              c.data_size},
                    t);
    check_agreement(file_case{"version 1 with an integer-keyed dict",
                              replaced(c.text, R"("shmckpt.version":"2")",
                                       R"("shmckpt.version":"1")"),
                              c.data_size},
                    t);
    BOOST_TEST(t.rejected == t.cases - 1);

    std::mt19937_64 rng(checksums ? 11 : 12);
    for (int i = 0; i < 40; ++i) {
      std::string m = mutated(*tree, rng);
      if (auto mc = with_tree(c, m, "large/mutation_" + std::to_string(i))) check_agreement(*mc, t);
    }
  }
}
