#include "server/openai_protocol.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>

namespace mpserve::server {
namespace {

using json = nlohmann::json;

constexpr int kMaxJsonDepth = 32;
constexpr size_t kMaxStops = 16;
constexpr size_t kMaxStopBytes = 512;
constexpr int32_t kMaxN = 16;

ApiError bad(std::string param, std::string message) {
  ApiError e;
  e.status = 400;
  e.param = std::move(param);
  e.message = std::move(message);
  return e;
}

// note: nlohmann's parser is iterative, but a hostile body of a million '[' would still build
// (and later destroy) a deep tree; a cheap pre-scan bounds the depth first.
bool depth_ok(std::string_view body) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : body) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

const char* type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_string()) return "string";
  if (v.is_array()) return "array";
  return "object";
}

// Field readers: absent or null keeps the default; a wrong type or range is an ApiError.
class Fields {
 public:
  explicit Fields(const json& obj) : obj_(obj) {}
  const json* find(const char* name) const {
    auto it = obj_.find(name);
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  std::optional<ApiError> get_int(const char* name, int64_t lo, int64_t hi, std::optional<int64_t>* out) const {
    const json* v = find(name);
    if (!v) return std::nullopt;
    if (!v->is_number_integer()) return bad(name, fmt::format("'{}' must be an integer, got {}", name, type_name(*v)));
    bool in_range;
    int64_t x = 0;
    if (v->is_number_unsigned()) {
      uint64_t u = v->get<uint64_t>();
      in_range = u <= static_cast<uint64_t>(hi) && (lo <= 0 || u >= static_cast<uint64_t>(lo));
      x = in_range ? static_cast<int64_t>(u) : hi;
    } else {
      x = v->get<int64_t>();
      in_range = x >= lo && x <= hi;
    }
    if (!in_range) return bad(name, fmt::format("'{}' must be between {} and {}, got {}", name, lo, hi, v->dump()));
    *out = x;
    return std::nullopt;
  }
  std::optional<ApiError> get_float(const char* name, double lo, double hi, float* out) const {
    const json* v = find(name);
    if (!v) return std::nullopt;
    if (!v->is_number()) return bad(name, fmt::format("'{}' must be a number, got {}", name, type_name(*v)));
    double x = v->get<double>();
    if (!(x >= lo && x <= hi)) return bad(name, fmt::format("'{}' must be between {} and {}, got {}", name, lo, hi, x));
    *out = static_cast<float>(x);
    return std::nullopt;
  }
  std::optional<ApiError> get_bool(const char* name, bool* out) const {
    const json* v = find(name);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) return bad(name, fmt::format("'{}' must be a boolean, got {}", name, type_name(*v)));
    *out = v->get<bool>();
    return std::nullopt;
  }
  std::optional<ApiError> get_string(const char* name, std::string* out) const {
    const json* v = find(name);
    if (!v) return std::nullopt;
    if (!v->is_string()) return bad(name, fmt::format("'{}' must be a string, got {}", name, type_name(*v)));
    *out = v->get<std::string>();
    return std::nullopt;
  }
  // A field we accept only at its neutral value (so clients sending defaults still work).
  std::optional<ApiError> only_neutral(const char* name, const char* what) const {
    const json* v = find(name);
    if (!v) return std::nullopt;
    bool neutral = (v->is_boolean() && !v->get<bool>()) || (v->is_number() && v->get<double>() == 0.0) ||
                   ((v->is_object() || v->is_array()) && v->empty());
    if (neutral) return std::nullopt;
    return bad(name, fmt::format("'{}' is not supported by this server ({})", name, what));
  }

 private:
  const json& obj_;
};

#define MPS_API_TRY(expr)              \
  do {                                 \
    if (auto e_ = (expr)) return *e_;  \
  } while (0)

std::optional<ApiError> parse_token_ids(const json& arr, const ProtocolLimits& lim, std::vector<int32_t>* out) {
  for (const auto& t : arr) {
    if (!t.is_number_integer()) return bad("prompt", "token id prompts must contain only integers");
    // note: nlohmann stores every non-negative integer as unsigned.
    int64_t id = t.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(t.get<uint64_t>(), INT64_MAX))
                                        : t.get<int64_t>();
    if (id < 0 || id >= lim.vocab_size) {
      return bad("prompt", fmt::format("token id {} is outside the vocabulary [0, {})", t.dump(), lim.vocab_size));
    }
    out->push_back(static_cast<int32_t>(id));
  }
  return std::nullopt;
}

