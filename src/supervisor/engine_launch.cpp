#include "supervisor/engine_launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cstring>

namespace mpserve::supervisor {

Result<std::string> expand_template(const std::string& text, const std::map<std::string, std::string>& values) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == '{') {
      size_t close = text.find('}', i);
      if (close == std::string::npos) return Status::errorf("unclosed '{{' in engine command '{}'", text);
      std::string name = text.substr(i + 1, close - i - 1);
      auto it = values.find(name);
      if (it == values.end()) return Status::errorf("unknown placeholder {{{}}} in engine command '{}'", name, text);
      out += it->second;
      i = close + 1;
    } else {
      out += text[i++];
    }
  }
  return out;
}

Result<std::vector<std::string>> split_command(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool in_word = false;
  char quote = 0;
  for (char c : line) {
    if (quote) {
      if (c == quote) quote = 0;
      else cur += c;
    } else if (c == '\'' || c == '"') {
      quote = c;
      in_word = true;
    } else if (std::isspace(static_cast<unsigned char>(c))) {
      if (in_word) out.push_back(cur);
      cur.clear();
      in_word = false;
    } else {
      cur += c;
      in_word = true;
    }
  }
  if (quote) return Status::errorf("unbalanced quote in '{}'", line);
  if (in_word) out.push_back(cur);
  if (out.empty()) return Status::error("empty engine command");
  return out;
}

Result<std::string> parse_mem_limit(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) return Status::errorf("bad size '{}' (e.g. 20G, 512M)", text);
  std::string number = text.substr(0, i);
  std::string unit = text.substr(i);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() > 1 && unit.back() == 'B') unit.pop_back();
  if (unit.size() > 1 && unit.back() == 'I') unit.pop_back();
  if (unit != "K" && unit != "M" && unit != "G" && unit != "T") return Status::errorf("bad size unit in '{}' (K, M, G or T)", text);
  try {
    if (std::stod(number) <= 0) return Status::errorf("size '{}' must be positive", text);
  } catch (const std::exception&) {
    return Status::errorf("bad size '{}'", text);
  }
  return number + unit;
}

Result<int> pick_free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::errorf("socket: {}", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    return Status::errorf("picking a free port: {}", std::strerror(errno));
  }
  ::close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

}  // namespace mpserve::supervisor
