#include "study/results.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "common/file_util.h"
#include "common/log.h"

namespace mpserve::study {
namespace {

constexpr size_t kNumColumns = 28;

std::string csv_field(std::string_view s) {
  if (s.find_first_of(",\"\n\r") == std::string_view::npos) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// Splits one CSV line into fields; nullopt for an unterminated quote.
std::optional<std::vector<std::string>> split_csv(std::string_view line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        fields.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.emplace_back();
    } else if (c != '\r') {
      fields.back() += c;
    }
  }
  if (quoted) return std::nullopt;
  return fields;
}

template <typename T>
Status parse_number(const std::string& text, const char* column, T* out) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *out);
  if (ec != std::errc() || ptr != end || text.empty()) {
    return Status::errorf("column {}: '{}' is not a number", column, text);
  }
  return Status::ok();
}

std::string num(double v) { return fmt::format("{:.3f}", v); }

}  // namespace

std::string format_result_row(const ResultRow& r) {
  std::vector<std::string> f = {
      csv_field(r.timestamp), csv_field(r.gpu), csv_field(r.driver), csv_field(r.cuda), csv_field(r.commit),
      csv_field(r.device), csv_field(r.shape), fmt::format("{:.3f}", r.params_b), std::to_string(r.context),
      csv_field(r.workload), std::to_string(r.engines), csv_field(r.mps), csv_field(r.ablation),
      std::to_string(r.async), std::to_string(r.step_cpu_us), std::to_string(r.repeat),
      std::to_string(r.concurrency), std::to_string(r.input_len), std::to_string(r.output_len), num(r.warmup_s),
      num(r.window_s), std::to_string(r.completed), std::to_string(r.failed), num(r.input_tok_s),
      num(r.output_tok_s), num(r.throughput), num(r.ttft_p50_ms), num(r.tpot_p50_ms)};
  return fmt::format("{}", fmt::join(f, ","));
}

Result<ResultRow> parse_result_row(std::string_view line) {
  auto fields = split_csv(line);
  if (!fields) return Status::error("unterminated quoted field");
  // Columns appended after ours (a later version) are ignored; fewer is a cut-short line.
  if (fields->size() < kNumColumns) {
    return Status::errorf("{} fields, expected {}", fields->size(), kNumColumns);
  }
  const std::vector<std::string>& f = *fields;
  ResultRow r;
  r.timestamp = f[0];
  r.gpu = f[1];
  r.driver = f[2];
  r.cuda = f[3];
  r.commit = f[4];
  r.device = f[5];
  r.shape = f[6];
  MPS_RETURN_IF_ERROR(parse_number(f[7], "params_b", &r.params_b));
  MPS_RETURN_IF_ERROR(parse_number(f[8], "context", &r.context));
  r.workload = f[9];
  MPS_RETURN_IF_ERROR(parse_number(f[10], "engines", &r.engines));
  r.mps = f[11];
  r.ablation = f[12];
  MPS_RETURN_IF_ERROR(parse_number(f[13], "async", &r.async));
  MPS_RETURN_IF_ERROR(parse_number(f[14], "step_cpu_us", &r.step_cpu_us));
  MPS_RETURN_IF_ERROR(parse_number(f[15], "repeat", &r.repeat));
  MPS_RETURN_IF_ERROR(parse_number(f[16], "concurrency", &r.concurrency));
  MPS_RETURN_IF_ERROR(parse_number(f[17], "input_len", &r.input_len));
  MPS_RETURN_IF_ERROR(parse_number(f[18], "output_len", &r.output_len));
  MPS_RETURN_IF_ERROR(parse_number(f[19], "warmup_s", &r.warmup_s));
  MPS_RETURN_IF_ERROR(parse_number(f[20], "window_s", &r.window_s));
  MPS_RETURN_IF_ERROR(parse_number(f[21], "completed", &r.completed));
  MPS_RETURN_IF_ERROR(parse_number(f[22], "failed", &r.failed));
  MPS_RETURN_IF_ERROR(parse_number(f[23], "input_tok_s", &r.input_tok_s));
  MPS_RETURN_IF_ERROR(parse_number(f[24], "output_tok_s", &r.output_tok_s));
  MPS_RETURN_IF_ERROR(parse_number(f[25], "throughput", &r.throughput));
  MPS_RETURN_IF_ERROR(parse_number(f[26], "ttft_p50_ms", &r.ttft_p50_ms));
  MPS_RETURN_IF_ERROR(parse_number(f[27], "tpot_p50_ms", &r.tpot_p50_ms));
  return r;
}

