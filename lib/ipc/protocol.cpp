#include "ipc/protocol.hpp"

#include <bit>
#include <cstring>

namespace shmckpt::protocol {

static_assert(std::endian::native == std::endian::little,
              "the wire format is little-endian; add byte swaps before porting to big-endian");

namespace {

// Value tags of the descriptor tree (wire values: append only).
enum class tag : std::uint8_t {
  none = 0, boolean = 1, integer = 2, real = 3, string = 4, list = 5, dict = 6, tensor = 7,
  int_dict = 8,  // a dict whose keys are integers: the same payload as dict
  tuple = 9,     // a tuple: the same payload as list
};

[[noreturn]] void fail(const std::string& what) {
  throw_error(errc::protocol_error, "malformed control message: " + what);
}

class byte_writer {
 public:
  template <class T>
  void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    auto old = out_.size();
    out_.resize(old + sizeof v);
    std::memcpy(out_.data() + old, &v, sizeof v);
  }
  void put_string(std::string_view s) {
    if (s.size() > max_string_bytes)
      throw_error(errc::invalid_argument, "string of " + std::to_string(s.size()) +
                                              " bytes exceeds the control-message limit of " +
                                              std::to_string(max_string_bytes));
    put<std::uint32_t>(static_cast<std::uint32_t>(s.size()));
    auto old = out_.size();
    out_.resize(old + s.size());
    if (!s.empty()) std::memcpy(out_.data() + old, s.data(), s.size());
  }
  void put_kwargs(const kwargs& kw) {
    put<std::uint32_t>(static_cast<std::uint32_t>(kw.size()));
    for (const auto& [k, v] : kw) {
      put_string(k);
      put_string(v);
    }
  }
  std::vector<std::byte> take() { return std::move(out_); }

