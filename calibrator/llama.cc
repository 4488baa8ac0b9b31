// LlamaModel (memory-mapped weights, one layer at a time in float32) and the CPU forward pass.
#include "calibrator/llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace lowbit {
namespace {

// Scratch buffers of the forward, kept per thread between calls so a layer after the first
// does not page in fresh memory (at most what the largest batch needed, freed at thread exit).
// Every use writes a buffer before reading it.
enum Scratch { kNormed, kQ, kK, kV, kAttn, kScores, kQs, kOs, kGate, kUp, kNumScratch };
float* ScratchBuffer(Scratch which, int64_t n) {
  thread_local std::vector<float> buffers[kNumScratch];
  std::vector<float>& b = buffers[which];
  if (static_cast<int64_t>(b.size()) < n) {
    b.clear();
    b.shrink_to_fit();
    b.resize(static_cast<size_t>(n));
  }
  return b.data();
}

// exp for x <= 0 without libm's underflow path (slow, and it sets errno): 0 below -87.
inline float ExpNonPositive(float x) { return x < -87.0f ? 0.0f : std::exp(x); }

bool EndsWith(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

// n elements of a float dtype at `p` -> float32.
void DecodeFloats(DType dtype, const uint8_t* p, int64_t n, float* out) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(out, p, static_cast<size_t>(n) * 4);
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, p + 2 * i, 2);
        uint32_t u = static_cast<uint32_t>(b) << 16;  // bf16 is the high half of a float32
        std::memcpy(out + i, &u, 4);
      }
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, p + 2 * i, 2);
        out[i] = Fp16ToFloat(b);
      }
      return;
    default:
      std::abort();  // Open() admits only the three float dtypes
  }
}

absl::StatusOr<std::vector<float>> LoadFloats(const SafetensorsModel& t, const std::string& name) {
  absl::StatusOr<Tensor> tensor = t.Get(name);
  if (!tensor.ok()) return tensor.status();
  std::vector<float> out(tensor->numel());
  DecodeFloats(tensor->dtype(), tensor->bytes().data(), tensor->numel(), out.data());
  return out;
}

std::string LayerPrefix(int64_t layer) { return absl::StrCat("model.layers.", layer, "."); }

// RMSNorm of each row: y = x / sqrt(mean(x²) + eps) * w (float32 math, the mean accumulated in
// double).
void RmsNorm(const float* x, const float* w, int64_t rows, int64_t cols, double eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    double ss = 0;
    for (int64_t i = 0; i < cols; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(cols) + eps));
    for (int64_t i = 0; i < cols; ++i) yr[i] = (xr[i] * inv) * w[i];
  }
}

void AddBias(const std::vector<float>& bias, int64_t rows, float* y) {
  if (bias.empty()) return;
  const int64_t n = static_cast<int64_t>(bias.size());
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y + r * n;
    for (int64_t i = 0; i < n; ++i) yr[i] += bias[i];
  }
}

// y [rows, out] = beta·y + x [rows, in] · Wᵀ (+ bias).
void Linear(Compute& compute, const LinearWeights& w, const float* x, int64_t rows, float beta, float* y) {
  compute.Gemm(/*transpose_b=*/true, rows, w.out, w.in, 1.0f, x, w.in, w.weight.data(), w.in, beta, y, w.out);
  AddBias(w.bias, rows, y);
}

// The rotary frequencies of one head, after rope_scaling (Hugging Face's
// _compute_default_rope_parameters / _compute_linear_scaling_rope_parameters /
// _compute_llama3_parameters), in double.
std::vector<double> InvFreq(const LlamaConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    inv[i] = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(c.head_dim));
  }
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "linear") {
    for (double& f : inv) f /= rs.factor;
  } else if (rs.type == "llama3") {
    const double old_len = static_cast<double>(rs.original_max_position_embeddings);
    const double low_wavelen = old_len / rs.low_freq_factor;
    const double high_wavelen = old_len / rs.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2 * M_PI / f;
      if (wavelen > low_wavelen) {
        f /= rs.factor;  // low frequencies: scaled fully
      } else if (wavelen >= high_wavelen) {  // medium: interpolate
        const double smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1 - smooth) * f / rs.factor + smooth * f;
      }  // high frequencies: unchanged
    }
  }
  return inv;
}

