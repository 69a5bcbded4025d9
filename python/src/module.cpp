// shmckpt._core — the C++ objects behind the `shmckpt` Python package.
//
// A thin layer over the public C++ API: CheckpointProcess, AsyncCheckpointer, SyncCheckpointer,
// load, latest_checkpoint and keep_last. The pure-Python layer (python/shmckpt/) turns the
// `Waitable`s returned here into concurrent.futures.Future objects on its own resolver threads;
// no C++ thread ever takes the GIL, so nothing here can deadlock with the interpreter or run
// after it is finalised.
//
// The GIL is released for every copy, wait, spawn and close. Long waits (`Waitable.wait()`
// without a timeout, `CheckpointProcess.wait_ready`) run in short slices and check for signals
// between them, so Ctrl-C raises KeyboardInterrupt; the operation itself goes on undisturbed
// (its result reaches its future).
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "convert.hpp"
#include "store_bridge.hpp"
#include "shmckpt/checkpoint_process.hpp"
#include "shmckpt/checkpointer.hpp"
#include "shmckpt/commit.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"

namespace py = pybind11;
using namespace pybind11::literals;
using namespace shmckpt;
using shmckpt::python::conversion;

namespace {

// ---- errors ---------------------------------------------------------------------------------
// The Python classes (python/shmckpt/_errors.py) by errc value; index 0 is shmckpt.Error.
// Leaked on purpose, like every Python object kept in static storage here.
std::array<PyObject*, 16> g_error_classes{};

void set_error_classes(const py::dict& classes) {
  static constexpr std::pair<errc, const char*> names[] = {
      {errc::invalid_argument, "invalid_argument"},
      {errc::corrupt_data, "corrupt_data"},
      {errc::not_found, "not_found"},
      {errc::no_space, "no_space"},
      {errc::io_error, "io_error"},
      {errc::timeout, "timeout"},
      {errc::child_failed, "child_failed"},
      {errc::child_terminated, "child_terminated"},
      {errc::protocol_error, "protocol_error"},
      {errc::closed, "closed"},
      {errc::unsupported, "unsupported"},
  };
  py::object base = classes["error"];
  g_error_classes[0] = base.inc_ref().ptr();
  for (auto [e, name] : names) {
    py::object cls = classes.contains(name) ? py::object(classes[name]) : py::object(base);
    g_error_classes[static_cast<std::size_t>(e)] = cls.inc_ref().ptr();
  }
}

void raise_python(const shmckpt::error& e) {
  auto idx = static_cast<std::size_t>(e.kind());
  PyObject* cls = idx < g_error_classes.size() && g_error_classes[idx] ? g_error_classes[idx]
                                                                       : g_error_classes[0];
  if (!cls) cls = PyExc_RuntimeError;
  PyErr_SetString(cls, e.what());
}

// ---- options --------------------------------------------------------------------------------

std::chrono::milliseconds seconds_option(const py::handle& v, const char* name) {
  double s = v.cast<double>();
  if (!(s >= 0) || s > 1e9)
    throw_error(errc::invalid_argument, std::string(name) + "=" + std::string(py::str(v)) +
                                            " is not a number of seconds >= 0");
  return std::chrono::milliseconds(static_cast<long long>(s * 1000 + 0.5));
}

kwargs kwargs_option(const py::handle& v) {
  kwargs out;
  if (v.is_none()) return out;
  for (auto [k, val] : py::reinterpret_borrow<py::dict>(v)) out[py::str(k)] = py::str(val);
  return out;
}

// A string option naming one of `names`.
template <class E>
E enum_option(const py::handle& v, const std::string& key,
              std::initializer_list<std::pair<const char*, E>> names) {
  std::string s = py::str(v);
  std::string known;
  for (const auto& [n, e] : names) {
    if (s == n) return e;
    known += (known.empty() ? "" : ", ") + std::string(n);
  }
  throw_error(errc::invalid_argument, "option '" + key + "' is '" + s + "', not one of " + known);
}

// Reads the options every Python constructor shares; unknown names are an error.
struct parsed_config {
  checkpointer_config config;
  std::optional<int> rank, world_size;
};

parsed_config parse_config(const py::dict& opts, bool checkpointer) {
  parsed_config p;
  auto& po = p.config.process;
  for (auto [k, v] : opts) {
    std::string key = py::str(k);
    if (key == "segment_bytes")
      po.segment_bytes = v.cast<std::size_t>();
    else if (key == "initial_segment_bytes")
      po.initial_segment_bytes = v.cast<std::size_t>();
    else if (key == "progress_timeout")
      po.progress_timeout = seconds_option(v, "progress_timeout");
    else if (key == "init_timeout")
      po.init_timeout = seconds_option(v, "init_timeout");
    else if (key == "shutdown_timeout")
      po.shutdown_timeout = seconds_option(v, "shutdown_timeout");
    else if (key == "prefault")
      po.prefault = v.cast<bool>();
    else if (key == "worker_path") {
      if (!v.is_none()) {
        po.worker_path = std::filesystem::path(std::string(py::str(v)));
        po.worker = worker_binary::custom;
      }
    } else if (key == "init_function")
      po.init_function = v.is_none() ? "" : std::string(py::str(v));
    else if (key == "init_args")
      po.init_args = kwargs_option(v);
    else if (key == "writer_factory")
      po.writer_factory = py::str(v);
    else if (key == "writer_args")
      po.writer_args = kwargs_option(v);
    else if (key == "child_nice")
      po.priority.nice = v.cast<int>();
    else if (key == "child_policy")
      po.priority.policy = enum_option<child_cpu_policy>(
          v, key, {{"inherit", child_cpu_policy::inherit}, {"normal", child_cpu_policy::normal},
                   {"batch", child_cpu_policy::batch}, {"idle", child_cpu_policy::idle}});
    else if (key == "child_io_class")
      po.priority.io_class = enum_option<child_io_class>(
          v, key, {{"inherit", child_io_class::inherit},
                   {"best_effort", child_io_class::best_effort}, {"idle", child_io_class::idle}});
    else if (key == "child_io_level")
      po.priority.io_level = v.cast<int>();
    else if (key == "child_cpus")
      po.priority.cpus = v.is_none() ? std::vector<int>{} : v.cast<std::vector<int>>();
    else if (key == "rank") {
      if (!v.is_none()) p.rank = v.cast<int>();
    } else if (key == "world_size") {
      if (!v.is_none()) p.world_size = v.cast<int>();
    } else if (checkpointer && key == "staging_threads")
      p.config.staging.threads = v.cast<std::size_t>();
    else if (checkpointer && key == "staging_generations")
      p.config.staging.generations = v.cast<std::size_t>();
    else if (checkpointer && key == "staging_timeout")
      p.config.staging.acquire_timeout = seconds_option(v, "staging_timeout");
    else if (key == "commit_timeout") {
      if (checkpointer)
        p.config.commit_timeout = seconds_option(v, "commit_timeout");
      else
        po.commit_timeout = seconds_option(v, "commit_timeout");
    } else if (key == "commit_store") {  // set by the Python layer from barrier=
      if (v.is_none()) continue;
      auto bridge = v.cast<std::shared_ptr<shmckpt::python::store_bridge>>();
      if (checkpointer)
        p.config.store = bridge;
      else
        po.store = bridge;
    } else if (key == "store_scope") {
      std::string scope = v.is_none() ? "" : std::string(py::str(v));
      if (checkpointer)
        p.config.store_scope = scope;
      else
        po.store_scope = scope;
    } else
      throw_error(errc::invalid_argument,
                  "unknown option '" + key +
                      "'; known: segment_bytes, initial_segment_bytes, init_timeout, "
                      "shutdown_timeout, progress_timeout, prefault, worker_path, init_function, "
                      "init_args, "
                      "writer_factory, writer_args, child_nice, child_policy, child_io_class, "
                      "child_io_level, child_cpus, rank, world_size, commit_timeout, barrier, "
                      "store_scope" +
                      std::string(checkpointer ? ", staging_threads, staging_generations, "
                                                 "staging_timeout"
                                               : ""));
  }
  return p;
}

rank_info resolve_rank(const parsed_config& p) {
  if (p.rank.has_value() != p.world_size.has_value()) {
    rank_info env = detect_rank_info();
    return {p.rank.value_or(env.rank), p.world_size.value_or(env.world_size)};
  }
  rank_info r = p.rank ? rank_info{*p.rank, *p.world_size} : detect_rank_info();
  if (r.world_size < 1 || r.rank < 0 || r.rank >= r.world_size)
    throw_error(errc::invalid_argument,
                "rank=" + std::to_string(r.rank) +
                    " is not a rank of world_size=" + std::to_string(r.world_size));
  return r;
}

std::filesystem::path to_path(const py::handle& p) {
  return std::filesystem::path(std::string(py::str(py::module_::import("os").attr("fspath")(p))));
}

// ---- waiting ----------------------------------------------------------------------------------

constexpr auto slice = std::chrono::milliseconds(50);

// Waits for `f` with the GIL released, in slices, raising KeyboardInterrupt (or whatever a
// signal handler raises) between them.
void wait_interruptibly(const std::shared_future<void>& f) {
  for (;;) {
    bool ready;
    {
      py::gil_scoped_release nogil;
      ready = f.wait_for(slice) == std::future_status::ready;
    }
    if (ready) return;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
}

// A C++ future seen from Python. Holds what the operation reads until it is done.
class waitable {
 public:
  explicit waitable(std::shared_future<void> f, py::object keep = py::none())
      : f_(std::move(f)), keep_(std::move(keep)) {}

  /// Waits up to `timeout` seconds (None: until ready); True when ready.
  bool wait(std::optional<double> timeout) {
    if (!timeout) {
      wait_interruptibly(f_);
      return true;
    }
    auto d = std::chrono::duration<double>(std::max(0.0, *timeout));
    py::gil_scoped_release nogil;
    return f_.wait_for(d) == std::future_status::ready;
  }

  bool done() const { return f_.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }

  /// Waits, then returns None or raises the operation's error.
  void result() {
    wait_interruptibly(f_);
    f_.get();
  }

  /// Drops the Python objects the operation read (once done).
  void release() { keep_ = py::none(); }

 private:
  std::shared_future<void> f_;
  py::object keep_;
};

// A C++ call run with the GIL released; the Python objects of `c` stay referenced by the caller.
template <class F>
auto nogil(F&& f) {
  py::gil_scoped_release r;
  return f();
}

// ---- CheckpointProcess -------------------------------------------------------------------------

class py_process {
 public:
  explicit py_process(const py::dict& options) {
    auto p = parse_config(options, false);
    p.config.process.rank = resolve_rank(p);
    auto opts = p.config.process;
    p_ = nogil([&] { return std::make_unique<checkpoint_process>(opts); });
    auto* raw = p_.get();
    ready_ = std::async(std::launch::async, [raw] { raw->wait_ready(); }).share();
  }

  ~py_process() {
    if (!p_) return;
    py::gil_scoped_release r;
    close_impl();
  }

  /// Waits for the current child's handshake; after a child died, the C++ wait_ready() starts
  /// its replacement. Runs on a helper thread so that the wait can be interrupted.
  void wait_ready() {
    if (ready_.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
      auto* raw = checked_ptr();
      ready_ = std::async(std::launch::async, [raw] { raw->wait_ready(); }).share();
    }
    wait_interruptibly(ready_);
    ready_.get();
  }

  waitable write(py::handle sd, py::handle path, const py::dict& kw) {
    wait_ready();
    auto c = shmckpt::python::from_python(sd);
    auto target = to_path(path);
    auto k = kwargs_option(kw);
    checked();
    // Private tensors are copied into the segment inside write(); afterwards the future needs
    // none of the caller's memory.
    auto f = nogil([&] { return p_->write(std::move(c.tree), target, std::move(k)).share(); });
    return waitable(std::move(f));
  }

  py::object empty(py::handle shape, py::handle dt) {
    checked();
    std::vector<std::int64_t> s;
    if (PyLong_Check(shape.ptr()))
      s.push_back(shape.cast<std::int64_t>());
    else
      for (auto d : shape) s.push_back(d.cast<std::int64_t>());
    auto d = shmckpt::python::dtype_from_torch(dt, "requested from empty()");
    auto t = p_->make_tensor(d, std::move(s));
    return shmckpt::python::tensor_to_python(t, /*shared=*/true);
  }

  bool is_shared(py::handle t) {
    checked();
    auto c = shmckpt::python::from_python(py::dict("t"_a = t));
    return p_->is_shared(c.tree.at("t").as_tensor());
  }

  std::size_t segment_free_bytes() { return checked().segment_free_bytes(); }
  int child_pid() { return checked().child_pid(); }
  bool child_running() { return checked().child_running(); }

  void close() {
    if (!p_) return;
    py::gil_scoped_release r;
    close_impl();
  }

 private:
  checkpoint_process& checked() { return *checked_ptr(); }
  checkpoint_process* checked_ptr() {
    if (!p_) throw_error(errc::closed, "CheckpointProcess used after close()");
    return p_.get();
  }

  void close_impl() {
    // The readiness thread ends within init_timeout, or at once once the child is gone.
    p_->close();
    ready_.wait();
    p_.reset();
  }

  std::unique_ptr<checkpoint_process> p_;
  std::shared_future<void> ready_;
};

// ---- checkpointers -----------------------------------------------------------------------------

load_options make_load_options(bool strict, bool allow_incomplete, bool verify_checksums) {
  load_options o;
  o.strict = strict;
  o.allow_incomplete = allow_incomplete;
  o.verify_checksums = verify_checksums;
  return o;
}

// load(path, template) for every flavour: returns (state_dict, missing keys).
template <class Load, class LoadInto>
py::tuple load_common(py::handle path, py::handle template_, bool strict, bool allow_incomplete,
                      bool verify_checksums, Load&& load, LoadInto&& load_into) {
  auto p = to_path(path);
  auto o = make_load_options(strict, allow_incomplete, verify_checksums);
  if (template_.is_none()) {
    auto r = nogil([&] { return load(p, o); });
    return py::make_tuple(shmckpt::python::to_python(r.state), py::cast(r.missing));
  }
  auto c = shmckpt::python::from_python(template_, /*record_leaves=*/true);
  auto r = nogil([&] { return load_into(p, c.tree, o); });
  return py::make_tuple(shmckpt::python::to_python_in_place(r.state, c), py::cast(r.missing));
}

// What both checkpointer classes offer alike: load and rank, over Derived::checked().
template <class Derived>
class py_checkpointer_base {
 public:
  py::tuple load(py::handle path, py::handle template_, bool strict, bool allow_incomplete,
                 bool verify_checksums) {
    auto& c = static_cast<Derived*>(this)->checked();
    return load_common(
        path, template_, strict, allow_incomplete, verify_checksums,
        [&](auto& p, auto& o) { return c.load(p, o); },
        [&](auto& p, auto& t, auto& o) { return c.load(p, t, o); });
  }

  py::tuple rank() {
    auto r = static_cast<Derived*>(this)->checked().rank();
    return py::make_tuple(r.rank, r.world_size);
  }
};

class py_async : public py_checkpointer_base<py_async> {
 public:
  explicit py_async(const py::dict& options) {
    auto p = parse_config(options, true);
    auto rank = resolve_rank(p);
    auto config = p.config;
    c_ = nogil([&] { return std::make_unique<async_checkpointer>(config, rank); });
  }

  ~py_async() {
    if (!c_) return;
    py::gil_scoped_release r;
    close_impl();
  }

  py::tuple save(py::handle path, py::handle sd, const py::dict& kw) {
    checked();
    auto target = to_path(path);
    auto k = kwargs_option(kw);
    auto c = std::make_shared<conversion>(shmckpt::python::from_python(sd));
    auto f = nogil([&] { return c_->save(target, std::move(c->tree), std::move(k)); });
    // The staging copy reads the caller's tensors until `staging` is ready: its waitable keeps
    // them referenced until then.
    py::object keep = c->keep;
    return py::make_tuple(waitable(f.staging, keep), waitable(f.write));
  }

  int child_pid() { return checked().process().child_pid(); }
  std::size_t segment_free_bytes() { return checked().process().segment_free_bytes(); }

  /// Waits for queued writes and stops the child; raises the first failure no save() raised.
  void close() {
    if (!c_) return;
    auto c = std::move(c_);
    py::gil_scoped_release r;
    c->close();
  }

 private:
  friend py_checkpointer_base<py_async>;
  async_checkpointer& checked() {
    if (!c_) throw_error(errc::closed, "AsyncCheckpointer used after close()");
    return *c_;
  }
  void close_impl() noexcept {
    try {
      c_->close();
    } catch (...) {  // the destructor cannot report it; close() does
    }
    c_.reset();
  }

  std::unique_ptr<async_checkpointer> c_;
};

class py_sync : public py_checkpointer_base<py_sync> {
 public:
  explicit py_sync(const py::dict& options) {
    auto p = parse_config(options, true);
    auto rank = resolve_rank(p);
    c_ = std::make_unique<sync_checkpointer>(p.config, rank);
  }

  void save(py::handle path, py::handle sd, const py::dict& kw) {
    checked();
    auto target = to_path(path);
    auto k = kwargs_option(kw);
    auto c = shmckpt::python::from_python(sd);
    nogil([&] { c_->save(target, c.tree, k); });
  }

  void close() { c_.reset(); }

 private:
  friend py_checkpointer_base<py_sync>;
  sync_checkpointer& checked() {
    if (!c_) throw_error(errc::closed, "SyncCheckpointer used after close()");
    return *c_;
  }
  std::unique_ptr<sync_checkpointer> c_;
};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "shmckpt C++ core (use the `shmckpt` package, not this module)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const shmckpt::error& e) {
      raise_python(e);
    }
  });
  m.def("_set_error_classes", &set_error_classes);
  // Keeps an object alive for good (a forked child's copy of a C++ object must never be
  // destroyed: its threads do not exist there).
  m.def("_leak", [](py::object o) { o.inc_ref(); });
  shmckpt::python::register_buffer_class(m);
  shmckpt::python::register_store_bridge(m);

  py::class_<waitable>(m, "Waitable", "A C++ future (internal; see shmckpt.Future helpers)")
      .def("wait", &waitable::wait, "timeout"_a = py::none())
      .def("done", &waitable::done)
      .def("result", &waitable::result)
      .def("release", &waitable::release);

  py::class_<py_process>(m, "CheckpointProcess")
      .def(py::init<const py::dict&>())
      .def("wait_ready", &py_process::wait_ready)
      .def("write", &py_process::write, "state_dict"_a, "path"_a, "kwargs"_a)
      .def("empty", &py_process::empty, "shape"_a, "dtype"_a)
      .def("is_shared", &py_process::is_shared)
      .def_property_readonly("segment_free_bytes", &py_process::segment_free_bytes)
      .def_property_readonly("child_pid", &py_process::child_pid)
      .def_property_readonly("child_running", &py_process::child_running)
      .def("close", &py_process::close);

  py::class_<py_async>(m, "AsyncCheckpointer")
      .def(py::init<const py::dict&>())
      .def("save", &py_async::save)
      .def("load", &py_async::load)
      .def_property_readonly("rank", &py_async::rank)
      .def_property_readonly("child_pid", &py_async::child_pid)
      .def_property_readonly("segment_free_bytes", &py_async::segment_free_bytes)
      .def("close", &py_async::close);

  py::class_<py_sync>(m, "SyncCheckpointer")
      .def(py::init<const py::dict&>())
      .def("save", &py_sync::save)
      .def("load", &py_sync::load)
      .def_property_readonly("rank", &py_sync::rank)
      .def("close", &py_sync::close);

  m.def("load", [](py::handle path, py::handle template_, bool strict, bool allow_incomplete,
                   bool verify_checksums, std::optional<int> rank) {
    int r = rank ? *rank : detect_rank_info().rank;
    return load_common(
        path, template_, strict, allow_incomplete, verify_checksums,
        [&](auto& p, auto& o) {
          read_options ro;
          ro.verify_checksums = o.verify_checksums;
          ro.allow_incomplete = o.allow_incomplete;
          return load_result{read(p, ro, r), {}};
        },
        [&](auto& p, auto& t, auto& o) {
          read_into_options ro;
          ro.strict = o.strict;
          ro.verify_checksums = o.verify_checksums;
          ro.allow_incomplete = o.allow_incomplete;
          ro.rank = r;
          auto res = read_into(p, t, ro);
          return load_result{std::move(res.state), std::move(res.missing)};
        });
  });
  m.def("latest_checkpoint", [](py::handle root) -> py::object {
    auto p = to_path(root);
    auto r = nogil([&] { return latest_checkpoint(p); });
    if (!r) return py::none();
    return py::str(r->string());
  });
  m.def("keep_last", [](py::handle root, std::size_t n) {
    auto p = to_path(root);
    auto removed = nogil([&] { return keep_last(p, n); });
    std::vector<std::string> out;
    for (auto& d : removed) out.push_back(d.string());
    return out;
  });
  m.def("detect_rank_info", [] {
    auto r = detect_rank_info();
    return py::make_tuple(r.rank, r.world_size);
  });
  m.def("library_version", [] { return std::string(library_version()); });
}
