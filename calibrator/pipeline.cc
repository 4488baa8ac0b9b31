#include "calibrator/pipeline.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <iterator>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "calibrator/fake_quant.h"
#include "calibrator/gptq.h"
#include "calibrator/hessian.h"
#include "calibrator/llama.h"
#include "calibrator/resume_state.h"
#include "calibrator/smoothquant.h"
#include "common/checkpoint.h"
#include "common/module_match.h"
#include "common/numerics.h"

namespace lowbit {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr std::string_view kLinearClasses[] = {"Linear", "Module"};

int SiteIndex(LinearSite site) { return static_cast<int>(site); }

// ---------------------------------------------------------------------------------------------
// Samples as one [rows, hidden] buffer.

struct Stream {
  SequenceSpans spans;
  std::vector<float> hidden;
  std::vector<int32_t> tokens;  // all samples concatenated, for next-token labels
};

absl::StatusOr<Stream> EmbedSamples(const LlamaModel& model, const std::vector<std::vector<int32_t>>& samples) {
  Stream s;
  std::vector<int64_t> lengths;
  for (const auto& sample : samples) {
    lengths.push_back(static_cast<int64_t>(sample.size()));
    s.tokens.insert(s.tokens.end(), sample.begin(), sample.end());
  }
  s.spans = SequenceSpans::FromLengths(lengths);
  absl::StatusOr<std::vector<float>> hidden = model.Embed(s.tokens);
  if (!hidden.ok()) return hidden.status();
  s.hidden = *std::move(hidden);
  return s;
}

// Chunks of whole sequences with at most `max_rows` rows each (a longer sequence is a chunk of
// its own): [first sequence, last sequence).
std::vector<std::pair<int64_t, int64_t>> Chunks(const SequenceSpans& spans, int64_t max_rows) {
  std::vector<std::pair<int64_t, int64_t>> out;
  int64_t n = spans.num_sequences(), begin = 0;
  while (begin < n) {
    int64_t end = begin + 1;
    while (end < n && spans.offsets[end + 1] - spans.offsets[begin] <= max_rows) ++end;
    out.push_back({begin, end});
    begin = end;
  }
  return out;
}

SequenceSpans SubSpans(const SequenceSpans& spans, int64_t first, int64_t last) {
  SequenceSpans sub;
  for (int64_t i = first; i <= last; ++i) sub.offsets.push_back(spans.offsets[i] - spans.offsets[first]);
  return sub;
}

// Hooks that need to know which chunk is running (sequence counts for Hessians, sequence
// boundaries for per-sample observers).
class ChunkAwareHooks : public LayerHooks {
 public:
  void SetChunk(const SequenceSpans* spans) { chunk_ = spans; }

