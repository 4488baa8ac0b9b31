#include "cli/npy.h"

#include <cstring>
#include <regex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"

namespace lowbit::cli {

absl::StatusOr<Tensor> ReadNpy(const std::string& path) {
  auto data = ReadFileToString(path);
  if (!data.ok()) return data.status();
  const std::string& s = *data;
  auto bad = [&](const std::string& why) { return absl::InvalidArgumentError(absl::StrCat(path, ": ", why)); };
  if (s.size() < 10 || s.compare(0, 6, "\x93NUMPY") != 0) return bad("not a .npy file (no \\x93NUMPY magic)");
  const int major = static_cast<uint8_t>(s[6]);
  size_t header_len = 0, pos = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(s[8]) | (static_cast<uint8_t>(s[9]) << 8);
    pos = 10;
  } else if (major == 2 || major == 3) {
    if (s.size() < 12) return bad("truncated header");
    uint32_t n;
    std::memcpy(&n, s.data() + 8, 4);
    header_len = n;
    pos = 12;
  } else {
    return bad(absl::StrCat("unsupported .npy version ", major));
  }
  if (pos + header_len > s.size()) return bad("truncated header");
  const std::string header = s.substr(pos, header_len);
  pos += header_len;
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([^']*)'"))) return bad("header has no descr");
  const std::string descr = m[1];
  DType dtype;
  if (descr == "<f4") dtype = DType::kF32;
  else if (descr == "<f2") dtype = DType::kF16;
  else return bad(absl::StrCat("dtype '", descr, "' is not supported (use float32 or float16)"));
  if (std::regex_search(header, m, std::regex("'fortran_order':\\s*True"))) return bad("Fortran order is not supported");
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)"))) return bad("header has no shape");
  Shape shape;
  for (absl::string_view part : absl::StrSplit(std::string(m[1]), ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(part, &d) || d < 0) return bad(absl::StrCat("bad dimension '", std::string(part), "'"));
    shape.push_back(d);
  }
  if (shape.empty() || shape.size() > 2) return bad("expected a 1-D or 2-D array");
  auto numel = NumElements(shape);
  if (!numel.ok()) return bad(std::string(numel.status().message()));
  const size_t bytes = static_cast<size_t>(*numel) * DTypeSize(dtype);
  if (s.size() - pos != bytes) {
    return bad(absl::StrCat(s.size() - pos, " data bytes, shape ", ShapeString(shape), " needs ", bytes));
  }
  return Tensor::FromBytes(dtype, shape, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()) + pos, bytes));
}

absl::Status WriteNpy(const std::string& path, const Tensor& tensor) {
  Tensor t = tensor;
  std::string descr;
  if (t.dtype() == DType::kF32) descr = "<f4";
  else if (t.dtype() == DType::kF16) descr = "<f2";
  else if (t.dtype() == DType::kBF16) {
    auto f = t.ToFloats();
    t = Tensor::FromFloats(f, t.shape(), DType::kF32);
    descr = "<f4";
  } else {
    return absl::InvalidArgumentError(absl::StrCat("cannot write dtype ", std::string(DTypeName(t.dtype())), " as .npy"));
  }
  std::string shape;
  for (size_t i = 0; i < t.shape().size(); ++i) absl::StrAppend(&shape, t.shape()[i], t.shape().size() == 1 ? "," : (i + 1 < t.shape().size() ? ", " : ""));
  std::string header = absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", shape, "), }");
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<char>(header.size() & 0xFF));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  auto b = t.bytes();
  out.append(reinterpret_cast<const char*>(b.data()), b.size());
  return AtomicWriteFile(path, out);
}

}  // namespace lowbit::cli