// Rotates `rows` heads in place ([rows, heads * head_dim] with row stride `ld`), row r at
// position pos0 + r: the rotate_half convention (pairs i and i + head_dim/2).
void ApplyRope(float* x, int64_t rows, int64_t ld, int64_t heads, int64_t head_dim, const float* cos_table,
               const float* sin_table) {
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* cs = cos_table + r * half;
    const float* sn = sin_table + r * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* a = x + r * ld + h * head_dim;
      float* b = a + half;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = a[i], x2 = b[i];
        a[i] = x1 * cs[i] - x2 * sn[i];
        b[i] = x2 * cs[i] + x1 * sn[i];
      }
    }
  }
}

absl::Status CheckLinear(const char* name, const LinearWeights& w, int64_t out, int64_t in, bool bias) {
  if (w.out != out || w.in != in || static_cast<int64_t>(w.weight.size()) != out * in ||
      (bias ? static_cast<int64_t>(w.bias.size()) != out : !w.bias.empty())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DecoderLayerForward: ", name, " is [", w.out, ", ", w.in, "] with ", w.weight.size(), " weights and ",
        w.bias.size(), " biases; the config needs [", out, ", ", in, "]", bias ? " with a bias" : " without bias"));
  }
  return absl::OkStatus();
}

}  // namespace

LinearSite SiteOf(std::string_view s) {
  if (EndsWith(s, "q_proj") || EndsWith(s, "k_proj") || EndsWith(s, "v_proj")) return LinearSite::kAttentionInput;
  if (EndsWith(s, "o_proj")) return LinearSite::kOProjInput;
  if (EndsWith(s, "gate_proj") || EndsWith(s, "up_proj")) return LinearSite::kMlpInput;
  if (EndsWith(s, "down_proj")) return LinearSite::kDownProjInput;
  std::fprintf(stderr, "SiteOf: \"%s\" is not a decoder-layer Linear\n", std::string(s).c_str());
  std::abort();
}

LinearWeights* DecoderLayerWeights::Linear(std::string_view s) {
  return const_cast<LinearWeights*>(static_cast<const DecoderLayerWeights*>(this)->Linear(s));
}

const LinearWeights* DecoderLayerWeights::Linear(std::string_view s) const {
  if (s == "self_attn.q_proj") return &q_proj;
  if (s == "self_attn.k_proj") return &k_proj;
  if (s == "self_attn.v_proj") return &v_proj;
  if (s == "self_attn.o_proj") return &o_proj;
  if (s == "mlp.gate_proj") return &gate_proj;
  if (s == "mlp.up_proj") return &up_proj;
  if (s == "mlp.down_proj") return &down_proj;
  return nullptr;
}

SequenceSpans SequenceSpans::FromLengths(std::span<const int64_t> lengths) {
  SequenceSpans s;
  s.offsets.reserve(lengths.size() + 1);
  s.offsets.push_back(0);
  for (int64_t n : lengths) s.offsets.push_back(s.offsets.back() + n);
  return s;
}

