// Batch norm or group norm (layer and instance norm are its G=1 and G=C cases) + 2x2 max-pool +
// ReLU in one pass over a channels_last map, forward and backward. The math, the dtypes and the
// rounding are described in fused_bn_pool.py and fused_gn_pool.py, which load this file
// through normbench/kernels/build.py (one build per torch version, flags, source and CPU level).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {
inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  uint32_t u = ((uint32_t)p[i]) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) {  // round to nearest even, as c10::BFloat16
  uint32_t u; std::memcpy(&u, &v, 4);
  u = (v != v) ? 0x7FC00000u : u + 0x7FFFu + ((u >> 16) & 1u);  // branch-free, so loops vectorize
  p[i] = (uint16_t)(u >> 16);
}

// y in the storage dtype, back in float32: the max-pool compares what PyTorch would have stored
inline float stored(const float*, float v) { return v; }
inline float stored(const uint16_t*, float v) {  // the same rounding as store(), in registers
  uint32_t u; std::memcpy(&u, &v, 4);
  u = (v != v) ? 0x7FC00000u : ((u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u);
  float f; std::memcpy(&f, &u, 4); return f;
}

// Shapes: x (N, C, H, W) stored channels_last, i.e. (N, H, W, C) in memory; pooled (N, Ho, Wo, C).
template <typename T>
std::vector<torch::Tensor> stats_impl(const torch::Tensor& x) {
  const int64_t C = x.size(1), rows = x.numel() / C;
  const T* xp = (const T*)x.data_ptr();
  const int threads = at::get_num_threads();
  std::vector<double> sums(threads * C, 0.0), squares(threads * C, 0.0);
  double* sums_all = sums.data();
  double* squares_all = squares.data();
  at::parallel_for(0, rows, 64, [=](int64_t b, int64_t e) {
    double* __restrict__ s = sums_all + at::get_thread_num() * C;
    const T* __restrict__ xp_ = xp;
    std::vector<float> block(C);  // float sums over at most 64 rows, then added in float64
    float* __restrict__ f = block.data();
    for (int64_t r0 = b; r0 < e; r0 += 64) {
      std::fill(block.begin(), block.end(), 0.f);
      for (int64_t r = r0; r < std::min(e, r0 + 64); r++) {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) f[c] += load(xp_, r * C + c);
      }
      for (int64_t c = 0; c < C; c++) s[c] += f[c];
    }
  });
  std::vector<double> mean(C, 0.0);
  for (int t = 0; t < threads; t++) for (int64_t c = 0; c < C; c++) mean[c] += sums[t * C + c];
  for (int64_t c = 0; c < C; c++) mean[c] /= rows;
  const double* mean_all = mean.data();
  at::parallel_for(0, rows, 64, [=](int64_t b, int64_t e) {  // second pass: centred, no cancellation
    double* __restrict__ s = squares_all + at::get_thread_num() * C;
    const T* __restrict__ xp_ = xp;
    std::vector<float> centre(mean_all, mean_all + C), block(C);
    const float* __restrict__ m_ = centre.data();
    float* __restrict__ f = block.data();
    for (int64_t r0 = b; r0 < e; r0 += 64) {
      std::fill(block.begin(), block.end(), 0.f);
      for (int64_t r = r0; r < std::min(e, r0 + 64); r++) {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) { const float d = load(xp_, r * C + c) - m_[c]; f[c] += d * d; }
      }
      for (int64_t c = 0; c < C; c++) s[c] += f[c];
    }
  });
  auto mean_t = torch::empty({C}, torch::kFloat), var_t = torch::empty({C}, torch::kFloat);
  float* mp = mean_t.data_ptr<float>();
  float* vp = var_t.data_ptr<float>();
  for (int64_t c = 0; c < C; c++) {
    double q = 0.0;
    for (int t = 0; t < threads; t++) q += squares[t * C + c];
    mp[c] = (float)mean[c];
    vp[c] = (float)(q / rows);
  }
  return {mean_t, var_t};
}

