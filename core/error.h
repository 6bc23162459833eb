// Errors: every failure throws fg::Error with file:line, the failing expression
// and a sentence the user can act on. Only main() turns an Error into an exit code.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace fg {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
}  // namespace detail

// Concatenates the arguments with operator<<.
template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

[[noreturn]] void throw_error(const char* file, int line, const char* expr,
                              const std::string& message);

}  // namespace fg

// FG_CHECK(cond, "linear: x is ", x.shape_str(), " but weight is ", w.shape_str());
#define FG_CHECK(cond, ...)                                                         \
  do {                                                                              \
    if (!(cond)) ::fg::throw_error(__FILE__, __LINE__, #cond, ::fg::str_cat(__VA_ARGS__)); \
  } while (0)

#define FG_THROW(...) ::fg::throw_error(__FILE__, __LINE__, nullptr, ::fg::str_cat(__VA_ARGS__))
