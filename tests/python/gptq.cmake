# GPTQ against the independent NumPy reference (gptq_ref.py): gptq_layer_driver runs the C++
# Hessian accumulation + QuantizeLinearGptq on a small layer, the reference recomputes both.
add_executable(gptq_layer_driver ${CMAKE_CURRENT_SOURCE_DIR}/gptq_layer_driver.cc)
target_link_libraries(gptq_layer_driver PRIVATE lowbit_calibrator)

add_test(NAME gptq_ref_selftest COMMAND ${LOWBIT_PY} ${CMAKE_CURRENT_SOURCE_DIR}/gptq_ref.py --self-test)
foreach(case
    w4_g32_sym_none w4_g32_sym_weight w4_g32_sym_group
    w4_g64_asym_none w4_g64_asym_weight w4_g64_asym_group
    w8_channel_sym_weight w8_tensor_sym_none w4_channel_asym_none_block48_dead
    fp8_channel_none fp8_tensor_weight)
  add_test(NAME gptq_ref_${case}
           COMMAND ${LOWBIT_PY} ${CMAKE_CURRENT_SOURCE_DIR}/gptq_ref.py
                   --driver $<TARGET_FILE:gptq_layer_driver> --case ${case}
                   --work ${CMAKE_CURRENT_BINARY_DIR}/gptq_work_${case})
endforeach()
