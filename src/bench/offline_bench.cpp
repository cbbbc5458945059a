#include "bench/offline_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <unordered_map>

#include <fmt/format.h>

namespace mpserve::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct RunStats {
  double prefill_s = 0;       // start until every request has its first token
  double decode_s = 0;        // from then until every request has finished
  int64_t decode_steps = 0;
  double decode_step_s_sum = 0;
  std::vector<double> host_us;  // per counted decode step that the backend timed
  double backend_us_sum = 0;  // of host_us: inside the backend
  double enqueue_us_sum = 0;  // of backend_us_sum: the CUDA calls that enqueue the step
  double gap_us_sum = 0;      // async: of host_us, between collect and the next launch
  int64_t ahead_steps = 0;    // async: counted decode steps launched before the step before was collected
  double decode_ctx_sum = 0;  // mean keys per sequence read by each counted decode step, summed
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

double spread(const std::vector<double>& v) {
  const double m = median(v);
  if (v.empty() || m == 0) return 0;
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return (*hi - *lo) / m;
}

// One run: B prompts of L random tokens (seeded), O greedy tokens each, ignore_eos.
Result<RunStats> run_once(engine::Engine& eng, int32_t vocab, int batch, int len, int out_len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, vocab - 1);
  std::unordered_map<uint64_t, bool> got_first;
  for (int b = 0; b < batch; ++b) {
    engine::GenerationRequest r;
    r.prompt.resize(static_cast<size_t>(len));
    for (int32_t& t : r.prompt) t = tok(rng);
    r.max_tokens = out_len;
    r.ignore_eos = true;
    r.sampling.temperature = 0.f;
    MPS_ASSIGN_OR_RETURN(uint64_t id, eng.add_request(std::move(r)));
    got_first[id] = false;
  }
  const backend::Backend& be = eng.backend();
  // note: with async scheduling a step() call collects the step the previous call launched and
  // launches the next, so its time is the previous launch's step: that is the one to classify (the
  // launched one made the first all-decode call absorb the last, long prefill step).
  const bool async = eng.options().async_scheduling;
  backend::StepTimings prev_launch;
  bool prev_decode_phase = false;
  bool prev_ahead = false;  // the previous call launched its step ahead
  RunStats st;
  int firsts = 0;
  int64_t generated_total = 0;  // tokens generated so far, all requests
  const auto t0 = Clock::now();
  auto t_prefilled = t0;
  while (eng.has_unfinished()) {
    const bool decode_phase = firsts == batch;
    const double gap0 = eng.stats().async_gap_ms_total;
    const int64_t ahead0 = eng.stats().async_launched_ahead;
    const auto s0 = Clock::now();
    const std::vector<engine::RequestOutput> outs = eng.step();
    const auto s1 = Clock::now();
    const double gap_us = (eng.stats().async_gap_ms_total - gap0) * 1e3;
    // note: with chunked prefill the engine decodes early sequences while later ones prefill, so
    // "every request has its first token" does not mean B sequences decode together. A decode
    // step counts only when the backend reports a decode-only step of all B sequences (backends
    // without timings: every step after the last first token).
    const backend::StepTimings tm = be.last_step_timings();
    const backend::StepTimings& timed = async ? prev_launch : tm;  // the step this call waited for
    const bool full_decode = tm.valid ? (timed.valid && timed.decode_only && timed.num_seqs == batch)
                                      : (async ? prev_decode_phase : decode_phase);
    const bool timed_ahead = async && prev_ahead;
    prev_launch = tm;
    prev_decode_phase = decode_phase;
    prev_ahead = eng.stats().async_launched_ahead > ahead0;
    if (full_decode) {
      ++st.decode_steps;
      st.ahead_steps += timed_ahead ? 1 : 0;
      // A decode step of request r reads its prompt plus the tokens generated before the step.
      st.decode_ctx_sum += len + double(generated_total) / batch;
      st.decode_step_s_sum += seconds(s1 - s0);
      if (tm.valid) {
        st.host_us.push_back(seconds(s1 - s0) * 1e6 - tm.wait_us);
        st.backend_us_sum += tm.host_us;
        st.enqueue_us_sum += tm.enqueue_us;
        st.gap_us_sum += gap_us;
      }
    }
    for (const engine::RequestOutput& o : outs) {
      generated_total += static_cast<int64_t>(o.new_tokens.size());
      auto it = got_first.find(o.request_id);
      if (it != got_first.end() && !it->second && !o.new_tokens.empty()) {
        it->second = true;
        if (++firsts == batch) t_prefilled = Clock::now();
      }
    }
  }
  const auto t_end = Clock::now();
  if (firsts != batch) return Status::error("bench offline: a request finished without generating a token");
  st.prefill_s = seconds(t_prefilled - t0);
  st.decode_s = seconds(t_end - t_prefilled);
  return st;
}

