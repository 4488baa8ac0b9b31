// lowbit-gen-model: writes a deterministic synthetic Llama model (Hugging Face layout).
//   lowbit-gen-model --out DIR [--hidden 256] [--intermediate 512] [--layers 2] [--heads 4]
//                    [--kv_heads 2] [--vocab 512] [--dtype bf16|fp16|fp32] [--seed 0]
//                    [--outlier_channels 4] [--outlier_scale 30] [--tie_embeddings]
//                    [--max_shard_mb 2048] [--arch llama|mistral|qwen2] [--head_dim N]
//                    [--rope_scaling llama3|linear] [--rope_factor 8]
//                    [--rope_original_max_position 8192]
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/flags_help.h"
#include "tools/gen_model/synthetic_llama.h"

ABSL_FLAG(std::string, out, "", "output directory (required)");
ABSL_FLAG(int64_t, hidden, 256, "hidden size");
ABSL_FLAG(int64_t, intermediate, 512, "MLP intermediate size");
ABSL_FLAG(int64_t, layers, 2, "decoder layers");
ABSL_FLAG(int64_t, heads, 4, "attention heads");
ABSL_FLAG(int64_t, kv_heads, 2, "key/value heads (GQA)");
ABSL_FLAG(int64_t, vocab, 512, "vocabulary size");
ABSL_FLAG(std::string, dtype, "bf16", "bf16, fp16 or fp32");
ABSL_FLAG(uint64_t, seed, 0, "random seed");
ABSL_FLAG(int32_t, outlier_channels, 4, "hidden channels with large activations");
ABSL_FLAG(double, outlier_scale, 30.0, "how much larger the outlier channels are");
ABSL_FLAG(bool, tie_embeddings, false, "tie lm_head to the embeddings");
ABSL_FLAG(int64_t, max_shard_mb, 2048, "shard the safetensors at this size (MiB)");
ABSL_FLAG(std::string, arch, "llama", "llama, mistral (sliding_window null) or qwen2 (q/k/v biases)");
ABSL_FLAG(int64_t, head_dim, 0, "attention head size (0: hidden / heads)");
ABSL_FLAG(std::string, rope_scaling, "", "rope_scaling block: empty (null), llama3 or linear");
ABSL_FLAG(double, rope_factor, 8.0, "rope_scaling factor");
ABSL_FLAG(int64_t, rope_original_max_position, 8192, "llama3 rope_scaling original_max_position_embeddings");
ABSL_FLAG(double, rope_theta, 500000.0, "rope_theta");

int main(int argc, char** argv) {
  lowbit::HelpListsFlagsOf(__FILE__);
  absl::SetProgramUsageMessage("Writes a deterministic synthetic Llama model: lowbit-gen-model --out DIR");
  absl::ParseCommandLine(argc, argv);
  lowbit::SyntheticLlamaOptions o;
  std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::fprintf(stderr, "lowbit-gen-model: --out DIR is required\n");
    return 2;
  }
  o.hidden = absl::GetFlag(FLAGS_hidden);
  o.intermediate = absl::GetFlag(FLAGS_intermediate);
  o.layers = absl::GetFlag(FLAGS_layers);
  o.heads = absl::GetFlag(FLAGS_heads);
  o.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  o.vocab = absl::GetFlag(FLAGS_vocab);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.outlier_channels = absl::GetFlag(FLAGS_outlier_channels);
  o.outlier_scale = static_cast<float>(absl::GetFlag(FLAGS_outlier_scale));
  o.tie_embeddings = absl::GetFlag(FLAGS_tie_embeddings);
  o.arch = absl::GetFlag(FLAGS_arch);
  o.head_dim = absl::GetFlag(FLAGS_head_dim);
  o.rope_scaling = absl::GetFlag(FLAGS_rope_scaling);
  o.rope_factor = absl::GetFlag(FLAGS_rope_factor);
  o.rope_original_max_position = absl::GetFlag(FLAGS_rope_original_max_position);
  o.rope_theta = absl::GetFlag(FLAGS_rope_theta);
  int64_t shard_mb = absl::GetFlag(FLAGS_max_shard_mb);
  if (shard_mb <= 0) {
    std::fprintf(stderr, "lowbit-gen-model: --max_shard_mb must be positive\n");
    return 2;
  }
  o.max_shard_bytes = static_cast<uint64_t>(shard_mb) << 20;
  std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype == "bf16") o.dtype = lowbit::DType::kBF16;
  else if (dtype == "fp16") o.dtype = lowbit::DType::kF16;
  else if (dtype == "fp32") o.dtype = lowbit::DType::kF32;
  else {
    std::fprintf(stderr, "lowbit-gen-model: --dtype must be bf16, fp16 or fp32, got '%s'\n", dtype.c_str());
    return 2;
  }
  absl::Status s = lowbit::WriteSyntheticLlama(out, o);
  if (!s.ok()) {
    std::fprintf(stderr, "lowbit-gen-model: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf("wrote %s (hidden %lld, layers %lld, %s)\n", out.c_str(), static_cast<long long>(o.hidden),
              static_cast<long long>(o.layers), dtype.c_str());
  return 0;
}