Result<std::vector<ResultRow>> load_results(const std::filesystem::path& path) {
  std::vector<ResultRow> rows;
  if (!std::filesystem::exists(path)) return rows;
  MPS_ASSIGN_OR_RETURN(std::string text, read_file(path));
  size_t pos = 0;
  int line_no = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    bool complete = nl != std::string::npos;
    std::string_view line(text.data() + pos, (complete ? nl : text.size()) - pos);
    pos = complete ? nl + 1 : text.size();
    ++line_no;
    if (line_no == 1) {
      if (line.substr(0, kResultsHeader.size()) != kResultsHeader) {
        return Status::errorf("{}: the first line is not the results header ({}...)", path.string(),
                              kResultsHeader.substr(0, 40));
      }
      continue;
    }
    if (line.empty() || line == "\r") continue;
    auto row = parse_result_row(line);
    if (!row) {
      if (!complete) {
        log::warn("{}: last line {} is cut short ({}); ignored", path.string(), line_no, row.error());
        continue;
      }
      return Status::errorf("{}:{}: {}", path.string(), line_no, row.error());
    }
    rows.push_back(std::move(*row));
  }
  return rows;
}

Result<ResultsWriter> ResultsWriter::open(const std::filesystem::path& path) {
  ResultsWriter w;
  w.path_ = path;
  std::error_code ec;
  bool fresh = !std::filesystem::exists(path) || std::filesystem::file_size(path, ec) == 0;
  if (!fresh) {
    MPS_ASSIGN_OR_RETURN(std::string text, read_file(path));
    if (text.substr(0, kResultsHeader.size()) != kResultsHeader) {
      return Status::errorf("{} exists but does not start with the results header; move it away", path.string());
    }
    // A writer killed mid-line left a partial row: end it, so the next row starts on its own line
    // (the reader skips the fragment only when it is last, so it is cut off here).
    if (text.back() != '\n') {
      size_t keep = text.rfind('\n') + 1;
      MPS_RETURN_IF_ERROR(write_file_atomic(path, text.substr(0, keep)));
      log::warn("{}: dropped a partial last row", path.string());
    }
    return w;
  }
  MPS_RETURN_IF_ERROR(write_file_atomic(path, std::string(kResultsHeader) + "\n"));
  return w;
}

Status ResultsWriter::append(const ResultRow& row) {
  std::string line = format_result_row(row) + "\n";
  int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return Status::errorf("cannot open {}: {}", path_.string(), std::strerror(errno));
  ssize_t n = ::write(fd, line.data(), line.size());
  int err = errno;
  ::fsync(fd);
  ::close(fd);
  if (n != static_cast<ssize_t>(line.size())) {
    return Status::errorf("cannot append to {}: {}", path_.string(), std::strerror(err));
  }
  return Status::ok();
}

std::string_view throughput_unit(std::string_view workload) {
  return workload == "prefill" ? "input tok/s" : "output tok/s";
}

std::string cell_key(const ResultRow& r) {
  return fmt::format("{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}", r.gpu, r.device, r.shape, r.context, r.workload,
                     r.engines, r.mps, r.ablation, r.async, r.step_cpu_us, r.concurrency, r.input_len, r.output_len);
}

std::string measurement_key(const ResultRow& r) { return fmt::format("{}|r{}", cell_key(r), r.repeat); }

Spread spread_of(std::vector<double> v) {
  Spread s;
  s.n = static_cast<int>(v.size());
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  size_t m = v.size() / 2;
  s.median = v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
  s.min = v.front();
  s.max = v.back();
  return s;
}

