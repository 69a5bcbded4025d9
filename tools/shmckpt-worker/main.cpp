// shmckpt-worker: the stock checkpoint child. Started by shmckpt::checkpoint_process with
// worker_binary::shmckpt_worker; serves the built-in "default" writer. Not meant to be run by
// hand.
#include <cstdio>
#include <cstring>

#include "shmckpt/worker.hpp"

int main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--version") == 0)) {
    std::puts("shmckpt-worker " SHMCKPT_VERSION);
    return 0;
  }
  if (argc < 2 || std::strcmp(argv[1], shmckpt::worker_flag) != 0) {
    std::fprintf(stderr,
                 "shmckpt-worker: this is the checkpoint child of shmckpt::checkpoint_process "
                 "and is started by it, not by hand.\n");
    return 2;
  }
  return shmckpt::worker_main(argc, argv);
}
