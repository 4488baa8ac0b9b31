# The calibration pipeline end to end (lowbit-calibrator calibrate): each case calibrates a
# synthetic model two ways, A and B, checks both checkpoints with the independent checker and
# requires A's held-out KL divergence to be lower than B's.
# W8A8 GPTQ vs RTN runs on a model without outlier channels: with them, per-token int8
# activation error dominates the KL (0.043 either way) and SmoothQuant is what helps (0.011;
# the smoothquant rows).
# Row: name | checker preset (or -) | A flags | B flags | lowbit-gen-model flags
set(LOWBIT_FIXTURES ${PROJECT_SOURCE_DIR}/tests/fixtures)
set(LOWBIT_CALIBRATE_CASES
  "w8a8_gptq_vs_rtn|W8A8|--scheme W8A8|--scheme W8A8 --algorithm rtn|--dtype=bf16 --outlier_channels=0"
  "w8a8_smoothquant_gptq_vs_rtn|W8A8|--recipe ${LOWBIT_FIXTURES}/recipes/int8_w8a8.yaml|--scheme W8A8 --algorithm rtn|--dtype=bf16"
  "w8a16_gptq_vs_rtn|W8A16|--scheme W8A16|--scheme W8A16 --algorithm rtn|--dtype=bf16"
  "w4a16_gptq_vs_rtn|W4A16|--scheme W4A16|--scheme W4A16 --algorithm rtn|--dtype=bf16"
  "w4a16_asym_gptq_vs_rtn|W4A16_ASYM|--scheme W4A16_ASYM|--scheme W4A16_ASYM --algorithm rtn|--dtype=fp16"
  "w4a16_no_actorder_gptq_vs_rtn|W4A16|--recipe ${LOWBIT_FIXTURES}/calib/w4a16_no_actorder.yaml|--scheme W4A16 --algorithm rtn|--dtype=bf16"
  "actorder_group_gptq_vs_rtn|-|--recipe ${LOWBIT_FIXTURES}/recipes/gptq_actorder_group.yaml|--recipe ${LOWBIT_FIXTURES}/calib/mixed_rtn.yaml|--dtype=bf16"
  "fp8_static_gptq_vs_rtn|FP8|--scheme FP8|--scheme FP8 --algorithm rtn|--dtype=bf16"
  "fp8_dynamic_gptq_vs_rtn|FP8_DYNAMIC|--scheme FP8_DYNAMIC|--scheme FP8_DYNAMIC --algorithm rtn|--dtype=bf16"
  "fp8_kv_gptq_vs_rtn|-|--recipe ${LOWBIT_FIXTURES}/calib/fp8_kv_gptq.yaml|--recipe ${LOWBIT_FIXTURES}/recipes/fp8_kv.yaml|--dtype=bf16"
  "qwen2_w4a16_gptq_vs_rtn|W4A16|--scheme W4A16|--scheme W4A16 --algorithm rtn|--arch=qwen2"
  "mistral_w4a16_asym_gptq_vs_rtn|W4A16_ASYM|--scheme W4A16_ASYM|--scheme W4A16_ASYM --algorithm rtn|--arch=mistral --dtype=fp32"
  "llama3_rope_tied_w8a16_gptq_vs_rtn|W8A16|--scheme W8A16|--scheme W8A16 --algorithm rtn|--rope_scaling=llama3 --tie_embeddings --max_shard_mb=1"
  "w8a8_smoothquant_vs_gptq_only|W8A8|--recipe ${LOWBIT_FIXTURES}/recipes/int8_w8a8.yaml|--scheme W8A8|--dtype=bf16")
foreach(case ${LOWBIT_CALIBRATE_CASES})
  string(REPLACE "|" ";" parts "${case}")
  list(GET parts 0 name)
  list(GET parts 1 expect)
  list(GET parts 2 a_flags)
  list(GET parts 3 b_flags)
  list(GET parts 4 gen_flags)
  separate_arguments(gen_list UNIX_COMMAND "${gen_flags}")
  add_test(NAME calibrate_${name}
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/run_calibrate_check.sh ${PROJECT_BINARY_DIR}
                   ${CMAKE_CURRENT_BINARY_DIR}/work_calibrate_${name} ${expect} "${a_flags}" "${b_flags}" ${gen_list})
endforeach()

add_test(NAME calibrate_errors
         COMMAND ${LOWBIT_PY} ${CMAKE_CURRENT_SOURCE_DIR}/test_calibrate_errors.py ${PROJECT_BINARY_DIR}
                 ${CMAKE_CURRENT_BINARY_DIR}/work_calibrate_errors)

add_test(NAME calibrate_deterministic_jsonl_and_bin
         COMMAND ${LOWBIT_PY} ${CMAKE_CURRENT_SOURCE_DIR}/test_calibrate_determinism.py ${PROJECT_BINARY_DIR}
                 ${CMAKE_CURRENT_BINARY_DIR}/work_calibrate_determinism)