// ------------------------------------------------------------------------------------------
// LlamaModel
// ------------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string config_path = (fs::path(dir) / "config.json").string();
  absl::StatusOr<std::string> text = ReadFileToString(config_path);
  if (!text.ok()) return text.status();
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(config_path, ": not valid JSON"));
  absl::StatusOr<LlamaConfig> config = ParseLlamaConfig(j);
  if (!config.ok()) {
    // ParseLlamaConfig names "config.json"; here the full path replaces it.
    std::string why(config.status().message());
    if (why.rfind("config.json: ", 0) == 0) why.erase(0, 13);
    return absl::Status(config.status().code(), absl::StrCat(config_path, ": ", why));
  }
  absl::StatusOr<std::unique_ptr<SafetensorsModel>> tensors = SafetensorsModel::Open(dir);
  if (!tensors.ok()) return tensors.status();

  auto model = std::unique_ptr<LlamaModel>(new LlamaModel());
  model->dir_ = dir;
  model->config_ = *std::move(config);
  model->tensors_ = *std::move(tensors);
  const LlamaConfig& c = model->config_;
  const SafetensorsModel& t = *model->tensors_;

  auto expect = [&](const std::string& name, const Shape& shape, const std::string& why) -> absl::Status {
    const SafetensorsEntry* e = t.Find(name);
    if (e == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, ": tensor ", name, " is missing (config.json: ", c.architecture, ", ", c.num_layers,
                       " layers", why.empty() ? "" : ", ", why, ")"));
    }
    if (e->dtype != DType::kF32 && e->dtype != DType::kF16 && e->dtype != DType::kBF16) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": tensor ", name, " has dtype ",
                                                     std::string(DTypeName(e->dtype)),
                                                     "; only F32, F16 and BF16 weights can be calibrated"));
    }
    if (e->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": tensor ", name, " has shape ", ShapeString(e->shape),
                                                     "; config.json implies ", ShapeString(shape), " (", why, ")"));
    }
    return absl::OkStatus();
  };
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const std::string hs = absl::StrCat("hidden_size ", h);
  const std::string qs = absl::StrCat("num_attention_heads ", c.num_heads, " x head_dim ", c.head_dim);
  const std::string kvs = absl::StrCat("num_key_value_heads ", c.num_kv_heads, " x head_dim ", c.head_dim);
  const std::string is = absl::StrCat("intermediate_size ", c.intermediate_size);
  if (absl::Status s = expect("model.embed_tokens.weight", {c.vocab_size, h}, absl::StrCat("vocab_size ", c.vocab_size, ", ", hs)); !s.ok()) return s;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = LayerPrefix(l);
    if (absl::Status s = expect(p + "input_layernorm.weight", {h}, hs); !s.ok()) return s;
    if (absl::Status s = expect(p + "post_attention_layernorm.weight", {h}, hs); !s.ok()) return s;
    struct Lin { const char* suffix; int64_t out, in; std::string why; };
    const Lin lins[] = {{"self_attn.q_proj", q, h, qs + ", " + hs},     {"self_attn.k_proj", kv, h, kvs + ", " + hs},
                        {"self_attn.v_proj", kv, h, kvs + ", " + hs},   {"self_attn.o_proj", h, q, hs + ", " + qs},
                        {"mlp.gate_proj", c.intermediate_size, h, is + ", " + hs},
                        {"mlp.up_proj", c.intermediate_size, h, is + ", " + hs},
                        {"mlp.down_proj", h, c.intermediate_size, hs + ", " + is}};
    for (const Lin& lin : lins) {
      if (absl::Status s = expect(absl::StrCat(p, lin.suffix, ".weight"), {lin.out, lin.in}, lin.why); !s.ok()) return s;
      if (c.LinearHasBias(lin.suffix)) {
        if (absl::Status s = expect(absl::StrCat(p, lin.suffix, ".bias"), {lin.out}, lin.why + ", with a bias");
            !s.ok()) {
          return s;
        }
      }
    }
  }
  if (absl::Status s = expect("model.norm.weight", {h}, hs); !s.ok()) return s;
  if (!c.tie_word_embeddings) {
    if (absl::Status s = expect("lm_head.weight", {c.vocab_size, h},
                                absl::StrCat("vocab_size ", c.vocab_size, ", ", hs, ", tie_word_embeddings false"));
        !s.ok()) {
      return s;
    }
  }
  return model;
}

