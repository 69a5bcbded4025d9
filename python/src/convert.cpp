#include "convert.hpp"

#include <Python.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "shmckpt/error.hpp"

namespace shmckpt::python {

using namespace pybind11::literals;

namespace {

// ---- torch and numpy, looked up once ------------------------------------------------------------
// Built on first use with the GIL held and deliberately never freed: releasing Python objects
// from a static destructor would run after the interpreter is gone. No function-local static
// guards: an import can release the GIL, and a second thread blocked on the guard while holding
// the GIL would deadlock.

struct torch_api {
  py::object module, tensor_type, frombuffer, empty;
  py::object dtypes[dtype_count];
  py::dict codes;  // torch dtype object -> shmckpt dtype value
};

struct numpy_api {
  py::object module, ndarray, generic, frombuffer, empty, copyto;
  py::object dtypes[dtype_count];
};

torch_api* g_torch = nullptr;
numpy_api* g_numpy = nullptr;

torch_api& torch_() {
  if (g_torch) return *g_torch;
  auto* a = new torch_api;
  a->module = py::module_::import("torch");
  a->tensor_type = a->module.attr("Tensor");
  a->frombuffer = a->module.attr("frombuffer");
  a->empty = a->module.attr("empty");
  // Every dtype torch and safetensors share; the ones this torch lacks stay None.
  static constexpr std::pair<dtype, const char*> names[] = {
      {dtype::boolean, "bool"},
      {dtype::u8, "uint8"},
      {dtype::i8, "int8"},
      {dtype::i16, "int16"},
      {dtype::u16, "uint16"},
      {dtype::f16, "float16"},
      {dtype::bf16, "bfloat16"},
      {dtype::i32, "int32"},
      {dtype::u32, "uint32"},
      {dtype::f32, "float32"},
      {dtype::f64, "float64"},
      {dtype::i64, "int64"},
      {dtype::u64, "uint64"},
      {dtype::c64, "complex64"},
      {dtype::f8_e5m2, "float8_e5m2"},
      {dtype::f8_e4m3, "float8_e4m3fn"},
      {dtype::f8_e8m0, "float8_e8m0fnu"},
  };
  for (auto& d : a->dtypes) d = py::none();
  for (auto [d, name] : names) {
    if (!py::hasattr(a->module, name)) continue;
    py::object o = a->module.attr(name);
    a->dtypes[static_cast<std::size_t>(d)] = o;
    a->codes[o] = static_cast<int>(d);
  }
  if (!g_torch) g_torch = a;
  return *g_torch;
}

// torch if it can be imported; nullptr otherwise (numpy-only callers).
torch_api* torch_if_available() {
  static bool missing = false;  // tried once, not importable: do not retry per value
  if (g_torch || missing) return g_torch;
  try {
    return &torch_();
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_ImportError)) throw;
    missing = true;
    return nullptr;
  }
}

numpy_api& numpy_() {
  if (g_numpy) return *g_numpy;
  auto* a = new numpy_api;
  a->module = py::module_::import("numpy");
  a->ndarray = a->module.attr("ndarray");
  a->generic = a->module.attr("generic");
  a->frombuffer = a->module.attr("frombuffer");
  a->empty = a->module.attr("empty");
  a->copyto = a->module.attr("copyto");
  for (auto& d : a->dtypes) d = py::none();
  static constexpr std::pair<dtype, const char*> names[] = {
      {dtype::boolean, "bool"}, {dtype::u8, "u1"},   {dtype::i8, "i1"},   {dtype::i16, "<i2"},
      {dtype::u16, "<u2"},      {dtype::f16, "<f2"}, {dtype::i32, "<i4"}, {dtype::u32, "<u4"},
      {dtype::f32, "<f4"},      {dtype::f64, "<f8"}, {dtype::i64, "<i8"}, {dtype::u64, "<u8"},
      {dtype::c64, "<c8"},
  };
  for (auto [d, name] : names)
    a->dtypes[static_cast<std::size_t>(d)] = a->module.attr("dtype")(name);
  if (!g_numpy) g_numpy = a;
  return *g_numpy;
}

// numpy only when the caller already imported it: otherwise no object can be an ndarray.
numpy_api* numpy_if_loaded() {
  if (g_numpy) return g_numpy;
  py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("numpy")) return nullptr;
  return &numpy_();
}

