// Split and ByteLevel pre-tokenizers over PCRE2 (UTF + UCP + JIT).
#include "tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include "common/check.h"

namespace mpserve::tokenizer {
namespace {

// GPT-2's pattern, which ByteLevel applies itself when its use_regex is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext };

// A compiled pattern; shared read-only between threads (PCRE2 code and JIT code are immutable).
class Regex {
 public:
  ~Regex() {
    if (code_) pcre2_code_free(code_);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  static Result<std::unique_ptr<Regex>> compile(std::string_view pattern, bool literal) {
    // note: PCRE2_MATCH_INVALID_UTF lets ill-formed bytes through: they never match, so they end
    // up in the unmatched gaps, get their own words and are encoded byte by byte.
    uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
    if (literal) options |= PCRE2_LITERAL;
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error,
                                     &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(error, buf, sizeof buf);
      return Status::errorf("cannot compile pre_tokenizer pattern /{}/ at offset {}: {}", pattern, offset,
                            reinterpret_cast<const char*>(buf));
    }
    auto re = std::unique_ptr<Regex>(new Regex(code));
    // JIT is an optimization: when it is unavailable, pcre2_match interprets the pattern.
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return re;
  }

  // Calls on_match(begin, end) for every non-empty match in order.
  template <typename F>
  void for_each_match(std::string_view text, F&& on_match) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    MPS_CHECK(md != nullptr);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos <= text.size()) {
      int rc = pcre2_match(code_, subject, text.size(), pos, 0, md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        // note: a pathological word overflowed the JIT's 32 KiB stack; the interpreter keeps its
        // backtracking state on the heap instead.
        rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_JIT, md, nullptr);
      }
      if (rc == PCRE2_ERROR_NOMATCH) break;
      MPS_CHECK_MSG(rc >= 0, "pcre2_match failed with error {}", rc);
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t begin = ov[0], end = ov[1];
      if (end > begin) {
        on_match(begin, end);
        pos = end;
      } else {
        // Empty match: step over one character (or one ill-formed byte).
        pos = begin + 1;
        while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
      }
    }
    pcre2_match_data_free(md);
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_ = nullptr;
};

Result<Behavior> parse_behavior(const nlohmann::json& v) {
  if (!v.is_string()) return Status::error("Split.behavior must be a string");
  const std::string& s = v.get_ref<const std::string&>();
  if (s == "Isolated") return Behavior::kIsolated;
  if (s == "Removed") return Behavior::kRemoved;
  if (s == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::kMergedWithNext;
  return Status::errorf("unsupported Split.behavior \"{}\"", s);
}

}  // namespace

struct PreTokenizer::Step {
  // Split: pieces are the matches (or, inverted, the gaps), combined with the rest by `behavior`.
  std::unique_ptr<Regex> regex;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  // ByteLevel: prefix a space to words that do not start with one.
  bool add_prefix_space = false;

  void apply(std::string_view word, std::vector<std::string_view>* out, std::deque<std::string>* storage) const {
    if (add_prefix_space && !word.empty() && word.front() != ' ') {
      std::string& prefixed = storage->emplace_back(1, ' ');
      prefixed.append(word);
      word = prefixed;
    }
    if (!regex) {
      out->push_back(word);
      return;
    }
    // Mark each span as matched or not, then combine by behavior.
    struct Span {
      size_t begin, end;
      bool is_match;
    };
    std::vector<Span> spans;
    size_t last = 0;
    regex->for_each_match(word, [&](size_t b, size_t e) {
      if (b > last) spans.push_back({last, b, invert});
      spans.push_back({b, e, !invert});
      last = e;
    });
    if (last < word.size()) spans.push_back({last, word.size(), invert});

    size_t pending_begin = std::string_view::npos;  // start of a match waiting to merge with next
    for (size_t i = 0; i < spans.size(); ++i) {
      const Span& s = spans[i];
      switch (behavior) {
        case Behavior::kIsolated:
          out->push_back(word.substr(s.begin, s.end - s.begin));
          break;
        case Behavior::kRemoved:
          if (!s.is_match) out->push_back(word.substr(s.begin, s.end - s.begin));
          break;
        case Behavior::kMergedWithPrevious:
          if (s.is_match && !out->empty() && i > 0) {
            std::string_view prev = out->back();
            out->back() = std::string_view(prev.data(), prev.size() + (s.end - s.begin));
          } else {
            out->push_back(word.substr(s.begin, s.end - s.begin));
          }
          break;
        case Behavior::kMergedWithNext:
          if (s.is_match) {
            if (pending_begin == std::string_view::npos) pending_begin = s.begin;
          } else {
            const size_t b = pending_begin == std::string_view::npos ? s.begin : pending_begin;
            out->push_back(word.substr(b, s.end - b));
            pending_begin = std::string_view::npos;
          }
          break;
      }
    }
    if (pending_begin != std::string_view::npos) out->push_back(word.substr(pending_begin));
  }
};

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

Result<PreTokenizer> PreTokenizer::from_json(const nlohmann::json& config) {
  PreTokenizer pt;
  if (config.is_null()) return pt;
  std::vector<const nlohmann::json*> items;
  if (!config.is_object() || !config.contains("type") || !config["type"].is_string()) {
    return Status::error("pre_tokenizer must be an object with a \"type\"");
  }
  if (config["type"] == "Sequence") {
    const auto it = config.find("pretokenizers");
    if (it == config.end() || !it->is_array()) return Status::error("pre_tokenizer Sequence needs \"pretokenizers\"");
    for (const auto& p : *it) items.push_back(&p);
  } else {
    items.push_back(&config);
  }
  for (const nlohmann::json* p : items) {
    if (!p->is_object() || !p->contains("type") || !(*p)["type"].is_string()) {
      return Status::error("each pre_tokenizer needs a \"type\"");
    }
    const std::string type = (*p)["type"];
    auto step = std::make_unique<Step>();
    if (type == "Split") {
      const auto pat = p->find("pattern");
      if (pat == p->end() || !pat->is_object()) return Status::error("Split needs a \"pattern\" object");
      const bool literal = pat->contains("String");
      const auto& src = literal ? (*pat)["String"] : pat->value("Regex", nlohmann::json());
      if (!src.is_string()) return Status::error("Split.pattern needs a \"Regex\" or \"String\" string");
      MPS_ASSIGN_OR_RETURN(step->regex, Regex::compile(src.get_ref<const std::string&>(), literal));
      MPS_ASSIGN_OR_RETURN(step->behavior, parse_behavior(p->value("behavior", nlohmann::json("Isolated"))));
      step->invert = p->value("invert", false);
    } else if (type == "ByteLevel") {
      // The byte-level alphabet itself is applied by the BPE model; here only the word split.
      step->add_prefix_space = p->value("add_prefix_space", false);
      if (p->value("use_regex", true)) {
        MPS_ASSIGN_OR_RETURN(step->regex, Regex::compile(kGpt2Pattern, false));
      }
    } else {
      return Status::errorf("unsupported pre_tokenizer type \"{}\"", type);
    }
    pt.steps_.push_back(std::move(step));
  }
  return pt;
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>* words,
                         std::deque<std::string>* storage) const {
  if (text.empty()) return;
  std::vector<std::string_view> cur{text}, next;
  for (const auto& step : steps_) {
    next.clear();
    for (std::string_view w : cur) step->apply(w, &next, storage);
    cur.swap(next);
  }
  words->insert(words->end(), cur.begin(), cur.end());
}

}  // namespace mpserve::tokenizer
