// Python bindings of the CPU kernels (recbole_hydra.layers.kernels.cpu_kernels builds them).

#include <torch/extension.h>

#include <vector>

at::Tensor causal_conv_silu_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);
std::vector<at::Tensor> causal_conv_silu_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                  const at::Tensor& weight, const at::Tensor& bias);
at::Tensor ssd_diagonal_forward(const at::Tensor& a, const at::Tensor& B, const at::Tensor& C, const at::Tensor& x);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("causal_conv_silu_forward", &causal_conv_silu_forward, "causal depthwise conv over time + SiLU");
  m.def("causal_conv_silu_backward", &causal_conv_silu_backward, "its backward: grad_x, grad_weight, grad_bias");
  m.def("ssd_diagonal_forward", &ssd_diagonal_forward, "SSD diagonal blocks y = (L o C B^T) x (no autograd)");
}
