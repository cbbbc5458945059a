#include "study/advisor.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace mpserve::study {
namespace {

struct Triple {
  double median = 0, lo = 0, hi = 0;
};

Triple lerp(const Triple& a, const Triple& b, double t) {
  return {a.median + (b.median - a.median) * t, a.lo + (b.lo - a.lo) * t, a.hi + (b.hi - a.hi) * t};
}

// Linear interpolation in log(x) over points sorted by x; outside the measured range the nearest
// point is used and `caveat` says so (gains fall roughly log-linearly with context, so log space
// is the natural axis; extrapolating a line past the ends would invent data).
// `*octaves` grows by how far (in log2) x lies outside the measured range.
Triple interpolate_log(const std::vector<std::pair<double, Triple>>& pts, double x, const char* what,
                       const std::string& unit, std::vector<std::string>* caveats, std::string* how,
                       double* octaves) {
  const double lo_x = pts.front().first, hi_x = pts.back().first;
  if (x < lo_x * 0.999 || x > hi_x * 1.001) {
    *octaves += std::abs(std::log2(x < lo_x ? lo_x / x : x / hi_x));
    caveats->push_back(fmt::format("{} {:g}{} is outside the measured {:g}{}–{:g}{}: the nearest measurement is used",
                                   what, x, unit, lo_x, unit, hi_x, unit));
  }
  if (x <= lo_x) {
    *how = fmt::format("{}={:g}", what, lo_x);
    return pts.front().second;
  }
  if (x >= hi_x) {
    *how = fmt::format("{}={:g}", what, hi_x);
    return pts.back().second;
  }
  size_t i = 1;
  while (x > pts[i].first) ++i;  // pts[i-1].first < x <= pts[i].first
  const auto& [x0, v0] = pts[i - 1];
  const auto& [x1, v1] = pts[i];
  const double t = (std::log(x) - std::log(x0)) / (std::log(x1) - std::log(x0));
  *how = t > 1 - 1e-9 ? fmt::format("{}={:g}", what, x1) : fmt::format("{} {:g}..{:g}", what, x0, x1);
  return lerp(v0, v1, t);
}

std::string pct(double g) { return fmt::format("{:+.0f}%", g * 100); }

}  // namespace

Advice decide(std::vector<EngineEstimate> estimates, double min_gain, std::string basis) {
  Advice a;
  a.basis = std::move(basis);
  std::sort(estimates.begin(), estimates.end(),
            [](const EngineEstimate& x, const EngineEstimate& y) { return x.engines < y.engines; });
  a.estimates = estimates;
  const EngineEstimate* best = nullptr;      // best median among those whose lower bound clears min_gain
  const EngineEstimate* promising = nullptr; // best median overall
  for (const EngineEstimate& e : estimates) {
    if (e.engines < 2) continue;
    if (!promising || e.gain > promising->gain) promising = &e;
    // Prefer fewer engines unless more clearly pay (each engine costs memory and a fault domain).
    if (e.lo >= min_gain && (!best || e.gain > best->gain + 0.05)) best = &e;
  }
  if (best) {
    a.colocate = true;
    a.engines = best->engines;
    a.gain = best->gain;
    a.lo = best->lo;
    a.hi = best->hi;
    a.verdict = fmt::format("co-locate: run {} engines under MPS; expected throughput gain {} (range {} to {})",
                            best->engines, pct(best->gain), pct(best->lo), pct(best->hi));
  } else if (promising && promising->gain >= min_gain) {
    a.verdict = fmt::format(
        "do not co-locate yet: {} engines would gain {} but the range {} to {} does not clear the {} bar — "
        "measure it here with `mpserve advise --probe`",
        promising->engines, pct(promising->gain), pct(promising->lo), pct(promising->hi), pct(min_gain));
  } else if (promising) {
    a.verdict = fmt::format("do not co-locate: {} engines would gain {} (range {} to {}), below the {} that pays for "
                            "shared fate and split memory",
                            promising->engines, pct(promising->gain), pct(promising->lo), pct(promising->hi),
                            pct(min_gain));
  } else {
    a.verdict = "do not co-locate: no measurement with more than one engine";
  }
  return a;
}