 private:
  std::vector<std::byte> out_;
};

// A bounded reader: every read checks the bytes remaining first.
class byte_reader {
 public:
  explicit byte_reader(std::span<const std::byte> in) : in_(in) {}
  template <class T>
  T get(const char* field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, in_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  std::string get_string(const char* field) {
    auto n = get<std::uint32_t>(field);
    if (n > max_string_bytes)
      fail(std::string(field) + " claims " + std::to_string(n) + " bytes, over the limit of " +
           std::to_string(max_string_bytes));
    need(n, field);
    std::string s(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  kwargs get_kwargs(const char* field) {
    auto n = get<std::uint32_t>(field);
    // Each entry needs at least two length prefixes: bound the count before looping.
    if (n > remaining() / 8)
      fail(std::string(field) + " claims " + std::to_string(n) + " entries in " +
           std::to_string(remaining()) + " bytes");
    kwargs kw;
    for (std::uint32_t i = 0; i < n; ++i) {
      auto k = get_string(field);
      auto v = get_string(field);
      if (!kw.emplace(std::move(k), std::move(v)).second)
        fail(std::string(field) + " has a duplicate key");
    }
    return kw;
  }
  std::size_t remaining() const noexcept { return in_.size() - pos_; }
  // Counts decoded values against max_values.
  void count_value() {
    if (++values_ > max_values)
      fail("descriptor holds more than " + std::to_string(max_values) + " values");
  }
  void expect_end(const char* what) const {
    if (remaining() != 0)
      fail(std::string(what) + " has " + std::to_string(remaining()) + " trailing bytes");
  }

 private:
  void need(std::size_t n, const char* field) const {
    if (n > remaining())
      fail(std::string(field) + " needs " + std::to_string(n) + " bytes, only " +
           std::to_string(remaining()) + " remain");
  }
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
  std::size_t values_ = 0;
};

void encode_value(byte_writer& w, const value& v, const offset_function& offset_of,
                  std::size_t depth);

void encode_dict(byte_writer& w, const dict& d, const offset_function& offset_of,
                 std::size_t depth) {
  if (depth > max_depth)
    throw_error(errc::invalid_argument, "state dict nests deeper than " +
                                            std::to_string(max_depth) + " levels");
  w.put<std::uint32_t>(static_cast<std::uint32_t>(d.size()));
  for (const auto& [k, v] : d) {
    w.put_string(k);
    encode_value(w, v, offset_of, depth + 1);
  }
}

void encode_value(byte_writer& w, const value& v, const offset_function& offset_of,
                  std::size_t depth) {
  switch (v.type()) {
    case kind::none: w.put(tag::none); break;
    case kind::boolean:
      w.put(tag::boolean);
      w.put<std::uint8_t>(v.as_bool() ? 1 : 0);
      break;
    case kind::integer:
      w.put(tag::integer);
      w.put<std::int64_t>(v.as_int());
      break;
    case kind::real:
      w.put(tag::real);
      w.put<double>(v.as_double());
      break;
    case kind::string:
      w.put(tag::string);
      w.put_string(v.as_string());
      break;
    case kind::list:
    case kind::tuple: {
      if (depth > max_depth)
        throw_error(errc::invalid_argument, "state dict nests deeper than " +
                                                std::to_string(max_depth) + " levels");
      w.put(v.type() == kind::tuple ? tag::tuple : tag::list);
      const auto& l = v.as_sequence();
      w.put<std::uint32_t>(static_cast<std::uint32_t>(l.size()));
      for (const auto& e : l) encode_value(w, e, offset_of, depth + 1);
      break;
    }
    case kind::dict:
      w.put(v.as_dict().keys() == key_type::integer ? tag::int_dict : tag::dict);
      encode_dict(w, v.as_dict(), offset_of, depth);
      break;
    case kind::tensor: {
      const auto& t = v.as_tensor();
      if (t.shape().size() > max_rank)
        throw_error(errc::invalid_argument, "tensor has " + std::to_string(t.shape().size()) +
                                                " dimensions, more than " +
                                                std::to_string(max_rank));
      w.put(tag::tensor);
      w.put(static_cast<std::uint8_t>(t.type()));
      w.put<std::uint8_t>(static_cast<std::uint8_t>(t.shape().size()));
      for (auto d : t.shape()) w.put<std::int64_t>(d);
      w.put<std::uint64_t>(offset_of(t));
      w.put<std::uint64_t>(t.nbytes());
      break;
    }
  }
}

value decode_value(byte_reader& r, const resolve_function& resolve, std::size_t depth);

dict decode_dict(byte_reader& r, const resolve_function& resolve, std::size_t depth,
                 key_type keys = key_type::string) {
  if (depth > max_depth) fail("descriptor nests deeper than " + std::to_string(max_depth));
  auto n = r.get<std::uint32_t>("dict size");
  // Every entry needs a 4-byte key length and a 1-byte tag.
  if (n > r.remaining() / 5)
    fail("dict claims " + std::to_string(n) + " entries in " + std::to_string(r.remaining()) +
         " bytes");
  dict d;
  d.set_key_type(keys);
  for (std::uint32_t i = 0; i < n; ++i) {
    auto key = r.get_string("dict key");
    if (d.contains(key)) fail("dict has duplicate key '" + key + "'");
    if (keys == key_type::integer && !is_canonical_int_key(key))
      fail("integer-keyed dict has the key '" + key + "', which is not canonical int64 text");
    d.insert_or_assign(std::move(key), decode_value(r, resolve, depth + 1));
  }
  return d;
}

value decode_value(byte_reader& r, const resolve_function& resolve, std::size_t depth) {
  r.count_value();
  auto t = r.get<std::uint8_t>("value tag");
  switch (static_cast<tag>(t)) {
    case tag::none: return none;
    case tag::boolean: {
      auto b = r.get<std::uint8_t>("bool");
      if (b > 1) fail("bool value " + std::to_string(b) + " is neither 0 nor 1");
      return b == 1;
    }
    case tag::integer: return r.get<std::int64_t>("int");
    case tag::real: return r.get<double>("float");
    case tag::string: return r.get_string("string");
    case tag::list:
    case tag::tuple: {
      if (depth > max_depth) fail("descriptor nests deeper than " + std::to_string(max_depth));
      auto n = r.get<std::uint32_t>("list size");
      if (n > r.remaining())
        fail("list claims " + std::to_string(n) + " items in " + std::to_string(r.remaining()) +
             " bytes");
      list l;
      // Bounded: a node is ~100 bytes in memory but may be 1 byte on the wire.
      l.reserve(std::min<std::uint32_t>(n, 4096));
      for (std::uint32_t i = 0; i < n; ++i) l.push_back(decode_value(r, resolve, depth + 1));
      if (static_cast<tag>(t) == tag::tuple) return tuple(std::move(l));
      return l;
    }
    case tag::dict: return decode_dict(r, resolve, depth);
    case tag::int_dict: return decode_dict(r, resolve, depth, key_type::integer);
    case tag::tensor: {
      auto raw_dtype = r.get<std::uint8_t>("tensor dtype");
      if (!dtype_valid(raw_dtype)) fail("unknown dtype code " + std::to_string(raw_dtype));
      auto type = static_cast<dtype>(raw_dtype);
      auto rank = r.get<std::uint8_t>("tensor rank");
      if (rank > max_rank)
        fail("tensor rank " + std::to_string(rank) + " exceeds " + std::to_string(max_rank));
      std::vector<std::int64_t> shape(rank);
      for (auto& d : shape) {
        d = r.get<std::int64_t>("tensor dimension");
        if (d < 0) fail("tensor dimension " + std::to_string(d) + " is negative");
      }
      auto offset = r.get<std::uint64_t>("tensor offset");
      auto length = r.get<std::uint64_t>("tensor length");
      auto need = tensor_nbytes(type, shape);
      if (!need)
        fail("tensor of dtype " + std::string(dtype_name(type)) +
             " has a shape whose byte size overflows or is fractional");
      if (*need != length)
        fail("tensor length " + std::to_string(length) + " but dtype " +
             std::string(dtype_name(type)) + " and its shape need " + std::to_string(*need));
      return tensor(type, std::move(shape), resolve(offset, length));
    }
  }
  fail("unknown value tag " + std::to_string(t));
}

std::uint16_t load16(const std::byte* p) {
  std::uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
std::uint32_t load32(const std::byte* p) {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
std::uint64_t load64(const std::byte* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool known_type(std::uint16_t t) {
  switch (static_cast<message_type>(t)) {
    case message_type::init:
    case message_type::ping:
    case message_type::write_checkpoint:
    case message_type::terminate:
    case message_type::response:
    case message_type::progress: return true;
  }
  return false;
}

}  // namespace

void encode_header(const frame_header& h, std::span<std::byte, header_size> out) noexcept {
  std::byte* p = out.data();
  std::memcpy(p + 0, &h.magic, 4);
  std::memcpy(p + 4, &h.version, 2);
  std::memcpy(p + 6, &h.type, 2);
  std::memcpy(p + 8, &h.request_id, 8);
  std::memcpy(p + 16, &h.payload_bytes, 4);
  std::memcpy(p + 20, &h.reserved, 4);
}

frame_header decode_header(std::span<const std::byte, header_size> in) {
  frame_header h;
  const std::byte* p = in.data();
  h.magic = load32(p);
  h.version = load16(p + 4);
  h.type = load16(p + 6);
  h.request_id = load64(p + 8);
  h.payload_bytes = load32(p + 16);
  h.reserved = load32(p + 20);
  if (h.magic != frame_magic)
    throw_error(errc::protocol_error,
                "control frame has bad magic 0x" + [&] {
                  char buf[16];
                  std::snprintf(buf, sizeof buf, "%08x", h.magic);
                  return std::string(buf);
                }() + " (expected \"SHCK\"): the peer is not a shmckpt process");
  if (h.version != protocol_version)
    throw_error(errc::protocol_error,
                "control frame has protocol version " + std::to_string(h.version) +
                    ", this side speaks version " + std::to_string(protocol_version) +
                    ": parent and checkpoint child come from different shmckpt releases");
  if (!known_type(h.type))
    throw_error(errc::protocol_error,
                "control frame has unknown message type " + std::to_string(h.type));
  if (h.reserved != 0)
    throw_error(errc::protocol_error, "control frame has a non-zero reserved field");
  if (h.payload_bytes > max_payload_bytes)
    throw_error(errc::protocol_error, "control frame claims a payload of " +
                                          std::to_string(h.payload_bytes) +
                                          " bytes, over the limit of " +
                                          std::to_string(max_payload_bytes));
  return h;
}

std::vector<std::byte> make_frame(message_type type, std::uint64_t request_id,
                                  std::span<const std::byte> payload) {
  if (payload.size() > max_payload_bytes)
    throw_error(errc::invalid_argument,
                "control message of " + std::to_string(payload.size()) +
                    " bytes exceeds the limit of " + std::to_string(max_payload_bytes) +
                    " (a state dict with too many entries for one write)");
  std::vector<std::byte> frame(header_size + payload.size());
  frame_header h;
  h.type = static_cast<std::uint16_t>(type);
  h.request_id = request_id;
  h.payload_bytes = static_cast<std::uint32_t>(payload.size());
  encode_header(h, std::span<std::byte, header_size>(frame.data(), header_size));
  if (!payload.empty()) std::memcpy(frame.data() + header_size, payload.data(), payload.size());
  return frame;
}

void set_request_id(std::span<std::byte> frame, std::uint64_t request_id) {
  if (frame.size() < header_size)
    throw_error(errc::invalid_argument, "cannot set the request id of a control frame of " +
                                            std::to_string(frame.size()) +
                                            " bytes: a frame starts with a " +
                                            std::to_string(header_size) + "-byte header");
  // Bytes 8..15, as encode_header writes them.
  std::memcpy(frame.data() + 8, &request_id, sizeof request_id);
}

std::vector<std::byte> encode_init(const init_request& r) {
  byte_writer w;
  w.put_string(r.init_function);
  w.put_kwargs(r.init_args);
  w.put_string(r.writer_factory);
  w.put_kwargs(r.writer_args);
  w.put<std::uint64_t>(r.segment_bytes);
  return w.take();
}

init_request decode_init(std::span<const std::byte> payload) {
  byte_reader r(payload);
  init_request out;
  out.init_function = r.get_string("init function name");
  out.init_args = r.get_kwargs("init arguments");
  out.writer_factory = r.get_string("writer factory name");
  out.writer_args = r.get_kwargs("writer arguments");
  out.segment_bytes = r.get<std::uint64_t>("segment size");
  r.expect_end("INIT payload");
  return out;
}

std::vector<std::byte> encode_tree(const state_dict& sd, const offset_function& offset_of) {
  byte_writer w;
  encode_dict(w, sd, offset_of, 1);  // the root dict is level 1
  return w.take();
}

std::vector<std::byte> encode_write(const std::string& path, const state_dict& sd,
                                    const kwargs& kw, const offset_function& offset_of) {
  byte_writer w;
  w.put_string(path);
  w.put_kwargs(kw);
  w.put(tree_form::in_frame);
  encode_dict(w, sd, offset_of, 1);
  return w.take();
}

std::vector<std::byte> encode_write(const std::string& path, const shared_tree& tree,
                                    const kwargs& kw) {
  byte_writer w;
  w.put_string(path);
  w.put_kwargs(kw);
  w.put(tree_form::in_segment);
  w.put<std::uint64_t>(tree.offset);
  w.put<std::uint64_t>(tree.bytes);
  return w.take();
}

write_request decode_write(std::span<const std::byte> payload, const resolve_function& resolve) {
  byte_reader r(payload);
  write_request out;
  out.path = r.get_string("checkpoint path");
  if (out.path.empty()) fail("checkpoint path is empty");
  if (out.path.find('\0') != std::string::npos) fail("checkpoint path contains a NUL byte");
  out.kw = r.get_kwargs("write kwargs");
  const auto form = r.get<tree_form>("state dict form");
  if (form == tree_form::in_frame) {
    out.state = decode_dict(r, resolve, 1);
  } else if (form == tree_form::in_segment) {
    const auto offset = r.get<std::uint64_t>("state dict offset");
    const auto bytes = r.get<std::uint64_t>("state dict length");
    if (bytes > max_payload_bytes)
      fail("state dict in the segment claims " + std::to_string(bytes) +
           " bytes, over the limit of " + std::to_string(max_payload_bytes));
    // The same bounded decoder as for a frame: the bytes are the parent's, read where they lie.
    byte_reader tree(resolve(offset, bytes));
    out.state = decode_dict(tree, resolve, 1);
    tree.expect_end("state dict in the segment");
  } else {
    fail("state dict form " + std::to_string(static_cast<unsigned>(form)) +
         " is unknown (0: in the frame, 1: in the segment)");
  }
  r.expect_end("WRITE_CHECKPOINT payload");
  return out;
}

std::vector<std::byte> encode_response(const response& r) {
  byte_writer w;
  w.put<std::uint32_t>(r.code);
  w.put_string(r.message);
  w.put<std::uint32_t>(static_cast<std::uint32_t>(r.payload.size()));
  for (auto b : r.payload) w.put(b);
  return w.take();
}

response decode_response(std::span<const std::byte> payload) {
  byte_reader r(payload);
  response out;
  out.code = r.get<std::uint32_t>("response code");
  out.message = r.get_string("response message");
  auto n = r.get<std::uint32_t>("response payload size");
  if (n != r.remaining())
    fail("response payload claims " + std::to_string(n) + " bytes, " +
         std::to_string(r.remaining()) + " remain");
  out.payload.resize(n);
  for (auto& b : out.payload) b = r.get<std::byte>("response payload");
  return out;
}

std::vector<std::byte> encode_progress(std::string_view what) {
  if (what.size() > max_progress_bytes) {
    // Cut at a character boundary: never leave half a UTF-8 sequence at the end.
    std::size_t n = max_progress_bytes;
    while (n > 0 && (static_cast<unsigned char>(what[n]) & 0xC0) == 0x80) --n;
    what = what.substr(0, n);
  }
  byte_writer w;
  w.put_string(what);
  return w.take();
}

std::string decode_progress(std::span<const std::byte> payload) {
  byte_reader r(payload);
  auto what = r.get_string("progress description");
  if (what.size() > max_progress_bytes)
    fail("progress description of " + std::to_string(what.size()) + " bytes exceeds " +
         std::to_string(max_progress_bytes));
  r.expect_end("PROGRESS payload");
  return what;
}

}  // namespace shmckpt::protocol