 protected:
  const SequenceSpans* chunk_ = nullptr;
};

absl::Status ForwardLayer(const LlamaConfig& config, const DecoderLayerWeights& weights, Compute& compute,
                          Stream& stream, ChunkAwareHooks* hooks, int64_t max_rows) {
  for (auto [first, last] : Chunks(stream.spans, max_rows)) {
    SequenceSpans sub = SubSpans(stream.spans, first, last);
    if (hooks != nullptr) hooks->SetChunk(&sub);
    float* hidden = stream.hidden.data() + stream.spans.offsets[first] * config.hidden_size;
    if (absl::Status s = DecoderLayerForward(config, weights, compute, sub, hidden, hooks); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// What one layer's Linears are to become.

struct ModulePlan {
  std::string suffix;  // "self_attn.q_proj"
  std::string name;    // "model.layers.3.self_attn.q_proj"
  std::string group;
  const QuantScheme* scheme = nullptr;
};

bool HasStaticInput(const QuantScheme& scheme) {
  return scheme.input_activations && scheme.input_activations->dynamic == Dynamic::kStatic;
}

// llm-compressor's observer names for static activations: "minmax" is an EMA of per-sample
// ranges; everything else Lowbit runs as the running global range ("static_minmax", the
// maintainers' intent; reference §5.3).
ActivationObserver MakeActivationObserver(const QuantArgs& args) {
  return ActivationObserver(args.observer.has_value() && *args.observer == "minmax");
}

// Calibration pass hooks: Hessians, static activation ranges, K/V ranges, SmoothQuant ranges.
class CollectHooks : public ChunkAwareHooks {
 public:
  explicit CollectHooks(Compute& compute) : compute_(compute) {}

  std::array<std::unique_ptr<HessianAccumulator>, kNumLinearSites> hessians;
  std::array<std::optional<ActivationObserver>, kNumLinearSites> inputs;
  std::array<std::optional<ChannelRange>, kNumLinearSites> channel_ranges;
  std::optional<ActivationObserver> keys, values;
  absl::Status status;  // the first error a statistic reported

  void OnLinearInput(LinearSite site, float* x, int64_t rows, int64_t cols) override {
    int i = SiteIndex(site);
    if (hessians[i]) hessians[i]->Add(compute_, x, rows, chunk_->num_sequences());
    if (inputs[i]) ObservePerSample(*inputs[i], x, cols);
    if (channel_ranges[i]) {
      if (absl::Status s = channel_ranges[i]->Update(x, rows, cols); !s.ok() && status.ok()) status = s;
    }
  }
  void OnKeyValue(float* k, float* v, int64_t rows, int64_t cols) override {
    if (keys) ObservePerSample(*keys, k, cols);
    if (values) ObservePerSample(*values, v, cols);
  }

 private:
  // llm-compressor calibrates with batch size 1: an observer sees one sample at a time.
  void ObservePerSample(ActivationObserver& obs, const float* x, int64_t cols) {
    for (int64_t s = 0; s < chunk_->num_sequences(); ++s) {
      int64_t begin = chunk_->offsets[s], end = chunk_->offsets[s + 1];
      if (end > begin) obs.Observe(std::span<const float>(x + begin * cols, (end - begin) * cols));
    }
  }
  Compute& compute_;
};

// Evaluation hooks for the quantized stream: activations and the KV cache fake-quantized as
// vLLM runs them.
class FakeQuantHooks : public ChunkAwareHooks {
 public:
  struct SiteQuant {
    QuantArgs args;
    std::optional<QParam> static_qparam;  // static inputs only
  };
  std::array<std::optional<SiteQuant>, kNumLinearSites> sites;
  std::optional<float> k_scale, v_scale;
  absl::Status status;  // the first error

  void OnLinearInput(LinearSite site, float* x, int64_t rows, int64_t cols) override {
    const std::optional<SiteQuant>& q = sites[SiteIndex(site)];
    if (q) Keep(FakeQuantActivations(q->args, q->static_qparam, x, rows, cols));
  }
  void OnKeyValue(float* k, float* v, int64_t rows, int64_t cols) override {
    if (k_scale) Keep(FakeQuantKvCacheFp8(k, v, rows, cols, *k_scale, *v_scale));
  }

 private:
  void Keep(absl::Status s) {
    if (!s.ok() && status.ok()) status = std::move(s);
  }
};

double RelativeError(std::span<const float> ref, std::span<const float> got) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double d = static_cast<double>(ref[i]) - got[i];
    err += d * d;
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  return norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
}

std::vector<float> RoundAll(std::span<const float> x, DType dtype) {
  std::vector<float> out(x.begin(), x.end());
  for (float& v : out) v = RoundToDType(v, dtype);
  return out;
}

// ---------------------------------------------------------------------------------------------

class Pipeline {
 public:
  Pipeline(const CalibrationJob& job, const PipelineOptions& options, Compute& compute, const ProgressFn& progress,
           const std::atomic<bool>* cancel)
      : job_(job), options_(options), compute_(compute), progress_(progress), cancel_(cancel) {}

  absl::StatusOr<CalibrationResult> Run();

 private:
  absl::Status Prepare();
  absl::Status CheckCancelled() const;
  void Report(const std::string& phase, int64_t layer, const std::string& module, double loss,
              double module_seconds = 0.0);
  absl::StatusOr<std::vector<std::vector<float>>> SmoothQuantPass();
  absl::Status CalibrateLayer(int64_t layer, Stream& calib, Stream* ref, Stream* quant,
                              const std::vector<float>* smoothing);
  absl::Status FinishLmHead(Stream& calib, Stream* ref, Stream* quant);
  absl::StatusOr<QuantizedLinear> QuantizeModule(const ModulePlan& m, LinearWeights& w,
                                                 const HessianAccumulator* hessian, ModuleResult& result);
  absl::Status AddEncoded(const ModulePlan& m, const QuantizedLinear& q);
  void AddFloat(const std::string& name, std::span<const float> values, Shape shape);
  std::vector<ModulePlan> LayerModules(int64_t layer) const;
  absl::StatusOr<std::vector<LayerSmoothMapping>> LayerMappings(int64_t layer) const;
  nlohmann::json BuildReport() const;

  const CalibrationJob& job_;
  const PipelineOptions& options_;
  Compute& compute_;
  const ProgressFn& progress_;
  const std::atomic<bool>* cancel_;

  const QuantizationPlan* plan_ = nullptr;
  std::unique_ptr<LlamaModel> model_;
  std::optional<SchemeResolver> resolver_;
  DType dtype_ = DType::kBF16;
  DType scale_dtype_ = DType::kBF16;
  Clock::time_point start_ = Clock::now();
  int64_t layers_done_ = 0;

  std::vector<NamedTensor> tensors_;  // produced tensors (quantized forms, smoothed floats, scales)
  std::set<std::string> replaced_;    // source tensors they replace
  std::vector<ModuleResult> modules_;
  nlohmann::json kv_scales_ = nlohmann::json::array();
  nlohmann::json smoothing_ = nlohmann::json::array();
  std::vector<std::string> warnings_;
  LogitComparison comparison_;
  bool evaluate_ = false;
};

absl::Status Pipeline::CheckCancelled() const {
  if (cancel_ != nullptr && cancel_->load()) return absl::CancelledError("calibration cancelled");
  return absl::OkStatus();
}

void Pipeline::Report(const std::string& phase, int64_t layer, const std::string& module, double loss,
                      double module_seconds) {
  if (!progress_) return;
  ProgressEvent e;
  e.phase = phase;
  e.layer = layer;
  e.num_layers = model_->config().num_layers;
  e.module = module;
  e.loss = loss;
  e.module_seconds = module_seconds;
  e.elapsed_s = SecondsSince(start_);
  if (layers_done_ > 0) {
    e.eta_s = e.elapsed_s / layers_done_ * std::max<int64_t>(0, e.num_layers - layers_done_);
  }
  progress_(e);
}

std::vector<ModulePlan> Pipeline::LayerModules(int64_t layer) const {
  std::vector<ModulePlan> out;
  for (const char* suffix : kLayerLinears) {
    ModulePlan m;
    m.suffix = suffix;
    m.name = absl::StrCat("model.layers.", layer, ".", suffix);
    std::optional<std::string> group = resolver_->Resolve(m.name, kLinearClasses);
    if (!group) continue;
    m.group = *group;
    m.scheme = &plan_->config_groups.at(*group);
    out.push_back(std::move(m));
  }
  return out;
}

absl::Status Pipeline::Prepare() {
  if (!job_.plan.quantization) {
    return absl::InvalidArgumentError(
        "the recipe has no quantization modifier (GPTQModifier or QuantizationModifier): nothing to produce");
  }
  plan_ = &*job_.plan.quantization;
  absl::StatusOr<std::unique_ptr<LlamaModel>> model = LlamaModel::Open(job_.model_dir);
  if (!model.ok()) return model.status();
  model_ = *std::move(model);
  const LlamaConfig& config = model_->config();
  dtype_ = config.dtype;
  scale_dtype_ = ScaleDTypeFor(dtype_);

  if (job_.calibration.empty()) {
    return absl::InvalidArgumentError("no calibration samples: the dataset is empty after selection");
  }
  for (const auto* set : {&job_.calibration, &job_.heldout}) {
    const char* which = set == &job_.calibration ? "calibration" : "held-out";
    for (size_t i = 0; i < set->size(); ++i) {
      if ((*set)[i].empty()) return absl::InvalidArgumentError(absl::StrCat(which, " sample ", i, " is empty"));
      for (int32_t t : (*set)[i]) {
        if (t < 0 || t >= config.vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat(which, " sample ", i, " has token id ", t,
                                                         ", outside the model's vocabulary [0, ",
                                                         config.vocab_size, ")"));
        }
      }
    }
  }

  absl::StatusOr<SchemeResolver> resolver = SchemeResolver::Create(plan_->config_groups, plan_->ignore);
  if (!resolver.ok()) return resolver.status();
  resolver_ = *std::move(resolver);

  // Everything the recipe asks for is checked before any work, so a bad request fails fast
  // and leaves nothing behind.
  int64_t matched = 0;
  auto check = [&](const std::string& name, const std::string& group, int64_t in) -> absl::Status {
    const QuantScheme& scheme = plan_->config_groups.at(group);
    if (!scheme.weights) {
      return absl::InvalidArgumentError(absl::StrCat("config group '", group, "' (matching ", name,
                                                     ") quantizes no weights; Lowbit needs weight quantization"));
    }
    const QuantArgs& w = *scheme.weights;
    if ((w.strategy == Strategy::kGroup || w.strategy == Strategy::kTensorGroup) && w.group_size &&
        in % *w.group_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("group_size ", *w.group_size, " of config group '", group,
                                                     "' does not divide ", name, "'s input size ", in));
    }
    ++matched;
    return absl::OkStatus();
  };
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    for (const ModulePlan& m : LayerModules(layer)) {
      int64_t in = m.suffix == "mlp.down_proj" ? config.intermediate_size
                   : m.suffix == "self_attn.o_proj" ? config.num_heads * config.head_dim
                                                    : config.hidden_size;
      if (absl::Status s = check(m.name, m.group, in); !s.ok()) return s;
    }
  }
  if (std::optional<std::string> g = resolver_->Resolve("lm_head", kLinearClasses)) {
    if (absl::Status s = check("lm_head", *g, config.hidden_size); !s.ok()) return s;
  }
  if (matched == 0) {
    return absl::InvalidArgumentError(
        "the recipe's targets (minus its ignore list) match no Linear module of the model: nothing to quantize");
  }
  if (job_.plan.smoothquant) {
    for (int64_t layer = 0; layer < config.num_layers; ++layer) {
      if (auto m = LayerMappings(layer); !m.ok()) return m.status();
    }
  }
  evaluate_ = !job_.heldout.empty();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LayerSmoothMapping>> Pipeline::LayerMappings(int64_t layer) const {
  return ResolveLayerSmoothMappings(*job_.plan.smoothquant, absl::StrCat("model.layers.", layer, "."));
}

// SmoothQuant's own calibration pass over the float model: per-channel ranges of each smooth
// layer's output, then the smoothing scales. The float outputs feed the next layer (smoothing
// does not change them).
absl::StatusOr<std::vector<std::vector<float>>> Pipeline::SmoothQuantPass() {
  const SmoothQuantPlan& sq = *job_.plan.smoothquant;
  const LlamaConfig& config = model_->config();
  std::vector<std::vector<float>> scales;  // per layer, mapping after mapping, concatenated
  absl::StatusOr<Stream> stream = EmbedSamples(*model_, job_.calibration);
  if (!stream.ok()) return stream.status();
  if (sq.num_calibration_steps && *sq.num_calibration_steps < static_cast<int>(job_.calibration.size())) {
    std::vector<std::vector<int32_t>> first(job_.calibration.begin(),
                                            job_.calibration.begin() + *sq.num_calibration_steps);
    stream = EmbedSamples(*model_, first);
    if (!stream.ok()) return stream.status();
  }
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    if (absl::Status s = CheckCancelled(); !s.ok()) return s;
    Report("smoothquant", layer, "", 0.0);
    absl::StatusOr<DecoderLayerWeights> w = model_->LoadLayer(layer);
    if (!w.ok()) return w.status();
    absl::StatusOr<std::vector<LayerSmoothMapping>> mappings = LayerMappings(layer);
    if (!mappings.ok()) return mappings.status();
    CollectHooks hooks(compute_);
    for (const LayerSmoothMapping& m : *mappings) {
      hooks.channel_ranges[SiteIndex(m.site)] = ChannelRange();
    }
    if (absl::Status s = ForwardLayer(config, *w, compute_, *stream, &hooks, options_.max_chunk_tokens); !s.ok()) {
      return s;
    }
    if (!hooks.status.ok()) return hooks.status;
    std::vector<float> layer_scales;
    for (const LayerSmoothMapping& m : *mappings) {
      std::vector<const LinearWeights*> balance;
      for (const std::string& b : m.balance) balance.push_back(w->Linear(b));
      absl::StatusOr<std::vector<float>> scales = SmoothingScales(*hooks.channel_ranges[SiteIndex(m.site)], balance,
                                                                  sq.smoothing_strength, sq.algorithm);
      if (!scales.ok()) return scales.status();
      std::vector<float>& s = *scales;
      layer_scales.insert(layer_scales.end(), s.begin(), s.end());
      auto [lo, hi] = std::minmax_element(s.begin(), s.end());
      smoothing_.push_back({{"layer", layer}, {"smooth", m.smooth}, {"balance", m.balance},
                            {"scale_min", *lo}, {"scale_max", *hi}});
    }
    scales.push_back(std::move(layer_scales));
  }
  return scales;
}

