// Causal depthwise conv over time followed by SiLU, forward and backward, for CPU tensors.
//
// The CPU counterpart of causal-conv1d's fused kernel (the Mamba-2 block's conv on its x, B, C
// channels). With ATen ops each tap of the conv is a pass over the whole tensor, and backward
// needs a dozen such passes; here each direction reads its inputs once, one (batch row, channel
// group) per task, with the time loop innermost-but-one so the K-tap window stays in cache.
//
// Layout (channels last, as the block produces them):
//   x      (B, L, G, C), any strides with x.stride(3) == 1 (a column slice of the projection)
//   weight (G, K, C) and bias (G, C), contiguous (taps before channels: every inner loop runs
//   over channels with unit stride, so it vectorises)
//   pre_t  = bias + sum_k weight[k] * x_{t - (K - 1) + k}    (x_s = 0 for s < 0)
//   out_t  = SiLU(pre_t) = pre_t * sigmoid(pre_t)
// Backward recomputes pre (cheaper than storing it: one more read of x, which is kept anyway).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Tasks are (batch row, channel group, segment of kSegment time steps): enough of them for every
// thread even for one long sequence (serving, Mamba-1 with batch 1).
constexpr int64_t kSegment = 128;

// pre-activations of one (batch row, group) at time t, into acc[0..C)
template <typename T>
inline void pre_activation(const T* __restrict xg, int64_t sl, const T* __restrict w, const T* __restrict bias,
                           int64_t t, int64_t C, int64_t K, T* __restrict acc) {
  if (K == 4 && t >= 3) {  // the usual width, all taps inside the sequence: one pass over the channels
    const T *__restrict x0 = xg + (t - 3) * sl, *__restrict x1 = x0 + sl, *__restrict x2 = x1 + sl, *__restrict x3 = x2 + sl;
    const T *__restrict w0 = w, *__restrict w1 = w + C, *__restrict w2 = w + 2 * C, *__restrict w3 = w + 3 * C;
    for (int64_t c = 0; c < C; ++c) acc[c] = bias[c] + w0[c] * x0[c] + w1[c] * x1[c] + w2[c] * x2[c] + w3[c] * x3[c];
    return;
  }
  for (int64_t c = 0; c < C; ++c) acc[c] = bias[c];
  for (int64_t k = 0; k < K; ++k) {
    const int64_t s = t - (K - 1) + k;
    if (s < 0) continue;
    const T* __restrict xs = xg + s * sl;
    const T* __restrict wk = w + k * C;
    for (int64_t c = 0; c < C; ++c) acc[c] += wk[c] * xs[c];
  }
}

template <typename T>
void forward_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& out) {
  const int64_t Bn = x.size(0), L = x.size(1), G = x.size(2), C = x.size(3), K = weight.size(1);
  const int64_t sb = x.stride(0), sl = x.stride(1), sg = x.stride(2);
  const T* xp = x.data_ptr<T>();
  const T* wp = weight.data_ptr<T>();
  const T* bp = bias.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t segments = (L + kSegment - 1) / kSegment;
  at::parallel_for(0, Bn * G * segments, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (G * segments), g = task / segments % G, t0 = task % segments * kSegment;
      const T* xg = xp + b * sb + g * sg;
      T* og = op + (b * L * G + g) * C;
      const T* __restrict w = wp + g * C * K;
      const T* __restrict bg = bp + g * C;
      for (int64_t t = t0; t < std::min(L, t0 + kSegment); ++t) {
        if (K == 4 && t >= 3) {  // the usual case in one pass: taps, bias and SiLU, no scratch
          const T *__restrict x0 = xg + (t - 3) * sl, *__restrict x1 = x0 + sl, *__restrict x2 = x1 + sl, *__restrict x3 = x2 + sl;
          T* __restrict o = og + t * G * C;
          for (int64_t c = 0; c < C; ++c) {
            const T pre = bg[c] + w[c] * x0[c] + w[C + c] * x1[c] + w[2 * C + c] * x2[c] + w[3 * C + c] * x3[c];
            o[c] = pre / (T(1) + std::exp(-pre));
          }
          continue;
        }
        pre_activation(xg, sl, w, bg, t, C, K, acc.data());
        T* __restrict o = og + t * G * C;
        const T* __restrict a = acc.data();
        for (int64_t c = 0; c < C; ++c) o[c] = a[c] / (T(1) + std::exp(-a[c]));
      }
    }
  });
}

