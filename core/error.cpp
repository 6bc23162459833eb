#include "core/error.h"

namespace fg {

void throw_error(const char* file, int line, const char* expr, const std::string& message) {
  // The user-facing sentence comes first; the location helps whoever debugs it.
  std::string what = message;
  what += " [";
  what += file;
  what += ":" + std::to_string(line);
  if (expr) {
    what += ", check: ";
    what += expr;
  }
  what += "]";
  throw Error(what);
}

}  // namespace fg