absl::StatusOr<QuantizedLinear> Pipeline::QuantizeModule(const ModulePlan& m, LinearWeights& w,
                                                         const HessianAccumulator* hessian, ModuleResult& result) {
  auto t0 = Clock::now();
  const QuantArgs& args = *m.scheme->weights;
  result.module = m.name;
  result.group = m.group;
  std::vector<float> dequantized;
  QuantizedLinear q;
  if (hessian != nullptr) {
    result.algorithm = "GPTQ";
    result.samples = hessian->num_sequences();
    GptqOptions opts;
    opts.block_size = plan_->block_size;
    opts.dampening_frac = plan_->dampening_frac;
    absl::StatusOr<GptqResult> g =
        QuantizeLinearGptq(m.name, w.weight, w.out, w.in, hessian->Finish(), args, scale_dtype_, opts, compute_);
    if (!g.ok()) return g.status();
    result.loss = g->loss;
    result.fell_back_to_rtn = g->fell_back_to_rtn;
    result.warning = g->warning;
    if (!g->warning.empty()) warnings_.push_back(absl::StrCat(m.name, ": ", g->warning));
    q = std::move(g->quantized);
    dequantized = std::move(g->dequantized);
  } else {
    result.algorithm = "RTN";
    absl::StatusOr<QuantizedLinear> r =
        QuantizeLinearRtn(m.name, Tensor::FromFloats(w.weight, {w.out, w.in}, dtype_), args, scale_dtype_);
    if (!r.ok()) return r.status();
    q = *std::move(r);
    dequantized = DequantizeLinear(q);
  }
  result.weight_relative_error = RelativeError(w.weight, dequantized);
  // The module now computes with its quantized weight, as the model dtype holds it.
  w.weight = RoundAll(dequantized, dtype_);
  result.seconds = SecondsSince(t0);
  return q;
}

