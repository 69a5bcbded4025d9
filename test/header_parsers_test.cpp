// header_parsers_test — the fast header reader and the DOM validator must agree on every input.
//
// A checkpoint header is read by two parsers (lib/format/header_fast.hpp, header_exact.hpp):
// the one-pass SAX readers, which build the entries directly and give up at anything
// unexpected, and the DOM validator, which names every error. Readers use the fast one and fall
// back to the exact one, so a header the fast reader accepts but the validator would reject
// is a malformed file let in. This suite feeds both the inputs of the fuzz replay (our writer's
// valid files and every hostile file of test/hostile), headers generated from random state
// dicts (with escaped names, shuffled fields and whitespace, checksum tables in and out of
// order), and thousands of mutations of them (byte flips, cuts, copied ranges, the fuzz
// dictionary's tokens), and requires for each:
//  - header: the fast reader accepts exactly when the validator does, with the same entries and
//    metadata;
//  - checksum table: what the fast reader accepts the validator accepts with the same sums (the
//    validator alone also takes tables in another order);
//  - the whole header read (parse_header, fast vs exact only): the same result, or the same
//    error code and message.
#define BOOST_TEST_MODULE header_parsers
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <boost/json/serialize.hpp>

#include "format/header_exact.hpp"
#include "format/header_fast.hpp"
#include "format/header_plain.hpp"
#include "format/safetensors.hpp"
#include "format/text.hpp"
#include "fuzz/corpus.hpp"
#include "fuzz/header_cases.hpp"
#include "shmckpt/error.hpp"

namespace {

using namespace shmckpt;
using metadata_list = std::vector<std::pair<std::string, std::string>>;

const std::string label = "checkpoint 'differential'";

// One input: a header's JSON text and the size of the data section after it.
using shmckpt_test::header_case;

bool same_entries(const std::vector<tensor_entry>& a, const std::vector<tensor_entry>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].name != b[i].name || a[i].type != b[i].type || a[i].shape != b[i].shape ||
        a[i].offset != b[i].offset || a[i].nbytes != b[i].nbytes || a[i].checksum != b[i].checksum)
      return false;
  return true;
}

// What one parse_header run produced: the header, or the error's code and message.
struct outcome {
  std::optional<detail::parsed_header> header;
  errc code{};
  std::string message;
};

outcome parse_with(const header_case& c, detail::header_parser how) {
  outcome o;
  try {
    o.header = detail::parse_header(c.text, c.data_size, label, how);
  } catch (const error& e) {
    o.code = e.kind();
    o.message = e.what();
  }
  return o;
}

std::string shown(const header_case& c) {
  std::string text = c.text.size() > 300 ? c.text.substr(0, 300) + "..." : c.text;
  return c.name + ": " + detail::printable(text);
}

// Counts of what the inputs exercised, so a test that silently stopped reaching a path fails.
struct tally {
  std::size_t cases = 0, fast_accepted = 0, exact_rejected = 0, checksum_tables = 0;
  std::size_t plain_accepted = 0, plain_checksum_tables = 0;  // taken whole by header_plain.hpp
};

