# runtime/: the engine (numerics against an independent double-precision reference, batching)
# and every RPC of lowbit.v1.RuntimeService on a real loopback server.
if(TARGET lowbit_runtime_service)
  lowbit_integration_test(runtime_service_test ${CMAKE_CURRENT_SOURCE_DIR}/runtime_service_test.cc
    LIBS lowbit_runtime_service lowbit_tool_common lowbit_synthetic)
  # The same tests with the servers on the CUDA backend; skipped without a GPU (never passed).
  gtest_discover_tests(runtime_service_test TEST_PREFIX "cuda." DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS gpu ENVIRONMENT "LOWBIT_TEST_BACKEND=cuda" SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
endif()
if(TARGET lowbit_runtime)
  lowbit_integration_test(batcher_test ${CMAKE_CURRENT_SOURCE_DIR}/batcher_test.cc LIBS lowbit_runtime)
endif()
