// The blocked kernels as torch operators, dispatched without Python: the fused MLP (cpu_mlp.cpp), the
// attention block (cpu_attention_block.cpp) and the fused output layer and loss (cpu_cross_entropy.cpp).
//
// Why: as torch.library.custom_op functions in Python, each call of these kernels in a compiled step went
// from inductor's C++ wrapper back into Python, through custom_op's autograd and aliasing layers, then the
// op's own checks and allocations, then ctypes: ~6% of the nano step (py-spy, docs/benchmarks.md). Here the
// schemas are still defined in Python (cpu_mlp.py, cpu_attention_block.py, cpu_cross_entropy.py, with their
// fake kernels for torch.compile), but the CPU kernels and the autograd formulas are C++, registered when
// this library is loaded (cpu_kernels.kernel_library), so a compiled step reaches the kernels through the
// dispatcher alone. The block sizes come in as arguments, so that the tuning constants live in Python.
//
// Errors are torch's: ValueError for shapes the kernels cannot read (they would read past a tensor),
// IndexError for a target outside the vocabulary, torch.OutOfMemoryError where a kernel's buffers could not
// be allocated, RuntimeError for a failed product.

#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

extern "C" {
int ot_swiglu_mlp_forward(const void* products, const float* x, const float* norm_weight, float norm_eps, const float* w_gate_up,
                          const float* w_down, float* out, float* gate_up, float* a_block, int64_t rows, int64_t width, int64_t ff,
                          int64_t block_rows);
int ot_swiglu_mlp_backward(const void* products, const float* grad_out, const float* x, const float* norm_weight, float norm_eps,
                           const float* gate_up, const float* w_gate_up, const float* w_down, float* grad_x, float* grad_w_gate_up,
                           float* grad_w_down, float* grad_norm_weight, float* a_block, float* grad_block, int64_t rows, int64_t width,
                           int64_t ff, int64_t block_rows);
int ot_attention_block_forward(const void* products, const float* x, const float* norm_weight, float norm_eps, const float* w_qkv,
                               const float* w_o, float* y, float* qkv, float* out, float* lse, float* probabilities, const float* cos,
                               const float* sin, int64_t B, int64_t T, int64_t C, int64_t H, int64_t D, int64_t probability_floats,
                               int64_t block_batch, float scale);
int ot_attention_block_backward(const void* products, const float* grad_y, const float* x, const float* norm_weight, float norm_eps,
                                const float* w_qkv, const float* w_o, float* qkv, float* out, float* lse, const float* probabilities,
                                const float* cos, const float* sin, float* grad_x, float* grad_w_qkv, float* grad_w_o, float* grad_norm_weight,
                                int64_t B, int64_t T, int64_t C, int64_t H, int64_t D, int64_t probability_floats, int64_t block_batch,
                                float scale);
int ot_linear_cross_entropy(const void* products, const float* hidden, const float* weight, const int64_t* targets, float* grad_hidden,
                            float* grad_weight, float* logits_block, int64_t rows, int64_t width, int64_t vocab, int64_t block_rows,
                            int64_t ignore_index, float scale, double* total);
int64_t ot_causal_attention_probability_floats(int64_t T);
}

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// cpu_blas.h's Products (two function pointers), copied in by cpu_kernels.block_products once it has checked
// the library: index 0 torch's BLAS sgemm, index 1 oneDNN's brgemm micro-kernel (with sgemm).
struct Products {
  void* sgemm = nullptr;
  void* brgemm = nullptr;
};
Products registered_products[2];

// The kernels, by index in the count of which library each asked for (ot_block_product_calls): what a
// kernel computed with, which the tests read, rather than what the model's attributes say.
enum Kernel : int64_t { kMlp, kMlpBackward, kAttentionBlock, kAttentionBlockBackward, kLinearCrossEntropy, kKernels };
std::atomic<int64_t> product_calls[kKernels][2];

const char* const kLibraryNames[2] = {"torch's BLAS (sgemm)", "oneDNN's brgemm micro-kernel"};