// The three checks of the file comment on one input.
void check_agreement(const header_case& c, tally& t) {
  ++t.cases;
  std::vector<tensor_entry> fast_entries, exact_entries;
  metadata_list fast_meta, exact_meta;
  bool fast_ok = !c.text.empty() && c.text.front() == '{' &&
                 detail::read_header_fast(c.text, fast_entries, fast_meta);
  std::optional<error> exact_error;
  try {
    detail::read_header_exact(c.text, label, exact_entries, exact_meta);
  } catch (const error& e) {
    exact_error = e;
  }
  if (exact_error && exact_error->kind() != errc::corrupt_data)
    BOOST_ERROR("validator rejects with " << exact_error->code().message() << ", not corrupt_data: "
                                          << shown(c));
  if (fast_ok && exact_error)
    BOOST_ERROR("fast reader accepts a header the validator rejects (" << exact_error->what()
                                                                       << "): " << shown(c));
  bool starts_as_object = !c.text.empty() && c.text.front() == '{';
  if (!fast_ok && !exact_error && starts_as_object)
    BOOST_ERROR("fast reader gives up on a header the validator accepts: " << shown(c));
  if (fast_ok && !exact_error &&
      (!same_entries(fast_entries, exact_entries) || fast_meta != exact_meta))
    BOOST_ERROR("fast reader and validator read different entries or metadata: " << shown(c));
  t.fast_accepted += fast_ok;
  t.exact_rejected += exact_error.has_value();

  // The by-hand reader of our writer's layout, on its own (read_header_fast tries it first).
  std::vector<tensor_entry> plain_entries;
  metadata_list plain_meta;
  if (detail::read_header_plain(c.text, plain_entries, plain_meta)) {
    ++t.plain_accepted;
    if (exact_error)
      BOOST_ERROR("plain reader accepts a header the validator rejects (" << exact_error->what()
                                                                          << "): " << shown(c));
    else if (!same_entries(plain_entries, exact_entries) || plain_meta != exact_meta)
      BOOST_ERROR("plain reader and validator read different entries or metadata: " << shown(c));
  }

  // The checksum table, against the entries both agreed on.
  if (fast_ok && !exact_error) {
    for (const auto& [k, v] : exact_meta) {
      if (k != "shmckpt.checksums") continue;
      ++t.checksum_tables;
      std::vector<std::uint64_t> fast_sums;
      bool sums_ok = detail::read_checksums_fast(v, exact_entries, fast_sums);
      std::optional<std::vector<std::uint64_t>> exact_sums;
      std::string why;
      try {
        exact_sums = detail::read_checksums_exact(v, exact_entries, label);
      } catch (const error& e) {
        if (e.kind() != errc::corrupt_data) BOOST_ERROR("checksums: not corrupt_data: " << e.what());
        why = e.what();
      }
      if (sums_ok && !exact_sums)
        BOOST_ERROR("fast reader accepts a checksum table the validator rejects (" << why
                                                                                   << "): " << shown(c));
      if (sums_ok && exact_sums && fast_sums != *exact_sums)
        BOOST_ERROR("fast reader and validator read different checksums: " << shown(c));
      std::vector<std::uint64_t> plain_sums;
      if (detail::read_checksums_plain(v, exact_entries, plain_sums)) {
        ++t.plain_checksum_tables;
        if (!exact_sums)
          BOOST_ERROR("plain reader accepts a checksum table the validator rejects (" << why
                                                                                      << "): " << shown(c));
        else if (plain_sums != *exact_sums)
          BOOST_ERROR("plain reader and validator read different checksums: " << shown(c));
      }
    }
  }

  // The whole read, both ways.
  outcome fast = parse_with(c, detail::header_parser::fast);
  outcome exact = parse_with(c, detail::header_parser::exact);
  if (fast.header.has_value() != exact.header.has_value()) {
    BOOST_ERROR("parse_header: fast " << (fast.header ? "accepts" : "rejects (" + fast.message + ")")
                                      << ", exact "
                                      << (exact.header ? "accepts" : "rejects (" + exact.message + ")")
                                      << ": " << shown(c));
  } else if (fast.header) {
    const auto& a = *fast.header;
    const auto& b = *exact.header;
    bool same = same_entries(a.entries, b.entries) && a.metadata == b.metadata &&
                a.checksums == b.checksums && bool(a.tree) == bool(b.tree) &&
                (!a.tree || a.tree->root == b.tree->root);
    if (!same) BOOST_ERROR("parse_header: fast and exact read different headers: " << shown(c));
  } else if (fast.code != exact.code || fast.message != exact.message) {
    BOOST_ERROR("parse_header: different errors: fast '" << fast.message << "', exact '"
                                                         << exact.message << "': " << shown(c));
  }
}

// ---- inputs ----------------------------------------------------------------------------------

// A whole file as a case: the header text and the data size its prefix implies. Files whose
// prefix already fails reach neither parser and are left out.
std::optional<header_case> from_file(std::string name, const std::string& bytes) {
  return shmckpt_test::header_case_of(std::move(name), bytes, label);
}

// The files reader_fuzz_replay runs: our writer's files of a few kinds, and every hostile case.
std::vector<header_case> corpus() {
  std::vector<header_case> out;
  for (const auto& [name, bytes] : shmckpt_test::fuzz_corpus())
    if (auto c = from_file(name, bytes)) out.push_back(std::move(*c));
  return out;
}