// ---- shared buffers ---------------------------------------------------------------------------

// The object torch.frombuffer views: it owns a C++ tensor, and so its memory.
struct byte_buffer {
  tensor t;
  bool shared = false;
  byte_buffer(tensor t_, bool shared_);
  ~byte_buffer();
  byte_buffer(const byte_buffer&) = delete;
  byte_buffer& operator=(const byte_buffer&) = delete;
};

// Shared buffers alive, by start address. Touched only with the GIL held.
std::map<std::uintptr_t, byte_buffer*>& shared_buffers() {
  static auto* m = new std::map<std::uintptr_t, byte_buffer*>;
  return *m;
}

byte_buffer::byte_buffer(tensor t_, bool shared_) : t(std::move(t_)), shared(shared_) {
  if (shared) shared_buffers()[reinterpret_cast<std::uintptr_t>(t.data())] = this;
}

byte_buffer::~byte_buffer() {
  if (!shared) return;
  auto& m = shared_buffers();
  auto it = m.find(reinterpret_cast<std::uintptr_t>(t.data()));
  if (it != m.end() && it->second == this) m.erase(it);
}

// An owner for [p, p + n) when it lies inside a live shared buffer: a copy of that buffer's
// tensor, which keeps the segment memory allocated.
std::shared_ptr<const void> shared_owner(std::uintptr_t p, std::size_t n) {
  auto& m = shared_buffers();
  auto it = m.upper_bound(p);
  if (it == m.begin()) return {};
  --it;
  const tensor& t = it->second->t;
  auto base = it->first;
  if (p - base > t.nbytes() || n > t.nbytes() - (p - base)) return {};
  return std::make_shared<tensor>(t);
}

[[noreturn]] void invalid(const std::string& msg) {
  throw_error(errc::invalid_argument, msg);
}

std::string type_name(py::handle o) {
  return py::str(py::type::handle_of(o).attr("__name__"));
}

std::vector<std::int64_t> shape_of(py::handle shape) {
  std::vector<std::int64_t> out;
  for (auto d : shape) out.push_back(d.cast<std::int64_t>());
  return out;
}

py::tuple shape_tuple(const tensor& t) {
  py::tuple s(t.shape().size());
  for (std::size_t i = 0; i < t.shape().size(); ++i) s[i] = py::int_(t.shape()[i]);
  return s;
}

// Appends ".key" to a key path for the lifetime of the object.
class path_guard {
 public:
  path_guard(std::string& path, std::string_view key) : path_(path), size_(path.size()) {
    if (!path_.empty()) path_ += '.';
    path_ += key;
  }
  ~path_guard() { path_.resize(size_); }
  path_guard(const path_guard&) = delete;
  path_guard& operator=(const path_guard&) = delete;

 private:
  std::string& path_;
  std::size_t size_;
};

// ---- Python -> C++ ----------------------------------------------------------------------------

class builder {
 public:
  builder(conversion& c, bool record) : c_(c), record_(record) {}

  dict root(py::handle o) {
    if (!PyDict_Check(o.ptr())) invalid("a state dict must be a dict, not '" + type_name(o) + "'");
    return convert_dict(o);
  }

 private:
  std::string where() const { return path_.empty() ? "the state dict" : "'" + path_ + "'"; }

  value convert(py::handle o) {
    PyObject* p = o.ptr();
    if (p == Py_None) return none;
    if (PyBool_Check(p)) return p == Py_True;
    if (PyLong_Check(p)) {
      int overflow = 0;
      long long v = PyLong_AsLongLongAndOverflow(p, &overflow);
      if (overflow)
        invalid("value at " + where() + ": int " + std::string(py::str(o)) +
                " does not fit in 64 bits");
      if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
      return static_cast<std::int64_t>(v);
    }
    if (PyFloat_Check(p)) return PyFloat_AsDouble(p);
    if (PyUnicode_Check(p)) return o.cast<std::string>();
    if (PyDict_Check(p)) return convert_dict(o);
    if (PyList_Check(p) || PyTuple_Check(p)) return convert_sequence(o);
    if (auto* t = torch_if_available(); t && PyObject_IsInstance(p, t->tensor_type.ptr()) == 1)
      return convert_torch(o);
    if (auto* np = numpy_if_loaded()) {
      if (PyObject_IsInstance(p, np->ndarray.ptr()) == 1) return convert_numpy(o);
      if (PyObject_IsInstance(p, np->generic.ptr()) == 1) return convert(o.attr("item")());
    }
    invalid("value at " + where() + " has unsupported type '" + type_name(o) +
            "'; a state dict holds dicts (str or int keys), lists, tuples, None, bool, int, "
            "float, str, torch tensors and numpy arrays");
  }