// scale, shift: (C,) for every sample (batch norm) or (N, C), one row per sample (group norm).
template <typename T>
std::vector<torch::Tensor> forward_impl(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& shift) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Ho = H / 2, Wo = W / 2;
  const int64_t per_sample = scale.dim() == 2 ? C : 0;  // stride of scale and shift over samples
  auto out = torch::empty({N, C, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto idx = torch::empty({N, Ho, Wo, C}, x.options().dtype(torch::kUInt8));
  auto xmax = torch::empty({N, Ho, Wo, C}, x.options());  // x at each window's argmax, for backward
  const T* xp = (const T*)x.data_ptr();
  T* op = (T*)out.data_ptr();
  T* xm = (T*)xmax.data_ptr();
  uint8_t* ip = idx.data_ptr<uint8_t>();
  const float* sc = scale.data_ptr<float>();
  const float* sh = shift.data_ptr<float>();
  // The loops read local __restrict__ copies of the pointers: through the lambda's captured
  // references the compiler must assume every store may change them, and would not vectorize.
  at::parallel_for(0, N * Ho, 1, [=](int64_t b, int64_t e) {
    const T* __restrict__ xp_ = xp; T* __restrict__ op_ = op; uint8_t* __restrict__ ip_ = ip;
    T* __restrict__ xm_ = xm;
    for (int64_t row = b; row < e; row++) {
      const int64_t n = row / Ho, ho = row % Ho;
      const float* __restrict__ sc_ = sc + n * per_sample; const float* __restrict__ sh_ = sh + n * per_sample;
      for (int64_t wo = 0; wo < Wo; wo++) {
        const int64_t p00 = ((n * H + 2 * ho) * W + 2 * wo) * C, p01 = p00 + C, p10 = p00 + W * C, p11 = p10 + C;
        const int64_t o = (row * Wo + wo) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) {
          float xa = load(xp_, p00 + c);
          float m = stored(xp_, xa * sc_[c] + sh_[c]);
          uint8_t k = 0;
          float xv = load(xp_, p01 + c);
          float v = stored(xp_, xv * sc_[c] + sh_[c]);
          bool take = v > m || v != v;
          m = take ? v : m; k = take ? 1 : k; xa = take ? xv : xa;
          xv = load(xp_, p10 + c);
          v = stored(xp_, xv * sc_[c] + sh_[c]);
          take = v > m || v != v;
          m = take ? v : m; k = take ? 2 : k; xa = take ? xv : xa;
          xv = load(xp_, p11 + c);
          v = stored(xp_, xv * sc_[c] + sh_[c]);
          take = v > m || v != v;
          m = take ? v : m; k = take ? 3 : k; xa = take ? xv : xa;
          store(op_, o + c, (m > 0.f || m != m) ? m : 0.f);
          store(xm_, o + c, xa);  // exact: xa is a value of x in its own dtype
          ip_[o + c] = k;
        }
      }
    }
  });
  return {out, idx, xmax};
}

// The column sums of two (rows, C) arrays, added in float64: two float32 (C,) tensors.
template <typename S>
std::vector<torch::Tensor> column_sums(const S* a, const S* b, int64_t rows, int64_t C) {
  auto sum_a = torch::empty({C}, torch::kFloat), sum_b = torch::empty({C}, torch::kFloat);
  float* pa = sum_a.data_ptr<float>();
  float* pb = sum_b.data_ptr<float>();
  for (int64_t c = 0; c < C; c++) {
    double x = 0.0, y = 0.0;
    for (int64_t r = 0; r < rows; r++) { x += a[r * C + c]; y += b[r * C + c]; }
    pa[c] = (float)x;
    pb[c] = (float)y;
  }
  return {sum_a, sum_b};
}

