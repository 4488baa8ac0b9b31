#include "rpc/raw_stream.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "google/protobuf/descriptor.h"

namespace lowbit::rpc {

int MethodIndex(const std::string& path) {
  // "/pkg.Service/Method" -> "pkg.Service.Method"
  std::string name = path.substr(path.empty() ? 0 : 1);
  std::replace(name.begin(), name.end(), '/', '.');
  const google::protobuf::MethodDescriptor* m =
      google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(name);
  if (m == nullptr) {
    // A programming error (a misspelt constant), found by every test that starts a server.
    std::fprintf(stderr, "lowbit: no gRPC method at %s\n", path.c_str());
    std::abort();
  }
  return m->index();
}

}  // namespace lowbit::rpc
