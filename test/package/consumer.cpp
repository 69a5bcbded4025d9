#include <shmckpt/checkpoint_process.hpp>
#include <shmckpt/reader.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  shmckpt::checkpoint_process proc;  // the installed shmckpt-worker, found beside the library
  auto t = proc.make_tensor(shmckpt::dtype::i32, {3});
  t.data_as<int>()[1] = 7;
  shmckpt::state_dict sd{{"t", t}, {"step", 1}};
  proc.write(sd, argv[1]).get();
  proc.close();
  bool same = shmckpt::read(argv[1]) == sd;
  std::puts(same ? "consumer: round trip ok" : "consumer: MISMATCH");
  return same ? 0 : 1;
}