// dbeta = sum g_y, dgamma = sum g_y * xhat, from the pooled gradient (g_y is zero off the argmax).
template <typename T>
std::vector<torch::Tensor> reduce_impl(const torch::Tensor& grad, const torch::Tensor& out, const torch::Tensor& xmax,
                                       const torch::Tensor& mean, const torch::Tensor& invstd) {
  const int64_t N = out.size(0), C = out.size(1), Ho = out.size(2), Wo = out.size(3);
  const T* gp = (const T*)grad.data_ptr();
  const T* op = (const T*)out.data_ptr();
  const T* xm = (const T*)xmax.data_ptr();
  const float* mu = mean.data_ptr<float>();
  const float* is = invstd.data_ptr<float>();
  const int threads = at::get_num_threads();
  std::vector<double> db(threads * C, 0.0), dg(threads * C, 0.0);  // per-thread sums over its rows
  double* db_all = db.data();
  double* dg_all = dg.data();
  at::parallel_for(0, N * Ho, 1, [=](int64_t b, int64_t e) {
    double* __restrict__ sb = db_all + at::get_thread_num() * C;
    double* __restrict__ sg = dg_all + at::get_thread_num() * C;
    const T* __restrict__ gp_ = gp; const T* __restrict__ op_ = op;
    const T* __restrict__ xm_ = xm; const float* __restrict__ mu_ = mu; const float* __restrict__ is_ = is;
    std::vector<float> block_b(C), block_g(C);  // float sums over one row of windows, then added in float64
    float* __restrict__ fb = block_b.data();
    float* __restrict__ fg = block_g.data();
    for (int64_t row = b; row < e; row++) {
      std::fill(block_b.begin(), block_b.end(), 0.f);
      std::fill(block_g.begin(), block_g.end(), 0.f);
      for (int64_t wo = 0; wo < Wo; wo++) {
        const int64_t o = (row * Wo + wo) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) {
          const float xa = load(xm_, o + c);  // x at the argmax, kept by the forward: no read of x
          const float g = load(op_, o + c) > 0.f ? load(gp_, o + c) : 0.f;  // ReLU backward: zero where out <= 0
          fb[c] += g;
          fg[c] += g * ((xa - mu_[c]) * is_[c]);
        }
      }
      for (int64_t c = 0; c < C; c++) { sb[c] += fb[c]; sg[c] += fg[c]; }
    }
  });
  return column_sums(db.data(), dg.data(), threads, C);  // {dbeta, dgamma}
}

// dx = a * g_y - b - (x - mu) * k at every position of x, with per-channel coefficients (C,) for
// every sample or (N, C), one row per sample (`per_sample`: their stride over samples, 0 or C).
template <typename T>
torch::Tensor input_grad_impl(const torch::Tensor& x, const torch::Tensor& grad, const torch::Tensor& out,
                              const torch::Tensor& idx, const torch::Tensor& a, const torch::Tensor& b,
                              const torch::Tensor& k, const torch::Tensor& mu) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Ho = H / 2, Wo = W / 2;
  const int64_t per_sample = a.dim() == 2 ? C : 0;
  auto dx = torch::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const T* xp = (const T*)x.data_ptr();
  const T* gp = (const T*)grad.data_ptr();
  const T* op = (const T*)out.data_ptr();
  const uint8_t* ip = idx.data_ptr<uint8_t>();
  T* dp = (T*)dx.data_ptr();
  const float* a_all = a.data_ptr<float>(); const float* b_all = b.data_ptr<float>();
  const float* k_all = k.data_ptr<float>(); const float* mu_all = mu.data_ptr<float>();
  at::parallel_for(0, N * H, 1, [=](int64_t begin, int64_t end) {
    const T* __restrict__ xp_ = xp; const T* __restrict__ gp_ = gp; const T* __restrict__ op_ = op;
    const uint8_t* __restrict__ ip_ = ip; T* __restrict__ dp_ = dp;
    for (int64_t row = begin; row < end; row++) {  // row: (n, h) of the full map
      const int64_t n = row / H, h = row % H, ho = h / 2;
      const float* __restrict__ a_ = a_all + n * per_sample; const float* __restrict__ b_ = b_all + n * per_sample;
      const float* __restrict__ k_ = k_all + n * per_sample; const float* __restrict__ mu_ = mu_all + n * per_sample;
      const int64_t first_free = (ho < Ho) ? 2 * Wo : 0;  // columns from here on get no gradient from above
      if (ho < Ho) {
        const int top = (int)((h & 1) * 2);  // the argmax codes of this row's two positions: top, top + 1
        for (int64_t wo = 0; wo < Wo; wo++) {  // both positions of a window row share its loads
          const int64_t p0 = (row * W + 2 * wo) * C, p1 = p0 + C, o = ((n * Ho + ho) * Wo + wo) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            const int arg = ip_[o + c];
            const float g = load(op_, o + c) > 0.f ? load(gp_, o + c) : 0.f;  // ReLU backward
            const float gy0 = arg == top ? g : 0.f, gy1 = arg == top + 1 ? g : 0.f;
            store(dp_, p0 + c, a_[c] * gy0 - b_[c] - (load(xp_, p0 + c) - mu_[c]) * k_[c]);
            store(dp_, p1 + c, a_[c] * gy1 - b_[c] - (load(xp_, p1 + c) - mu_[c]) * k_[c]);
          }
        }
      }
      for (int64_t w = first_free; w < W; w++) {  // a row or column the pool dropped (odd H or W)
        const int64_t p = (row * W + w) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) store(dp_, p + c, -b_[c] - (load(xp_, p + c) - mu_[c]) * k_[c]);
      }
    }
  });
  return dx;
}

