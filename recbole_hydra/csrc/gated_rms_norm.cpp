// Mamba-2's gated RMSNorm, out = RMSNorm(x * SiLU(z)) per group of S channels, for CPU tensors.
//
// With ATen ops, autograd keeps five tensors of x's size for backward (x, z, SiLU(z), the gated
// x, the normalised x) and each op is a pass over memory. Here forward is one pass and keeps one
// inverse RMS per (row, group); backward is one pass that recomputes the gate and the
// normalised values from x and z (which backward keeps anyway).
//
// Layout: x, z (N, G, S) with unit stride over S (any other strides: z is a column slice of the
// input projection); weight (G * S) contiguous; out (N, G * S) and inv_rms (N, G) contiguous.
//   g = SiLU(z), v = x g, r = (mean_S(v^2) + eps)^(-1/2), n = v r, out = n w
// Backward, with dn = dout w:  dv = r (dn - n mean_S(dn n)),  dx = dv g,  dz = dv x SiLU'(z),
// dw = sum over rows of dout n.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

// One (row, group) of S channels each; plain functions of restrict pointers so that the loops
// vectorise (exp included). Returns the inverse RMS.
template <typename T>
inline T forward_group(const T* __restrict x, const T* __restrict z, const T* __restrict w, T eps, T* __restrict v,
                       T* __restrict out, int64_t S) {
  T sum_sq = 0;
  for (int64_t c = 0; c < S; ++c) {
    v[c] = x[c] * z[c] / (T(1) + std::exp(-z[c]));
    sum_sq += v[c] * v[c];
  }
  const T r = T(1) / std::sqrt(sum_sq / T(S) + eps);
  for (int64_t c = 0; c < S; ++c) out[c] = v[c] * r * w[c];
  return r;
}

template <typename T>
inline void backward_group(const T* __restrict go, const T* __restrict x, const T* __restrict z, const T* __restrict w,
                           T r, T* __restrict sig, T* __restrict n, T* __restrict dn, double* __restrict dw,
                           T* __restrict gx, T* __restrict gz, int64_t S) {
  T dot = 0;
  for (int64_t c = 0; c < S; ++c) {
    sig[c] = T(1) / (T(1) + std::exp(-z[c]));
    n[c] = x[c] * z[c] * sig[c] * r;
    dn[c] = go[c] * w[c];
    dot += dn[c] * n[c];
  }
  const T mean_dot = dot / T(S);
  for (int64_t c = 0; c < S; ++c) {
    dw[c] += static_cast<double>(go[c] * n[c]);
    const T dv = r * (dn[c] - n[c] * mean_dot);
    gx[c] = dv * z[c] * sig[c];
    gz[c] = dv * x[c] * sig[c] * (T(1) + z[c] * (T(1) - sig[c]));  // SiLU'(z) = s (1 + z (1 - s))
  }
}

template <typename T>
void forward_kernel(const at::Tensor& x, const at::Tensor& z, const at::Tensor& weight, double eps,
                    at::Tensor& out, at::Tensor& inv_rms) {
  const int64_t N = x.size(0), G = x.size(1), S = x.size(2);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), zs0 = z.stride(0), zs1 = z.stride(1);
  const T *xp = x.data_ptr<T>(), *zp = z.data_ptr<T>(), *wp = weight.data_ptr<T>();
  T *op = out.data_ptr<T>(), *rp = inv_rms.data_ptr<T>();
  at::parallel_for(0, N * G, 256, [&](int64_t begin, int64_t end) {
    std::vector<T> v(S);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = i / G, g = i % G;
      rp[i] = forward_group(xp + row * xs0 + g * xs1, zp + row * zs0 + g * zs1, wp + g * S, T(eps), v.data(),
                            op + i * S, S);
    }
  });
}

template <typename T>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& z, const at::Tensor& weight,
                     const at::Tensor& inv_rms, at::Tensor& grad_x, at::Tensor& grad_z, at::Tensor& grad_weight) {
  const int64_t N = x.size(0), G = x.size(1), S = x.size(2);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), zs0 = z.stride(0), zs1 = z.stride(1);
  const T *xp = x.data_ptr<T>(), *zp = z.data_ptr<T>(), *wp = weight.data_ptr<T>();
  const T *gop = grad_out.data_ptr<T>(), *rp = inv_rms.data_ptr<T>();  // grad_out contiguous (N, G * S)
  T *gxp = grad_x.data_ptr<T>(), *gzp = grad_z.data_ptr<T>();
  // dw: one double accumulator per thread, summed at the end (as the conv kernel's)
  const int64_t n_threads = at::get_num_threads();
  std::vector<double> partial(n_threads * G * S, 0.0);
  at::parallel_for(0, N * G, 256, [&](int64_t begin, int64_t end) {
    double* mine = partial.data() + at::get_thread_num() * G * S;
    std::vector<T> sig(S), n(S), dn(S);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = i / G, g = i % G;
      backward_group(gop + i * S, xp + row * xs0 + g * xs1, zp + row * zs0 + g * zs1, wp + g * S, rp[i], sig.data(),
                     n.data(), dn.data(), mine + g * S, gxp + i * S, gzp + i * S, S);
    }
  });
  T* gwp = grad_weight.data_ptr<T>();
  for (int64_t c = 0; c < G * S; ++c) {
    double total = 0.0;
    for (int64_t th = 0; th < n_threads; ++th) total += partial[th * G * S + c];
    gwp[c] = static_cast<T>(total);
  }
}

void check(const at::Tensor& x, const at::Tensor& z, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.stride(2) == 1, "x must be a CPU (N, G, S) tensor with unit stride over S");
  TORCH_CHECK(z.sizes() == x.sizes() && z.stride(2) == 1, "z must have x's shape and unit stride over S");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) * x.size(2) && weight.is_contiguous(),
              "weight must be a contiguous (G * S) tensor");
  TORCH_CHECK(z.scalar_type() == x.scalar_type() && weight.scalar_type() == x.scalar_type(), "dtypes must match");
}

}  // namespace

std::vector<at::Tensor> gated_rms_norm_forward(const at::Tensor& x, const at::Tensor& z, const at::Tensor& weight,
                                               double eps) {
  check(x, z, weight);
  auto out = at::empty({x.size(0), x.size(1) * x.size(2)}, x.options());
  auto inv_rms = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_rms_norm_forward",
                             [&] { forward_kernel<scalar_t>(x, z, weight, eps, out, inv_rms); });
  return {out, inv_rms};
}

std::vector<at::Tensor> gated_rms_norm_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& z,
                                                const at::Tensor& weight, const at::Tensor& inv_rms) {
  check(x, z, weight);
  auto grad = grad_out.reshape({x.size(0), x.size(1) * x.size(2)}).contiguous();
  auto grad_x = at::empty(x.sizes(), x.options());
  auto grad_z = at::empty(x.sizes(), x.options());
  auto grad_weight = at::empty_like(weight);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_rms_norm_backward", [&] {
    backward_kernel<scalar_t>(grad, x, z, weight, inv_rms.contiguous(), grad_x, grad_z, grad_weight);
  });
  return {grad_x, grad_z, grad_weight};
}
