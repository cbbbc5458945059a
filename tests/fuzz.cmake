# libFuzzer target for the safetensors header parser (fuzz/safetensors_header_fuzz.cpp), built
# with clang++ directly because the main project compiles with g++, and a CTest test that runs
# it for 20 s on the committed seed corpus. Skipped (with a message) only where clang++ is absent.

find_program(MPSERVE_CLANGXX NAMES clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14)
if(NOT MPSERVE_CLANGXX)
  message(STATUS "clang++ not found: not building the safetensors_header_fuzz fuzzer")
  return()
endif()

set(MPSERVE_FUZZ_DIR ${CMAKE_BINARY_DIR}/fuzz)
set(MPSERVE_FUZZ_BIN ${MPSERVE_FUZZ_DIR}/safetensors_header_fuzz)
set(MPSERVE_FUZZ_SRCS
  ${CMAKE_SOURCE_DIR}/fuzz/safetensors_header_fuzz.cpp
  ${CMAKE_SOURCE_DIR}/src/model/safetensors.cpp
  ${CMAKE_SOURCE_DIR}/src/model/tensor.cpp
  ${CMAKE_SOURCE_DIR}/src/common/file_util.cpp)
file(GLOB MPSERVE_FUZZ_HDRS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/src/model/*.h ${CMAKE_SOURCE_DIR}/src/common/*.h)

set(MPSERVE_FUZZ_INCLUDES -I${CMAKE_SOURCE_DIR}/src -I${FMT_INCLUDE_DIR})
get_target_property(MPSERVE_JSON_INCLUDES nlohmann_json::nlohmann_json INTERFACE_INCLUDE_DIRECTORIES)
if(MPSERVE_JSON_INCLUDES)
  foreach(dir ${MPSERVE_JSON_INCLUDES})
    list(APPEND MPSERVE_FUZZ_INCLUDES -I${dir})
  endforeach()
endif()

add_custom_command(
  OUTPUT ${MPSERVE_FUZZ_BIN}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${MPSERVE_FUZZ_DIR}
  COMMAND ${MPSERVE_CLANGXX} -std=c++20 -O1 -g -fno-omit-frame-pointer
          -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
          -DFMT_HEADER_ONLY=1 ${MPSERVE_FUZZ_INCLUDES} ${MPSERVE_FUZZ_SRCS} -o ${MPSERVE_FUZZ_BIN}
  DEPENDS ${MPSERVE_FUZZ_SRCS} ${MPSERVE_FUZZ_HDRS}
  COMMENT "Building libFuzzer target safetensors_header_fuzz with ${MPSERVE_CLANGXX}"
  VERBATIM)
add_custom_target(safetensors_header_fuzz_build ALL DEPENDS ${MPSERVE_FUZZ_BIN})

# libFuzzer writes new inputs into the first corpus directory: a scratch one in the build tree,
# so the committed seeds (second directory, read only) stay as they are.
file(MAKE_DIRECTORY ${MPSERVE_FUZZ_DIR}/corpus)
add_test(NAME safetensors_header_fuzz
         COMMAND ${MPSERVE_FUZZ_BIN} -max_total_time=20 -timeout=10 -rss_limit_mb=2048 -max_len=4096
                 -print_final_stats=1 -artifact_prefix=${MPSERVE_FUZZ_DIR}/
                 ${MPSERVE_FUZZ_DIR}/corpus ${CMAKE_SOURCE_DIR}/fuzz/corpus/safetensors)
set_tests_properties(safetensors_header_fuzz PROPERTIES TIMEOUT 180 LABELS fuzz)