// Group statistics of each sample: mean and biased variance over the (C/G, H, W) values of each of
// its G groups of consecutive channels, float32 (N, G) each. Float sums over blocks of 64 positions,
// added in float64; a second, centred pass for the variance (no cancellation).
template <typename T>
std::vector<torch::Tensor> group_stats_impl(const torch::Tensor& x, int64_t G) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), Cg = C / G;
  const T* xp = (const T*)x.data_ptr();
  auto mean_t = torch::empty({N, G}, torch::kFloat), var_t = torch::empty({N, G}, torch::kFloat);
  float* mp = mean_t.data_ptr<float>();
  float* vp = var_t.data_ptr<float>();
  at::parallel_for(0, N, 1, [=](int64_t b, int64_t e) {
    std::vector<float> block(C), centre(C);
    std::vector<double> sums(C), group(G);
    float* __restrict__ f = block.data();
    float* __restrict__ m_ = centre.data();
    for (int64_t n = b; n < e; n++) {
      const T* __restrict__ xs = xp + n * HW * C;
      for (int pass = 0; pass < 2; pass++) {  // 0: sums of x, 1: sums of (x - group mean)^2
        std::fill(sums.begin(), sums.end(), 0.0);
        for (int64_t r0 = 0; r0 < HW; r0 += 64) {
          std::fill(block.begin(), block.end(), 0.f);
          const int64_t r1 = std::min(HW, r0 + 64);
          if (pass == 0) {
            for (int64_t r = r0; r < r1; r++) {
#pragma omp simd
              for (int64_t c = 0; c < C; c++) f[c] += load(xs, r * C + c);
            }
          } else {
            for (int64_t r = r0; r < r1; r++) {
#pragma omp simd
              for (int64_t c = 0; c < C; c++) { const float d = load(xs, r * C + c) - m_[c]; f[c] += d * d; }
            }
          }
          for (int64_t c = 0; c < C; c++) sums[c] += f[c];
        }
        std::fill(group.begin(), group.end(), 0.0);
        for (int64_t c = 0; c < C; c++) group[c / Cg] += sums[c];
        for (int64_t g = 0; g < G; g++) {
          const double value = group[g] / ((double)Cg * HW);
          if (pass == 0) {
            mp[n * G + g] = (float)value;
            for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) m_[c] = (float)value;
          } else {
            vp[n * G + g] = (float)value;
          }
        }
      }
    }
  });
  return {mean_t, var_t};
}