  dict convert_dict(py::handle o) {
    dict out;
    out.reserve(static_cast<std::size_t>(PyObject_Length(o.ptr())));
    // Iterate items(): an OrderedDict's order is its own, not its underlying dict's.
    py::object items =
        PyDict_CheckExact(o.ptr()) ? py::reinterpret_borrow<py::object>(o) : o.attr("items")();
    bool str_keys = false, int_keys = false;
    auto add = [&](py::handle k, py::handle v) {
      std::string key;
      if (PyUnicode_Check(k.ptr())) {
        key = k.cast<std::string>();
        str_keys = true;
      } else if (PyLong_Check(k.ptr()) && !PyBool_Check(k.ptr())) {
        int overflow = 0;
        long long i = PyLong_AsLongLongAndOverflow(k.ptr(), &overflow);
        if (overflow)
          invalid("dict at " + where() + " has int key " + std::string(py::str(k)) +
                  ", which does not fit in 64 bits");
        key = std::to_string(i);
        int_keys = true;
      } else {
        invalid("dict at " + where() + " has a key of type '" + type_name(k) + "' (" +
                std::string(py::repr(k)) + "); keys must be all str or all int");
      }
      if (str_keys && int_keys)
        invalid("dict at " + where() + " mixes str and int keys (at key " +
                std::string(py::repr(k)) + "); keys must be all str or all int");
      path_guard g(path_, key);
      out.insert_or_assign(std::move(key), convert(v));
    };
    if (PyDict_CheckExact(o.ptr())) {
      for (auto [k, v] : py::reinterpret_borrow<py::dict>(o)) add(k, v);
    } else {
      for (auto kv : items) {
        auto pair = py::reinterpret_borrow<py::tuple>(kv);
        add(pair[0], pair[1]);
      }
    }
    if (int_keys) mark_integer_keys(out);
    return out;
  }

  value convert_sequence(py::handle o) {
    list out;
    auto seq = py::reinterpret_borrow<py::sequence>(o);
    out.reserve(seq.size());
    std::size_t i = 0;
    for (auto item : seq) {
      path_guard g(path_, std::to_string(i++));
      out.push_back(convert(item));
    }
    return make_sequence(std::move(out), PyTuple_Check(o.ptr()) != 0);
  }

  // Key types and tuples of the value tree (see keys_and_tuples below).
  void mark_integer_keys(dict& d);
  value make_sequence(list l, bool is_tuple);

  value convert_torch(py::handle o) {
    py::object t = py::reinterpret_borrow<py::object>(o);
    if (t.attr("is_sparse").cast<bool>())
      invalid("tensor " + where() + " is sparse; save its dense form (.to_dense())");
    std::string device = py::str(t.attr("device").attr("type"));
    if (device != "cpu")
      invalid("tensor " + where() + " is on device '" + device +
              "'; move it to the CPU (.cpu()) before saving");
    dtype d = dtype_from_torch(t.attr("dtype"), where().c_str());
    // A new tensor object sharing the storage: unaffected if the caller rebinds `param.data`.
    t = t.attr("detach")();
    if (t.attr("is_conj")().cast<bool>()) t = t.attr("resolve_conj")();
    if (t.attr("is_neg")().cast<bool>()) t = t.attr("resolve_neg")();
    if (!t.attr("is_contiguous")().cast<bool>()) t = t.attr("contiguous")();
    auto shape = shape_of(t.attr("shape"));
    auto nbytes =
        t.attr("numel")().cast<std::size_t>() * t.attr("element_size")().cast<std::size_t>();
    auto ptr = t.attr("data_ptr")().cast<std::uintptr_t>();
    return view(o, t, d, std::move(shape), ptr, nbytes);
  }

