#include "tools/gen_model/synthetic_llama.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/safetensors.h"

namespace lowbit {
namespace {

// splitmix64 + Box-Muller: the same numbers on every platform and standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed ^ 0x9E3779B97F4A7C15ull) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return (static_cast<double>(Next() >> 11) + 0.5) * 0x1.0p-53; }
  float Normal() {
    double u1 = Uniform(), u2 = Uniform();
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
  }

 private:
  uint64_t state_;
};

// A seed per tensor name so one tensor's values do not depend on which others exist.
uint64_t TensorSeed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string_view TorchDType(DType d) {
  return d == DType::kBF16 ? "bfloat16" : d == DType::kF16 ? "float16" : "float32";
}

}  // namespace

absl::Status ValidateOptions(const SyntheticLlamaOptions& o) {
  for (auto [name, v] : {std::pair{"hidden", o.hidden}, {"intermediate", o.intermediate}, {"layers", o.layers},
                         {"heads", o.heads}, {"kv_heads", o.kv_heads}, {"vocab", o.vocab}}) {
    if (v <= 0 || v > (int64_t{1} << 20)) return absl::InvalidArgumentError(absl::StrCat(name, " must be in 1..2^20, got ", v));
  }
  if (o.head_dim < 0 || o.head_dim > (int64_t{1} << 16)) return absl::InvalidArgumentError("head_dim must be in 0..2^16");
  if (o.head_dim == 0 && o.hidden % o.heads != 0) return absl::InvalidArgumentError("hidden must be divisible by heads");
  if (o.heads % o.kv_heads != 0) return absl::InvalidArgumentError("heads must be divisible by kv_heads");
  if (o.HeadDim() % 2 != 0) return absl::InvalidArgumentError("head_dim (hidden / heads) must be even for RoPE");
  if (o.arch != "llama" && o.arch != "mistral" && o.arch != "qwen2") {
    return absl::InvalidArgumentError(absl::StrCat("arch must be llama, mistral or qwen2, got '", o.arch, "'"));
  }
  if (!o.rope_scaling.empty() && o.rope_scaling != "llama3" && o.rope_scaling != "linear") {
    return absl::InvalidArgumentError(absl::StrCat("rope_scaling must be empty, llama3 or linear, got '", o.rope_scaling, "'"));
  }
  if (!(o.rope_factor > 0) || o.rope_original_max_position <= 0) {
    return absl::InvalidArgumentError("rope_factor and rope_original_max_position must be positive");
  }
  if (o.dtype != DType::kF32 && o.dtype != DType::kF16 && o.dtype != DType::kBF16) {
    return absl::InvalidArgumentError("dtype must be fp32, fp16 or bf16");
  }
  if (o.outlier_channels < 0 || o.outlier_channels > o.hidden) {
    return absl::InvalidArgumentError("outlier_channels must be in 0..hidden");
  }
  return absl::OkStatus();
}

std::vector<int64_t> OutlierChannels(const SyntheticLlamaOptions& o) {
  std::vector<int64_t> all(o.hidden);
  std::iota(all.begin(), all.end(), 0);
  Rng rng(TensorSeed(o.seed, "outliers"));
  for (int64_t i = 0; i < o.outlier_channels; ++i) {  // partial Fisher-Yates
    std::swap(all[i], all[i + static_cast<int64_t>(rng.Next() % (o.hidden - i))]);
  }
  std::vector<int64_t> out(all.begin(), all.begin() + o.outlier_channels);
  std::sort(out.begin(), out.end());
  return out;
}

nlohmann::json SyntheticLlamaConfig(const SyntheticLlamaOptions& o) {
  nlohmann::json c = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_size", o.hidden},
      {"intermediate_size", o.intermediate},
      {"num_hidden_layers", o.layers},
      {"num_attention_heads", o.heads},
      {"num_key_value_heads", o.kv_heads},
      {"head_dim", o.HeadDim()},
      {"vocab_size", o.vocab},
      {"max_position_embeddings", 2048},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", o.rope_theta},
      {"rope_scaling", nullptr},
      {"hidden_act", "silu"},
      {"attention_bias", false},
      {"mlp_bias", false},
      {"tie_word_embeddings", o.tie_embeddings},
      {"torch_dtype", TorchDType(o.dtype)},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"initializer_range", 0.02},
      {"transformers_version", "4.46.0"},
  };
  if (o.rope_scaling == "llama3") {
    c["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", o.rope_factor},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", o.rope_original_max_position}};
  } else if (o.rope_scaling == "linear") {
    c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", o.rope_factor}};
  }
  if (o.arch == "mistral") {
    c["architectures"] = {"MistralForCausalLM"};
    c["model_type"] = "mistral";
    c["sliding_window"] = nullptr;
    c.erase("attention_bias");
    c.erase("mlp_bias");
  } else if (o.arch == "qwen2") {
    c["architectures"] = {"Qwen2ForCausalLM"};
    c["model_type"] = "qwen2";
    c["use_sliding_window"] = false;
    c["sliding_window"] = 4096;
    c["max_window_layers"] = o.layers;
    c.erase("attention_bias");
    c.erase("mlp_bias");
  }
  return c;
}