// The tokens of test/fuzz/reader_fuzz.dict (libFuzzer's "..." lines, \" \\ and \xNN escapes).
std::vector<std::string> fuzz_tokens() {
  std::ifstream f(SHMCKPT_FUZZ_DICT);
  BOOST_REQUIRE_MESSAGE(f, "cannot read " SHMCKPT_FUZZ_DICT);
  std::vector<std::string> out;
  for (std::string line; std::getline(f, line);) {
    auto open = line.find('"'), close = line.rfind('"');
    if (line.empty() || line[0] == '#' || open == std::string::npos || close <= open) continue;
    std::string token;
    for (std::size_t i = open + 1; i < close; ++i) {
      if (line[i] == '\\' && i + 1 < close && line[i + 1] == 'x' && i + 3 < close) {
        token += static_cast<char>(std::stoi(line.substr(i + 2, 2), nullptr, 16));
        i += 3;
      } else if (line[i] == '\\' && i + 1 < close) {
        token += line[++i];
      } else {
        token += line[i];
      }
    }
    out.push_back(token);
  }
  // What the dictionary lacks: other number forms, other types, JSON escapes, bad UTF-8.
  for (const char* t : {"-1", "-0", "0.5", "1e2", "4", "8", "false", ",", ":", "\"\"", "\\n",
                        "\\u00e9", "\\\"", "\xff", "\xc0\x80", "\xed\xa0\x80", " ", "{}", "[]"})
    out.emplace_back(t);
  return out;
}

// `s` as a JSON string literal, escaping more than needed at random (escapes make Boost.JSON
// hand strings and keys over in pieces, the readers' other code path).
std::string json_literal(std::string_view s, std::mt19937_64& rng) {
  std::string out = "\"";
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || (c < 0x80 && rng() % 8 == 0)) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string blank(std::mt19937_64& rng) {
  static const char* spaces[] = {"", "", "", " ", "\n", "\t ", "  \r\n"};
  return spaces[rng() % 7];
}

// A header written the way another writer might: random tensor names (with characters that
// need escaping), fields in random order, random whitespace, metadata before or after the
// entries, and optionally a checksum table in entry order or shuffled.
header_case generated_header(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const dtype types[] = {dtype::f32, dtype::bf16, dtype::i64, dtype::u8, dtype::boolean,
                         dtype::f64, dtype::f16, dtype::i8};
  const char* name_parts[] = {"w", "layer", "b", "é", "ü.x", "a\"q", "back\\slash", "tab\t",
                              "0", "__m", "x y"};
  std::size_t n = rng() % 7;
  std::vector<tensor_entry> entries;
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < n; ++i) {
    tensor_entry e;
    e.name = std::string(name_parts[rng() % std::size(name_parts)]) + std::to_string(i);
    e.type = types[rng() % std::size(types)];
    for (std::size_t d = rng() % 3; d > 0; --d) e.shape.push_back(static_cast<std::int64_t>(rng() % 4));
    e.offset = offset;
    e.nbytes = *tensor_nbytes(e.type, e.shape);
    offset += e.nbytes;
    entries.push_back(std::move(e));
  }
  auto entry_json = [&](const tensor_entry& e) {
    std::vector<std::string> fields = {
        json_literal("dtype", rng) + ":" + blank(rng) + json_literal(dtype_name(e.type), rng),
        json_literal("shape", rng) + ":" + detail::shape_string(e.shape),
        json_literal("data_offsets", rng) + ":[" + std::to_string(e.offset) + "," + blank(rng) +
            std::to_string(e.offset + e.nbytes) + "]"};
    std::shuffle(fields.begin(), fields.end(), rng);
    std::string out = "{";
    for (std::size_t i = 0; i < fields.size(); ++i) out += (i ? "," : "") + blank(rng) + fields[i];
    return out + blank(rng) + "}";
  };
  std::vector<std::string> items;
  for (const auto& e : entries) items.push_back(json_literal(e.name, rng) + ":" + entry_json(e));
  if (rng() % 4 != 0) {
    std::string meta = json_literal("__metadata__", rng) + ":{" + json_literal("format", rng) +
                       ":" + json_literal("pt", rng);
    if (rng() % 2) {
      std::vector<std::size_t> order(entries.size());
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
      if (rng() % 3 == 0) std::shuffle(order.begin(), order.end(), rng);
      std::string table = "{";
      for (std::size_t k = 0; k < order.size(); ++k)
        table += (k ? "," : "") + json_literal(entries[order[k]].name, rng) + ":\"" +
                 detail::hex64(rng()) + "\"";
      table += "}";
      meta += "," + json_literal("shmckpt.checksums", rng) + ":" + json_literal(table, rng) +
              "," + json_literal("shmckpt.version", rng) + ":" + json_literal("1", rng);
    }
    meta += "}";
    items.insert(items.begin() + static_cast<std::ptrdiff_t>(rng() % (items.size() + 1)), meta);
  }
  std::string text = "{";
  for (std::size_t i = 0; i < items.size(); ++i) text += (i ? "," : "") + blank(rng) + items[i];
  text += blank(rng) + "}";
  text.append(rng() % 8, ' ');
  return {"generated_" + std::to_string(seed), text, offset};
}

