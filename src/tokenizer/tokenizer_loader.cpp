// Tokenizer::load / from_json: validates tokenizer.json and tokenizer_config.json and builds a
// BpeTokenizer. Every problem becomes a Status that names the file.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace mpserve::tokenizer {
namespace {

constexpr int64_t kMaxAddedTokenId = 1 << 24;

// Normalizer: null, NFC, or a Sequence of those.
Result<bool> parse_normalizer(const nlohmann::json& n) {
  if (n.is_null()) return false;
  if (!n.is_object() || !n.contains("type")) return Status::error("normalizer must be null or an object with a \"type\"");
  const std::string type = n["type"].is_string() ? n["type"].get<std::string>() : "";
  if (type == "NFC") return true;
  if (type == "Sequence") {
    bool nfc = false;
    for (const auto& item : n.value("normalizers", nlohmann::json::array())) {
      MPS_ASSIGN_OR_RETURN(bool item_nfc, parse_normalizer(item));
      nfc = nfc || item_nfc;
    }
    return nfc;
  }
  return Status::errorf("unsupported normalizer {} (only NFC or none)", n["type"].dump());
}

// Decoder: must undo the byte-level alphabet (ByteLevel, alone or in a Sequence) or be absent.
Status check_decoder(const nlohmann::json& d) {
  if (d.is_null()) return Status::ok();
  if (d.is_object() && d.value("type", "") == "ByteLevel") return Status::ok();
  if (d.is_object() && d.value("type", "") == "Sequence") {
    for (const auto& item : d.value("decoders", nlohmann::json::array())) MPS_RETURN_IF_ERROR(check_decoder(item));
    return Status::ok();
  }
  return Status::errorf("unsupported decoder {} (only ByteLevel)", d.is_object() ? d.value("type", nlohmann::json()).dump() : d.dump());
}

Result<std::vector<AddedToken>> parse_added_tokens(const nlohmann::json& list) {
  std::vector<AddedToken> out;
  if (list.is_null()) return out;
  if (!list.is_array()) return Status::error("added_tokens must be an array");
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& t = list[i];
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || !t.contains("content") ||
        !t["content"].is_string()) {
      return Status::errorf("added_tokens[{}] needs an integer \"id\" and a string \"content\"", i);
    }
    const int64_t id = t["id"].get<int64_t>();
    if (id < 0 || id > kMaxAddedTokenId) return Status::errorf("added_tokens[{}] has invalid id {}", i, id);
    AddedToken a;
    a.id = static_cast<int32_t>(id);
    a.content = t["content"].get<std::string>();
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    out.push_back(std::move(a));
  }
  return out;
}

// eos_token / bos_token: a string, an object with "content" (AddedToken form), null or absent.
Result<std::optional<int32_t>> special_token_id(const nlohmann::json& config, const char* field, const Tokenizer& tok) {
  const auto it = config.find(field);
  if (it == config.end() || it->is_null()) return std::optional<int32_t>();
  const nlohmann::json* content = &*it;
  if (it->is_object()) {
    const auto c = it->find("content");
    if (c == it->end()) return Status::errorf("{} is an object without \"content\"", field);
    content = &*c;
  }
  if (!content->is_string()) return Status::errorf("{} must be a string, an object with \"content\", or null", field);
  const auto id = tok.token_to_id(content->get_ref<const std::string&>());
  if (!id) return Status::errorf("{} {} is not a token of tokenizer.json", field, content->dump());
  return std::optional<int32_t>(*id);
}

// "llama3" when the chat template uses Llama 3's header tokens, else "chatml". chat_template may
// be one string or a list of {name, template}.
std::string template_kind(const nlohmann::json& chat_template) {
  const auto mentions_header = [](const nlohmann::json& t) {
    return t.is_string() && t.get_ref<const std::string&>().find("<|start_header_id|>") != std::string::npos;
  };
  if (mentions_header(chat_template)) return "llama3";
  if (chat_template.is_array()) {
    for (const auto& t : chat_template) {
      if (t.is_object() && mentions_header(t.value("template", nlohmann::json()))) return "llama3";
    }
  }
  return "chatml";
}

Result<std::unique_ptr<Tokenizer>> build(std::string_view tokenizer_json, std::string_view config_json,
                                         const std::string& config_source) {
  const nlohmann::json root = nlohmann::json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Status::error("not valid JSON");
  if (!root.is_object()) return Status::error("top level is not a JSON object");
  const auto field = [&](const char* name) { return root.value(name, nlohmann::json()); };

  MPS_ASSIGN_OR_RETURN(bool nfc, parse_normalizer(field("normalizer")));
  MPS_ASSIGN_OR_RETURN(PreTokenizer pre, PreTokenizer::from_json(field("pre_tokenizer")));
  MPS_RETURN_IF_ERROR(check_decoder(field("decoder")));
  MPS_ASSIGN_OR_RETURN(std::vector<AddedToken> added, parse_added_tokens(field("added_tokens")));
  const auto model_it = root.find("model");
  if (model_it == root.end()) return Status::error("\"model\" is missing");
  MPS_ASSIGN_OR_RETURN(BpeModel model, BpeModel::from_json(*model_it));

  auto tok = std::make_unique<BpeTokenizer>(std::move(model), std::move(pre), nfc, added, TokenizerConfig{});
  TokenizerConfig cfg;
  bool has_template = false;
  if (!config_json.empty()) {
    const nlohmann::json config = nlohmann::json::parse(config_json, nullptr, false);
    if (config.is_discarded() || !config.is_object()) {
      return Status::errorf("{}: not a valid JSON object", config_source);
    }
    auto eos = special_token_id(config, "eos_token", *tok);
    if (!eos) return eos.status().with_context(config_source);
    auto bos = special_token_id(config, "bos_token", *tok);
    if (!bos) return bos.status().with_context(config_source);
    cfg.eos_id = *eos;
    cfg.bos_id = *bos;
    if (const auto t = config.find("chat_template"); t != config.end() && !t->is_null()) {
      cfg.chat_template_kind = template_kind(*t);
      has_template = true;
    }
  }
  // Without a chat template, Llama 3's header token in the vocabulary still tells the format.
  if (!has_template && tok->token_to_id("<|start_header_id|>")) cfg.chat_template_kind = "llama3";
  tok->set_config(std::move(cfg));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_json(std::string_view tokenizer_json,
                                                        std::string_view tokenizer_config_json,
                                                        const std::string& source) {
  std::filesystem::path p(source);
  const std::string config_source =
      p.filename() == "tokenizer.json" ? (p.parent_path() / "tokenizer_config.json").string() : source + " (config)";
  try {
    auto r = build(tokenizer_json, tokenizer_config_json, config_source);
    if (!r) {
      // Config errors already name their file; the rest are about tokenizer.json.
      if (r.error().rfind(config_source, 0) == 0) return r.status();
      return r.status().with_context(source);
    }
    return r;
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong JSON type somewhere that the checks above did not anticipate.
    return Status::errorf("{}: {}", source, e.what());
  }
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::load(const std::filesystem::path& dir) {
  const auto json_path = dir / "tokenizer.json";
  const auto config_path = dir / "tokenizer_config.json";
  MPS_ASSIGN_OR_RETURN(std::string json, read_file(json_path));
  std::string config;
  if (std::filesystem::exists(config_path)) {
    MPS_ASSIGN_OR_RETURN(config, read_file(config_path));
  }
  return from_json(json, config, json_path.string());
}

}  // namespace mpserve::tokenizer