Result<Advice> advise_from_study(const std::vector<GainPoint>& points, const AdviceQuery& q) {
  if (q.context <= 0) return Status::errorf("context must be positive (got {})", q.context);
  if (q.params_b <= 0) return Status::errorf("parameter count must be positive (got {})", q.params_b);
  std::set<std::string> gpus;
  std::vector<const GainPoint*> match;
  for (const GainPoint& p : points) {
    gpus.insert(p.gpu);
    if (p.gpu == q.gpu && p.workload == q.workload && p.engines >= 2 && p.context > 0 && p.params_b > 0) {
      match.push_back(&p);
    }
  }
  if (match.empty()) {
    std::string have;
    for (const std::string& g : gpus) have += (have.empty() ? "" : ", ") + g;
    return Status::errorf(
        "the study results have no {} measurement on '{}' (they cover: {}); run `mpserve study` on this machine, or "
        "`mpserve advise --probe` for a live A/B",
        q.workload, q.gpu, have.empty() ? "nothing" : have);
  }
  // engines -> params_b -> context -> gain
  std::map<int, std::map<double, std::map<int, Triple>>> grid;
  for (const GainPoint* p : match) grid[p->engines][p->params_b][p->context] = {p->median, p->lo, p->hi};

  struct Candidate {
    EngineEstimate estimate;
    std::vector<std::string> caveats;  // empty: the query lies inside what was measured
    double octaves = 0;                // how far outside, in log2 units of context and size
  };
  std::vector<Candidate> candidates;
  for (const auto& [engines, by_shape] : grid) {
    std::vector<std::pair<double, Triple>> per_shape;
    std::vector<std::string> hows;
    std::vector<std::string> ctx_caveats;
    double ctx_octaves = 0;
    for (const auto& [params, by_ctx] : by_shape) {
      std::vector<std::pair<double, Triple>> pts;
      for (const auto& [ctx, t] : by_ctx) pts.emplace_back(ctx, t);
      std::string how;
      double octaves = 0;
      per_shape.emplace_back(params, interpolate_log(pts, q.context, "context", "", &ctx_caveats, &how, &octaves));
      ctx_octaves = std::max(ctx_octaves, octaves);
      hows.push_back(fmt::format("{:g}B at {}", params, how));
    }
    std::string how;
    std::vector<std::string> size_caveats;
    double size_octaves = 0;
    const Triple t = interpolate_log(per_shape, q.params_b, "model size", "B", &size_caveats, &how, &size_octaves);
    EngineEstimate e;
    e.engines = engines;
    e.gain = t.median;
    e.lo = std::min(t.lo, t.median);
    e.hi = std::max(t.hi, t.median);
    e.how = fmt::format("{} ({})", how, fmt::join(hows, "; "));
    Candidate c{e, std::move(ctx_caveats), ctx_octaves + size_octaves};
    for (auto& sc : size_caveats) c.caveats.push_back(std::move(sc));
    std::sort(c.caveats.begin(), c.caveats.end());
    c.caveats.erase(std::unique(c.caveats.begin(), c.caveats.end()), c.caveats.end());
    candidates.push_back(std::move(c));
  }
  // An engine count measured near the query wins over one whose nearest measurement lies far
  // away (a 3-engine point at 128 tokens says little about 2048 tokens): only the counts with the
  // least extrapolation are considered, and the advice says which were left out.
  double least = std::numeric_limits<double>::infinity();
  for (const Candidate& c : candidates) least = std::min(least, c.octaves);
  std::vector<EngineEstimate> estimates;
  std::vector<std::string> caveats;
  for (Candidate& c : candidates) {
    if (c.octaves > least + 0.5) {
      caveats.push_back(fmt::format("{} engines were not measured near this query: not considered",
                                    c.estimate.engines));
      continue;
    }
    estimates.push_back(c.estimate);
    for (auto& text : c.caveats) {
      if (std::find(caveats.begin(), caveats.end(), text) == caveats.end()) caveats.push_back(std::move(text));
    }
  }
  Advice a = decide(std::move(estimates), q.min_gain, "study");
  a.caveats = std::move(caveats);
  if (q.gpu.rfind("cpu", 0) == 0) {
    // CPU engines share cores, not a GPU: no MPS in the verdict.
    if (const size_t at = a.verdict.find(" under MPS"); at != std::string::npos) a.verdict.erase(at, 10);
    a.caveats.push_back("these results come from CPU engines: they say nothing about MPS on a GPU");
  }
  return a;
}

std::string format_advice(const Advice& a, const AdviceQuery& q) {
  std::string s = fmt::format("advice for a {:g}B-parameter model, {} workload, {}-token context, on {}\n", q.params_b,
                              q.workload, q.context, q.gpu);
  s += fmt::format("  verdict: {}\n", a.verdict);
  s += fmt::format("  basis:   {}\n", a.basis == "probe" ? "a live A/B on this machine (1 vs N engines)"
                                                          : "the study's measurements on this GPU type");
  for (const EngineEstimate& e : a.estimates) {
    s += fmt::format("  {} engines: gain {} (range {} to {}) from {}\n", e.engines, pct(e.gain), pct(e.lo), pct(e.hi),
                     e.how);
  }
  for (const std::string& c : a.caveats) s += fmt::format("  caveat:  {}\n", c);
  return s;
}

std::string advice_json(const Advice& a, const AdviceQuery& q) {
  nlohmann::json j;
  j["query"] = {{"gpu", q.gpu}, {"params_b", q.params_b}, {"context", q.context}, {"workload", q.workload},
                {"min_gain", q.min_gain}};
  j["colocate"] = a.colocate;
  j["engines"] = a.engines;
  j["gain"] = a.gain;
  j["gain_lo"] = a.lo;
  j["gain_hi"] = a.hi;
  j["basis"] = a.basis;
  j["verdict"] = a.verdict;
  j["estimates"] = nlohmann::json::array();
  for (const EngineEstimate& e : a.estimates) {
    j["estimates"].push_back({{"engines", e.engines}, {"gain", e.gain}, {"lo", e.lo}, {"hi", e.hi}, {"how", e.how}});
  }
  j["caveats"] = a.caveats;
  return j.dump(2);
}

}  // namespace mpserve::study
