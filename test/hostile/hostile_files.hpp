// hostile_files.hpp — malformed checkpoint files, built from code, plus small test utilities.
//
// Each hostile case is a whole file assembled byte by byte from the safetensors layout (u64
// little-endian header length, JSON header, data section), not produced by our writer, with the
// one defect its name describes. Building them from code keeps every defect readable in review;
// reader_test feeds them to read(), list_entries() and check_checksums(), and inspect_test
// writes them to a directory and runs `ckpt-inspect list` on each. Every case must be rejected
// with error(corrupt_data) whose message contains `expect`.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>

#include "shmckpt/state_dict.hpp"
#include <vector>

namespace shmckpt_test {

namespace fs = std::filesystem;

/// A unique directory under the system temp directory, removed with everything in it.
class scratch_dir {
 public:
  explicit scratch_dir(std::string_view tag) {
    std::string pattern =
        (fs::temp_directory_path() / ("shmckpt-" + std::string(tag) + "-XXXXXX")).string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed for " + pattern);
    path_ = pattern;
  }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
  ~scratch_dir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const noexcept { return path_; }
  fs::path operator/(std::string_view name) const { return path_ / name; }

 private:
  fs::path path_;
};

// Deterministic pseudo-random bytes, different per seed.
inline shmckpt::tensor random_tensor(shmckpt::dtype t, std::vector<std::int64_t> shape,
                                     std::uint64_t seed) {
  auto x = shmckpt::tensor::zeros(t, std::move(shape));
  std::mt19937_64 rng(seed);
  for (auto& b : x.bytes()) b = static_cast<std::byte>(rng());
  return x;
}

inline void write_file(const fs::path& p, std::string_view bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

inline std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + p.string());
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

/// Little-endian u64, as the safetensors length prefix wants it.
inline std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
  return s;
}

/// A file from its parts: length prefix, `header` (space-padded to an 8-byte boundary when
/// `pad`), `data`.
inline std::string safetensors_bytes(std::string header, std::string_view data, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + std::string(data);
}

/// `s` as a JSON string literal (for embedding a JSON document in a metadata value).
inline std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

struct hostile_case {
  std::string name;    // what is wrong, also the file name
  std::string bytes;   // the whole file
  std::string expect;  // a phrase the error message must contain
};