absl::Status WriteSyntheticLlama(const std::string& dir, const SyntheticLlamaOptions& o) {
  if (absl::Status s = ValidateOptions(o); !s.ok()) return s;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));

  const std::vector<int64_t> outliers = OutlierChannels(o);
  const int64_t head_dim = o.HeadDim();
  std::vector<NamedTensor> tensors;
  auto add = [&](const std::string& name, Shape shape, auto fill) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(n);
    Rng rng(TensorSeed(o.seed, name));
    for (int64_t i = 0; i < n; ++i) v[i] = fill(rng, i);
    tensors.push_back({name, Tensor::FromFloats(v, shape, o.dtype)});
  };
  // Linear weights: N(0, 1/fan_in), so activations keep their scale through the layer.
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    float std = 1.0f / std::sqrt(static_cast<float>(in));
    add(name, {out, in}, [std](Rng& r, int64_t) { return std * r.Normal(); });
  };
  // RMSNorm weights near 1, with the outlier channels scaled up.
  auto norm = [&](const std::string& name) {
    add(name, {o.hidden}, [&](Rng& r, int64_t i) {
      float w = 1.0f + 0.1f * r.Normal();
      return std::binary_search(outliers.begin(), outliers.end(), i) ? w * o.outlier_scale : w;
    });
  };
  add("model.embed_tokens.weight", {o.vocab, o.hidden}, [&](Rng& r, int64_t i) {
    float v = r.Normal();
    return std::binary_search(outliers.begin(), outliers.end(), i % o.hidden) ? v * 4.0f : v;
  });
  for (int64_t l = 0; l < o.layers; ++l) {
    std::string p = absl::StrCat("model.layers.", l, ".");
    norm(p + "input_layernorm.weight");
    norm(p + "post_attention_layernorm.weight");
    linear(p + "self_attn.q_proj.weight", o.heads * head_dim, o.hidden);
    linear(p + "self_attn.k_proj.weight", o.kv_heads * head_dim, o.hidden);
    linear(p + "self_attn.v_proj.weight", o.kv_heads * head_dim, o.hidden);
    linear(p + "self_attn.o_proj.weight", o.hidden, o.heads * head_dim);
    if (o.arch == "qwen2") {  // q/k/v biases, large enough to matter
      for (auto [name, n] : {std::pair{"q_proj", o.heads * head_dim}, {"k_proj", o.kv_heads * head_dim},
                             {"v_proj", o.kv_heads * head_dim}}) {
        add(p + "self_attn." + name + ".bias", {n}, [](Rng& r, int64_t) { return 0.5f * r.Normal(); });
      }
    }
    linear(p + "mlp.gate_proj.weight", o.intermediate, o.hidden);
    linear(p + "mlp.up_proj.weight", o.intermediate, o.hidden);
    linear(p + "mlp.down_proj.weight", o.hidden, o.intermediate);
  }
  add("model.norm.weight", {o.hidden}, [](Rng& r, int64_t) { return 1.0f + 0.1f * r.Normal(); });
  if (!o.tie_embeddings) linear("lm_head.weight", o.vocab, o.hidden);

  absl::StatusOr<std::vector<std::string>> files = WriteSafetensorsModel(dir, std::move(tensors), o.max_shard_bytes);
  if (!files.ok()) return files.status();
  namespace fs = std::filesystem;
  if (absl::Status s = AtomicWriteFile((fs::path(dir) / "config.json").string(), SyntheticLlamaConfig(o).dump(2) + "\n"); !s.ok()) {
    return s;
  }
  nlohmann::json gen = {{"bos_token_id", 1}, {"eos_token_id", 2}, {"do_sample", false}};
  return AtomicWriteFile((fs::path(dir) / "generation_config.json").string(), gen.dump(2) + "\n");
}

}  // namespace lowbit