std::string fmt_opt(double v, const char* f) { return v < 0 ? std::string("n/a") : fmt::format(fmt::runtime(f), v); }

// Weights of one layer's linears: qkv, o, gate/up and down.
double linear_params_per_layer(const model::ModelConfig& c) {
  const double h = double(c.hidden_size), q = double(c.q_dim()), k = double(c.kv_dim());
  return h * (q + 2 * k) + q * h + 3 * double(c.intermediate_size) * h;
}

}  // namespace

double decode_weight_bytes(const model::ModelConfig& c) {
  const double h = double(c.hidden_size), q = double(c.q_dim()), k = double(c.kv_dim());
  const double v = double(c.vocab_size);
  double per_layer = linear_params_per_layer(c) + 2 * h;
  if (c.attention_bias) per_layer += q + 2 * k;
  if (c.qk_norm) per_layer += 2 * double(c.head_dim);
  return 2.0 * (double(c.num_layers) * per_layer + h + v * h);
}

double decode_kv_bytes(const model::ModelConfig& c, int batch, double ctx) {
  return double(batch) * ctx * double(c.num_layers) * 2.0 * double(c.kv_dim()) * 2.0;
}

double decode_flops(const model::ModelConfig& c, int batch, double ctx) {
  const double h = double(c.hidden_size), q = double(c.q_dim()), v = double(c.vocab_size);
  const double proj = 2.0 * linear_params_per_layer(c);  // per token per layer
  const double attn = 2.0 * 2.0 * q * ctx;                           // per token per layer
  return double(batch) * (double(c.num_layers) * (proj + attn) + 2.0 * v * h);
}

double prefill_flops(const model::ModelConfig& c, int batch, int len) {
  const double h = double(c.hidden_size), q = double(c.q_dim()), v = double(c.vocab_size), L = double(len);
  const double proj = 2.0 * linear_params_per_layer(c);  // per token per layer
  const double attn = 2.0 * 2.0 * q * (L * (L + 1) / 2.0);             // per sequence per layer
  return double(batch) * (double(c.num_layers) * (L * proj + attn) + 2.0 * v * h);
}