absl::StatusOr<DecoderLayerWeights> LlamaModel::LoadLayer(int64_t layer) const {
  if (layer < 0 || layer >= config_.num_layers) {
    return absl::OutOfRangeError(absl::StrCat("layer ", layer, " is outside [0, ", config_.num_layers, ")"));
  }
  const std::string p = LayerPrefix(layer);
  DecoderLayerWeights w;
  absl::StatusOr<std::vector<float>> v = LoadFloats(*tensors_, p + "input_layernorm.weight");
  if (!v.ok()) return v.status();
  w.input_layernorm = *std::move(v);
  v = LoadFloats(*tensors_, p + "post_attention_layernorm.weight");
  if (!v.ok()) return v.status();
  w.post_attention_layernorm = *std::move(v);
  for (const char* suffix : kLayerLinears) {
    LinearWeights* lin = w.Linear(suffix);
    const std::string name = absl::StrCat(p, suffix);
    const SafetensorsEntry* e = tensors_->Find(name + ".weight");
    if (e == nullptr) return absl::NotFoundError(absl::StrCat(name, ".weight is missing"));
    lin->out = e->shape[0];
    lin->in = e->shape[1];
    v = LoadFloats(*tensors_, name + ".weight");
    if (!v.ok()) return v.status();
    lin->weight = *std::move(v);
    if (config_.LinearHasBias(suffix)) {
      v = LoadFloats(*tensors_, name + ".bias");
      if (!v.ok()) return v.status();
      lin->bias = *std::move(v);
    }
  }
  return w;
}

absl::StatusOr<std::vector<float>> LlamaModel::Embed(std::span<const int32_t> tokens) const {
  absl::StatusOr<Tensor> table = tensors_->Get("model.embed_tokens.weight");
  if (!table.ok()) return table.status();
  const int64_t h = config_.hidden_size;
  const size_t row_bytes = static_cast<size_t>(h) * DTypeSize(table->dtype());
  std::vector<float> out(tokens.size() * static_cast<size_t>(h));
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t id = tokens[i];
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, " is ", id, ", outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
    DecodeFloats(table->dtype(), table->bytes().data() + static_cast<size_t>(id) * row_bytes, h,
                 out.data() + i * static_cast<size_t>(h));
  }
  return out;
}

absl::StatusOr<std::vector<float>> LlamaModel::LoadFinalNorm() const {
  return LoadFloats(*tensors_, "model.norm.weight");
}