std::optional<ApiError> parse_prompt(const json* p, const ProtocolLimits& lim, ParsedRequest* r) {
  if (!p) return bad("prompt", "'prompt' is required");
  if (p->is_string()) {
    r->prompts.emplace_back(p->get<std::string>());
    return std::nullopt;
  }
  if (!p->is_array() || p->empty()) {
    return bad("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of them");
  }
  const json& first = (*p)[0];
  if (first.is_number()) {
    std::vector<int32_t> ids;
    MPS_API_TRY(parse_token_ids(*p, lim, &ids));
    r->prompts.emplace_back(std::move(ids));
    return std::nullopt;
  }
  for (const auto& e : *p) {
    if (e.is_string()) {
      r->prompts.emplace_back(e.get<std::string>());
    } else if (e.is_array()) {
      std::vector<int32_t> ids;
      MPS_API_TRY(parse_token_ids(e, lim, &ids));
      r->prompts.emplace_back(std::move(ids));
    } else {
      return bad("prompt", "a list prompt must hold only strings or only lists of token ids");
    }
  }
  return std::nullopt;
}

std::optional<ApiError> parse_messages(const json* m, ParsedRequest* r) {
  if (!m) return bad("messages", "'messages' is required");
  if (!m->is_array() || m->empty()) return bad("messages", "'messages' must be a non-empty list");
  for (const auto& msg : *m) {
    if (!msg.is_object()) return bad("messages", "each message must be an object");
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string()) return bad("messages", "each message needs a string 'role'");
    std::string rs = role->get<std::string>();
    if (rs == "developer") rs = "system";
    if (rs != "system" && rs != "user" && rs != "assistant" && rs != "tool") {
      return bad("messages", fmt::format("unknown message role '{}'", role->get<std::string>()));
    }
    std::string content;
    auto c = msg.find("content");
    if (c == msg.end() || c->is_null()) {
      if (rs != "assistant") return bad("messages", "a message needs 'content'");
    } else if (c->is_string()) {
      content = c->get<std::string>();
    } else if (c->is_array()) {
      for (const auto& part : *c) {
        if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
            !part["text"].is_string()) {
          return bad("messages", "only text content parts ({\"type\":\"text\",\"text\":...}) are supported");
        }
        content += part["text"].get<std::string>();
      }
    } else {
      return bad("messages", "message 'content' must be a string or a list of text parts");
    }
    r->messages.push_back({rs, std::move(content)});
  }
  return std::nullopt;
}