Result<std::vector<OfflineBenchResult>> run_offline_bench(engine::Engine& eng, int32_t tokenizer_vocab,
                                                          const OfflineBenchOptions& o, std::FILE* out) {
  if (o.output_len < 2) return Status::error("bench offline: --output-len must be >= 2");
  if (o.repeats < 1 || o.warmup < 0) return Status::error("bench offline: --repeats >= 1 and --warmup >= 0");
  const backend::Backend& be = eng.backend();
  const model::ModelConfig& c = be.config();
  const int32_t vocab = static_cast<int32_t>(std::min<int64_t>(c.vocab_size, tokenizer_vocab));

  backend::DeviceCeilings ceil;
  bool have_ceilings = false;
  if (auto r = be.measure_ceilings(); r.is_ok()) {
    ceil = r.value();
    have_ceilings = true;
    std::fprintf(out, "ceilings: device=\"%s\" cuda_driver=%s cuda_runtime=%s copy_gb_s=%.0f bf16_tflops=%.1f\n",
                 ceil.device_name.c_str(), ceil.driver.c_str(), ceil.runtime.c_str(), ceil.copy_gb_s,
                 ceil.bf16_tflops);
  } else {
    std::fprintf(out, "ceilings: n/a (%s)\n", r.error().c_str());
  }

  std::vector<OfflineBenchResult> results;
  std::vector<std::string> summaries;
  uint64_t run_seed = o.seed * 1000003ull;
  for (int batch : o.batches) {
    for (int len : o.input_lens) {
      for (int w = 0; w < o.warmup; ++w) {
        MPS_ASSIGN_OR_RETURN(RunStats ignored, run_once(eng, vocab, batch, std::min(len, 16), o.output_len, ++run_seed));
        (void)ignored;
      }
      std::vector<double> pf, dt, ds, host, host_p50, backend_host, enqueue, gap, ctxs, ahead;
      for (int rep = 0; rep < o.repeats; ++rep) {
        MPS_ASSIGN_OR_RETURN(RunStats st, run_once(eng, vocab, batch, len, o.output_len, ++run_seed));
        pf.push_back(double(batch) * len / st.prefill_s);
        if (st.decode_steps > 0) {
          dt.push_back(double(batch) * double(st.decode_steps) / st.decode_step_s_sum);
          ds.push_back(st.decode_step_s_sum / double(st.decode_steps) * 1e3);
          ctxs.push_back(st.decode_ctx_sum / double(st.decode_steps));
          ahead.push_back(double(st.ahead_steps) / double(st.decode_steps));
        }
        if (!st.host_us.empty()) {
          const double n = double(st.host_us.size());
          host.push_back(std::accumulate(st.host_us.begin(), st.host_us.end(), 0.0) / n);
          host_p50.push_back(median(st.host_us));
          backend_host.push_back(st.backend_us_sum / n);
          enqueue.push_back(st.enqueue_us_sum / n);
          gap.push_back(st.gap_us_sum / n);
        }
        std::fprintf(out, "  run batch=%d input_len=%d rep=%d prefill_s=%.4f decode_s=%.4f decode_steps=%lld\n",
                     batch, len, rep, st.prefill_s, st.decode_s, static_cast<long long>(st.decode_steps));
      }
      OfflineBenchResult r;
      r.batch = batch, r.input_len = len, r.output_len = o.output_len, r.repeats = o.repeats;
      r.prefill_tok_s = median(pf), r.prefill_tok_s_spread = spread(pf);
      r.decode_tok_s = median(dt), r.decode_tok_s_spread = spread(dt);
      r.decode_step_ms = median(ds), r.decode_step_ms_spread = spread(ds);
      if (!host.empty()) {
        r.host_us_per_step = median(host);
        r.host_us_p50 = median(host_p50);
        r.backend_host_us_per_step = median(backend_host);
        r.enqueue_us_per_step = median(enqueue);
        if (eng.options().async_scheduling) r.gap_us_per_step = median(gap);
      }
      if (eng.options().async_scheduling && !ahead.empty()) r.launched_ahead_frac = median(ahead);
      // Mean keys per sequence over the counted decode steps (with chunked prefill those are the
      // last ones, not L + O/2); without any, the mean over L + 1 ... L + O - 1.
      const double ctx = ctxs.empty() ? len + o.output_len / 2.0 : median(ctxs);
      r.decode_bytes_per_step = decode_weight_bytes(c) + decode_kv_bytes(c, batch, ctx);
      r.decode_flops_per_step = decode_flops(c, batch, ctx);
      r.prefill_flops = prefill_flops(c, batch, len);
      if (ds.empty()) {
        std::fprintf(out, "  note batch=%d input_len=%d: no decode step ran all %d sequences together (raise "
                          "--output-len above batch*input_len/max_num_batched_tokens)\n", batch, len, batch);
      }
      if (have_ceilings && !ds.empty()) {
        const double bytes_s = r.decode_bytes_per_step / (ceil.copy_gb_s * 1e9);
        const double flops_s = r.decode_flops_per_step / (ceil.bf16_tflops * 1e12);
        r.decode_roofline_frac = bytes_s / (r.decode_step_ms * 1e-3);
        r.decode_compute_frac = flops_s / (r.decode_step_ms * 1e-3);
        r.decode_floor_frac = std::max(bytes_s, flops_s) / (r.decode_step_ms * 1e-3);
      }
      if (have_ceilings) {
        r.prefill_peak_frac = (r.prefill_flops / (double(batch) * len / r.prefill_tok_s)) / (ceil.bf16_tflops * 1e12);
      }
      if (o.profile && be.set_kernel_profiling(true)) {
        MPS_ASSIGN_OR_RETURN(RunStats ps, run_once(eng, vocab, batch, len, o.output_len, ++run_seed));
        be.set_kernel_profiling(false);
        std::vector<backend::KernelTime> prof = be.kernel_profile();
        std::sort(prof.begin(), prof.end(), [](const auto& a, const auto& b) { return a.total_us > b.total_us; });
        // Per step: decode kernels over the decode steps, prefill kernels over the prefill steps.
        for (const backend::KernelTime& k : prof) {
          const bool dec = k.name.rfind("decode/", 0) == 0;
          std::fprintf(out, "  profile batch=%d input_len=%d kernel=%s calls=%lld total_us=%.1f per_decode_step_us=%s\n",
                       batch, len, k.name.c_str(), static_cast<long long>(k.calls), k.total_us,
                       dec && ps.decode_steps ? fmt::format("{:.1f}", k.total_us / double(ps.decode_steps)).c_str()
                                              : "-");
        }
      }
      const double host_frac = r.host_us_per_step < 0 ? -1 : r.host_us_per_step * 1e-3 / r.decode_step_ms;
      summaries.push_back(fmt::format(
          "bench_offline: model={} device={} gpu=\"{}\" batch={} input_len={} output_len={} repeats={} "
          "prefill_tok_s={:.0f} prefill_spread={:.3f} decode_tok_s={:.0f} decode_spread={:.3f} "
          "decode_step_ms={:.4f} step_spread={:.3f} host_us_per_step={} host_frac={} "
          "decode_bytes_per_step={:.4g} decode_roofline_frac={} prefill_flops={:.4g} prefill_peak_frac={} "
          "copy_gb_s={} bf16_tflops={} host_backend_us={} host_enqueue_us={} host_gap_us={} launched_ahead={} "
          "decode_flops_per_step={:.4g} decode_compute_frac={} decode_floor_frac={} host_us_p50={}",
          o.model_label.empty() ? "?" : o.model_label, be.name(), have_ceilings ? ceil.device_name : "n/a", batch,
          len, o.output_len, o.repeats, r.prefill_tok_s, r.prefill_tok_s_spread, r.decode_tok_s,
          r.decode_tok_s_spread, r.decode_step_ms, r.decode_step_ms_spread, fmt_opt(r.host_us_per_step, "{:.1f}"),
          fmt_opt(host_frac, "{:.3f}"), r.decode_bytes_per_step, fmt_opt(r.decode_roofline_frac, "{:.3f}"),
          r.prefill_flops, fmt_opt(r.prefill_peak_frac, "{:.3f}"),
          have_ceilings ? fmt::format("{:.0f}", ceil.copy_gb_s) : "n/a",
          have_ceilings ? fmt::format("{:.1f}", ceil.bf16_tflops) : "n/a", fmt_opt(r.backend_host_us_per_step, "{:.1f}"),
          fmt_opt(r.enqueue_us_per_step, "{:.1f}"), fmt_opt(r.gap_us_per_step, "{:.1f}"),
          fmt_opt(r.launched_ahead_frac, "{:.2f}"), r.decode_flops_per_step, fmt_opt(r.decode_compute_frac, "{:.3f}"),
          fmt_opt(r.decode_floor_frac, "{:.3f}"), fmt_opt(r.host_us_p50, "{:.1f}")));
      results.push_back(r);
    }
  }
  for (const std::string& s : summaries) std::fprintf(out, "%s\n", s.c_str());
  std::fflush(out);
  return results;
}

}  // namespace mpserve::bench