  value convert_numpy(py::handle o) {
    auto& np = numpy_();
    py::object a = py::reinterpret_borrow<py::object>(o);
    py::object dt = a.attr("dtype");
    std::string kind = py::str(dt.attr("kind"));
    auto size = dt.attr("itemsize").cast<int>();
    std::string order = py::str(dt.attr("byteorder"));
    static constexpr std::tuple<char, int, dtype> table[] = {
        {'b', 1, dtype::boolean}, {'u', 1, dtype::u8},  {'i', 1, dtype::i8},  {'i', 2, dtype::i16},
        {'u', 2, dtype::u16},     {'f', 2, dtype::f16}, {'i', 4, dtype::i32}, {'u', 4, dtype::u32},
        {'f', 4, dtype::f32},     {'f', 8, dtype::f64}, {'i', 8, dtype::i64}, {'u', 8, dtype::u64},
        {'c', 8, dtype::c64},
    };
    std::optional<dtype> d;
    for (auto [k, s, v] : table)
      if (kind.size() == 1 && kind[0] == k && s == size) d = v;
    if (!d)
      invalid("numpy array " + where() + " has dtype " + std::string(py::str(dt)) +
              ", which safetensors cannot store");
    if (order == ">") a = a.attr("astype")(np.dtypes[static_cast<std::size_t>(*d)]);
    if (!a.attr("flags")["C_CONTIGUOUS"].cast<bool>()) a = a.attr("copy")("order"_a = "C");
    auto shape = shape_of(a.attr("shape"));
    auto nbytes = a.attr("nbytes").cast<std::size_t>();
    auto ptr = a.attr("__array_interface__")["data"].cast<py::tuple>()[0].cast<std::uintptr_t>();
    return view(o, a, *d, std::move(shape), ptr, nbytes);
  }

  value view(py::handle original, py::object contiguous, dtype d, std::vector<std::int64_t> shape,
             std::uintptr_t ptr, std::size_t nbytes) {
    tensor t;
    if (nbytes == 0) {
      t = tensor::zeros(d, std::move(shape));
    } else {
      std::span<std::byte> bytes{reinterpret_cast<std::byte*>(ptr), nbytes};
      auto owner = shared_owner(ptr, nbytes);
      if (!owner) c_.keep.append(contiguous);
      t = tensor(d, std::move(shape), bytes, std::move(owner));
    }
    if (record_)
      c_.leaves.push_back({py::reinterpret_borrow<py::object>(original), contiguous, t.data()});
    return t;
  }

  conversion& c_;
  bool record_;
  std::string path_;
};

// ---- integer keys and tuples --------------------------------------------------------------------
// The value tree records whether a dict's keys are ints and whether a sequence is a tuple
// (state_dict.hpp: dict::set_key_type, shmckpt::tuple); without that, an optimizer's state comes
// back keyed by strings and torch.optim silently drops it.

void builder::mark_integer_keys(dict& d) {
  d.set_key_type(key_type::integer);
}
value builder::make_sequence(list l, bool is_tuple) {
  if (is_tuple) return shmckpt::tuple(std::move(l));
  return l;
}
bool is_integer_dict(const dict& d) {
  return d.keys() == key_type::integer;
}

// ---- C++ -> Python ------------------------------------------------------------------------------

class unbuilder {
 public:
  explicit unbuilder(conversion* c) : c_(c) {}

  py::object convert(const value& v) {
    switch (v.type()) {
      case kind::none:
        return py::none();
      case kind::boolean:
        return py::bool_(v.as_bool());
      case kind::integer:
        return py::int_(v.as_int());
      case kind::real:
        return py::float_(v.as_double());
      case kind::string:
        return py::str(v.as_string());
      case kind::list:
        return convert_list(v.as_list());
      case kind::dict:
        return convert_dict(v.as_dict());
      case kind::tensor:
        return convert_tensor(v.as_tensor());
      default:
        return convert_other(v);
    }
  }

  py::object convert_dict(const dict& d) {
    py::dict out;
    bool ints = is_integer_dict(d);
    for (const auto& [k, v] : d) {
      path_guard g(path_, k);
      py::object key = ints ? py::object(py::int_(std::stoll(k))) : py::object(py::str(k));
      out[key] = convert(v);
    }
    return out;
  }

 private:
  py::list convert_list(const list& l) {
    py::list out(l.size());
    for (std::size_t i = 0; i < l.size(); ++i) {
      path_guard g(path_, std::to_string(i));
      out[i] = convert(l[i]);
    }
    return out;
  }

  py::object convert_other(const value& v);