// Per sample and channel: s1 = sum g_y, s2 = sum g_y * xhat over the pooled windows, float32 (N, C)
// each (g_y is zero off the argmax); mean and invstd (N, G) are the group statistics.
template <typename T>
std::vector<torch::Tensor> group_reduce_impl(const torch::Tensor& grad, const torch::Tensor& out, const torch::Tensor& xmax,
                                             const torch::Tensor& mean, const torch::Tensor& invstd) {
  const int64_t N = out.size(0), C = out.size(1), HWo = out.size(2) * out.size(3), G = mean.size(1), Cg = C / G;
  const T* gp = (const T*)grad.data_ptr();
  const T* op = (const T*)out.data_ptr();
  const T* xm = (const T*)xmax.data_ptr();
  const float* mu = mean.data_ptr<float>();
  const float* is = invstd.data_ptr<float>();
  auto s1_t = torch::empty({N, C}, torch::kFloat), s2_t = torch::empty({N, C}, torch::kFloat);
  float* s1 = s1_t.data_ptr<float>();
  float* s2 = s2_t.data_ptr<float>();
  at::parallel_for(0, N, 1, [=](int64_t b, int64_t e) {
    std::vector<float> mean_c(C), invstd_c(C), block_b(C), block_g(C);
    std::vector<double> sb(C), sg(C);
    const float* __restrict__ mu_ = mean_c.data();
    const float* __restrict__ is_ = invstd_c.data();
    float* __restrict__ fb = block_b.data();
    float* __restrict__ fg = block_g.data();
    for (int64_t n = b; n < e; n++) {
      for (int64_t c = 0; c < C; c++) { mean_c[c] = mu[n * G + c / Cg]; invstd_c[c] = is[n * G + c / Cg]; }
      std::fill(sb.begin(), sb.end(), 0.0);
      std::fill(sg.begin(), sg.end(), 0.0);
      const T* __restrict__ gp_ = gp + n * HWo * C; const T* __restrict__ op_ = op + n * HWo * C;
      const T* __restrict__ xm_ = xm + n * HWo * C;
      for (int64_t r0 = 0; r0 < HWo; r0 += 64) {  // float sums over 64 windows, then added in float64
        std::fill(block_b.begin(), block_b.end(), 0.f);
        std::fill(block_g.begin(), block_g.end(), 0.f);
        for (int64_t r = r0; r < std::min(HWo, r0 + 64); r++) {
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            const float g = load(op_, r * C + c) > 0.f ? load(gp_, r * C + c) : 0.f;  // ReLU backward
            fb[c] += g;
            fg[c] += g * ((load(xm_, r * C + c) - mu_[c]) * is_[c]);
          }
        }
        for (int64_t c = 0; c < C; c++) { sb[c] += fb[c]; sg[c] += fg[c]; }
      }
      for (int64_t c = 0; c < C; c++) { s1[n * C + c] = (float)sb[c]; s2[n * C + c] = (float)sg[c]; }
    }
  });
  return {s1_t, s2_t};
}

bool is_bf16(const torch::Tensor& x) { return x.scalar_type() == torch::kBFloat16; }
}  // namespace

// Batch statistics of x, the running-statistics update (when factor > 0) and the per-channel
// affine of the normalization, in one call: {mean, invstd, scale, shift}, float32 (C,) each.
std::vector<torch::Tensor> prepare(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, torch::Tensor running_mean,
                                   torch::Tensor running_var, double factor, double eps) {
  auto ms = is_bf16(x) ? stats_impl<uint16_t>(x) : stats_impl<float>(x);
  const int64_t C = x.size(1);
  const double n = (double)(x.numel() / C);
  auto invstd = torch::empty({C}, torch::kFloat), scale = torch::empty({C}, torch::kFloat), shift = torch::empty({C}, torch::kFloat);
  const float* mp = ms[0].data_ptr<float>();
  const float* vp = ms[1].data_ptr<float>();
  const float* wp = weight.defined() && weight.numel() ? weight.data_ptr<float>() : nullptr;
  const float* bp = bias.defined() && bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* ip = invstd.data_ptr<float>();
  float* sp = scale.data_ptr<float>();
  float* hp = shift.data_ptr<float>();
  for (int64_t c = 0; c < C; c++) {
    ip[c] = (float)(1.0 / std::sqrt((double)vp[c] + eps));
    sp[c] = (wp ? wp[c] : 1.f) * ip[c];
    hp[c] = (bp ? bp[c] : 0.f) - mp[c] * sp[c];
  }
  if (factor > 0) {  // as nn.BatchNorm2d: the running variance takes the unbiased estimate
    float* rm = running_mean.data_ptr<float>();
    float* rv = running_var.data_ptr<float>();
    for (int64_t c = 0; c < C; c++) {
      rm[c] = (float)((1 - factor) * rm[c] + factor * mp[c]);
      rv[c] = (float)((1 - factor) * rv[c] + factor * vp[c] * n / (n - 1));
    }
  }
  return {ms[0], invstd, scale, shift};
}