// One random mutation of `c`.
header_case mutated(const header_case& c, const std::vector<std::string>& tokens,
                    std::mt19937_64& rng, std::size_t index) {
  header_case m{c.name + "/mutation_" + std::to_string(index), c.text, c.data_size};
  std::string& s = m.text;
  auto at = [&](std::size_t extra = 0) { return s.empty() ? 0 : rng() % (s.size() + extra); };
  switch (rng() % 7) {
    case 0:  // one byte changed
      if (!s.empty()) s[at()] = static_cast<char>(rng());
      break;
    case 1: {  // a range cut out
      std::size_t i = at(), k = 1 + rng() % 16;
      s.erase(i, k);
      break;
    }
    case 2: {  // a range copied elsewhere (duplicate keys and entries, mismatched brackets)
      std::size_t i = at(), k = 1 + rng() % 64;
      std::string piece = s.substr(i, k);
      s.insert(at(1), piece);
      break;
    }
    case 3:  // a token inserted
      s.insert(at(1), tokens[rng() % tokens.size()]);
      break;
    case 4: {  // a token replacing what was there
      std::size_t i = at();
      s.replace(i, std::min<std::size_t>(1 + rng() % 8, s.size() - i),
                tokens[rng() % tokens.size()]);
      break;
    }
    case 5: {  // a digit changed (offsets, shapes)
      std::vector<std::size_t> digits;
      for (std::size_t i = 0; i < s.size(); ++i)
        if (s[i] >= '0' && s[i] <= '9') digits.push_back(i);
      if (!digits.empty()) s[digits[rng() % digits.size()]] = static_cast<char>('0' + rng() % 10);
      break;
    }
    case 6:  // the data section one byte off
      m.data_size += rng() % 2 ? 1 : -1;
      break;
  }
  return m;
}

}  // namespace

BOOST_AUTO_TEST_CASE(fast_reader_and_validator_agree_on_the_fuzz_corpus_and_hostile_files) {
  tally t;
  auto cases = corpus();
  BOOST_TEST(cases.size() > 20u);
  for (const auto& c : cases) check_agreement(c, t);
  BOOST_TEST(t.fast_accepted >= 4u);  // the valid files
  BOOST_TEST(t.exact_rejected > 10u);
  BOOST_TEST(t.checksum_tables >= 3u);
  BOOST_TEST(t.plain_accepted >= 4u);  // our writer's files, by hand
  BOOST_TEST(t.plain_checksum_tables >= 3u);
}

BOOST_AUTO_TEST_CASE(fast_reader_and_validator_agree_on_generated_headers) {
  tally t;
  for (std::uint64_t seed = 0; seed < 2000; ++seed) check_agreement(generated_header(seed), t);
  BOOST_TEST_MESSAGE(t.cases << " generated headers, " << t.fast_accepted << " accepted, "
                             << t.checksum_tables << " checksum tables");
  BOOST_TEST(t.fast_accepted == t.cases);  // every generated header is valid
  BOOST_TEST(t.checksum_tables > 300u);
}