absl::Status Pipeline::AddEncoded(const ModulePlan& m, const QuantizedLinear& q) {
  absl::StatusOr<std::vector<NamedTensor>> encoded =
      EncodeLinear(q, m.scheme->format.value_or(InferFormat(*m.scheme)), scale_dtype_);
  if (!encoded.ok()) return encoded.status();
  for (NamedTensor& t : *encoded) tensors_.push_back(std::move(t));
  replaced_.insert(m.name + ".weight");
  return absl::OkStatus();
}

void Pipeline::AddFloat(const std::string& name, std::span<const float> values, Shape shape) {
  tensors_.push_back({name, Tensor::FromFloats(values, std::move(shape), dtype_)});
  replaced_.insert(name);
}

absl::Status Pipeline::CalibrateLayer(int64_t layer, Stream& calib, Stream* ref, Stream* quant,
                                      const std::vector<float>* smoothing) {
  const LlamaConfig& config = model_->config();
  const std::string prefix = absl::StrCat("model.layers.", layer, ".");
  absl::StatusOr<DecoderLayerWeights> loaded = model_->LoadLayer(layer);
  if (!loaded.ok()) return loaded.status();
  DecoderLayerWeights& w = *loaded;

  // The original model's held-out stream runs on the weights as loaded.
  if (ref != nullptr) {
    Report("evaluate", layer, "", 0.0);
    if (absl::Status s = ForwardLayer(config, w, compute_, *ref, nullptr, options_.max_chunk_tokens); !s.ok()) return s;
  }

  // Fold SmoothQuant's scales (computed in its own pass) into the norms and Linears, stored
  // in the model dtype like llm-compressor's in-place update.
  std::set<std::string> smoothed;
  if (smoothing != nullptr) {
    absl::StatusOr<std::vector<LayerSmoothMapping>> mappings = LayerMappings(layer);
    if (!mappings.ok()) return mappings.status();
    size_t offset = 0;
    for (const LayerSmoothMapping& m : *mappings) {
      std::span<const float> s(smoothing->data() + offset, config.hidden_size);
      offset += config.hidden_size;
      std::vector<float>& norm =
          m.site == LinearSite::kAttentionInput ? w.input_layernorm : w.post_attention_layernorm;
      std::vector<LinearWeights*> balance;
      for (const std::string& b : m.balance) balance.push_back(w.Linear(b));
      if (absl::Status st = ApplySmoothing(s, norm, balance); !st.ok()) return st;
      norm = RoundAll(norm, dtype_);
      smoothed.insert(m.smooth);
      for (LinearWeights* b : balance) b->weight = RoundAll(b->weight, dtype_);
      for (const std::string& b : m.balance) smoothed.insert(b);
    }
  }

  std::vector<ModulePlan> modules = LayerModules(layer);
  const bool gptq = plan_->algorithm == QuantAlgorithm::kGptq;

  // Calibration pass: statistics for this layer.
  CollectHooks hooks(compute_);
  std::array<const ModulePlan*, kNumLinearSites> first_at_site{};
  for (const ModulePlan& m : modules) {
    int site = SiteIndex(SiteOf(m.suffix));
    if (first_at_site[site] == nullptr) first_at_site[site] = &m;
    if (gptq && !hooks.hessians[site]) {
      hooks.hessians[site] = std::make_unique<HessianAccumulator>(w.Linear(m.suffix)->in);
    }
    if (HasStaticInput(*m.scheme) && !hooks.inputs[site]) {
      hooks.inputs[site] = MakeActivationObserver(*m.scheme->input_activations);
    }
  }
  if (plan_->kv_cache_scheme) {
    hooks.keys = MakeActivationObserver(*plan_->kv_cache_scheme);
    hooks.values = MakeActivationObserver(*plan_->kv_cache_scheme);
  }
  Report("calibrate", layer, "", 0.0);
  // Without GPTQ nothing changes the layer's weights, so the calibration pass's outputs are
  // already the next layer's inputs; with GPTQ they are recomputed after quantization.
  std::vector<float> saved;
  if (gptq) saved = calib.hidden;
  if (absl::Status s = ForwardLayer(config, w, compute_, calib, &hooks, options_.max_chunk_tokens); !s.ok()) return s;

  // Quantize.
  FakeQuantHooks fake;
  for (const ModulePlan& m : modules) {
    if (absl::Status s = CheckCancelled(); !s.ok()) return s;
    Report("quantize", layer, m.name, modules_.empty() ? 0.0 : modules_.back().loss);
    const int site = SiteIndex(SiteOf(m.suffix));
    ModuleResult result;
    absl::StatusOr<QuantizedLinear> q = QuantizeModule(m, *w.Linear(m.suffix), hooks.hessians[site].get(), result);
    if (!q.ok()) return q.status();
    std::optional<QParam> input_qparam;
    if (HasStaticInput(*m.scheme)) {
      const ActivationObserver& obs = *hooks.inputs[site];
      input_qparam = ComputeQParam(*m.scheme->input_activations, obs.min(), obs.max(), scale_dtype_);
      q->input_scale = input_qparam->scale;
    }
    if (first_at_site[site] == &m && m.scheme->input_activations) {
      fake.sites[site] = FakeQuantHooks::SiteQuant{*m.scheme->input_activations, input_qparam};
    }
    if (absl::Status s = AddEncoded(m, *q); !s.ok()) return s;
    Report("quantized", layer, m.name, result.loss, result.seconds);
    modules_.push_back(std::move(result));
  }
  if (plan_->kv_cache_scheme) {
    const QuantArgs& kv = *plan_->kv_cache_scheme;
    float k = ComputeQParam(kv, hooks.keys->min(), hooks.keys->max(), scale_dtype_).scale;
    float v = ComputeQParam(kv, hooks.values->min(), hooks.values->max(), scale_dtype_).scale;
    tensors_.push_back({prefix + "self_attn.k_scale", Tensor::FromFloats(std::vector<float>{k}, {1}, scale_dtype_)});
    tensors_.push_back({prefix + "self_attn.v_scale", Tensor::FromFloats(std::vector<float>{v}, {1}, scale_dtype_)});
    kv_scales_.push_back({{"layer", layer}, {"k_scale", k}, {"v_scale", v}});
    fake.k_scale = k;
    fake.v_scale = v;
  }
  // Smoothed tensors that are not quantized are written back in the model dtype.
  for (const std::string& name : smoothed) {
    if (name == "input_layernorm") {
      AddFloat(prefix + "input_layernorm.weight", w.input_layernorm, {config.hidden_size});
    } else if (name == "post_attention_layernorm") {
      AddFloat(prefix + "post_attention_layernorm.weight", w.post_attention_layernorm, {config.hidden_size});
    } else if (!replaced_.count(prefix + name + ".weight")) {
      const LinearWeights* l = w.Linear(name);
      AddFloat(prefix + name + ".weight", l->weight, {l->out, l->in});
    }
  }

  // Propagation pass: the next layer sees this layer with GPTQ's weights.
  if (gptq) {
    Report("propagate", layer, "", 0.0);
    calib.hidden = std::move(saved);
    if (absl::Status s = ForwardLayer(config, w, compute_, calib, nullptr, options_.max_chunk_tokens); !s.ok()) return s;
  }
  // The quantized model's held-out stream: quantized weights, activations and KV cache.
  if (quant != nullptr) {
    Report("evaluate", layer, "", 0.0);
    if (absl::Status s = ForwardLayer(config, w, compute_, *quant, &fake, options_.max_chunk_tokens); !s.ok()) return s;
    if (!fake.status.ok()) return fake.status;
  }
  return absl::OkStatus();
}