std::vector<torch::Tensor> forward(torch::Tensor x, torch::Tensor scale, torch::Tensor shift) {
  return is_bf16(x) ? forward_impl<uint16_t>(x, scale, shift) : forward_impl<float>(x, scale, shift);
}
std::vector<torch::Tensor> reduce(torch::Tensor grad, torch::Tensor out, torch::Tensor xmax, torch::Tensor mean,
                                  torch::Tensor invstd) {
  return is_bf16(out) ? reduce_impl<uint16_t>(grad, out, xmax, mean, invstd)
                      : reduce_impl<float>(grad, out, xmax, mean, invstd);
}
torch::Tensor input_grad_from(const torch::Tensor& x, const torch::Tensor& grad, const torch::Tensor& out,
                              const torch::Tensor& idx, const torch::Tensor& a, const torch::Tensor& b,
                              const torch::Tensor& k, const torch::Tensor& mu) {
  return is_bf16(x) ? input_grad_impl<uint16_t>(x, grad, out, idx, a, b, k, mu)
                    : input_grad_impl<float>(x, grad, out, idx, a, b, k, mu);
}

// Batch norm: dx = gamma * invstd * (g_y - dbeta / M - xhat * dgamma / M), M = N * H * W.
torch::Tensor input_grad(torch::Tensor x, torch::Tensor grad, torch::Tensor out, torch::Tensor idx, torch::Tensor mean,
                         torch::Tensor invstd, torch::Tensor gamma, torch::Tensor dbeta, torch::Tensor dgamma) {
  const int64_t C = x.size(1);
  const double M = (double)x.numel() / C;
  auto a = torch::empty({C}, torch::kFloat), b = torch::empty({C}, torch::kFloat), k = torch::empty({C}, torch::kFloat);
  const float* ga = gamma.data_ptr<float>();
  const float* is = invstd.data_ptr<float>();
  const float* db = dbeta.data_ptr<float>();
  const float* dg = dgamma.data_ptr<float>();
  float* ap = a.data_ptr<float>(); float* bp = b.data_ptr<float>(); float* kp = k.data_ptr<float>();
  for (int64_t c = 0; c < C; c++) {
    const double s = (double)ga[c] * is[c];
    ap[c] = (float)s;
    bp[c] = (float)(s * db[c] / M);
    kp[c] = (float)(s * dg[c] / M * is[c]);
  }
  return input_grad_from(x, grad, out, idx, a, b, k, mean);
}