// The by-hand readers exist for our writer's own headers: every header encode_header writes
// (ranks 0 to 3, several dtypes, empty tensors, names that need escaping, nested dicts, lists,
// with and without checksums, either padding) must be taken whole by them, with the
// validator's result; so must every checksum table whose names need no escaping.
BOOST_AUTO_TEST_CASE(plain_reader_takes_every_header_our_writer_encodes) {
  static std::vector<std::byte> memory(1 << 16);
  std::shared_ptr<void> owner(memory.data(), [](void*) {});
  const dtype types[] = {dtype::f32, dtype::bf16, dtype::i64, dtype::u8, dtype::boolean,
                         dtype::f64, dtype::f16, dtype::i8};
  const char* name_parts[] = {"w", "layer", "é", "a\"q", "back\\slash", "tab\t", "x/y", "x y"};
  std::mt19937_64 rng(7);
  tally t;
  std::size_t with_checksums = 0;
  for (int round = 0; round < 300; ++round) {
    auto leaf = [&]() -> value {
      dtype type = types[rng() % std::size(types)];
      std::vector<std::int64_t> shape;
      for (std::size_t d = rng() % 4; d > 0; --d) shape.push_back(static_cast<std::int64_t>(rng() % 5));
      std::size_t n = *tensor_nbytes(type, shape);
      return tensor(type, shape, {memory.data(), n}, owner);
    };
    state_dict sd;
    for (std::size_t i = rng() % 6; i > 0; --i) {
      std::string name = std::string(name_parts[rng() % std::size(name_parts)]) + std::to_string(i);
      switch (rng() % 4) {
        case 0: {
          dict inner;
          inner.insert_or_assign("weight", leaf());
          inner.insert_or_assign("bias", leaf());
          sd.insert_or_assign(name, std::move(inner));
          break;
        }
        case 1: sd.insert_or_assign(name, list{leaf(), value(std::int64_t{3}), leaf()}); break;
        default: sd.insert_or_assign(name, leaf());
      }
    }
    sd.insert_or_assign("step", std::int64_t{round});
    bool checksums = rng() % 2 == 0;
    auto h = detail::encode_header(sd, checksums, rng() % 2 ? 4096 : 8);
    if (checksums)
      for (std::size_t i = 0; i < h.tensors.size(); ++i) detail::set_checksum(h, i, rng());
    // A table whose names JSON must escape goes to the SAX reader, by design.
    bool plain_names = std::all_of(h.tensors.begin(), h.tensors.end(), [](const auto& p) {
      return p.name.find_first_of("\"\\\t") == std::string::npos;
    });
    with_checksums += checksums && plain_names;
    auto c = shmckpt_test::header_case_of("encoded_" + std::to_string(round),
                                          h.bytes + std::string(h.data_size, '\0'), label);
    BOOST_REQUIRE(c);
    check_agreement(*c, t);
  }
  BOOST_TEST(t.fast_accepted == t.cases);
  BOOST_TEST(t.plain_accepted == t.cases);
  BOOST_TEST(t.plain_checksum_tables == with_checksums);
  BOOST_TEST(with_checksums > 50u);
}

BOOST_AUTO_TEST_CASE(fast_reader_and_validator_agree_on_mutated_headers) {
  auto tokens = fuzz_tokens();
  BOOST_TEST(tokens.size() > 30u);
  std::vector<header_case> seeds = corpus();
  for (std::uint64_t seed = 0; seed < 200; ++seed) seeds.push_back(generated_header(1000 + seed));
  std::mt19937_64 rng(12);
  tally t;
  std::size_t index = 0;
  for (int round = 0; round < 40; ++round) {
    for (const auto& c : seeds) {
      header_case m = mutated(c, tokens, rng, index++);
      // Now and then a second mutation on top of the first.
      if (rng() % 4 == 0) m = mutated(m, tokens, rng, index++);
      check_agreement(m, t);
    }
  }
  BOOST_TEST_MESSAGE(t.cases << " mutated headers: " << t.fast_accepted << " accepted by the fast "
                             << "reader, " << t.exact_rejected << " rejected by the validator");
  BOOST_TEST(t.fast_accepted > 1000u);
  BOOST_TEST(t.exact_rejected > 1000u);
  BOOST_TEST(t.plain_accepted > 300u);
}

