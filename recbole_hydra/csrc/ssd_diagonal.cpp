// The diagonal blocks of the chunked SSD scan (step 1 of ssd_scan) on CPU, for inference.
//
// Inside a chunk, per head:  y_i = sum_{j <= i} exp(a_i - a_j) (C_i . B_j) x_j
// i.e. y = (L o C B^T) x with the decay mask L_ij = exp(a_i - a_j) (SSD paper eq. (3) on one
// block). With ATen ops every (chunk x chunk) intermediate (C B^T, L, L o C B^T and, in
// backward, their gradients) is a batch-sized tensor written to and read back from memory, which
// at everyday lengths costs more than the arithmetic. Here one task holds one (batch, chunk,
// group) block: C B^T is formed once for the group's heads in a q x q scratch that stays in
// cache, the mask is applied there, and the products are BLAS calls on those scratches.
// Forward only: a backward written the same way (recomputing the scratches, five products per
// block) measured slower than the batched ATen backward of ssd.py's _DiagonalBlocks, which
// training keeps using.
//
// Layout (all contiguous, as ssd_scan prepares them):
//   a  (T, r, q)     cumulative log decay from the chunk start, T = batch * chunks * groups
//   B, C (T, q, n)   the group's input and output maps
//   x  (T, r, q, p)  dt-scaled inputs of the group's r heads
//   y  (T, r, q, p)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

// BLAS (MKL, inside libtorch_cpu) for the small per-block products; Fortran interface, column-major.
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha, const float* a,
            const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha, const double* a,
            const int* lda, const double* b, const int* ldb, const double* beta, double* c, const int* ldc);
}

namespace {

// Row-major C (m x n) = op(A) op(B) (+ beta C): column-major BLAS computing C^T = op(B)^T op(A)^T.
inline void gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta,
                 float* c, int ldc) {
  const float one = 1;
  const char tA = ta ? 'T' : 'N', tB = tb ? 'T' : 'N';
  sgemm_(&tB, &tA, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}
inline void gemm(bool ta, bool tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb, double beta,
                 double* c, int ldc) {
  const double one = 1;
  const char tA = ta ? 'T' : 'N', tB = tb ? 'T' : 'N';
  dgemm_(&tB, &tA, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}

// M_ij = exp(a_i - a_j) S_ij on and below the diagonal (the decay mask L o S), 0 above it
template <typename T>
inline void mask(const T* __restrict a, const T* __restrict S, int q, T* __restrict M) {
  for (int i = 0; i < q; ++i) {
    const T ai = a[i];
    T* __restrict mi = M + i * q;
    const T* __restrict si = S + i * q;
    for (int j = 0; j <= i; ++j) mi[j] = std::exp(ai - a[j]) * si[j];
    for (int j = i + 1; j < q; ++j) mi[j] = 0;
  }
}

template <typename T>
void forward_kernel(const at::Tensor& a, const at::Tensor& B, const at::Tensor& C, const at::Tensor& x, at::Tensor& y) {
  const int64_t tasks = x.size(0);
  const int r = x.size(1), q = x.size(2), p = x.size(3), n = B.size(2);
  const T* ap = a.data_ptr<T>();
  const T* Bp = B.data_ptr<T>();
  const T* Cp = C.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> S(q * q), M(q * q);
    for (int64_t t = begin; t < end; ++t) {
      gemm(false, true, q, q, n, Cp + t * q * n, n, Bp + t * q * n, n, T(0), S.data(), q);  // S = C B^T
      for (int h = 0; h < r; ++h) {
        const int64_t th = t * r + h;
        mask(ap + th * q, S.data(), q, M.data());
        gemm(false, false, q, p, q, M.data(), q, xp + th * q * p, p, T(0), yp + th * q * p, p);  // y = M x
      }
    }
  });
}

void check(const at::Tensor& a, const at::Tensor& B, const at::Tensor& C, const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous(), "x must be a contiguous CPU (T, r, q, p) tensor");
  TORCH_CHECK(a.dim() == 3 && a.size(0) == x.size(0) && a.size(1) == x.size(1) && a.size(2) == x.size(2) && a.is_contiguous(),
              "a must be a contiguous (T, r, q) tensor");
  TORCH_CHECK(B.dim() == 3 && B.size(0) == x.size(0) && B.size(1) == x.size(2) && B.is_contiguous() && C.sizes() == B.sizes() &&
                  C.is_contiguous(), "B and C must be contiguous (T, q, n) tensors");
  TORCH_CHECK(a.scalar_type() == x.scalar_type() && B.scalar_type() == x.scalar_type() && C.scalar_type() == x.scalar_type(),
              "dtypes must match");
}

}  // namespace

at::Tensor ssd_diagonal_forward(const at::Tensor& a, const at::Tensor& B, const at::Tensor& C, const at::Tensor& x) {
  check(a, B, C, x);
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_diagonal_forward", [&] { forward_kernel<scalar_t>(a, B, C, x, y); });
  return y;
}