std::vector<CellSummary> summarize(const std::vector<ResultRow>& rows) {
  // Latest row per measurement, grouped by cell in order of first appearance.
  std::vector<std::string> order;
  std::map<std::string, std::map<int, const ResultRow*>> by_cell;
  for (const ResultRow& r : rows) {
    std::string key = cell_key(r);
    auto [it, inserted] = by_cell.try_emplace(key);
    if (inserted) order.push_back(key);
    it->second[r.repeat] = &r;
  }
  std::vector<CellSummary> out;
  for (const std::string& key : order) {
    const auto& repeats = by_cell[key];
    CellSummary c;
    c.first = *repeats.begin()->second;
    std::vector<double> tput, in, outp, ttft, tpot;
    for (const auto& [rep, r] : repeats) {
      tput.push_back(r->throughput);
      in.push_back(r->input_tok_s);
      outp.push_back(r->output_tok_s);
      ttft.push_back(r->ttft_p50_ms);
      tpot.push_back(r->tpot_p50_ms);
      c.completed += r->completed;
      c.failed += r->failed;
    }
    c.throughput = spread_of(tput);
    c.input_tok_s = spread_of(in);
    c.output_tok_s = spread_of(outp);
    c.ttft_p50_ms = spread_of(ttft).median;
    c.tpot_p50_ms = spread_of(tpot).median;
    out.push_back(std::move(c));
  }
  return out;
}

namespace {

bool same_cell_but_engines_mps(const ResultRow& a, const ResultRow& b) {
  return a.gpu == b.gpu && a.device == b.device && a.shape == b.shape && a.context == b.context &&
         a.workload == b.workload && a.ablation == b.ablation && a.async == b.async &&
         a.step_cpu_us == b.step_cpu_us && a.concurrency == b.concurrency && a.input_len == b.input_len &&
         a.output_len == b.output_len;
}

}  // namespace

const CellSummary* find_baseline(const std::vector<CellSummary>& cells, const CellSummary& cell) {
  const CellSummary* other_mps = nullptr;
  for (const CellSummary& c : cells) {
    if (c.first.engines != 1 || !same_cell_but_engines_mps(c.first, cell.first)) continue;
    if (c.first.mps == cell.first.mps) return &c;
    if (!other_mps) other_mps = &c;
  }
  return other_mps;
}

std::optional<Gain> gain_of(const CellSummary& n, const CellSummary& one) {
  if (one.throughput.n == 0 || n.throughput.n == 0 || one.throughput.min <= 0 || one.throughput.median <= 0) {
    return std::nullopt;
  }
  Gain g;
  g.median = n.throughput.median / one.throughput.median - 1;
  g.min = n.throughput.min / one.throughput.max - 1;
  g.max = n.throughput.max / one.throughput.min - 1;
  return g;
}

ExpectedGain expected_gain(double tput1_attn_only, double tput1_mlp_only, double gain_attn_only, double gain_mlp_only) {
  ExpectedGain e;
  double t_attn = 1.0 / tput1_attn_only;
  double t_mlp = 1.0 / tput1_mlp_only;
  e.w_attn = t_attn / (t_attn + t_mlp);
  e.gain_attn = gain_attn_only;
  e.gain_mlp = gain_mlp_only;
  e.expected = e.w_attn * gain_attn_only + (1 - e.w_attn) * gain_mlp_only;
  return e;
}

std::optional<ExpectedGain> expected_gain_for(const std::vector<CellSummary>& cells, const CellSummary& full) {
  auto sibling = [&](const char* ablation) -> const CellSummary* {
    for (const CellSummary& c : cells) {
      ResultRow want = full.first;
      want.ablation = ablation;
      if (c.first.engines == full.first.engines && c.first.mps == full.first.mps &&
          same_cell_but_engines_mps(c.first, want)) {
        return &c;
      }
    }
    return nullptr;
  };
  const CellSummary* attn = sibling("attention");
  const CellSummary* mlp = sibling("mlp");
  if (!attn || !mlp) return std::nullopt;
  const CellSummary* attn1 = find_baseline(cells, *attn);
  const CellSummary* mlp1 = find_baseline(cells, *mlp);
  if (!attn1 || !mlp1) return std::nullopt;
  auto g_attn = gain_of(*attn, *attn1);
  auto g_mlp = gain_of(*mlp, *mlp1);
  if (!g_attn || !g_mlp) return std::nullopt;
  return expected_gain(attn1->throughput.median, mlp1->throughput.median, g_attn->median, g_mlp->median);
}

}  // namespace mpserve::study