// Group statistics of x (G groups of C/G consecutive channels per sample) and the per-sample,
// per-channel affine of the normalization: {mean, invstd} float32 (N, G), {scale, shift} (N, C).
std::vector<torch::Tensor> group_prepare(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, int64_t groups,
                                         double eps) {
  auto ms = is_bf16(x) ? group_stats_impl<uint16_t>(x, groups) : group_stats_impl<float>(x, groups);
  const int64_t N = x.size(0), C = x.size(1), Cg = C / groups;
  auto invstd = torch::empty({N, groups}, torch::kFloat);
  auto scale = torch::empty({N, C}, torch::kFloat), shift = torch::empty({N, C}, torch::kFloat);
  const float* mp = ms[0].data_ptr<float>();
  const float* vp = ms[1].data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* ip = invstd.data_ptr<float>();
  float* sp = scale.data_ptr<float>();
  float* hp = shift.data_ptr<float>();
  for (int64_t i = 0; i < N * groups; i++) ip[i] = (float)(1.0 / std::sqrt((double)vp[i] + eps));
  for (int64_t n = 0; n < N; n++) {
    for (int64_t c = 0; c < C; c++) {
      const int64_t g = n * groups + c / Cg;
      sp[n * C + c] = wp[c] * ip[g];
      hp[n * C + c] = bp[c] - mp[g] * sp[n * C + c];
    }
  }
  return {ms[0], invstd, scale, shift};
}

// Group norm's backward from the pooled gradient: {dx, dgamma, dbeta}. Per sample n and group g
// of M = C/G * H * W values: dx = invstd * (gamma * g_y - A / M - xhat * B / M), A = sum over the
// group of gamma * g_y, B = sum of gamma * g_y * xhat; dbeta = sum g_y, dgamma = sum g_y * xhat.
std::vector<torch::Tensor> group_backward(torch::Tensor x, torch::Tensor grad, torch::Tensor out, torch::Tensor idx,
                                          torch::Tensor xmax, torch::Tensor mean, torch::Tensor invstd,
                                          torch::Tensor gamma, bool input_grad_needed) {
  auto sums = is_bf16(out) ? group_reduce_impl<uint16_t>(grad, out, xmax, mean, invstd)
                           : group_reduce_impl<float>(grad, out, xmax, mean, invstd);
  const int64_t N = x.size(0), C = x.size(1), G = mean.size(1), Cg = C / G;
  const double M = (double)Cg * x.size(2) * x.size(3);
  const float* s1 = sums[0].data_ptr<float>();
  const float* s2 = sums[1].data_ptr<float>();
  const float* ga = gamma.data_ptr<float>();
  const float* mp = mean.data_ptr<float>();
  const float* is = invstd.data_ptr<float>();
  auto totals = column_sums(s1, s2, N, C);
  const torch::Tensor dbeta = totals[0], dgamma = totals[1];
  if (!input_grad_needed) return {torch::Tensor(), dgamma, dbeta};
  auto a = torch::empty({N, C}, torch::kFloat), b = torch::empty({N, C}, torch::kFloat);
  auto k = torch::empty({N, C}, torch::kFloat), mu = torch::empty({N, C}, torch::kFloat);
  float* ap = a.data_ptr<float>(); float* bp = b.data_ptr<float>();
  float* kp = k.data_ptr<float>(); float* up = mu.data_ptr<float>();
  for (int64_t n = 0; n < N; n++) {
    for (int64_t g = 0; g < G; g++) {
      double A = 0.0, B = 0.0;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) { A += (double)ga[c] * s1[n * C + c]; B += (double)ga[c] * s2[n * C + c]; }
      const double r = is[n * G + g];
      for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
        ap[n * C + c] = (float)(ga[c] * r);
        bp[n * C + c] = (float)(r * A / M);
        kp[n * C + c] = (float)(r * r * B / M);
        up[n * C + c] = mp[n * G + g];
      }
    }
  }
  return {input_grad_from(x, grad, out, idx, a, b, k, mu), dgamma, dbeta};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("prepare", torch::wrap_pybind_function(prepare), "batch statistics, running-statistics update, affine");
  m.def("forward", torch::wrap_pybind_function(forward), "pooled output, argmax codes, x at each argmax");
  m.def("reduce", torch::wrap_pybind_function(reduce), "dbeta and dgamma from the pooled gradient");
  m.def("input_grad", torch::wrap_pybind_function(input_grad), "the input gradient at every position of x");
  m.def("group_prepare", torch::wrap_pybind_function(group_prepare), "group statistics and per-sample affine");
  m.def("group_backward", torch::wrap_pybind_function(group_backward), "group norm's dx, dgamma, dbeta");
}
