// xxh3.hpp — XXH3-64 over tensor bytes, at the widest vector unit the CPU has.
//
// Debian's libxxhash is built for baseline x86-64, so its XXH3_64bits and XXH3_64bits_update
// use SSE2. The library also exports `_dispatch` variants that pick AVX2 or AVX-512 at run time
// (xxh_x86dispatch.h), and these return the same hashes. On an Intel Xeon (2 vCPU),
// that makes one thread hash cache-resident data 3.5× faster (24.5 GB/s against 7.0) and 1 GiB
// from memory about 1.4× faster (10 GB/s against 6.4–7.7). That is the CPU time the checkpoint
// child takes from the trainer per persist, and what a verified load costs.
//
// Include this header instead of <xxhash.h> wherever tensor bytes or whole headers are hashed.
// The header parsers keep the plain calls: they hash short names, where the dispatch step
// would add a call for no gain. CMake defines SHMCKPT_HAVE_XXH_DISPATCH when the installed
// libxxhash exports the dispatch entry points; elsewhere the plain calls remain.
#pragma once

#include <xxhash.h>

#if defined(SHMCKPT_HAVE_XXH_DISPATCH)
#include <xxh_x86dispatch.h>  // redefines XXH3_64bits and XXH3_64bits_update to dispatch
#endif
