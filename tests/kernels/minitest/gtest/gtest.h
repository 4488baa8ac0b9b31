// A minimal stand-in for the parts of GoogleTest the kernels tests use (TEST, EXPECT_TRUE,
// ASSERT_TRUE, GTEST_SKIP, streamed messages), for machines without GoogleTest (the GPU device
// machine). Prints GoogleTest-style lines, so ctest's "[  SKIPPED ]" match works the same.
#ifndef LOWBIT_MINITEST_GTEST_H_
#define LOWBIT_MINITEST_GTEST_H_

#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace minitest {

struct TestCase {
  const char* suite;
  const char* name;
  void (*fn)();
};
inline std::vector<TestCase>& Registry() {
  static std::vector<TestCase> r;
  return r;
}
struct State {
  bool failed = false, skipped = false;
};
inline State& Cur() {
  static State s;
  return s;
}
struct Registrar {
  Registrar(const char* s, const char* n, void (*fn)()) { Registry().push_back({s, n, fn}); }
};
class Failure {
 public:
  Failure(const char* file, int line, const char* expr, bool skip = false) : skip_(skip) {
    if (!skip) os_ << file << ":" << line << ": Failure\n  " << expr << "\n";
  }
  ~Failure() {
    if (skip_) {
      Cur().skipped = true;
      std::printf("  skipped: %s\n", os_.str().c_str());
    } else {
      Cur().failed = true;
      std::printf("%s\n", os_.str().c_str());
    }
  }
  template <class T>
  Failure& operator<<(const T& v) {
    os_ << v;
    return *this;
  }

 private:
  bool skip_;
  std::ostringstream os_;
};
struct Voidify {
  void operator&(const Failure&) {}
};
// --gtest_filter: ':'-separated patterns, each matched as a substring of "Suite.Name" (GoogleTest
// matches globs; the exact names the scripts pass mean the same in both).
inline bool MatchesFilter(const std::string& full, const std::string& filter) {
  size_t start = 0;
  while (start <= filter.size()) {
    size_t end = filter.find(':', start);
    if (end == std::string::npos) end = filter.size();
    if (end > start && full.find(filter.substr(start, end - start)) != std::string::npos) return true;
    start = end + 1;
  }
  return false;
}
inline int RunAll(int argc, char** argv) {
  const char* filter = nullptr;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--gtest_filter=", 15) == 0) filter = argv[i] + 15;
  int failed = 0, passed = 0, skipped = 0;
  for (const auto& t : Registry()) {
    std::string full = std::string(t.suite) + "." + t.name;
    if (filter && !MatchesFilter(full, filter)) continue;
    Cur() = State{};
    std::printf("[ RUN      ] %s\n", full.c_str());
    std::fflush(stdout);
    t.fn();
    if (Cur().failed) {
      ++failed;
      std::printf("[  FAILED  ] %s\n", full.c_str());
    } else if (Cur().skipped) {
      ++skipped;
      std::printf("[  SKIPPED ] %s\n", full.c_str());
    } else {
      ++passed;
      std::printf("[       OK ] %s\n", full.c_str());
    }
    std::fflush(stdout);
  }
  std::printf("[==========] %d passed, %d skipped, %d failed\n", passed, skipped, failed);
  return failed ? 1 : 0;
}

}  // namespace minitest

namespace testing {
inline void InitGoogleTest(int*, char**) {}
}  // namespace testing

#define TEST(suite, name)                                                              \
  static void suite##_##name##_Test();                                                 \
  static ::minitest::Registrar suite##_##name##_registrar(#suite, #name, &suite##_##name##_Test); \
  static void suite##_##name##_Test()
#define EXPECT_TRUE(c) \
  if (c) {             \
  } else               \
    ::minitest::Failure(__FILE__, __LINE__, #c)
#define EXPECT_FALSE(c) EXPECT_TRUE(!(c))
#define ASSERT_TRUE(c) \
  if (c) {             \
  } else               \
    return ::minitest::Voidify() & ::minitest::Failure(__FILE__, __LINE__, #c)
#define ASSERT_FALSE(c) ASSERT_TRUE(!(c))
#define EXPECT_EQ(a, b) EXPECT_TRUE((a) == (b))
#define ASSERT_EQ(a, b) ASSERT_TRUE((a) == (b))
#define GTEST_SKIP() return ::minitest::Voidify() & ::minitest::Failure(__FILE__, __LINE__, "", true)
#define RUN_ALL_TESTS() ::minitest::RunAll(minitest_argc, minitest_argv)

#endif  // LOWBIT_MINITEST_GTEST_H_
