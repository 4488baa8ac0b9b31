#include "common/checkpoint.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

Tensor ScaleTensor(const WeightQParams& qp, Shape shape, DType dtype) {
  return Tensor::FromFloats(qp.scale, std::move(shape), dtype);
}

Tensor Int32Tensor(const std::vector<int32_t>& v, Shape shape) {
  return Tensor::FromBytes(DType::kI32, std::move(shape),
                           {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(int32_t)});
}

// Files of the source model that are not copied through: its weights and its config.
bool IsModelWeightsOrConfig(const fs::path& p) {
  std::string name = p.filename().string();
  return p.extension() == ".safetensors" || p.extension() == ".bin" || name == "config.json" ||
         name == "model.safetensors.index.json" || name == "pytorch_model.bin.index.json" ||
         name == "recipe.yaml" || name == "report.json";
}

absl::Status FsError(const std::string& what, const std::error_code& ec) {
  return absl::InternalError(absl::StrCat(what, ": ", ec.message()));
}

}  // namespace

DType ScaleDTypeFor(DType model_dtype) {
  return model_dtype == DType::kF32 || model_dtype == DType::kBF16 ? model_dtype : DType::kF16;
}

absl::StatusOr<QuantizedLinear> QuantizeLinearRtn(const std::string& module, const Tensor& weight, const QuantArgs& args,
                                                  DType scale_dtype) {
  if (weight.shape().size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(module, ".weight must be 2-D, got ", ShapeString(weight.shape())));
  }
  if (!IsFloat(weight.dtype()) || weight.dtype() == DType::kF8E4M3) {
    return absl::InvalidArgumentError(absl::StrCat(module, ".weight must be f32/f16/bf16, got ",
                                                   std::string(DTypeName(weight.dtype()))));
  }
  QuantizedLinear q;
  q.module = module;
  q.rows = weight.dim(0);
  q.cols = weight.dim(1);
  q.weight_args = args;
  if (args.strategy_or_tensor() == Strategy::kGroup && q.cols % *args.group_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(module, ": in_features ", q.cols, " is not a multiple of group_size ",
                                                   *args.group_size));
  }
  std::vector<float> w = weight.ToFloats();
  absl::StatusOr<WeightQParams> qp = ObserveWeight(w, q.rows, q.cols, args, scale_dtype);
  if (!qp.ok()) return absl::Status(qp.status().code(), absl::StrCat(module, ": ", qp.status().message()));
  q.qparams = *std::move(qp);
  if (args.type == QuantType::kFloat) {
    q.fp8_codes = QuantizeWeightFp8(w, q.rows, q.cols, q.qparams, DType::kF32);
  } else {
    q.int_codes = QuantizeWeightInt(w, q.rows, q.cols, args, q.qparams, {}, DType::kF32);
  }
  return q;
}

std::vector<float> DequantizeLinear(const QuantizedLinear& q) {
  if (!q.fp8_codes.empty()) return DequantizeWeightFp8(q.fp8_codes, q.rows, q.cols, q.qparams);
  return DequantizeWeightInt(q.int_codes, q.rows, q.cols, q.qparams, q.g_idx);
}

