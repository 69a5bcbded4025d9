# Runs `ckpt-bench --smoke --json` and checks that it emits every figure with a status.
# It never checks how fast anything is. Usage:
#   cmake -DBENCH=<ckpt-bench> -DSCRATCH=<dir> -P smoke_check.cmake
cmake_minimum_required(VERSION 3.25)
if(NOT BENCH OR NOT SCRATCH)
  message(FATAL_ERROR "usage: cmake -DBENCH=<ckpt-bench> -DSCRATCH=<dir> -P smoke_check.cmake")
endif()
file(MAKE_DIRECTORY ${SCRATCH})
execute_process(COMMAND ${BENCH} --smoke --json --dir ${SCRATCH}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 280)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "ckpt-bench --smoke --json failed (${rc}):\n${err}")
endif()

# Every figure of the issue's table (plus the informational ones) must appear.
set(expected
  startup ping_round_trip write_return write_return_future write_return_flatness handoff
  handoff_future staging_steady staging_first segment_create persist persist_file_only child_peak_rss
  end_to_end_save load_page_cache load_view_touch load_cold open_many_tensors
  parent_extra_memory interference_one_thread persist_under_load_one_thread interference_control)
string(JSON n ERROR_VARIABLE jerr LENGTH "${out}" figures)
if(jerr)
  message(FATAL_ERROR "ckpt-bench did not print a JSON document with 'figures': ${jerr}\n${out}")
endif()
math(EXPR last "${n} - 1")
set(seen "")
foreach(i RANGE ${last})
  string(JSON id GET "${out}" figures ${i} id)
  string(JSON status GET "${out}" figures ${i} status)
  if(NOT status MATCHES "^(met|MISSED|info|skipped)$")
    message(FATAL_ERROR "figure '${id}' has no valid status: '${status}'")
  endif()
  if(NOT status STREQUAL "skipped")
    string(JSON median ERROR_VARIABLE verr GET "${out}" figures ${i} value median)
    if(verr)
      message(FATAL_ERROR "figure '${id}' has no measured value")
    endif()
  endif()
  list(APPEND seen ${id})
endforeach()
foreach(id ${expected})
  if(NOT id IN_LIST seen)
    message(FATAL_ERROR "ckpt-bench --smoke --json emitted no figure '${id}'")
  endif()
endforeach()
foreach(key command machine)
  string(JSON v ERROR_VARIABLE kerr GET "${out}" ${key})
  if(kerr)
    message(FATAL_ERROR "ckpt-bench --json lacks '${key}'")
  endif()
endforeach()
# Nothing left behind in the scratch directory.
file(GLOB leftovers ${SCRATCH}/ckpt-bench.*)
if(leftovers)
  message(FATAL_ERROR "ckpt-bench left files behind: ${leftovers}")
endif()
message(STATUS "ckpt-bench emitted all ${n} figures")