const void* required_products(Kernel kernel, const char* name, bool brgemm) {
  const Products& products = registered_products[brgemm];
  TORCH_CHECK(products.sgemm != nullptr && (!brgemm || products.brgemm != nullptr), name, " needs overtrain's CPU kernels and ",
              kLibraryNames[brgemm], "; LlamaLM.use_cpu_kernels takes torch's operations where they are missing");
  product_calls[kernel][brgemm].fetch_add(1, std::memory_order_relaxed);
  return &products;
}

void raise_for_status(int status, const char* name) {
  TORCH_CHECK_WITH(OutOfMemoryError, status != 2, name, ": its per-call buffers could not be allocated");
  TORCH_CHECK(status == 0, name, ": a product failed in its library (status ", status,
              "); train.cpu_products=blas takes torch's BLAS instead");
}

bool is_fp32_cpu(const Tensor& tensor) { return tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat; }

// What the kernels compute on: fp32 CPU tensors, and for a forward pass outside CPU autocast (under which
// torch's products would be bf16). The Python side checks the same before it takes a kernel
// (cpu_kernels.fp32_cpu_outside_autocast). A backward pass may run inside autocast (the engine carries the
// state of the code that calls backward()): what counts is that its forward pass ran outside.
enum class Pass { kForward, kBackward };

void check_fp32_cpu(const char* name, std::initializer_list<const Tensor*> tensors, const char* see, Pass pass) {
  bool fits = pass == Pass::kBackward || !at::autocast::is_autocast_enabled(at::kCPU);
  for (const Tensor* tensor : tensors) fits = fits && is_fp32_cpu(*tensor);
  TORCH_CHECK_VALUE(fits, name, " computes on fp32 CPU tensors outside autocast (see ", see, ")");
}

const float* data_or_null(const std::optional<Tensor>& tensor) { return tensor ? tensor->data_ptr<float>() : nullptr; }

std::optional<Tensor> contiguous(const std::optional<Tensor>& tensor) {
  return tensor ? std::optional<Tensor>(tensor->contiguous()) : std::nullopt;
}

// A norm weight saved for the backward pass: autograd saves tensors, so "no norm" is saved as an undefined one.
std::optional<Tensor> optional_of(const Tensor& tensor) { return tensor.defined() ? std::optional<Tensor>(tensor) : std::nullopt; }

std::string shape_of(const Tensor& tensor) {
  std::string text = "(";
  for (int64_t dim = 0; dim < tensor.dim(); ++dim) text += (dim ? ", " : "") + std::to_string(tensor.size(dim));
  return text + (tensor.dim() == 1 ? ",)" : ")");
}

void check_norm_weight(const char* name, const std::optional<Tensor>& norm_weight, int64_t width) {
  TORCH_CHECK_VALUE(!norm_weight || (norm_weight->dim() == 1 && norm_weight->size(0) == width), name, "'s norm weight must be (C,) = (",
                    width, ",), got ", shape_of(*norm_weight));
}

void check_positive(const char* name, const char* what, int64_t value) {
  TORCH_CHECK_VALUE(value >= 1, name, ": ", what, " must be at least 1, got ", value);
}

// The dispatcher's handle of an operator, typed as its CPU kernel here is (``decltype(kernel)``), so the
// signature is written once. The autograd formulas call the operators through it, not the kernels directly,
// so that torch.compile traces the calls (to the fake kernels) and a CPU call reaches the kernels.
template <class Signature>
c10::TypedOperatorHandle<Signature> typed_operator(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// ---- the fused MLP (cpu_mlp.py) ----

constexpr const char* kMlpName = "the fused MLP";

void check_mlp(const Tensor& x, const Tensor& w_gate_up, const Tensor& w_down, const std::optional<Tensor>& norm_weight, Pass pass) {
  const int64_t width = w_down.dim() == 2 ? w_down.size(0) : -1, ff = w_down.dim() == 2 ? w_down.size(1) : -1;
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == width && w_gate_up.dim() == 2 && w_gate_up.size(0) == 2 * ff && w_gate_up.size(1) == width,
                    "the fused MLP takes x (N, C), w_gate_up (2F, C) and w_down (C, F); got ", shape_of(x), ", ", shape_of(w_gate_up),
                    " and ", shape_of(w_down));
  check_norm_weight(kMlpName, norm_weight, width);
  if (norm_weight) {
    check_fp32_cpu(kMlpName, {&x, &w_gate_up, &w_down, &*norm_weight}, "mlp_kernel_applies", pass);
  } else {
    check_fp32_cpu(kMlpName, {&x, &w_gate_up, &w_down}, "mlp_kernel_applies", pass);
  }
}