absl::Status Pipeline::FinishLmHead(Stream& calib, Stream* ref, Stream* quant) {
  const LlamaConfig& config = model_->config();
  absl::StatusOr<std::vector<float>> norm = model_->LoadFinalNorm();
  if (!norm.ok()) return norm.status();
  absl::StatusOr<LinearWeights> head = model_->LoadLmHead();
  if (!head.ok()) return head.status();
  std::optional<std::string> group = resolver_->Resolve("lm_head", kLinearClasses);
  // The original model's head, for the reference logits (a copy only when it gets quantized).
  LinearWeights original;
  const LinearWeights* ref_head = &*head;
  if (ref != nullptr && group) {
    original = *head;
    ref_head = &original;
  }
  std::optional<FakeQuantHooks::SiteQuant> head_input;
  if (group) {
    if (config.tie_word_embeddings) {
      return absl::InvalidArgumentError(
          "the recipe quantizes lm_head, but this model ties it to embed_tokens; add lm_head to ignore");
    }
    ModulePlan m;
    m.suffix = m.name = "lm_head";
    m.group = *group;
    m.scheme = &plan_->config_groups.at(*group);
    Report("quantize", config.num_layers, "lm_head", 0.0);
    // lm_head reads RMSNorm(hidden) · final_norm: computed here for its Hessian / input range.
    std::unique_ptr<HessianAccumulator> hessian;
    std::optional<ActivationObserver> input;
    if (plan_->algorithm == QuantAlgorithm::kGptq || HasStaticInput(*m.scheme)) {
      if (plan_->algorithm == QuantAlgorithm::kGptq) hessian = std::make_unique<HessianAccumulator>(config.hidden_size);
      if (HasStaticInput(*m.scheme)) input = MakeActivationObserver(*m.scheme->input_activations);
      for (auto [first, last] : Chunks(calib.spans, options_.max_logit_rows)) {
        int64_t row0 = calib.spans.offsets[first], rows = calib.spans.offsets[last] - row0;
        std::vector<float> x = ApplyFinalNorm(
            config, *norm,
            std::span<const float>(calib.hidden.data() + row0 * config.hidden_size, rows * config.hidden_size), rows);
        if (hessian) hessian->Add(compute_, x.data(), rows, last - first);
        for (int64_t s = first; s < last && input; ++s) {
          int64_t b = calib.spans.offsets[s] - row0, e = calib.spans.offsets[s + 1] - row0;
          input->Observe(std::span<const float>(x.data() + b * config.hidden_size, (e - b) * config.hidden_size));
        }
      }
    }
    ModuleResult result;
    absl::StatusOr<QuantizedLinear> q = QuantizeModule(m, *head, hessian.get(), result);
    if (!q.ok()) return q.status();
    std::optional<QParam> input_qparam;
    if (input) {
      input_qparam = ComputeQParam(*m.scheme->input_activations, input->min(), input->max(), scale_dtype_);
      q->input_scale = input_qparam->scale;
    }
    if (m.scheme->input_activations) head_input = FakeQuantHooks::SiteQuant{*m.scheme->input_activations, input_qparam};
    if (absl::Status s = AddEncoded(m, *q); !s.ok()) return s;
    Report("quantized", config.num_layers, m.name, result.loss, result.seconds);
    modules_.push_back(std::move(result));
  }

  if (ref == nullptr) return absl::OkStatus();
  Report("evaluate", config.num_layers, "lm_head", 0.0);
  for (auto [first, last] : Chunks(ref->spans, options_.max_logit_rows)) {
    if (absl::Status s = CheckCancelled(); !s.ok()) return s;
    int64_t row0 = ref->spans.offsets[first], rows = ref->spans.offsets[last] - row0;
    auto slice = [&](const Stream& s) {
      return std::span<const float>(s.hidden.data() + row0 * config.hidden_size, rows * config.hidden_size);
    };
    std::vector<float> ref_logits = LmHeadForward(config, *norm, *ref_head, compute_, slice(*ref), rows);
    std::vector<float> x = ApplyFinalNorm(config, *norm, slice(*quant), rows);
    if (head_input) {
      absl::Status st = FakeQuantActivations(head_input->args, head_input->static_qparam, x.data(), rows,
                                             config.hidden_size);
      if (!st.ok()) return st;
    }
    std::vector<float> quant_logits(rows * head->out);
    compute_.Gemm(true, rows, head->out, head->in, 1.0f, x.data(), head->in, head->weight.data(), head->in, 0.0f,
                  quant_logits.data(), head->out);
    // Next-token labels: the sample's next token, none for its last position.
    std::vector<int32_t> labels(rows, -1);
    for (int64_t s = first; s < last; ++s) {
      for (int64_t r = ref->spans.offsets[s]; r + 1 < ref->spans.offsets[s + 1]; ++r) {
        labels[r - row0] = ref->tokens[r + 1];
      }
    }
    absl::Status st = comparison_.Add(ref_logits.data(), quant_logits.data(), rows, config.vocab_size, labels.data());
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

nlohmann::json Pipeline::BuildReport() const {
  nlohmann::json modules = nlohmann::json::array();
  double total_loss = 0;
  for (const ModuleResult& m : modules_) {
    total_loss += m.loss;
    nlohmann::json j = {{"module", m.module},       {"group", m.group},
                        {"algorithm", m.algorithm}, {"loss", m.loss},
                        {"weight_relative_error", m.weight_relative_error},
                        {"seconds", m.seconds},     {"samples", m.samples}};
    if (m.fell_back_to_rtn) j["fell_back_to_rtn"] = true;
    if (!m.warning.empty()) j["warning"] = m.warning;
    modules.push_back(std::move(j));
  }
  const LlamaConfig& config = model_->config();
  nlohmann::json report = {
      {"report_version", 1},
      {"model", {{"architecture", config.architecture}, {"layers", config.num_layers},
                 {"hidden_size", config.hidden_size}, {"dtype", std::string(DTypeName(dtype_))}}},
      {"algorithm", std::string(QuantAlgorithmName(plan_->algorithm))},
      {"compute", compute_.Name()},
      {"data", job_.data_summary},
      {"modules", modules},
      {"total_loss", total_loss},
      {"seconds", SecondsSince(start_)},
  };
  report["data"]["calibration_samples"] = job_.calibration.size();
  report["data"]["heldout_samples"] = job_.heldout.size();
  if (plan_->algorithm == QuantAlgorithm::kGptq) {
    report["gptq"] = {{"block_size", plan_->block_size}, {"dampening_frac", plan_->dampening_frac}};
  }
  if (job_.plan.smoothquant) {
    report["smoothquant"] = {{"smoothing_strength", job_.plan.smoothquant->smoothing_strength},
                             {"mappings", smoothing_}};
  }
  if (!kv_scales_.empty()) report["kv_cache"] = kv_scales_;
  if (evaluate_) {
    LogitComparisonSummary s = comparison_.Finish();
    report["eval"] = {{"tokens", s.tokens},
                      {"kl_mean", s.kl_mean},
                      {"kl_p99", s.kl_p99},
                      {"kl_max", s.kl_max},
                      {"top1_agreement", s.top1_agreement},
                      {"perplexity_original", s.ref_perplexity.value_or(NAN)},
                      {"perplexity_quantized", s.quant_perplexity.value_or(NAN)},
                      {"activations", "quantized as vLLM runs them (dynamic per-token int8 / FP8; static FP8 "
                                      "input scales; FP8 KV cache)"}};
  }
  std::vector<std::string> warnings = job_.warnings;
  warnings.insert(warnings.end(), warnings_.begin(), warnings_.end());
  report["warnings"] = warnings;
  return report;
}

absl::StatusOr<CalibrationResult> Pipeline::Run() {
  start_ = Clock::now();
  if (absl::Status s = Prepare(); !s.ok()) return s;
  const LlamaConfig& config = model_->config();

  // Per-layer resume state (PipelineOptions::resume_dir).
  std::optional<ResumeState> resume;
  if (!options_.resume_dir.empty()) {
    resume.emplace(options_.resume_dir, JobFingerprint(job_, options_, compute_.NumericsId()));
  }

  std::vector<std::vector<float>> smoothing;
  if (job_.plan.smoothquant) {
    std::optional<SmoothingState> saved = resume ? resume->LoadSmoothing(config.num_layers) : std::nullopt;
    if (saved) {
      smoothing = std::move(saved->scales);
      smoothing_ = std::move(saved->summary);
    } else {
      absl::StatusOr<std::vector<std::vector<float>>> s = SmoothQuantPass();
      if (!s.ok()) return s.status();
      smoothing = *std::move(s);
      if (resume) {
        if (absl::Status st = resume->SaveSmoothing({smoothing, smoothing_}); !st.ok()) return st;
      }
    }
  }

  absl::StatusOr<Stream> calib = EmbedSamples(*model_, job_.calibration);
  if (!calib.ok()) return calib.status();
  std::optional<Stream> ref, quant;
  if (evaluate_) {
    absl::StatusOr<Stream> r = EmbedSamples(*model_, job_.heldout);
    if (!r.ok()) return r.status();
    ref = *r;
    quant = *std::move(r);
  }
  int64_t first_layer = 0;
  if (resume) {
    std::optional<ResumeState::Loaded> loaded = resume->Load();
    if (loaded && loaded->streams.layers_done <= config.num_layers &&
        loaded->streams.calib.size() == calib->hidden.size() &&
        loaded->streams.ref.size() == (ref ? ref->hidden.size() : 0) &&
        loaded->streams.quant.size() == (quant ? quant->hidden.size() : 0)) {
      calib->hidden = std::move(loaded->streams.calib);
      if (ref) ref->hidden = std::move(loaded->streams.ref);
      if (quant) quant->hidden = std::move(loaded->streams.quant);
      for (LayerState& l : loaded->layers) {
        for (NamedTensor& t : l.tensors) tensors_.push_back(std::move(t));
        replaced_.insert(l.replaced.begin(), l.replaced.end());
        for (ModuleResult& m : l.modules) modules_.push_back(std::move(m));
        for (auto& kv : l.kv_scales) kv_scales_.push_back(kv);
        warnings_.insert(warnings_.end(), l.warnings.begin(), l.warnings.end());
      }
      first_layer = layers_done_ = loaded->streams.layers_done;
    }
  }
  Report("start", first_layer, "", 0.0);
  for (int64_t layer = first_layer; layer < config.num_layers; ++layer) {
    if (absl::Status s = CheckCancelled(); !s.ok()) return s;
    const size_t tensors0 = tensors_.size(), modules0 = modules_.size(), kv0 = kv_scales_.size(),
                 warnings0 = warnings_.size();
    const std::set<std::string> replaced0 = replaced_;
    absl::Status s = CalibrateLayer(layer, *calib, ref ? &*ref : nullptr, quant ? &*quant : nullptr,
                                    smoothing.empty() ? nullptr : &smoothing[layer]);
    if (!s.ok()) return s;
    ++layers_done_;
    if (resume) {
      LayerState l;
      l.layer = layer;
      l.tensors.assign(tensors_.begin() + tensors0, tensors_.end());
      std::set_difference(replaced_.begin(), replaced_.end(), replaced0.begin(), replaced0.end(),
                          std::back_inserter(l.replaced));
      l.modules.assign(modules_.begin() + modules0, modules_.end());
      for (size_t i = kv0; i < kv_scales_.size(); ++i) l.kv_scales.push_back(kv_scales_[i]);
      l.warnings.assign(warnings_.begin() + warnings0, warnings_.end());
      if (absl::Status st = resume->SaveLayer(l, calib->hidden, ref ? &ref->hidden : nullptr,
                                              quant ? &quant->hidden : nullptr);
          !st.ok()) {
        return st;
      }
      // Only with resume_dir: the layer is on disk (a crash from here on resumes after it).
      Report("layer_saved", layer, "", 0.0);
    }
  }
  if (absl::Status s = FinishLmHead(*calib, ref ? &*ref : nullptr, quant ? &*quant : nullptr); !s.ok()) return s;
  if (absl::Status s = CheckCancelled(); !s.ok()) return s;

  // Every source tensor not replaced is copied through as it is.
  Report("write", config.num_layers, "", 0.0);
  for (const std::string& name : model_->tensors().names()) {
    if (replaced_.count(name)) continue;
    absl::StatusOr<Tensor> t = model_->tensors().Get(name);
    if (!t.ok()) return t.status();
    tensors_.push_back({name, *std::move(t)});
  }
  CalibrationResult result;
  result.modules = modules_;
  if (evaluate_) result.eval = comparison_.Finish();
  result.report = BuildReport();
  result.seconds = SecondsSince(start_);

  CheckpointSpec spec;
  spec.source_dir = job_.model_dir;
  spec.out_dir = job_.out_dir;
  spec.quantization = plan_->ToQuantizationConfig();
  spec.tensors = std::move(tensors_);
  spec.recipe_yaml = job_.recipe_yaml;
  spec.report = result.report;
  if (absl::Status s = WriteCheckpoint(spec); !s.ok()) return s;
  return result;
}

}  // namespace

absl::StatusOr<CalibrationResult> RunCalibration(const CalibrationJob& job, const PipelineOptions& options,
                                                 Compute& compute, const ProgressFn& progress,
                                                 const std::atomic<bool>* cancel) {
  Pipeline pipeline(job, options, compute, progress, cancel);
  return pipeline.Run();
}

std::string PresetRecipeYaml(const std::string& scheme, bool gptq) {
  return absl::StrCat("quant_stage:\n  quant_modifiers:\n    ", gptq ? "GPTQModifier" : "QuantizationModifier",
                      ":\n      targets: [Linear]\n      scheme: ", scheme, "\n      ignore: [lm_head]\n");
}

std::string GuideRecipeYaml(const std::string& scheme, bool gptq) {
  std::string yaml = PresetRecipeYaml(scheme, gptq);
  if (scheme == "FP8") {
    yaml += "      kv_cache_scheme: {num_bits: 8, type: float, strategy: tensor, dynamic: false, symmetric: true}\n";
  }
  if (gptq && scheme == "W8A8") {
    yaml.replace(yaml.find("  quant_modifiers:\n") + 19, 0, "    SmoothQuantModifier: {smoothing_strength: 0.8}\n");
  }
  return yaml;
}

}  // namespace lowbit
