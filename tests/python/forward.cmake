# The calibrator's CPU forward pass (lowbit-forward) against the independent NumPy reference
# (llama_ref.py): logits within 1e-4 relative. Each row: test name | llama_ref.py arguments |
# lowbit-gen-model flags.
set(LOWBIT_FORWARD_CASES
  "llama_bf16_default|--lengths 17,5,1|"
  "llama_fp32|--lengths 40|--dtype=fp32"
  "llama_batched_lengths|--lengths 70,33,1,8|"
  "llama_gqa_kv1|--lengths 30,12|--kv_heads=1"
  "llama_tied_sharded|--lengths 20,7|--tie_embeddings --max_shard_mb=1"
  "llama_head_dim|--lengths 30,4|--head_dim=32 --heads=4 --kv_heads=2"
  "llama3_rope_scaling|--lengths 96,40 --expect-rope-scaling-matters|--rope_scaling=llama3 --rope_original_max_position=32"
  "linear_rope_scaling|--lengths 64 --expect-rope-scaling-matters|--rope_scaling=linear --rope_factor=4 --rope_theta=10000"
  "mistral_fp16|--lengths 25,3|--arch=mistral --dtype=fp16"
  "qwen2_bias|--lengths 33,9|--arch=qwen2"
  "qwen2_bias_fp32_kv1|--lengths 18|--arch=qwen2 --dtype=fp32 --kv_heads=1")
foreach(case ${LOWBIT_FORWARD_CASES})
  string(REPLACE "|" ";" parts "${case}")
  list(GET parts 0 name)
  list(GET parts 1 ref_args)
  list(GET parts 2 gen_flags)
  separate_arguments(ref_list UNIX_COMMAND "${ref_args}")
  separate_arguments(gen_list UNIX_COMMAND "${gen_flags}")
  add_test(NAME forward_${name}
           COMMAND ${LOWBIT_PY} ${CMAKE_CURRENT_SOURCE_DIR}/llama_ref.py
                   --gen $<TARGET_FILE:lowbit-gen-model> --forward $<TARGET_FILE:lowbit-forward>
                   --work ${CMAKE_CURRENT_BINARY_DIR}/work_forward_${name} ${ref_list} -- ${gen_list})
endforeach()
