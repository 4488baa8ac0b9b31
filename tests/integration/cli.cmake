# The README's main job as a test: `lowbit demo` starts both services as child processes,
# calibrates W8A8 / W4A16 / FP8 over gRPC, loads each checkpoint into the runtime and checks
# every quantized Linear's GEMM against the float layer computed in double (exit 1 past a bound).
# The directory is the demo's own (it writes .lowbit-demo there), so a rerun reuses it.
if(TARGET lowbit AND TARGET lowbit-runtime AND TARGET lowbit-calibrator)
  add_test(NAME cli_demo COMMAND $<TARGET_FILE:lowbit> demo --out ${CMAKE_CURRENT_BINARY_DIR}/cli_demo_out)
  set_tests_properties(cli_demo PROPERTIES LABELS integration TIMEOUT 600 ENVIRONMENT "${LOWBIT_TEST_ENV}")
endif()
