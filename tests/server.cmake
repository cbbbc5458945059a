# The engine server driven by the official `openai` npm client (tools/server_tests).
find_program(MPSERVE_NODE node)
if(MPSERVE_NODE AND EXISTS ${CMAKE_SOURCE_DIR}/third_party/npm/node_modules/openai/package.json)
  add_test(NAME server_openai_client
           COMMAND ${MPSERVE_NODE} ${CMAKE_SOURCE_DIR}/tools/server_tests/openai_client.mjs
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(server_openai_client PROPERTIES ENVIRONMENT "${MPSERVE_TEST_ENV}" TIMEOUT 120)
else()
  message(WARNING "node or the openai npm package is missing: server_openai_client test not registered")
endif()