absl::StatusOr<LinearWeights> LlamaModel::LoadLmHead() const {
  LinearWeights w;
  absl::StatusOr<std::vector<float>> v =
      LoadFloats(*tensors_, config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  if (!v.ok()) return v.status();
  w.out = config_.vocab_size;
  w.in = config_.hidden_size;
  w.weight = *std::move(v);
  return w;
}

// ------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------

absl::Status DecoderLayerForward(const LlamaConfig& c, const DecoderLayerWeights& w, Compute& compute,
                                 const SequenceSpans& spans, float* hidden, LayerHooks* hooks) {
  const int64_t h = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t qdim = nh * d, kvdim = nkv * d, inter = c.intermediate_size;
  // Arguments.
  if (spans.offsets.empty() || spans.offsets[0] != 0) {
    return absl::InvalidArgumentError("DecoderLayerForward: spans.offsets must start with 0");
  }
  int64_t max_len = 0;
  for (int64_t i = 0; i < spans.num_sequences(); ++i) {
    const int64_t len = spans.offsets[i + 1] - spans.offsets[i];
    if (len < 0) return absl::InvalidArgumentError("DecoderLayerForward: spans.offsets must be non-decreasing");
    max_len = std::max(max_len, len);
  }
  if (c.sliding_window > 0 && max_len > c.sliding_window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DecoderLayerForward: a sequence of ", max_len, " tokens is longer than the model's sliding_window (",
        c.sliding_window, "); sliding-window attention is not implemented, use calibration sequences of at most ",
        c.sliding_window, " tokens"));
  }
  if (static_cast<int64_t>(w.input_layernorm.size()) != h || static_cast<int64_t>(w.post_attention_layernorm.size()) != h) {
    return absl::InvalidArgumentError(absl::StrCat("DecoderLayerForward: the layer norms must have hidden_size (", h,
                                                   ") weights"));
  }
  {
    struct Want { const char* name; const LinearWeights* w; int64_t out, in; };
    const Want wants[] = {{"self_attn.q_proj", &w.q_proj, qdim, h},    {"self_attn.k_proj", &w.k_proj, kvdim, h},
                          {"self_attn.v_proj", &w.v_proj, kvdim, h},   {"self_attn.o_proj", &w.o_proj, h, qdim},
                          {"mlp.gate_proj", &w.gate_proj, inter, h},   {"mlp.up_proj", &w.up_proj, inter, h},
                          {"mlp.down_proj", &w.down_proj, h, inter}};
    for (const Want& x : wants) {
      if (absl::Status s = CheckLinear(x.name, *x.w, x.out, x.in, c.LinearHasBias(x.name)); !s.ok()) return s;
    }
  }
  const int64_t rows = spans.num_rows();
  if (rows == 0) return absl::OkStatus();
  if (hidden == nullptr) return absl::InvalidArgumentError("DecoderLayerForward: hidden is null");

  // ---- attention ----
  float* normed = ScratchBuffer(kNormed, rows * h);
  RmsNorm(hidden, w.input_layernorm.data(), rows, h, c.rms_norm_eps, normed);
  if (hooks) hooks->OnLinearInput(LinearSite::kAttentionInput, normed, rows, h);
  float* q = ScratchBuffer(kQ, rows * qdim);
  float* k = ScratchBuffer(kK, rows * kvdim);
  float* v = ScratchBuffer(kV, rows * kvdim);
  Linear(compute, w.q_proj, normed, rows, 0.0f, q);
  Linear(compute, w.k_proj, normed, rows, 0.0f, k);
  Linear(compute, w.v_proj, normed, rows, 0.0f, v);

  // RoPE: cos/sin of position × frequency for positions [0, max_len), in double then rounded.
  const int64_t half = d / 2;
  const std::vector<double> inv_freq = InvFreq(c);
  std::vector<float> cos_table(max_len * half), sin_table(max_len * half);
  for (int64_t p = 0; p < max_len; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * inv_freq[i];
      cos_table[p * half + i] = static_cast<float>(std::cos(angle));
      sin_table[p * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  for (int64_t s = 0; s < spans.num_sequences(); ++s) {
    const int64_t o = spans.offsets[s], len = spans.offsets[s + 1] - o;
    ApplyRope(q + o * qdim, len, qdim, nh, d, cos_table.data(), sin_table.data());
    ApplyRope(k + o * kvdim, len, kvdim, nkv, d, cos_table.data(), sin_table.data());
  }
  if (hooks) hooks->OnKeyValue(k, v, rows, kvdim);

  // Causal attention per sequence and KV head, in blocks of query rows. The query heads that
  // share a KV head (GQA) are stacked into one [group·block, head_dim] matrix so each step is
  // two large GEMMs: scores against the keys up to the block's last row, a softmax that masks
  // the rest, then the product with V.
  float* attn = ScratchBuffer(kAttn, rows * qdim);
  const int64_t group = nh / nkv;
  constexpr int64_t kBlock = 128;
  const int64_t block = std::min(kBlock, max_len);
  float* scores = ScratchBuffer(kScores, group * block * max_len);
  float* qs = ScratchBuffer(kQs, group * block * d);
  float* os = ScratchBuffer(kOs, group * block * d);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  for (int64_t s = 0; s < spans.num_sequences(); ++s) {
    const int64_t o = spans.offsets[s], len = spans.offsets[s + 1] - o;
    for (int64_t g = 0; g < nkv; ++g) {
      const float* kg = k + o * kvdim + g * d;
      const float* vg = v + o * kvdim + g * d;
      for (int64_t i0 = 0; i0 < len; i0 += block) {
        const int64_t bq = std::min(block, len - i0), nk = i0 + bq, m = group * bq;
        // Row hh·bq + r of qs is query i0 + r of head g·group + hh.
        for (int64_t hh = 0; hh < group; ++hh) {
          for (int64_t r = 0; r < bq; ++r) {
            std::memcpy(qs + (hh * bq + r) * d, q + (o + i0 + r) * qdim + (g * group + hh) * d,
                        sizeof(float) * d);
          }
        }
        float* sc = scores;
        compute.Gemm(/*transpose_b=*/true, m, nk, d, scale, qs, d, kg, kvdim, 0.0f, sc, nk);
        for (int64_t row = 0; row < m; ++row) {
          float* x = sc + row * nk;
          const int64_t valid = i0 + row % bq + 1;  // keys 0 .. the query's own position
          float mx = x[0];
          for (int64_t j = 1; j < valid; ++j) mx = std::max(mx, x[j]);
          float sum = 0;
          for (int64_t j = 0; j < valid; ++j) {
            x[j] = ExpNonPositive(x[j] - mx);
            sum += x[j];
          }
          const float inv = 1.0f / sum;
          for (int64_t j = 0; j < valid; ++j) x[j] *= inv;
          std::fill(x + valid, x + nk, 0.0f);
        }
        compute.Gemm(/*transpose_b=*/false, m, d, nk, 1.0f, sc, nk, vg, kvdim, 0.0f, os, d);
        for (int64_t hh = 0; hh < group; ++hh) {
          for (int64_t r = 0; r < bq; ++r) {
            std::memcpy(attn + (o + i0 + r) * qdim + (g * group + hh) * d, os + (hh * bq + r) * d,
                        sizeof(float) * d);
          }
        }
      }
    }
  }
  if (hooks) hooks->OnLinearInput(LinearSite::kOProjInput, attn, rows, qdim);
  // hidden += o_proj(attn): the residual add rides on the GEMM's beta.
  compute.Gemm(true, rows, h, qdim, 1.0f, attn, qdim, w.o_proj.weight.data(), qdim, 1.0f, hidden, h);
  AddBias(w.o_proj.bias, rows, hidden);

  // ---- MLP ----
  RmsNorm(hidden, w.post_attention_layernorm.data(), rows, h, c.rms_norm_eps, normed);
  if (hooks) hooks->OnLinearInput(LinearSite::kMlpInput, normed, rows, h);
  float* gate = ScratchBuffer(kGate, rows * inter);
  float* up = ScratchBuffer(kUp, rows * inter);
  Linear(compute, w.gate_proj, normed, rows, 0.0f, gate);
  Linear(compute, w.up_proj, normed, rows, 0.0f, up);
  {
    const int64_t n = rows * inter;
    for (int64_t i = 0; i < n; ++i) {
      // silu(gate) * up; exp(-g) overflows for g < -88, where silu(g) is -0 to float precision.
      const float g = gate[i];
      gate[i] = g < -87.0f ? -0.0f : g / (1.0f + std::exp(-g)) * up[i];
    }
  }
  if (hooks) hooks->OnLinearInput(LinearSite::kDownProjInput, gate, rows, inter);
  compute.Gemm(true, rows, h, inter, 1.0f, gate, inter, w.down_proj.weight.data(), inter, 1.0f, hidden, h);
  AddBias(w.down_proj.bias, rows, hidden);
  return absl::OkStatus();
}

std::vector<float> ApplyFinalNorm(const LlamaConfig& config, std::span<const float> final_norm,
                                  std::span<const float> hidden, int64_t rows) {
  const int64_t h = config.hidden_size;
  std::vector<float> normed(static_cast<size_t>(rows * h));
  RmsNorm(hidden.data(), final_norm.data(), rows, h, config.rms_norm_eps, normed.data());
  return normed;
}

std::vector<float> LmHeadForward(const LlamaConfig& config, std::span<const float> final_norm,
                                 const LinearWeights& lm_head, Compute& compute, std::span<const float> hidden,
                                 int64_t rows) {
  std::vector<float> normed = ApplyFinalNorm(config, final_norm, hidden, rows);
  std::vector<float> logits(static_cast<size_t>(rows * lm_head.out));
  Linear(compute, lm_head, normed.data(), rows, 0.0f, logits.data());
  return logits;
}

}  // namespace lowbit