// The fast reader takes a leading {"__metadata__":{...} by hand when it is in the plainest form
// (header_fast.cpp); every cut, deletion and odd spelling around it must still get the
// validator's verdict.
BOOST_AUTO_TEST_CASE(fast_reader_and_validator_agree_around_the_leading_metadata) {
  const std::string entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<std::string> bases = {
      R"({"__metadata__":{"format":"pt","k":"v \"q\" \\ \/ \b\f\n\r\t"},)" + entry + "}",
      R"({"__metadata__":{},)" + entry + "}  ",
      R"({"__metadata__":{"x":"y"}})",
      R"({"__metadata__":{"x":"y"},)" + entry + R"(,"__metadata__":{"z":"w"}})",
  };
  const std::vector<std::string> odd = {
      R"({"__metadata__":{"x":"y"},})",
      R"({"__metadata__":{"x":"y"}, )" + entry + "}",
      R"({"__metadata__":{"x":"y"},,)" + entry + "}",
      R"({"__metadata__":{"x":"y"} ,)" + entry + "}",
      R"({"__metadata__":{"x" :"y"},)" + entry + "}",
      R"({"__metadata__":{"x":"y",},)" + entry + "}",
      R"({"__metadata__":{"x":"y","x":"z"},)" + entry + "}",
      R"({"__metadata__":{"x":"y"},"a":{}})",
      R"({"__metadata__":{"x":1},)" + entry + "}",
      R"({"__metadata__":{"x":"\u0041\ud83d\ude00"},)" + entry + "}",
      R"({"__metadata__":{"x":"\ud800"},)" + entry + "}",
      R"({"__metadata__":{"x":"\q"},)" + entry + "}",
      "{\"__metadata__\":{\"x\":\"a\tb\"}," + entry + "}",
      "{\"__metadata__\":{\"x\":\"\x7f\"}," + entry + "}",
      R"({"__metadata__":{"x":"y"}}x)",
      R"({"__metadata__":{"x":"y"}}})",
      R"({"__metadata__":{"x":"y"}])",
      R"({"__metadata__":{"x":"y"})",
      R"({"__metadata__":{"x":"y")",
  };
  tally t;
  for (const auto& b : bases) {
    for (std::size_t n = 0; n <= b.size(); ++n)
      check_agreement({"prefix", b.substr(0, n), 8}, t);
    for (std::size_t i = 0; i < b.size(); ++i) {
      check_agreement({"deleted", b.substr(0, i) + b.substr(i + 1), 8}, t);
      for (const char* c : {",", "}", " ", "\"", "\\"})
        check_agreement({"inserted", b.substr(0, i) + c + b.substr(i), 8}, t);
    }
  }
  for (const auto& o : odd) check_agreement({"odd", o, 8}, t);
  BOOST_TEST(t.fast_accepted >= 4u);
  BOOST_TEST(t.exact_rejected > 1000u);
}

// parse_hex64 reads the checksum table's values and the tree's doubles eight digits at a time.
// It must mean exactly what one digit at a time means: 16 lowercase hex digits, first digit
// most significant, anything else refused. Every byte value is tried at every position.
BOOST_AUTO_TEST_CASE(hex64_parser_matches_the_digit_by_digit_definition) {
  auto by_digit = [](std::string_view s) -> std::optional<std::uint64_t> {
    if (s.size() != 16) return std::nullopt;
    std::uint64_t v = 0;
    for (char c : s) {
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return std::nullopt;
      v = (v << 4) | static_cast<std::uint64_t>(d);
    }
    return v;
  };
  std::mt19937_64 rng(7);
  const char* digits = "0123456789abcdef";
  int mismatches = 0, refused = 0;
  for (int round = 0; round < 200; ++round) {
    std::string s(16, '0');
    for (char& c : s) c = digits[rng() % 16];
    if (shmckpt::detail::parse_hex64(s) != by_digit(s)) ++mismatches;
    for (std::size_t pos = 0; pos < s.size(); ++pos)
      for (int b = 0; b < 256; ++b) {
        std::string t = s;
        t[pos] = static_cast<char>(b);
        auto got = shmckpt::detail::parse_hex64(t);
        if (got != by_digit(t)) ++mismatches;
        refused += !got;
      }
  }
  BOOST_TEST(mismatches == 0);
  BOOST_TEST(refused == 200 * 16 * (256 - 16));  // all but the 16 lowercase digits
  BOOST_TEST((shmckpt::detail::parse_hex64("0123456789abcdef") ==
              std::optional<std::uint64_t>(0x0123456789abcdefu)));
  BOOST_TEST((shmckpt::detail::parse_hex64("ffffffffffffffff") ==
              std::optional<std::uint64_t>(~std::uint64_t{0})));
  BOOST_TEST(!shmckpt::detail::parse_hex64("0123456789ABCDEF").has_value());  // one spelling
  BOOST_TEST(!shmckpt::detail::parse_hex64("0123456789abcde").has_value());
  BOOST_TEST(!shmckpt::detail::parse_hex64("0123456789abcdef0").has_value());
}