inline std::vector<hostile_case> hostile_cases() {
  // A valid base: one F32 tensor "a" of shape [2] (8 bytes).
  const std::string a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data8(8, '\x11');
  auto file = [](const std::string& header, std::string_view data) {
    return safetensors_bytes(header, data);
  };
  // A shmckpt file around tensor "a" with a given tree document and extra metadata.
  auto with_tree = [&](const std::string& tree, const std::string& extra = "") {
    return file(R"({"__metadata__":{"format":"shmckpt","shmckpt.version":"1","shmckpt.tree":)" +
                    json_string(tree) + extra + "}," + a + "}",
                data8);
  };
  auto with_tree_v2 = [&](const std::string& tree) {
    return file(R"({"__metadata__":{"format":"pt","shmckpt.version":"2","shmckpt.tree":)" +
                    json_string(tree) + "}," + a + "}",
                data8);
  };
  std::string deep_json = R"({"__metadata__":{},"x":)" + std::string(1000, '[') +
                          std::string(1000, ']') + "}";
  std::string deep_tree = R"({"dict":[["a",{"tensor":"a"}],["deep",)" + std::string(65, '[') +
                          std::string(65, ']') + "]]}";
  std::string many_dims = "[1";
  for (int i = 0; i < 1024; ++i) many_dims += ",1";
  many_dims += "]";

  return {
      {"empty_file", "", "shorter than the 8-byte"},
      {"truncated_length_field", std::string(5, '\0'), "shorter than the 8-byte"},
      {"header_length_past_eof", le64(1000) + std::string(50, ' '), "only 50 bytes follow"},
      {"huge_header_length", le64(std::uint64_t{1} << 62) + "{}      ", "more than the limit"},
      {"zero_header_length", le64(0), "does not start with '{'"},
      {"not_json", file("this is not json", ""), "does not start with '{'"},
      {"broken_json", file(R"({"a":{"dtype":"F32",)", ""), "not valid JSON"},
      {"trailing_garbage_after_json", file("{} x", ""), "not valid JSON"},
      {"truncated_data", file("{" + a + "}", data8.substr(0, 5)), "pass the end of the data"},
      {"wrong_data_offsets",
       file(R"({"a":{"dtype":"F32","shape":[10,10],"data_offsets":[0,100]}})",
            std::string(100, 'x')),
       "data_offsets [0, 100] say 100 bytes, dtype F32 × shape [10, 10] needs 400"},
      {"overlapping_offsets",
       file("{" + a + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            std::string(12, 'x')),
       "overlap tensor 'a'"},
      {"hole_between_tensors",
       file("{" + a + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
            std::string(20, 'x')),
       "hole of 4 bytes"},
      {"trailing_bytes", file("{" + a + "}", std::string(12, 'x')), "4 trailing bytes"},
      {"offsets_out_of_bounds",
       file("{" + a + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
            std::string(12, 'x')),
       "pass the end of the data section (12 bytes)"},
      {"offsets_reversed", file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", data8),
       "end before they begin"},
      {"huge_dims",
       file(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],)"
            R"("data_offsets":[0,8]}})",
            data8),
       "needs more than 2^64 bytes"},
      {"dim_above_int64",
       file(R"({"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,8]}})", data8),
       "larger than any tensor dimension"},
      {"negative_dims", file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8),
       "negative"},
      {"fractional_dim", file(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", data8),
       "not an integer"},
      {"too_many_dims",
       file(R"({"a":{"dtype":"F32","shape":)" + many_dims + R"(,"data_offsets":[0,4]}})",
            std::string(4, 'x')),
       "more than the limit of 1024"},
      {"unknown_dtype", file(R"({"a":{"dtype":"F128","shape":[2],"data_offsets":[0,8]}})", data8),
       "unknown dtype 'F128'"},
      {"sub_byte_dtype_not_whole_bytes",
       file(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", "xx"),
       "not a whole number of bytes"},
      {"duplicate_names",
       file("{" + a + R"(,"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
            std::string(16, 'x')),
       "has the key 'a' twice"},
      {"bad_utf8_in_name",
       file("{\"\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", data8),
       "header is not valid UTF-8 (byte 2 is 0xff)"},
      {"lone_surrogate_escape_in_name",
       file(R"({"\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data8),
       "header is not valid JSON"},
      {"deep_json_nesting", file(deep_json, ""), "not valid JSON"},
      {"entry_not_an_object", file(R"({"a":5})", ""), "entry is a JSON integer"},
      {"missing_field", file(R"({"a":{"dtype":"F32","shape":[2]}})", data8),
       "missing field 'data_offsets'"},
      {"unknown_field",
       file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", data8),
       "unknown field 'extra'"},
      {"shape_not_an_array",
       file(R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", data8),
       "shape is a JSON string"},
      {"data_offsets_not_a_pair",
       file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", data8),
       "array of two integers"},
      {"non_string_metadata", file(R"({"__metadata__":{"step":100},)" + a + "}", data8),
       "__metadata__ 'step' is a JSON integer"},
      {"metadata_not_an_object", file(R"({"__metadata__":"x",)" + a + "}", data8),
       "__metadata__ is a JSON string"},
      {"duplicate_metadata_key", file(R"({"__metadata__":{"k":"1","k":"2"},)" + a + "}", data8),
       "has the key 'k' twice"},
      {"unknown_format_version",
       file(R"({"__metadata__":{"shmckpt.version":"3"},)" + a + "}", data8),
       "understands versions 1 and 2"},
      {"tree_not_json", with_tree("{\"dict\":["), "'shmckpt.tree' is not valid JSON"},
      {"tree_root_not_a_dict", with_tree("[1,2]"), "at the root: not a {\"dict\""},
      {"tree_too_deep", with_tree(deep_tree), "nests deeper than 64 levels"},
      {"tree_refers_to_missing_tensor",
       with_tree(R"({"dict":[["a",{"tensor":"a"}],["b",{"tensor":"b"}]]})"),
       "refers to tensor 'b', which is not in the header"},
      {"tree_refers_to_a_tensor_twice",
       with_tree(R"({"dict":[["a",{"tensor":"a"}],["b",{"tensor":"a"}]]})"),
       "refers to tensor 'a' a second time"},
      {"tree_misses_a_tensor", with_tree(R"({"dict":[]})"), "nowhere in the tree"},
      {"tree_names_tensor_at_wrong_path", with_tree(R"({"dict":[["x",{"tensor":"a"}]]})"),
       "must be named 'x'"},
      {"tree_bare_double", with_tree(R"({"dict":[["a",{"tensor":"a"}],["lr",0.5]]})"),
       "bare JSON number"},
      {"tree_int_outside_int64",
       with_tree(R"({"dict":[["a",{"tensor":"a"}],["n",18446744073709551615]]})"),
       "outside the int64 range"},
      {"tree_bad_float_bits",
       with_tree(R"({"dict":[["a",{"tensor":"a"}],["lr",{"float":"3FF0000000000000"}]]})"),
       "16 lowercase hex"},
      {"tree_duplicate_dict_key", with_tree(R"({"dict":[["a",{"tensor":"a"}],["k",1],["k",2]]})"),
       "has the key 'k' twice"},
      {"tree_duplicate_json_key", with_tree(R"({"dict":[["a",{"tensor":"a","tensor":"a"}]]})"),
       "has the key 'tensor' twice"},
      {"tree_unknown_node", with_tree(R"({"dict":[["a",{"tensor":"a"}],["x",{"set":[]}]]})"),
       "unknown node type 'set'"},
      {"tree_idict_in_a_version_1_file",
       with_tree(R"({"dict":[["a",{"tensor":"a"}],["s",{"idict":[[0,1]]}]]})"),
       "needs 'shmckpt.version' 2"},
      {"tree_tuple_in_a_version_1_file",
       with_tree(R"({"dict":[["a",{"tensor":"a"}],["b",{"tuple":[1]}]]})"),
       "needs 'shmckpt.version' 2"},
      {"tree_idict_string_key",
       with_tree_v2(R"({"dict":[["a",{"tensor":"a"}],["s",{"idict":[["0",1]]}]]})"),
       "key that is a JSON string, not an integer"},
      {"tree_idict_key_outside_int64",
       with_tree_v2(R"({"dict":[["a",{"tensor":"a"}],["s",{"idict":[[9223372036854775808,1]]}]]})"),
       "not an integer in the int64 range"},
      {"tree_idict_duplicate_key",
       with_tree_v2(R"({"dict":[["a",{"tensor":"a"}],["s",{"idict":[[3,1],[3,2]]}]]})"),
       "has the key '3' twice"},
      {"tree_tuple_payload_not_array",
       with_tree_v2(R"({"dict":[["a",{"tensor":"a"}],["b",{"tuple":{"dict":[]}}]]})"),
       "tuple payload is a JSON object, not an array"},
      {"checksum_not_hex",
       with_tree(R"({"dict":[["a",{"tensor":"a"}]]})",
                 R"(,"shmckpt.checksums":)" + json_string(R"({"a":"not-a-checksum!!"})")),
       "16 lowercase hex"},
      {"checksum_for_unknown_tensor",
       with_tree(R"({"dict":[["a",{"tensor":"a"}]]})",
                 R"(,"shmckpt.checksums":)" +
                     json_string(R"({"a":"0000000000000000","z":"0000000000000000"})")),
       "names 'z', which is not a tensor"},
      {"checksum_missing_for_a_tensor",
       file(R"({"__metadata__":{"shmckpt.version":"1","shmckpt.checksums":)" +
                json_string(R"({"a":"0000000000000000"})") + "}," + a +
                R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
            std::string(16, 'x')),
       "records 1 of 2 tensors; 'b' has none"},
      {"checksums_not_json",
       with_tree(R"({"dict":[["a",{"tensor":"a"}]]})", R"(,"shmckpt.checksums":"nope")"),
       "'shmckpt.checksums' is not valid JSON"},
  };
}

}  // namespace shmckpt_test