  py::object convert_tensor(const tensor& t) {
    if (c_) {
      if (next_leaf_ >= c_->leaves.size())
        throw_error(errc::corrupt_data, "the loaded tree has more tensors than its template");
      auto& leaf = c_->leaves[next_leaf_++];
      if (leaf.data == t.data()) {
        if (!leaf.original.is(leaf.contiguous)) copy_back(leaf);
        return leaf.original;
      }
    }
    try {
      return tensor_to_python(t);
    } catch (const shmckpt::error& e) {
      throw_error(e.kind(), "tensor '" + path_ + "': " + e.what());
    }
  }

  void copy_back(template_leaf& leaf) {
    if (auto* t = torch_if_available();
        t && PyObject_IsInstance(leaf.original.ptr(), t->tensor_type.ptr()) == 1) {
      py::object target = leaf.original.attr("detach")();
      target.attr("copy_")(leaf.contiguous);
    } else {
      numpy_().copyto(leaf.original, leaf.contiguous);
    }
  }

  conversion* c_;
  std::size_t next_leaf_ = 0;
  std::string path_;
};

py::object unbuilder::convert_other(const value& v) {
  if (v.type() == kind::tuple) {
    const list& l = v.as_tuple();
    py::tuple out(l.size());
    for (std::size_t i = 0; i < l.size(); ++i) {
      path_guard g(path_, std::to_string(i));
      out[i] = convert(l[i]);
    }
    return out;
  }
  throw_error(errc::unsupported, "value '" + path_ + "' has a kind this module does not know (" +
                                     std::string(kind_name(v.type())) + ")");
}

}  // namespace

py::object torch_dtype(dtype t) {
  return torch_().dtypes[static_cast<std::size_t>(t)];
}

dtype dtype_from_torch(py::handle torch_dtype, const char* what) {
  auto& t = torch_();
  if (t.codes.contains(torch_dtype)) return static_cast<dtype>(t.codes[torch_dtype].cast<int>());
  invalid(std::string("tensor ") + what + " has dtype " + std::string(py::str(torch_dtype)) +
          ", which safetensors cannot store (supported: bool, uint8, int8, int16, int32, int64, "
          "float16, bfloat16, float32, float64, complex64)");
}

conversion from_python(py::handle state_dict, bool record_leaves) {
  conversion c;
  builder b(c, record_leaves);
  c.tree = b.root(state_dict);
  return c;
}

py::object to_python(const state_dict& sd) {
  return unbuilder(nullptr).convert_dict(sd);
}

py::object to_python_in_place(const state_dict& result, conversion& c) {
  return unbuilder(&c).convert_dict(result);
}

py::object tensor_to_python(const tensor& t, bool shared) {
  auto idx = static_cast<std::size_t>(t.type());
  auto& T = torch_();
  if (!T.dtypes[idx].is_none()) {
    if (t.nbytes() == 0) return T.empty(shape_tuple(t), "dtype"_a = T.dtypes[idx]);
    py::object buf = py::cast(new byte_buffer(t, shared), py::return_value_policy::take_ownership);
    return T.frombuffer(buf, "dtype"_a = T.dtypes[idx]).attr("view")(shape_tuple(t));
  }
  auto& np = numpy_();
  if (!np.dtypes[idx].is_none()) {
    if (t.nbytes() == 0) return np.empty(shape_tuple(t), "dtype"_a = np.dtypes[idx]);
    py::object buf = py::cast(new byte_buffer(t, shared), py::return_value_policy::take_ownership);
    return np.frombuffer(buf, "dtype"_a = np.dtypes[idx]).attr("reshape")(shape_tuple(t));
  }
  throw_error(errc::unsupported,
              "dtype " + std::string(dtype_name(t.type())) + " has no torch " +
                  std::string(py::str(T.module.attr("__version__"))) +
                  " or numpy equivalent; read it with the C++ reader or a newer torch");
}

void register_buffer_class(py::module_& m) {
  py::class_<byte_buffer>(m, "_Buffer", py::buffer_protocol(),
                          "Owns the bytes a torch tensor or numpy array views (internal).")
      .def_buffer([](byte_buffer& b) {
        return py::buffer_info(b.t.data(), 1, "B", 1, {static_cast<py::ssize_t>(b.t.nbytes())},
                               {py::ssize_t{1}}, false);
      })
      .def_property_readonly("nbytes", [](const byte_buffer& b) { return b.t.nbytes(); });
}

}  // namespace shmckpt::python
