// Python bindings of the CPU kernels (recbole_hydra.layers.kernels.cpu_kernels builds them).

#include <torch/extension.h>

#include <vector>

at::Tensor causal_conv_silu_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);
std::vector<at::Tensor> causal_conv_silu_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                  const at::Tensor& weight, const at::Tensor& bias);
at::Tensor ssd_diagonal_forward(const at::Tensor& a, const at::Tensor& B, const at::Tensor& C, const at::Tensor& x);
std::vector<at::Tensor> gated_rms_norm_forward(const at::Tensor& x, const at::Tensor& z, const at::Tensor& weight,
                                               double eps);
std::vector<at::Tensor> gated_rms_norm_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& z,
                                                const at::Tensor& weight, const at::Tensor& inv_rms);
at::Tensor swiglu_forward(const at::Tensor& gate_up);
std::vector<at::Tensor> swiglu_backward(const at::Tensor& grad_h, const at::Tensor& gate_up);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("causal_conv_silu_forward", &causal_conv_silu_forward, "causal depthwise conv over time + SiLU");
  m.def("causal_conv_silu_backward", &causal_conv_silu_backward, "its backward: grad_x, grad_weight, grad_bias");
  m.def("gated_rms_norm_forward", &gated_rms_norm_forward, "RMSNorm(x * SiLU(z)) per group: out, inv_rms");
  m.def("gated_rms_norm_backward", &gated_rms_norm_backward, "its backward: grad_x, grad_z, grad_weight");
  m.def("swiglu_forward", &swiglu_forward, "SiLU(gate) * up of [gate, up]");
  m.def("swiglu_backward", &swiglu_backward, "its backward: grad [gate, up], and SiLU(gate) * up");
  m.def("ssd_diagonal_forward", &ssd_diagonal_forward, "SSD diagonal blocks y = (L o C B^T) x (no autograd)");
}
