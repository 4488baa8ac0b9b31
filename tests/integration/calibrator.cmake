# Calibrator service integration tests (calibrator/service/): the real server in-process on an
# ephemeral loopback port driven through the generated stub, and the kill -9 / resume test
# with the lowbit-calibrator binary as a subprocess (both also run the binary).
if(TARGET lowbit_calibrator_service)
  foreach(t calibrator_service_test calibrator_resume_test)
    if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${t}.cc)
      lowbit_integration_test(${t} ${CMAKE_CURRENT_SOURCE_DIR}/${t}.cc LIBS lowbit_calibrator_service lowbit_synthetic)
      add_dependencies(${t} lowbit-calibrator)
      if(TARGET lowbit)
        add_dependencies(${t} lowbit)  # `lowbit fetch` in calibrator_service_test
      endif()
    endif()
  endforeach()
endif()