absl::StatusOr<std::vector<NamedTensor>> EncodeLinear(const QuantizedLinear& q, const std::string& format,
                                                      DType scale_dtype) {
  const QuantArgs& a = q.weight_args;
  const Strategy s = a.strategy_or_tensor();
  const std::string& p = q.module;
  std::vector<NamedTensor> out;
  // Scale shapes: tensor [1], channel [N, 1], group [N, groups].
  Shape scale_shape = s == Strategy::kTensor ? Shape{1} : Shape{q.rows, q.qparams.groups};
  auto wrong = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(p, ": format ", format, " ", std::string(why)));
  };
  if (format == "int-quantized") {
    if (a.type != QuantType::kInt || a.num_bits != 8) return wrong("needs int8 weights");
    out.push_back({p + ".weight", Tensor::FromBytes(DType::kI8, {q.rows, q.cols},
                                                    {reinterpret_cast<const uint8_t*>(q.int_codes.data()), q.int_codes.size()})});
  } else if (format == "float-quantized") {
    if (a.type != QuantType::kFloat) return wrong("needs FP8 weights");
    out.push_back({p + ".weight", Tensor::FromBytes(DType::kF8E4M3, {q.rows, q.cols}, q.fp8_codes)});
  } else if (format == "pack-quantized") {
    if (a.type != QuantType::kInt) return wrong("needs int weights");
    int per_word = 32 / a.num_bits;
    out.push_back({p + ".weight_packed",
                   Int32Tensor(PackRows(q.int_codes, q.rows, q.cols, a.num_bits), {q.rows, (q.cols + per_word - 1) / per_word})});
    std::vector<uint8_t> shape_bytes(16);
    for (int i = 0; i < 2; ++i) {
      int64_t v = i == 0 ? q.rows : q.cols;
      std::memcpy(shape_bytes.data() + 8 * i, &v, 8);
    }
    out.push_back({p + ".weight_shape", Tensor::FromBytes(DType::kI64, {2}, shape_bytes)});
    if (!a.symmetric) {
      if (s == Strategy::kTensor) return wrong("does not support asymmetric per-tensor weights");
      std::vector<int8_t> zp(q.qparams.zero_point.begin(), q.qparams.zero_point.end());
      out.push_back({p + ".weight_zero_point",
                     Int32Tensor(PackColumns(zp, q.rows, q.qparams.groups, a.num_bits),
                                 {(q.rows + per_word - 1) / per_word, q.qparams.groups})});
    }
    if (!q.g_idx.empty()) out.push_back({p + ".weight_g_idx", Int32Tensor(q.g_idx, {q.cols})});
  } else {
    return wrong("is not supported (use int-quantized, pack-quantized or float-quantized)");
  }
  if (format != "pack-quantized" && !a.symmetric) {
    // int-quantized / float-quantized asymmetric weights would need a weight_zero_point that
    // vLLM's W8A8 paths do not accept.
    return wrong("supports symmetric weights only");
  }
  out.push_back({p + ".weight_scale", ScaleTensor(q.qparams, scale_shape, scale_dtype)});
  if (q.input_scale) {
    out.push_back({p + ".input_scale", Tensor::FromFloats(std::vector<float>{*q.input_scale}, {1}, scale_dtype)});
  }
  return out;
}

absl::Status WriteCheckpoint(const CheckpointSpec& spec) {
  std::error_code ec;
  fs::path out(spec.out_dir);
  if (out.filename().empty()) out = out.parent_path();
  absl::StatusOr<std::string> config_text = ReadFileToString((fs::path(spec.source_dir) / "config.json").string());
  if (!config_text.ok()) return config_text.status();
  json config = json::parse(*config_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(spec.source_dir, "/config.json is not a JSON object"));
  }
  config["quantization_config"] = QuantizationConfigToJson(spec.quantization);

  fs::path tmp = out.string() + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  if (!fs::create_directories(tmp, ec) || ec) return FsError(absl::StrCat("cannot create ", tmp.string()), ec);
  auto fail = [&](absl::Status s) {
    fs::remove_all(tmp, ec);
    return s;
  };

  // Copy through tokenizer, generation config and the like.
  for (const auto& entry : fs::directory_iterator(spec.source_dir, ec)) {
    if (!entry.is_regular_file() || IsModelWeightsOrConfig(entry.path())) continue;
    fs::copy_file(entry.path(), tmp / entry.path().filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) return fail(FsError(absl::StrCat("cannot copy ", entry.path().string()), ec));
  }
  if (ec) return fail(FsError(absl::StrCat("cannot list ", spec.source_dir), ec));

  absl::StatusOr<std::vector<std::string>> files =
      WriteSafetensorsModel(tmp.string(), spec.tensors, spec.max_shard_bytes);
  if (!files.ok()) return fail(files.status());
  if (absl::Status s = AtomicWriteFile((tmp / "config.json").string(), config.dump(2) + "\n"); !s.ok()) return fail(s);
  if (spec.recipe_yaml) {
    if (absl::Status s = AtomicWriteFile((tmp / "recipe.yaml").string(), *spec.recipe_yaml); !s.ok()) return fail(s);
  }
  if (spec.report) {
    if (absl::Status s = AtomicWriteFile((tmp / "report.json").string(), spec.report->dump(2) + "\n"); !s.ok()) return fail(s);
  }

  // Swap into place: an existing checkpoint is moved aside first and removed only after the
  // new one is in place.
  fs::path old = out.string() + ".old-" + std::to_string(::getpid());
  bool had_old = fs::exists(out, ec);
  if (had_old) {
    fs::rename(out, old, ec);
    if (ec) return fail(FsError(absl::StrCat("cannot move aside ", out.string()), ec));
  }
  fs::rename(tmp, out, ec);
  if (ec) {
    if (had_old) fs::rename(old, out, ec);
    return fail(FsError(absl::StrCat("cannot rename into ", out.string()), ec));
  }
  if (had_old) fs::remove_all(old, ec);
  return SyncDirectory(out.parent_path().string());
}

}  // namespace lowbit
