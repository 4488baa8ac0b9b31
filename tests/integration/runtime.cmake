# runtime/: the engine (numerics against an independent double-precision reference, batching)
# and every RPC of lowbit.v1.RuntimeService on a real loopback server.
if(TARGET lowbit_runtime_service)
  lowbit_integration_test(runtime_service_test ${CMAKE_CURRENT_SOURCE_DIR}/runtime_service_test.cc
    LIBS lowbit_runtime_service lowbit_tool_common lowbit_synthetic)
endif()
