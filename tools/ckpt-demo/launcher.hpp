// ckpt-demo/launcher.hpp — runs N ranks of the demo on one machine, like a tiny torchrun.
//
// `launch_ranks` starts N copies of this executable (posix_spawn of /proc/self/exe) with the
// given arguments and RANK / WORLD_SIZE in their environment, which is where shmckpt's
// detect_rank_info() looks first. Each rank trains its own replica and checkpoints into the
// shared directory; the library's commit protocol gathers one file per rank and one manifest per
// checkpoint. The same ranks can come from a real launcher instead (`mpirun -np N ckpt-demo ...`
// sets OMPI_COMM_WORLD_RANK/SIZE, Slurm sets SLURM_PROCID/NTASKS); the launcher is only a
// convenience for trying multi-rank checkpointing without one.
//
// Ownership. The launcher owns its rank processes and the read ends of their stdout and stderr
// pipes. It forwards every line prefixed with "[rank R] ", waits for all ranks until a deadline,
// and never leaves one behind: when a rank fails it stops the others (they would otherwise wait
// at the commit barrier for the failed rank until their commit timeout), and at the deadline it
// kills whatever still runs. Each rank asks the kernel to send it SIGTERM should the launcher die
// (see `exit_with_launcher`).
//
// Thread safety: single-threaded; call from main.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace ckpt_demo {

struct launch_options {
  /// Number of ranks to start (WORLD_SIZE), at least 1.
  int ranks = 1;
  /// Arguments of every rank, argv[0] included; the executable is always /proc/self/exe.
  std::vector<std::string> args;
  /// How long to wait for all ranks before killing the ones still running.
  std::chrono::seconds deadline{600};
};

/// Starts the ranks, forwards their output, waits for them and prints one result line per rank
/// ("rank R: exit status 0; final state: ..."). Returns 0 when every rank exited with status 0,
/// 1 otherwise (including a rank that could not be started or outlived the deadline).
int launch_ranks(const launch_options& options);

/// In a rank started by launch_ranks: arranges to receive SIGTERM when the launcher dies, and
/// exits at once if it is already gone. Does nothing in a process the launcher did not start.
void exit_with_launcher();

}  // namespace ckpt_demo