std::tuple<Tensor, Tensor> swiglu_mlp_cpu(const Tensor& x_in, const Tensor& w_gate_up_in, const Tensor& w_down_in,
                                          const std::optional<Tensor>& norm_weight_in, double norm_eps, bool brgemm, int64_t block_rows) {
  const void* products = required_products(kMlp, kMlpName, brgemm);
  check_mlp(x_in, w_gate_up_in, w_down_in, norm_weight_in, Pass::kForward);
  check_positive(kMlpName, "block_rows", block_rows);
  const Tensor x = x_in.contiguous(), w_gate_up = w_gate_up_in.contiguous(), w_down = w_down_in.contiguous();
  const std::optional<Tensor> norm_weight = contiguous(norm_weight_in);
  const int64_t rows = x.size(0), width = x.size(1), ff = w_down.size(1);
  const int64_t block = std::min(block_rows, std::max<int64_t>(rows, 1));
  Tensor out = at::empty({rows, width}, x.options()), gate_up = at::empty({rows, 2 * ff}, x.options());
  Tensor a_block = at::empty({block, ff}, x.options());
  raise_for_status(ot_swiglu_mlp_forward(products, x.data_ptr<float>(), data_or_null(norm_weight), static_cast<float>(norm_eps),
                                         w_gate_up.data_ptr<float>(), w_down.data_ptr<float>(), out.data_ptr<float>(),
                                         gate_up.data_ptr<float>(), a_block.data_ptr<float>(), rows, width, ff, block),
                   kMlpName);
  return {out, gate_up};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> swiglu_mlp_backward_cpu(const Tensor& grad_out_in, const Tensor& x_in, const Tensor& gate_up_in,
                                                                   const Tensor& w_gate_up_in, const Tensor& w_down_in,
                                                                   const std::optional<Tensor>& norm_weight_in, double norm_eps, bool brgemm,
                                                                   int64_t block_rows) {
  const void* products = required_products(kMlpBackward, kMlpName, brgemm);
  check_mlp(x_in, w_gate_up_in, w_down_in, norm_weight_in, Pass::kBackward);
  check_positive(kMlpName, "block_rows", block_rows);
  const int64_t rows = x_in.size(0), width = x_in.size(1), ff = w_down_in.size(1);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == x_in.sizes() && gate_up_in.dim() == 2 && gate_up_in.size(0) == rows && gate_up_in.size(1) == 2 * ff,
                    "the fused MLP's backward pass takes grad_out (N, C) = ", shape_of(x_in), " and gate_up (N, 2F) = (", rows, ", ", 2 * ff,
                    "); got ", shape_of(grad_out_in), " and ", shape_of(gate_up_in));
  check_fp32_cpu(kMlpName, {&grad_out_in, &gate_up_in}, "mlp_kernel_applies", Pass::kBackward);
  const Tensor grad_out = grad_out_in.contiguous(), x = x_in.contiguous(), gate_up = gate_up_in.contiguous();
  const Tensor w_gate_up = w_gate_up_in.contiguous(), w_down = w_down_in.contiguous();
  const std::optional<Tensor> norm_weight = contiguous(norm_weight_in);
  const int64_t block = std::min(block_rows, std::max<int64_t>(rows, 1));
  Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  // The first block writes the weights' gradients; with no rows there is none, so they start at zero.
  Tensor grad_w_gate_up = rows ? at::empty_like(w_gate_up, at::MemoryFormat::Contiguous) : at::zeros_like(w_gate_up);
  Tensor grad_w_down = rows ? at::empty_like(w_down, at::MemoryFormat::Contiguous) : at::zeros_like(w_down);
  Tensor grad_norm_weight = norm_weight ? at::empty_like(*norm_weight, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  Tensor a_block = at::empty({block, ff}, x.options()), grad_block = at::empty({block, 2 * ff}, x.options());
  raise_for_status(ot_swiglu_mlp_backward(products, grad_out.data_ptr<float>(), x.data_ptr<float>(), data_or_null(norm_weight),
                                          static_cast<float>(norm_eps), gate_up.data_ptr<float>(), w_gate_up.data_ptr<float>(),
                                          w_down.data_ptr<float>(), grad_x.data_ptr<float>(), grad_w_gate_up.data_ptr<float>(),
                                          grad_w_down.data_ptr<float>(), norm_weight ? grad_norm_weight.data_ptr<float>() : nullptr,
                                          a_block.data_ptr<float>(), grad_block.data_ptr<float>(), rows, width, ff, block),
                   "the fused MLP's backward pass");
  return {grad_x, grad_w_gate_up, grad_w_down, grad_norm_weight};
}

struct SwigluMlp : public torch::autograd::Function<SwigluMlp> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w_gate_up, const Tensor& w_down,
                               const std::optional<Tensor>& norm_weight, double norm_eps, bool brgemm, int64_t block_rows) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = typed_operator<decltype(swiglu_mlp_cpu)>("overtrain::swiglu_mlp");
    auto [out, gate_up] = op.call(x, w_gate_up, w_down, norm_weight, norm_eps, brgemm, block_rows);
    ctx->save_for_backward({x, gate_up, w_gate_up, w_down, norm_weight.value_or(Tensor())});
    ctx->saved_data["norm_eps"] = norm_eps;
    ctx->saved_data["brgemm"] = brgemm;
    ctx->saved_data["block_rows"] = block_rows;
    ctx->mark_non_differentiable({gate_up});
    ctx->set_materialize_grads(false);  // the backward pass reads only y's gradient: no zeros for the others
    return {out, gate_up};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // An output the loss did not use: no gradient for any input (one undefined gradient per input of forward).
    if (!grads[0].defined()) return variable_list(7);
    const variable_list saved = ctx->get_saved_variables();
    const std::optional<Tensor> norm_weight = optional_of(saved[4]);
    static const auto op = typed_operator<decltype(swiglu_mlp_backward_cpu)>("overtrain::swiglu_mlp_backward");
    auto [grad_x, grad_w_gate_up, grad_w_down, grad_norm_weight] = op.call(
        grads[0], saved[0], saved[1], saved[2], saved[3], norm_weight, ctx->saved_data["norm_eps"].toDouble(),
        ctx->saved_data["brgemm"].toBool(), ctx->saved_data["block_rows"].toInt());
    // x, w_gate_up, w_down, norm_weight, norm_eps, brgemm, block_rows
    return {grad_x, grad_w_gate_up, grad_w_down, norm_weight ? grad_norm_weight : Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> swiglu_mlp_autograd(const Tensor& x, const Tensor& w_gate_up, const Tensor& w_down,
                                               const std::optional<Tensor>& norm_weight, double norm_eps, bool brgemm, int64_t block_rows) {
  const variable_list outputs = SwigluMlp::apply(x, w_gate_up, w_down, norm_weight, norm_eps, brgemm, block_rows);
  return {outputs[0], outputs[1]};
}

// ---- the attention block (cpu_attention_block.py) ----

constexpr const char* kBlockName = "the attention block";

void check_attention_block(const Tensor& x, const Tensor& w_qkv, const Tensor& w_o, const Tensor& cos, const Tensor& sin,
                           const std::optional<Tensor>& norm_weight, int64_t heads, Pass pass) {
  check_positive(kBlockName, "heads", heads);
  TORCH_CHECK_VALUE(x.dim() == 3 && w_qkv.dim() == 2 && w_o.dim() == 2 && w_qkv.size(0) % (3 * heads) == 0,
                    "the attention block takes x (B, T, C), w_qkv (3 H D, C) and w_o (C, H D); got ", shape_of(x), ", ", shape_of(w_qkv),
                    " and ", shape_of(w_o), " for ", heads, " heads");
  const int64_t width = x.size(2), inner = w_qkv.size(0) / 3;
  TORCH_CHECK_VALUE(w_qkv.size(1) == width && w_o.size(0) == width && w_o.size(1) == inner, "the attention block's weights do not fit x of width ",
                    width, ": w_qkv ", shape_of(w_qkv), ", w_o ", shape_of(w_o));
  const int64_t seq_len = x.size(1), head_dim = inner / heads;
  const bool tables_fit = cos.dim() == 2 && sin.dim() == 2 && cos.size(0) == seq_len && sin.size(0) == seq_len && cos.size(1) == head_dim &&
                          sin.size(1) == head_dim;
  TORCH_CHECK_VALUE(tables_fit, "the rotary tables must be (T, D) = (", seq_len, ", ", head_dim, "), got ", shape_of(cos), " and ",
                    shape_of(sin));
  check_norm_weight(kBlockName, norm_weight, width);
  if (norm_weight) {
    check_fp32_cpu(kBlockName, {&x, &w_qkv, &w_o, &cos, &sin, &*norm_weight}, "block_applies", pass);
  } else {
    check_fp32_cpu(kBlockName, {&x, &w_qkv, &w_o, &cos, &sin}, "block_applies", pass);
  }
}

void raise_for_block_status(int status, int64_t head_dim, const char* name) {
  TORCH_CHECK_VALUE(status != 1, "the CPU attention kernel has no head dim ", head_dim, " (it has 16, 32, 48 and 64)");
  raise_for_status(status, name);
}

// The kept probabilities are read and written as whole aligned 64-byte vectors (cpu_attention.py's
// probabilities_pointer): a tensor that is not is refused rather than misread.
float* probabilities_or_null(const Tensor& probabilities) {
  if (probabilities.numel() == 0) return nullptr;
  TORCH_CHECK_VALUE(probabilities.is_contiguous() && reinterpret_cast<uintptr_t>(probabilities.data_ptr()) % 64 == 0,
                    "the attention probabilities must be contiguous and 64-byte aligned (as torch allocates them)");
  return probabilities.data_ptr<float>();
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> attention_block_cpu(const Tensor& x_in, const Tensor& w_qkv_in, const Tensor& w_o_in,
                                                                       const Tensor& cos_in, const Tensor& sin_in,
                                                                       const std::optional<Tensor>& norm_weight_in, double norm_eps,
                                                                       int64_t heads, double scale, int64_t probability_floats,
                                                                       int64_t block_batch, bool brgemm) {
  const void* products = required_products(kAttentionBlock, kBlockName, brgemm);
  check_attention_block(x_in, w_qkv_in, w_o_in, cos_in, sin_in, norm_weight_in, heads, Pass::kForward);
  check_positive(kBlockName, "block_batch", block_batch);
  const Tensor x = x_in.contiguous(), w_qkv = w_qkv_in.contiguous(), w_o = w_o_in.contiguous();
  const Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  const std::optional<Tensor> norm_weight = contiguous(norm_weight_in);
  const int64_t batch = x.size(0), seq_len = x.size(1), width = x.size(2), head_dim = w_qkv.size(0) / 3 / heads;
  TORCH_CHECK_VALUE(probability_floats == 0 || probability_floats == ot_causal_attention_probability_floats(seq_len), kBlockName,
                    " keeps ", ot_causal_attention_probability_floats(seq_len), " probabilities per head at ", seq_len,
                    " tokens (or none); asked to keep ", probability_floats);
  const auto options = x.options();
  Tensor y = at::empty({batch, seq_len, width}, options), qkv = at::empty({batch, seq_len, 3, heads, head_dim}, options);
  Tensor out = at::empty({batch, seq_len, heads, head_dim}, options), lse = at::empty({batch, heads, seq_len}, options);
  Tensor probabilities = at::empty({batch, heads, probability_floats}, options);
  raise_for_block_status(
      ot_attention_block_forward(products, x.data_ptr<float>(), data_or_null(norm_weight), static_cast<float>(norm_eps), w_qkv.data_ptr<float>(),
                                 w_o.data_ptr<float>(), y.data_ptr<float>(), qkv.data_ptr<float>(), out.data_ptr<float>(), lse.data_ptr<float>(),
                                 probabilities_or_null(probabilities), cos.data_ptr<float>(), sin.data_ptr<float>(), batch, seq_len, width,
                                 heads, head_dim, probability_floats, block_batch, static_cast<float>(scale)),
      head_dim, kBlockName);
  return {y, qkv, out, lse, probabilities};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> attention_block_backward_cpu(
    const Tensor& grad_y_in, const Tensor& x_in, const Tensor& w_qkv_in, const Tensor& w_o_in, const Tensor& cos_in, const Tensor& sin_in,
    const std::optional<Tensor>& norm_weight_in, double norm_eps, const Tensor& qkv_in, const Tensor& out_in, const Tensor& lse_in,
    const Tensor& probabilities, int64_t heads, double scale, int64_t block_batch, bool brgemm) {
  const char* name = "the attention block's backward pass";
  const void* products = required_products(kAttentionBlockBackward, kBlockName, brgemm);
  check_attention_block(x_in, w_qkv_in, w_o_in, cos_in, sin_in, norm_weight_in, heads, Pass::kBackward);
  check_positive(kBlockName, "block_batch", block_batch);
  const int64_t batch = x_in.size(0), seq_len = x_in.size(1), width = x_in.size(2), head_dim = w_qkv_in.size(0) / 3 / heads;
  TORCH_CHECK_VALUE(grad_y_in.sizes() == x_in.sizes() && qkv_in.numel() == batch * seq_len * 3 * heads * head_dim &&
                        out_in.numel() == batch * seq_len * heads * head_dim && lse_in.numel() == batch * heads * seq_len,
                    name, " takes grad_y (B, T, C) and the forward pass's qkv, attention output and log-sum-exp for x ", shape_of(x_in),
                    "; got grad_y ", shape_of(grad_y_in), ", qkv ", shape_of(qkv_in), ", out ", shape_of(out_in), ", lse ", shape_of(lse_in));
  // The backward pass reads every kept probability the forward pass wrote: a buffer of another size (the
  // threshold changed between the passes, say) would be read past its end.
  const int64_t kept = batch * heads * ot_causal_attention_probability_floats(seq_len);
  TORCH_CHECK_VALUE(probabilities.numel() == 0 || probabilities.numel() == kept, "the kept attention probabilities hold ",
                    probabilities.numel(), " floats; the backward pass of (", batch, ", ", heads, ") heads of ", seq_len, " tokens reads ",
                    kept, " (or none, to recompute them)");
  check_fp32_cpu(kBlockName, {&grad_y_in, &qkv_in, &out_in, &lse_in, &probabilities}, "block_applies", Pass::kBackward);
  const Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous(), w_qkv = w_qkv_in.contiguous(), w_o = w_o_in.contiguous();
  const Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous(), qkv = qkv_in.contiguous(), out = out_in.contiguous();
  const Tensor lse = lse_in.contiguous();
  const std::optional<Tensor> norm_weight = contiguous(norm_weight_in);
  Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  Tensor grad_w_qkv = batch ? at::empty_like(w_qkv, at::MemoryFormat::Contiguous) : at::zeros_like(w_qkv);  // the first block writes them
  Tensor grad_w_o = batch ? at::empty_like(w_o, at::MemoryFormat::Contiguous) : at::zeros_like(w_o);
  Tensor grad_norm_weight = norm_weight ? at::empty_like(*norm_weight, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  const int64_t probability_floats = probabilities.numel() ? ot_causal_attention_probability_floats(seq_len) : 0;
  raise_for_block_status(
      ot_attention_block_backward(products, grad_y.data_ptr<float>(), x.data_ptr<float>(), data_or_null(norm_weight), static_cast<float>(norm_eps),
                                  w_qkv.data_ptr<float>(), w_o.data_ptr<float>(), qkv.data_ptr<float>(), out.data_ptr<float>(),
                                  lse.data_ptr<float>(), probabilities_or_null(probabilities), cos.data_ptr<float>(), sin.data_ptr<float>(),
                                  grad_x.data_ptr<float>(), grad_w_qkv.data_ptr<float>(), grad_w_o.data_ptr<float>(),
                                  norm_weight ? grad_norm_weight.data_ptr<float>() : nullptr, batch, seq_len, width, heads, head_dim,
                                  probability_floats, block_batch, static_cast<float>(scale)),
      head_dim, name);
  return {grad_x, grad_w_qkv, grad_w_o, grad_norm_weight};
}

struct AttentionBlock : public torch::autograd::Function<AttentionBlock> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w_qkv, const Tensor& w_o, const Tensor& cos,
                               const Tensor& sin, const std::optional<Tensor>& norm_weight, double norm_eps, int64_t heads, double scale,
                               int64_t probability_floats, int64_t block_batch, bool brgemm) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = typed_operator<decltype(attention_block_cpu)>("overtrain::attention_block");
    auto [y, qkv, out, lse, probabilities] =
        op.call(x, w_qkv, w_o, cos, sin, norm_weight, norm_eps, heads, scale, probability_floats, block_batch, brgemm);
    ctx->save_for_backward({x, w_qkv, w_o, cos, sin, norm_weight.value_or(Tensor()), qkv, out, lse, probabilities});
    ctx->saved_data["norm_eps"] = norm_eps;
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["block_batch"] = block_batch;
    ctx->saved_data["brgemm"] = brgemm;
    ctx->mark_non_differentiable({qkv, out, lse, probabilities});
    ctx->set_materialize_grads(false);  // the backward pass reads only y's gradient: no zeros for the others
    return {y, qkv, out, lse, probabilities};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(12);
    static const auto op = typed_operator<decltype(attention_block_backward_cpu)>("overtrain::attention_block_backward");
    const variable_list saved = ctx->get_saved_variables();
    const std::optional<Tensor> norm_weight = optional_of(saved[5]);
    auto [grad_x, grad_w_qkv, grad_w_o, grad_norm_weight] =
        op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], norm_weight, ctx->saved_data["norm_eps"].toDouble(), saved[6],
                saved[7], saved[8], saved[9], ctx->saved_data["heads"].toInt(), ctx->saved_data["scale"].toDouble(),
                ctx->saved_data["block_batch"].toInt(), ctx->saved_data["brgemm"].toBool());
    // x, w_qkv, w_o, cos, sin, norm_weight, norm_eps, heads, scale, probability_floats, block_batch, brgemm
    return {grad_x, grad_w_qkv, grad_w_o, Tensor(), Tensor(), norm_weight ? grad_norm_weight : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> attention_block_autograd(const Tensor& x, const Tensor& w_qkv, const Tensor& w_o,
                                                                            const Tensor& cos, const Tensor& sin,
                                                                            const std::optional<Tensor>& norm_weight, double norm_eps,
                                                                            int64_t heads, double scale, int64_t probability_floats,
                                                                            int64_t block_batch, bool brgemm) {
  const variable_list outputs =
      AttentionBlock::apply(x, w_qkv, w_o, cos, sin, norm_weight, norm_eps, heads, scale, probability_floats, block_batch, brgemm);
  return {outputs[0], outputs[1], outputs[2], outputs[3], outputs[4]};
}

// ---- the fused output layer and loss (cpu_cross_entropy.py) ----

constexpr const char* kLossName = "the fused loss";

std::tuple<Tensor, Tensor, Tensor> linear_cross_entropy_cpu(const Tensor& hidden_in, const Tensor& weight_in, const Tensor& targets_in,
                                                           int64_t ignore_index, bool brgemm, int64_t block_rows) {
  const void* products = required_products(kLinearCrossEntropy, kLossName, brgemm);
  TORCH_CHECK_VALUE(hidden_in.dim() == 2 && weight_in.dim() == 2 && hidden_in.size(1) == weight_in.size(1) && targets_in.dim() == 1 &&
                        targets_in.size(0) == hidden_in.size(0),
                    "the fused loss takes hidden (N, C), weight (V, C) and targets (N,); got ", shape_of(hidden_in), ", ", shape_of(weight_in),
                    " and ", shape_of(targets_in));
  TORCH_CHECK_VALUE(is_fp32_cpu(hidden_in) && is_fp32_cpu(weight_in) && targets_in.device().is_cpu(),
                    "the fused loss computes on fp32 CPU tensors (see loss_kernel_applies)");
  check_positive(kLossName, "block_rows", block_rows);
  const Tensor hidden = hidden_in.contiguous(), weight = weight_in.contiguous(), targets = targets_in.to(at::kLong).contiguous();
  const int64_t rows = hidden.size(0), width = hidden.size(1), vocab = weight.size(0);
  // F.cross_entropy's check, made before the kernel reads past a row of logits.
  const int64_t* target = targets.data_ptr<int64_t>();
  int64_t counted = 0;
  for (int64_t row = 0; row < rows; ++row) {
    if (target[row] == ignore_index) continue;
    TORCH_CHECK_INDEX(target[row] >= 0 && target[row] < vocab, "target ", target[row], " is out of bounds for ", vocab, " logits");
    ++counted;
  }
  Tensor grad_hidden = at::empty_like(hidden, at::MemoryFormat::Contiguous);
  Tensor grad_weight = rows ? at::empty_like(weight, at::MemoryFormat::Contiguous) : at::zeros_like(weight);  // the first block writes it
  Tensor logits_block = at::empty({std::min(block_rows, rows), vocab}, hidden.options());
  double total = 0.0;
  raise_for_status(ot_linear_cross_entropy(products, hidden.data_ptr<float>(), weight.data_ptr<float>(), target, grad_hidden.data_ptr<float>(),
                                           grad_weight.data_ptr<float>(), logits_block.data_ptr<float>(), rows, width, vocab, block_rows,
                                           ignore_index, counted ? 1.0f / static_cast<float>(counted) : 0.0f, &total),
                   kLossName);
  // The mean over the counted targets, NaN when none is counted, as F.cross_entropy gives it.
  const double loss = counted ? total / static_cast<double>(counted) : std::numeric_limits<double>::quiet_NaN();
  return {at::scalar_tensor(loss, hidden.options()), grad_hidden, grad_weight};
}

struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  static variable_list forward(AutogradContext* ctx, const Tensor& hidden, const Tensor& weight, const Tensor& targets, int64_t ignore_index,
                               bool brgemm, int64_t block_rows) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = typed_operator<decltype(linear_cross_entropy_cpu)>("overtrain::linear_cross_entropy");
    auto [loss, grad_hidden, grad_weight] = op.call(hidden, weight, targets, ignore_index, brgemm, block_rows);
    ctx->save_for_backward({grad_hidden, grad_weight});
    ctx->mark_non_differentiable({grad_hidden, grad_weight});
    ctx->set_materialize_grads(false);  // the backward pass reads only y's gradient: no zeros for the others
    return {loss, grad_hidden, grad_weight};
  }

  // The forward pass made the loss's gradients: the backward pass only scales them by the incoming one.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(6);
    const variable_list saved = ctx->get_saved_variables();
    return {grads[0] * saved[0], grads[0] * saved[1], Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> linear_cross_entropy_autograd(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                                                int64_t ignore_index, bool brgemm, int64_t block_rows) {
  const variable_list outputs = LinearCrossEntropy::apply(hidden, weight, targets, ignore_index, brgemm, block_rows);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace

extern "C" {

// Called by cpu_kernels.block_products once it has checked a library: 0 torch's BLAS, 1 oneDNN's brgemm.
void ot_set_block_products(int64_t brgemm, void* sgemm, void* brgemm_kernel) {
  registered_products[brgemm != 0] = Products{sgemm, brgemm_kernel};
}

// How many times `kernel` (the Kernel enum's order) has fetched the products of library `brgemm` in this
// process: what the kernels computed with, for the tests.
int64_t ot_block_product_calls(int64_t kernel, int64_t brgemm) {
  return kernel >= 0 && kernel < kKernels ? product_calls[kernel][brgemm != 0].load(std::memory_order_relaxed) : -1;
}

}  // extern "C"

// The schemas are defined in Python (their modules, with their fake kernels), before or after this
// library is loaded: the dispatcher matches these kernels to them either way.
TORCH_LIBRARY_IMPL(overtrain, CPU, m) {
  m.impl("swiglu_mlp", swiglu_mlp_cpu);
  m.impl("swiglu_mlp_backward", swiglu_mlp_backward_cpu);
  m.impl("attention_block", attention_block_cpu);
  m.impl("attention_block_backward", attention_block_backward_cpu);
  m.impl("linear_cross_entropy", linear_cross_entropy_cpu);
}

TORCH_LIBRARY_IMPL(overtrain, Autograd, m) {
  m.impl("swiglu_mlp", swiglu_mlp_autograd);
  m.impl("attention_block", attention_block_autograd);
  m.impl("linear_cross_entropy", linear_cross_entropy_autograd);
}