std::optional<ApiError> parse_fields(Endpoint endpoint, const json& body, const ProtocolLimits& lim,
                                     ParsedRequest* r) {
  Fields f(body);
  r->endpoint = endpoint;
  MPS_API_TRY(f.get_string("model", &r->model));
  if (endpoint == Endpoint::kChat) {
    MPS_API_TRY(parse_messages(f.find("messages"), r));
  } else {
    MPS_API_TRY(parse_prompt(f.find("prompt"), lim, r));
  }

  std::optional<int64_t> v;
  const char* max_name = "max_tokens";
  if (endpoint == Endpoint::kChat && f.find("max_completion_tokens")) max_name = "max_completion_tokens";
  MPS_API_TRY(f.get_int(max_name, 1, lim.max_model_len, &v));
  if (v) r->max_tokens = static_cast<int32_t>(*v);
  MPS_API_TRY(f.get_float("temperature", 0.0, 2.0, &r->temperature));
  MPS_API_TRY(f.get_float("top_p", 1e-6, 1.0, &r->top_p));
  v.reset();
  MPS_API_TRY(f.get_int("top_k", -1, 1 << 20, &v));
  if (v) r->top_k = *v < 0 ? 0 : static_cast<int32_t>(*v);
  v.reset();
  MPS_API_TRY(f.get_int("seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), &v));
  if (v) r->seed = static_cast<uint64_t>(*v);
  v.reset();
  MPS_API_TRY(f.get_int("n", 1, kMaxN, &v));
  if (v) r->n = static_cast<int32_t>(*v);
  MPS_API_TRY(f.get_bool("stream", &r->stream));
  MPS_API_TRY(f.get_bool("ignore_eos", &r->ignore_eos));
  MPS_API_TRY(f.get_bool("skip_special_tokens", &r->skip_special_tokens));

  if (const json* so = f.find("stream_options")) {
    if (!so->is_object()) return bad("stream_options", "'stream_options' must be an object");
    if (!r->stream) return bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    MPS_API_TRY(Fields(*so).get_bool("include_usage", &r->include_usage));
  }

  if (const json* s = f.find("stop")) {
    if (s->is_string()) {
      r->stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      for (const auto& e : *s) {
        if (!e.is_string()) return bad("stop", "'stop' must be a string or a list of strings");
        r->stop.push_back(e.get<std::string>());
      }
    } else {
      return bad("stop", "'stop' must be a string or a list of strings");
    }
    if (r->stop.size() > kMaxStops) return bad("stop", fmt::format("at most {} stop strings", kMaxStops));
    for (const auto& s1 : r->stop) {
      if (s1.empty() || s1.size() > kMaxStopBytes) {
        return bad("stop", fmt::format("stop strings must be 1 to {} bytes long", kMaxStopBytes));
      }
    }
  }
  if (const json* s = f.find("stop_token_ids")) {
    if (!s->is_array()) return bad("stop_token_ids", "'stop_token_ids' must be a list of token ids");
    if (auto e = parse_token_ids(*s, lim, &r->stop_token_ids)) {
      e->param = "stop_token_ids";
      return *e;
    }
  }

  // Fields we understand but do not implement: neutral values pass, anything else is a clear 400.
  MPS_API_TRY(f.only_neutral("logprobs", "logprobs are not supported"));
  MPS_API_TRY(f.only_neutral("top_logprobs", "logprobs are not supported"));
  MPS_API_TRY(f.only_neutral("echo", "echo is not supported"));
  MPS_API_TRY(f.only_neutral("frequency_penalty", "penalties are not supported"));
  MPS_API_TRY(f.only_neutral("presence_penalty", "penalties are not supported"));
  MPS_API_TRY(f.only_neutral("logit_bias", "logit_bias is not supported"));
  MPS_API_TRY(f.only_neutral("min_tokens", "min_tokens is not supported"));
  MPS_API_TRY(f.only_neutral("tools", "tool calling is not supported"));
  if (const json* rp = f.find("repetition_penalty")) {
    if (!rp->is_number() || rp->get<double>() != 1.0) {
      return bad("repetition_penalty", "'repetition_penalty' is not supported by this server (penalties are not supported)");
    }
  }
  v.reset();
  MPS_API_TRY(f.get_int("best_of", 1, 1, &v));
  if (const json* s = f.find("suffix"); s && !(s->is_string() && s->get<std::string>().empty())) {
    return bad("suffix", "'suffix' is not supported by this server");
  }
  if (const json* rf = f.find("response_format")) {
    if (!rf->is_object() || rf->value("type", json("text")) != "text") {
      return bad("response_format", "only response_format {\"type\":\"text\"} is supported");
    }
  }

  int64_t choices = static_cast<int64_t>(endpoint == Endpoint::kChat ? 1 : r->prompts.size()) * r->n;
  if (choices > lim.max_choices) {
    return bad(r->n > 1 ? "n" : "prompt",
               fmt::format("this request asks for {} completions (prompts x n); at most {} are allowed", choices,
                           lim.max_choices));
  }
  return std::nullopt;
}

}  // namespace

std::string error_body(const ApiError& e) {
  json j = {{"error",
             {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::variant<ParsedRequest, ApiError> parse_request(Endpoint endpoint, std::string_view body,
                                                    const ProtocolLimits& limits) {
  if (!depth_ok(body)) return bad("", fmt::format("the JSON body is nested deeper than {} levels", kMaxJsonDepth));
  json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return bad("", "the request body is not valid JSON");
  if (!j.is_object()) return bad("", "the request body must be a JSON object");
  ParsedRequest r;
  // note: nlohmann's get<>() throws on type mismatches; every field is type-checked before its
  // get, and this catch keeps an overlooked path a 400 instead of a crash.
  try {
    if (auto e = parse_fields(endpoint, j, limits, &r)) return *e;
  } catch (const json::exception& ex) {
    return bad("", fmt::format("malformed request: {}", ex.what()));
  }
  return r;
}

std::variant<std::vector<engine::GenerationRequest>, ApiError> build_generation_requests(
    const ParsedRequest& req, const tokenizer::Tokenizer& tok, const ProtocolLimits& limits, uint64_t default_seed) {
  std::vector<std::vector<int32_t>> prompts;
  if (req.endpoint == Endpoint::kChat) {
    auto rendered = tokenizer::apply_chat_template(tok.chat_template_kind(), req.messages, true);
    if (!rendered) return bad("messages", rendered.error());
    prompts.push_back(tok.encode(*rendered));
  } else {
    for (const auto& p : req.prompts) {
      if (const auto* s = std::get_if<std::string>(&p)) {
        prompts.push_back(tok.encode(*s));
      } else {
        prompts.push_back(std::get<std::vector<int32_t>>(p));
      }
    }
  }
  const char* what = req.endpoint == Endpoint::kChat ? "messages" : "prompt";
  std::vector<engine::GenerationRequest> out;
  for (auto& ids : prompts) {
    int64_t plen = static_cast<int64_t>(ids.size());
    if (plen == 0) return bad(what, fmt::format("the {} is empty after tokenization", what));
    if (plen >= limits.max_model_len) {
      return bad(what, fmt::format("This model's maximum context length is {} tokens. However, your {} has {} tokens. "
                                   "Please reduce the length of the {}.",
                                   limits.max_model_len, what, plen, what));
    }
    int32_t max_tokens = req.max_tokens.value_or(
        req.endpoint == Endpoint::kChat ? static_cast<int32_t>(limits.max_model_len - plen) : 16);
    if (plen + max_tokens > limits.max_model_len) {
      return bad(req.endpoint == Endpoint::kChat && !req.max_tokens ? what : "max_tokens",
                 fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens "
                             "({} in the {}, {} in the completion). Please reduce the length of the {} or completion.",
                             limits.max_model_len, plen + max_tokens, plen, what, max_tokens, what));
    }
    for (int32_t i = 0; i < req.n; ++i) {
      engine::GenerationRequest g;
      g.prompt = ids;
      g.sampling.temperature = req.temperature;
      g.sampling.top_p = req.top_p;
      g.sampling.top_k = req.top_k;
      g.sampling.seed = req.seed.value_or(default_seed) + static_cast<uint64_t>(out.size());
      g.max_tokens = max_tokens;
      g.stop = req.stop;
      g.stop_token_ids = req.stop_token_ids;
      g.ignore_eos = req.ignore_eos;
      g.skip_special_tokens = req.skip_special_tokens;
      out.push_back(std::move(g));
    }
  }
  return out;
}

namespace {

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json finish_json(const std::string& r) { return r.empty() ? json(nullptr) : json(r); }

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

Usage total_usage(const std::vector<ChoiceResult>& choices) {
  Usage u;
  for (const auto& c : choices) {
    u.completion_tokens += c.completion_tokens;
    u.prompt_tokens += c.prompt_tokens;
  }
  return u;
}

}  // namespace

std::string completion_response(const std::string& id, int64_t created, const std::string& model,
                                 const std::vector<ChoiceResult>& choices) {
  json cs = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    cs.push_back({{"index", i},
                  {"text", choices[i].text},
                  {"logprobs", nullptr},
                  {"finish_reason", finish_json(choices[i].finish_reason)}});
  }
  json j = {{"id", id},       {"object", "text_completion"},
            {"created", created}, {"model", model},
            {"choices", cs},  {"usage", usage_json(total_usage(choices))}};
  return dump(j);
}

std::string chat_response(const std::string& id, int64_t created, const std::string& model,
                          const std::vector<ChoiceResult>& choices) {
  json cs = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    cs.push_back({{"index", i},
                  {"message", {{"role", "assistant"}, {"content", choices[i].text}}},
                  {"logprobs", nullptr},
                  {"finish_reason", finish_json(choices[i].finish_reason)}});
  }
  json j = {{"id", id},       {"object", "chat.completion"},
            {"created", created}, {"model", model},
            {"choices", cs},  {"usage", usage_json(total_usage(choices))}};
  return dump(j);
}

std::string completion_chunk(const std::string& id, int64_t created, const std::string& model, int index,
                             const std::string& text, const std::string& finish_reason) {
  json c = {{"index", index}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish_json(finish_reason)}};
  json j = {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
            {"choices", json::array({c})}};
  return "data: " + dump(j) + "\n\n";
}

std::string chat_chunk(const std::string& id, int64_t created, const std::string& model, int index,
                       const std::string& text, const std::string& finish_reason, bool role_only) {
  json delta = role_only ? json{{"role", "assistant"}, {"content", ""}} : json{{"content", text}};
  if (!role_only && text.empty() && !finish_reason.empty()) delta = json::object();
  json c = {{"index", index}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", finish_json(finish_reason)}};
  json j = {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
            {"choices", json::array({c})}};
  return "data: " + dump(j) + "\n\n";
}

std::string usage_chunk(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                        const Usage& usage) {
  json j = {{"id", id},
            {"object", endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion"},
            {"created", created},
            {"model", model},
            {"choices", json::array()},
            {"usage", usage_json(usage)}};
  return "data: " + dump(j) + "\n\n";
}

std::string stream_error_event(const ApiError& e) { return "data: " + error_body(e) + "\n\n"; }

std::string models_response(const std::string& model, int64_t created, int32_t max_model_len) {
  json m = {{"id", model},          {"object", "model"}, {"created", created},
            {"owned_by", "mpserve"}, {"root", model},    {"max_model_len", max_model_len}};
  return dump(json{{"object", "list"}, {"data", json::array({m})}});
}

}  // namespace mpserve::server
