# Stand-ins used by the router and supervisor tests (tests/fakes/): a generic OpenAI-compatible engine
# and an nvidia-cuda-mps-control that speaks the same command interface without a GPU.
add_executable(fake_engine ${CMAKE_SOURCE_DIR}/tests/fakes/fake_engine.cpp)
target_include_directories(fake_engine PRIVATE ${FMT_INCLUDE_DIR})
target_link_libraries(fake_engine PRIVATE nlohmann_json::nlohmann_json Threads::Threads)
foreach(t test_router test_supervisor)
  if(TARGET ${t})
    add_dependencies(${t} fake_engine)
    target_compile_definitions(${t} PRIVATE
      MPSERVE_FAKE_ENGINE="$<TARGET_FILE:fake_engine>"
      MPSERVE_FAKE_MPS_CONTROL="${CMAKE_SOURCE_DIR}/tests/fakes/fake_mps_control")
  endif()
endforeach()