template <typename T>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                     const at::Tensor& bias, at::Tensor& grad_x, at::Tensor& grad_weight, at::Tensor& grad_bias) {
  const int64_t Bn = x.size(0), L = x.size(1), G = x.size(2), C = x.size(3), K = weight.size(1);
  const int64_t sb = x.stride(0), sl = x.stride(1), sg = x.stride(2);
  const T* xp = x.data_ptr<T>();
  const T* gop = grad_out.data_ptr<T>();  // contiguous (B, L, G, C)
  const T* wp = weight.data_ptr<T>();
  const T* bp = bias.data_ptr<T>();
  T* gxp = grad_x.data_ptr<T>();  // contiguous (B, L, G, C)
  // Weight and bias gradients: one double accumulator per thread, summed at the end, so the
  // result does not depend on how the tasks were split among threads beyond rounding.
  const int64_t n_threads = at::get_num_threads();
  std::vector<double> partial(n_threads * G * C * (K + 1), 0.0);
  const int64_t segments = (L + kSegment - 1) / kSegment;
  at::parallel_for(0, Bn * G * segments, 1, [&](int64_t begin, int64_t end) {
    double* mine = partial.data() + at::get_thread_num() * G * C * (K + 1);
    std::vector<T> acc(C), grad_pre((kSegment + K - 1) * C), sum_w(C * K), sum_b(C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (G * segments), g = task / segments % G, t0 = task % segments * kSegment;
      const int64_t t1 = std::min(L, t0 + kSegment), t_end = std::min(L, t1 + K - 1);
      const T* xg = xp + b * sb + g * sg;
      const T* wg = wp + g * C * K;
      const T* gog = gop + (b * L * G + g) * C;
      T* gxg = gxp + (b * L * G + g) * C;
      std::fill(sum_w.begin(), sum_w.end(), T(0));
      std::fill(sum_b.begin(), sum_b.end(), T(0));
      // grad_pre over the segment and the K-1 positions after it (which dL/dx of its last
      // positions reads); the weight and bias sums take the segment's own positions only
      for (int64_t t = t0; t < t_end; ++t) {
        pre_activation(xg, sl, wg, bp + g * C, t, C, K, acc.data());
        const T* __restrict go = gog + t * G * C;
        const T* __restrict a = acc.data();
        T* __restrict gp = grad_pre.data() + (t - t0) * C;
        for (int64_t c = 0; c < C; ++c) {  // d SiLU(p) / dp = s (1 + p (1 - s)), s = sigmoid(p)
          const T s = T(1) / (T(1) + std::exp(-a[c]));
          gp[c] = go[c] * s * (T(1) + a[c] * (T(1) - s));
        }
        if (t >= t1) continue;
        T* __restrict sb_ = sum_b.data();
        for (int64_t c = 0; c < C; ++c) sb_[c] += gp[c];
        for (int64_t k = 0; k < K; ++k) {  // dL/dw_k += grad_pre_t * x_{t - (K-1) + k}
          const int64_t s = t - (K - 1) + k;
          if (s < 0) continue;
          const T* __restrict xs = xg + s * sl;
          T* __restrict sw = sum_w.data() + k * C;
          for (int64_t c = 0; c < C; ++c) sw[c] += gp[c] * xs[c];
        }
      }
      for (int64_t t = t0; t < t1; ++t) {  // dL/dx_t = sum_k w_k grad_pre_{t + (K-1) - k}: the conv transposed
        T* __restrict gx = gxg + t * G * C;
        for (int64_t c = 0; c < C; ++c) gx[c] = T(0);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = t + (K - 1) - k;
          if (s >= L) continue;
          const T* __restrict gp = grad_pre.data() + (s - t0) * C;
          const T* __restrict wk = wg + k * C;
          for (int64_t c = 0; c < C; ++c) gx[c] += wk[c] * gp[c];
        }
      }
      double* mw = mine + g * C * (K + 1);
      for (int64_t i = 0; i < C * K; ++i) mw[i] += sum_w[i];
      for (int64_t c = 0; c < C; ++c) mw[C * K + c] += sum_b[c];
    }
  });
  T* gwp = grad_weight.data_ptr<T>();
  T* gbp = grad_bias.data_ptr<T>();
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t i = 0; i < C * (K + 1); ++i) {
      double total = 0.0;
      for (int64_t th = 0; th < n_threads; ++th) total += partial[(th * G + g) * C * (K + 1) + i];
      if (i < C * K) gwp[g * C * K + i] = static_cast<T>(total);
      else gbp[g * C + i - C * K] = static_cast<T>(total);
    }
  }
}

void check(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.stride(3) == 1, "x must be a CPU (B, L, G, C) tensor with unit channel stride");
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == x.size(2) && weight.size(2) == x.size(3) && weight.is_contiguous(),
              "weight must be a contiguous (G, K, C) tensor");
  TORCH_CHECK(bias.dim() == 2 && bias.size(0) == x.size(2) && bias.size(1) == x.size(3) && bias.is_contiguous(),
              "bias must be a contiguous (G, C) tensor");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type(), "dtypes must match");
}

}  // namespace

at::Tensor causal_conv_silu_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  check(x, weight, bias);
  auto out = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv_silu_forward",
                             [&] { forward_kernel<scalar_t>(x, weight, bias, out); });
  return out;
}

std::vector<at::Tensor> causal_conv_silu_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                  const at::Tensor& weight, const at::Tensor& bias) {
  check(x, weight, bias);
  auto grad = grad_out.contiguous();
  auto grad_x = at::empty(x.sizes(), x.options());
  auto grad_weight = at::empty_like(weight);
  auto grad_bias = at::empty_like(bias);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv_silu_backward", [&] {
    backward_kernel<scalar_t>(grad, x, weight, bias, grad_x, grad_weight, grad_bias);
  });
  return {grad_x, grad_weight, grad_bias};
}
