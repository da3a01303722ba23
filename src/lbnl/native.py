"""Native CPU kernels of the attention inner loop, compiled for this machine on first use.

The causal softmax of one block of attention scores is the largest cost of the chunked attention kernel
outside its matmuls (about a quarter of its time at 5,500 tokens): torch's softmax reads the bf16
scores, needs a separate masking pass and computes each exponential to full float32 accuracy. The
kernel here masks, exponentiates (a degree-6 polynomial for 2^f on [-0.5, 0.5], relative error about
2e-7, far below bf16's 4e-3) and normalises in one call, one row at a time in cache. A second entry reads
int32 scores with a scale per row and per column, for :func:`lbnl.int8.causal_attention_int8`. The
int8 path's quantize, dequantize and SiLU-product passes, and the bf16 decoder layer's RMSNorm and SiLU
product (:mod:`lbnl.engine`), are here too: one pass each, vectorised for AVX-512. On CPUs with AMX, a whole
causal attention runs here as a flash-attention loop on AMX tiles (:func:`causal_attention_amx`).

Built with ``torch.utils.cpp_extension`` (a C++ compiler and ninja; about a minute once, announced on
stderr, then cached under torch's extensions directory, keyed by the source, the compiler flags and this
CPU's flags; a build killed midway does not stall the next), with OpenMP so the kernels split their rows
over torch's threads (on one thread where the compiler lacks it). When the build fails, or with
``LBNL_NATIVE=0``, :func:`available` is false and callers use torch's own operations.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>
#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define LBNL_AVX512 1
#endif
#if defined(LBNL_AVX512) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include <sys/syscall.h>
#include <unistd.h>
#define LBNL_AMX 1
#endif

namespace {

constexpr float kLog2e = 1.4426950408889634f;
// 2^f for f in [-0.5, 0.5]: Taylor coefficients of exp(f ln 2), degree 6.
constexpr float kC1 = 0.6931471805599453f, kC2 = 0.2402265069591007f, kC3 = 0.0555041086648216f,
                kC4 = 0.0096181291076285f, kC5 = 0.0013333558146428f, kC6 = 0.0001540353039338f;

inline float exp_scalar(float x) {  // exp(x), clamped to 2^-126 .. 2^126
  float t = std::fmin(std::fmax(x * kLog2e, -126.0f), 126.0f);
  float n = std::nearbyint(t);
  float f = t - n;
  float p = 1.0f + f * (kC1 + f * (kC2 + f * (kC3 + f * (kC4 + f * (kC5 + f * kC6)))));
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline uint16_t float_to_bf16(float v) {  // round to nearest even, as torch does (no NaN here)
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

#ifdef LBNL_AVX512
inline __m512 exp16(__m512 x) {
  __m512 t = _mm512_max_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _mm512_set1_ps(-126.0f));
  __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_fmadd_ps(f, _mm512_set1_ps(kC6), _mm512_set1_ps(kC5));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(kC4));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(kC3));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(kC2));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(kC1));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(1.0f));
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

inline __m256i to_bf16x16(__m512 v) {
  __m512i bits = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16));
}

inline __m512 round_bf16x16(__m512 v) {  // to bf16 (nearest even) and back to float
  __m512i bits = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  return _mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

inline __m512 exp16_any(__m512 x) {  // any x: the exponent is clamped to the normal range
  return exp16(_mm512_min_ps(x, _mm512_set1_ps(87.0f)));
}

inline __m512 load_bf16x16(const uint16_t* p) {
  __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
#endif

// One row: buf[0, valid) holds the (scaled) scores in float32; writes probabilities as bf16 to out[0, width).
inline void softmax_row(float* buf, int64_t valid, int64_t width, uint16_t* out) {
  int64_t j = 0;
  float m = -INFINITY;
#ifdef LBNL_AVX512
  __m512 vm = _mm512_set1_ps(-INFINITY);
  for (; j + 16 <= valid; j += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(buf + j));
  m = _mm512_reduce_max_ps(vm);
#endif
  for (; j < valid; ++j) m = std::fmax(m, buf[j]);
  float sum = 0.0f;
  j = 0;
#ifdef LBNL_AVX512
  __m512 vmax = _mm512_set1_ps(m), vs = _mm512_setzero_ps();
  for (; j + 16 <= valid; j += 16) {
    __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(buf + j), vmax));
    _mm512_storeu_ps(buf + j, e);
    vs = _mm512_add_ps(vs, e);
  }
  sum = _mm512_reduce_add_ps(vs);
#endif
  for (; j < valid; ++j) {
    buf[j] = exp_scalar(buf[j] - m);
    sum += buf[j];
  }
  const float inv = 1.0f / sum;
  j = 0;
#ifdef LBNL_AVX512
  __m512 vinv = _mm512_set1_ps(inv);
  for (; j + 16 <= valid; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), to_bf16x16(_mm512_mul_ps(_mm512_loadu_ps(buf + j), vinv)));
#endif
  for (; j < valid; ++j) out[j] = float_to_bf16(buf[j] * inv);
  if (width > valid) std::memset(out + valid, 0, (width - valid) * sizeof(uint16_t));
}

// Row r of a block sees keys [0, base + r % period]: the causal mask of `period` query rows repeated per head.
inline int64_t visible(int64_t r, int64_t base, int64_t period, int64_t width) {
  return std::min(width, base + (r % period) + 1);
}

void causal_softmax_bf16(const torch::Tensor& scores, torch::Tensor& out, int64_t base, int64_t period) {
  TORCH_CHECK(scores.scalar_type() == torch::kBFloat16 && out.scalar_type() == torch::kBFloat16, "bf16 only");
  TORCH_CHECK(scores.dim() == 2 && scores.stride(1) == 1 && out.stride(1) == 1, "rows must be contiguous");
  const int64_t rows = scores.size(0), width = scores.size(1);
  const int64_t ls = scores.stride(0), lo = out.stride(0);
  const uint16_t* in = reinterpret_cast<const uint16_t*>(scores.data_ptr());
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(width + 16);
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* row = in + r * ls;
      const int64_t valid = visible(r, base, period, width);
      int64_t j = 0;
#ifdef LBNL_AVX512
      for (; j + 16 <= valid; j += 16) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + j)));
        _mm512_storeu_ps(buf.data() + j, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
      }
#endif
      for (; j < valid; ++j) buf[j] = bf16_to_float(row[j]);
      softmax_row(buf.data(), valid, width, o + r * lo);
    }
  });
}

void causal_softmax_int32(const torch::Tensor& acc, const torch::Tensor& row_scale, const torch::Tensor& col_scale,
                          torch::Tensor& out, int64_t base, int64_t period) {
  TORCH_CHECK(acc.scalar_type() == torch::kInt && out.scalar_type() == torch::kBFloat16, "int32 in, bf16 out");
  TORCH_CHECK(row_scale.scalar_type() == torch::kFloat && col_scale.scalar_type() == torch::kFloat, "float32 scales");
  TORCH_CHECK(acc.dim() == 2 && acc.stride(1) == 1 && out.stride(1) == 1, "rows must be contiguous");
  TORCH_CHECK(row_scale.is_contiguous() && col_scale.is_contiguous(), "contiguous scales");
  const int64_t rows = acc.size(0), width = acc.size(1);
  TORCH_CHECK(row_scale.numel() == rows && col_scale.numel() >= width, "one scale per row and per column");
  const int64_t la = acc.stride(0), lo = out.stride(0);
  const int32_t* in = acc.data_ptr<int32_t>();
  const float* rs = row_scale.data_ptr<float>();
  const float* cs = col_scale.data_ptr<float>();
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(width + 16);
    for (int64_t r = begin; r < end; ++r) {
      const int32_t* row = in + r * la;
      const int64_t valid = visible(r, base, period, width);
      const float s = rs[r];
      int64_t j = 0;
#ifdef LBNL_AVX512
      __m512 vs = _mm512_set1_ps(s);
      for (; j + 16 <= valid; j += 16) {
        __m512 x = _mm512_cvtepi32_ps(_mm512_loadu_si512(row + j));
        _mm512_storeu_ps(buf.data() + j, _mm512_mul_ps(_mm512_mul_ps(x, vs), _mm512_loadu_ps(cs + j)));
      }
#endif
      for (; j < valid; ++j) buf[j] = static_cast<float>(row[j]) * s * cs[j];
      softmax_row(buf.data(), valid, width, o + r * lo);
    }
  });
}

// ---- int8 matmul helpers (lbnl.int8), bf16 activations ----

inline float round_bf16(float v) { return bf16_to_float(float_to_bf16(v)); }

// Quantize one row of floats in buf[0, k) to int8 with a symmetric scale; returns the scale.
inline float quantize_row(const float* buf, int64_t k, int8_t* out) {
  float amax = 0.0f;
  int64_t j = 0;
#ifdef LBNL_AVX512
  __m512 va = _mm512_setzero_ps();
  for (; j + 16 <= k; j += 16) va = _mm512_max_ps(va, _mm512_abs_ps(_mm512_loadu_ps(buf + j)));
  amax = _mm512_reduce_max_ps(va);
#endif
  for (; j < k; ++j) amax = std::fmax(amax, std::fabs(buf[j]));
  const float scale = std::fmax(amax, 1e-12f) / 127.0f;
  const float inv = 1.0f / scale;
  j = 0;
#ifdef LBNL_AVX512
  __m512 vinv = _mm512_set1_ps(inv);
  for (; j + 16 <= k; j += 16) {
    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(buf + j), vinv));  // nearest even
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm512_cvtsepi32_epi8(q));
  }
#endif
  for (; j < k; ++j) out[j] = static_cast<int8_t>(std::nearbyint(buf[j] * inv));
  return scale;
}

std::vector<torch::Tensor> quantize_rows_bf16(const torch::Tensor& x, const torch::Tensor& inverse) {
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && x.dim() == 2 && x.is_contiguous(), "contiguous bf16 [rows, k]");
  const int64_t rows = x.size(0), k = x.size(1);
  const bool smooth = inverse.numel() > 0;
  TORCH_CHECK(!smooth || (inverse.scalar_type() == torch::kFloat && inverse.numel() == k && inverse.is_contiguous()),
              "one float32 factor per column");
  auto q = torch::empty({rows, k}, x.options().dtype(torch::kChar));
  auto scale = torch::empty({rows, 1}, x.options().dtype(torch::kFloat));
  const uint16_t* in = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const float* inv = smooth ? inverse.data_ptr<float>() : nullptr;
  int8_t* qo = q.data_ptr<int8_t>();
  float* so = scale.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(k);
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* row = in + r * k;
      int64_t j = 0;
#ifdef LBNL_AVX512
      for (; j + 16 <= k; j += 16) {
        __m512 v = load_bf16x16(row + j);
        _mm512_storeu_ps(buf.data() + j, smooth ? _mm512_mul_ps(v, _mm512_loadu_ps(inv + j)) : v);
      }
#endif
      for (; j < k; ++j) buf[j] = smooth ? bf16_to_float(row[j]) * inv[j] : bf16_to_float(row[j]);
      so[r] = quantize_row(buf.data(), k, qo + r * k);
    }
  });
  return {q, scale};
}

// Products arrive as int32 (torch._int_mm, column scales still to apply) or as bf16 already multiplied by the
// column scales and rounded (oneDNN's prepacked int8 matmul on AMX, column scales of 1 here). Every kernel
// rounds acc * col to bf16 before the row scale, so the two give the same bits.
inline float product(const int32_t* p, int64_t j) { return static_cast<float>(p[j]); }
inline float product(const uint16_t* p, int64_t j) { return bf16_to_float(p[j]); }
#ifdef LBNL_AVX512
inline __m512 products16(const int32_t* p) { return _mm512_cvtepi32_ps(_mm512_loadu_si512(p)); }
inline __m512 products16(const uint16_t* p) { return load_bf16x16(p); }
#endif

void check_products(const torch::Tensor& acc) {
  TORCH_CHECK((acc.scalar_type() == torch::kInt || acc.scalar_type() == torch::kBFloat16) && acc.dim() == 2 &&
              acc.is_contiguous(), "contiguous int32 or bf16 products [rows, n]");
}

// acc * col rounded to bf16, times the row's scale: what every int8 kernel reads as a dequantized product.
inline float dequantized(float p, float col, float row) { return round_bf16(p * col) * row; }
#ifdef LBNL_AVX512
inline __m512 dequantized16(__m512 p, __m512 col, __m512 row) {
  return _mm512_mul_ps(round_bf16x16(_mm512_mul_ps(p, col)), row);
}
#endif

template <typename T>
void dequantize_rows(const T* in, const float* rs, const float* cs, uint16_t* o, int64_t rows, int64_t n) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* row = in + r * n;
      uint16_t* orow = o + r * n;
      const float s = rs[r];
      int64_t j = 0;
#ifdef LBNL_AVX512
      const __m512 vs = _mm512_set1_ps(s);
      for (; j + 16 <= n; j += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(orow + j),
                            to_bf16x16(dequantized16(products16(row + j), _mm512_loadu_ps(cs + j), vs)));
#endif
      for (; j < n; ++j) orow[j] = float_to_bf16(dequantized(product(row, j), cs[j], s));
    }
  });
}

torch::Tensor dequantize_bf16(const torch::Tensor& acc, const torch::Tensor& row_scale, const torch::Tensor& col_scale) {
  check_products(acc);
  const int64_t rows = acc.size(0), n = acc.size(1);
  TORCH_CHECK(row_scale.numel() == rows && col_scale.numel() == n && row_scale.is_contiguous() &&
              col_scale.is_contiguous(), "one float32 scale per row and per column");
  auto out = torch::empty({rows, n}, acc.options().dtype(torch::kBFloat16));
  const float* rs = row_scale.data_ptr<float>();
  const float* cs = col_scale.data_ptr<float>();
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  if (acc.scalar_type() == torch::kInt) dequantize_rows(acc.data_ptr<int32_t>(), rs, cs, o, rows, n);
  else dequantize_rows(reinterpret_cast<const uint16_t*>(acc.data_ptr()), rs, cs, o, rows, n);
  return out;
}

template <typename T>
std::vector<torch::Tensor> silu_mul_quantize_rows(const torch::Tensor& acc, const T* in, const torch::Tensor& row_scale,
                                                  const torch::Tensor& col_scale, const torch::Tensor& inverse) {
  const int64_t rows = acc.size(0), half = acc.size(1) / 2;
  TORCH_CHECK(row_scale.numel() == rows && col_scale.numel() == 2 * half && inverse.numel() == half,
              "scales per row and column, factors per output column");
  auto q = torch::empty({rows, half}, acc.options().dtype(torch::kChar));
  auto scale = torch::empty({rows, 1}, acc.options().dtype(torch::kFloat));
  const float* rs = row_scale.data_ptr<float>();
  const float* cs = col_scale.data_ptr<float>();
  const float* inv = inverse.data_ptr<float>();
  int8_t* qo = q.data_ptr<int8_t>();
  float* so = scale.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(half);
    for (int64_t r = begin; r < end; ++r) {
      const T* gate = in + r * 2 * half;
      const T* up = gate + half;
      const float s = rs[r];
      int64_t j = 0;
#ifdef LBNL_AVX512
      const __m512 vs = _mm512_set1_ps(s), one = _mm512_set1_ps(1.0f);
      for (; j + 16 <= half; j += 16) {
        __m512 g = round_bf16x16(dequantized16(products16(gate + j), _mm512_loadu_ps(cs + j), vs));
        __m512 u = round_bf16x16(dequantized16(products16(up + j), _mm512_loadu_ps(cs + half + j), vs));
        __m512 a = round_bf16x16(_mm512_div_ps(g, _mm512_add_ps(one, exp16_any(_mm512_sub_ps(_mm512_setzero_ps(), g)))));
        _mm512_storeu_ps(buf.data() + j, _mm512_mul_ps(round_bf16x16(_mm512_mul_ps(a, u)), _mm512_loadu_ps(inv + j)));
      }
#endif
      for (; j < half; ++j) {
        const float g = round_bf16(dequantized(product(gate, j), cs[j], s));
        const float u = round_bf16(dequantized(product(up, j), cs[half + j], s));
        const float a = round_bf16(g / (1.0f + exp_scalar(-g)));
        buf[j] = round_bf16(a * u) * inv[j];
      }
      so[r] = quantize_row(buf.data(), half, qo + r * half);
    }
  });
  return {q, scale};
}

std::vector<torch::Tensor> silu_mul_quantize_bf16(const torch::Tensor& acc, const torch::Tensor& row_scale,
                                                  const torch::Tensor& col_scale, const torch::Tensor& inverse) {
  check_products(acc);
  if (acc.scalar_type() == torch::kInt)
    return silu_mul_quantize_rows(acc, acc.data_ptr<int32_t>(), row_scale, col_scale, inverse);
  return silu_mul_quantize_rows(acc, reinterpret_cast<const uint16_t*>(acc.data_ptr()), row_scale, col_scale, inverse);
}

// ---- elementwise passes of the bf16 decoder layer (lbnl.engine) ----

float inverse_rms(const uint16_t* row, int64_t d, float eps) {  // 1 / sqrt(mean(row^2) + eps), float32 sums
  float sum = 0.0f;
  int64_t j = 0;
#ifdef LBNL_AVX512
  __m512 acc = _mm512_setzero_ps();
  for (; j + 16 <= d; j += 16) {
    __m512 v = load_bf16x16(row + j);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  sum = _mm512_reduce_add_ps(acc);
#endif
  for (; j < d; ++j) { const float v = bf16_to_float(row[j]); sum += v * v; }
  return 1.0f / std::sqrt(sum / static_cast<float>(d) + eps);
}

torch::Tensor rms_norm_bf16(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && weight.scalar_type() == torch::kBFloat16, "bf16 only");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && weight.is_contiguous() && weight.numel() == x.size(1),
              "contiguous [rows, d] and a weight of d");
  const int64_t rows = x.size(0), d = x.size(1);
  auto out = torch::empty_like(x);
  const uint16_t* in = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const uint16_t* w = reinterpret_cast<const uint16_t*>(weight.data_ptr());
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* row = in + r * d;
      uint16_t* orow = o + r * d;
      const float inv = inverse_rms(row, d, feps);
      int64_t j = 0;
#ifdef LBNL_AVX512
      const __m512 vinv = _mm512_set1_ps(inv);
      for (; j + 16 <= d; j += 16) {
        __m512 y = round_bf16x16(_mm512_mul_ps(load_bf16x16(row + j), vinv));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(orow + j), to_bf16x16(_mm512_mul_ps(y, load_bf16x16(w + j))));
      }
#endif
      for (; j < d; ++j) orow[j] = float_to_bf16(round_bf16(bf16_to_float(row[j]) * inv) * bf16_to_float(w[j]));
    }
  });
  return out;
}

torch::Tensor silu_mul_bf16(const torch::Tensor& gate_up) {
  TORCH_CHECK(gate_up.scalar_type() == torch::kBFloat16 && gate_up.dim() == 2 && gate_up.is_contiguous(),
              "contiguous bf16 [rows, 2i]");
  const int64_t rows = gate_up.size(0), half = gate_up.size(1) / 2;
  auto out = torch::empty({rows, half}, gate_up.options());
  const uint16_t* in = reinterpret_cast<const uint16_t*>(gate_up.data_ptr());
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* gate = in + r * 2 * half;
      const uint16_t* up = gate + half;
      uint16_t* orow = o + r * half;
      int64_t j = 0;
#ifdef LBNL_AVX512
      const __m512 one = _mm512_set1_ps(1.0f);
      for (; j + 16 <= half; j += 16) {
        __m512 g = load_bf16x16(gate + j);
        __m512 a = round_bf16x16(_mm512_div_ps(g, _mm512_add_ps(one, exp16_any(_mm512_sub_ps(_mm512_setzero_ps(), g)))));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(orow + j), to_bf16x16(_mm512_mul_ps(a, load_bf16x16(up + j))));
      }
#endif
      for (; j < half; ++j) {
        const float g = bf16_to_float(gate[j]);
        orow[j] = float_to_bf16(round_bf16(g / (1.0f + exp_scalar(-g))) * bf16_to_float(up[j]));
      }
    }
  });
  return out;
}

torch::Tensor norm_rotate_bf16(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                               const torch::Tensor& cos, const torch::Tensor& signed_sin) {
  // x [tokens, heads, d]: each head's RMSNorm (when weight has d entries) then the rotate-half rotary
  // embedding, rounded as lbnl.engine rounds them (norm as rms_norm_bf16; x * cos, then + swapped * signed_sin).
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && cos.scalar_type() == torch::kBFloat16 &&
              signed_sin.scalar_type() == torch::kBFloat16, "bf16 only");
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && cos.is_contiguous() && signed_sin.is_contiguous(),
              "contiguous [tokens, heads, d]");
  const int64_t tokens = x.size(0), heads = x.size(1), d = x.size(2), half = d / 2;
  TORCH_CHECK(d % 2 == 0 && cos.numel() == tokens * d && signed_sin.numel() == tokens * d,
              "cos and sin of [tokens, d]");
  const bool norm = weight.numel() > 0;
  TORCH_CHECK(!norm || (weight.scalar_type() == torch::kBFloat16 && weight.numel() == d && weight.is_contiguous()),
              "a bf16 weight of d");
  auto out = torch::empty_like(x);
  const uint16_t* in = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const uint16_t* w = norm ? reinterpret_cast<const uint16_t*>(weight.data_ptr()) : nullptr;
  const uint16_t* c = reinterpret_cast<const uint16_t*>(cos.data_ptr());
  const uint16_t* sn = reinterpret_cast<const uint16_t*>(signed_sin.data_ptr());
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, tokens * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(d);
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* row = in + r * d;
      const uint16_t* cr = c + (r / heads) * d;
      const uint16_t* sr = sn + (r / heads) * d;
      uint16_t* orow = o + r * d;
      const float inv = norm ? inverse_rms(row, d, feps) : 1.0f;
#ifdef LBNL_AVX512
      if (half % 16 == 0) {  // 16 dims and their rotation partners, half a head away, in registers
        const __m512 vinv = _mm512_set1_ps(inv);
        auto normed = [&](int64_t at) {
          const __m512 v = load_bf16x16(row + at);
          return norm ? round_bf16x16(_mm512_mul_ps(round_bf16x16(_mm512_mul_ps(v, vinv)), load_bf16x16(w + at))) : v;
        };
        auto rotate = [&](int64_t at, __m512 v, __m512 partner) {
          const __m512 a = round_bf16x16(_mm512_mul_ps(v, load_bf16x16(cr + at)));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(orow + at),
                              to_bf16x16(_mm512_add_ps(a, _mm512_mul_ps(partner, load_bf16x16(sr + at)))));
        };
        for (int64_t j = 0; j < half; j += 16) {
          const __m512 lo = normed(j), hi = normed(j + half);
          rotate(j, lo, hi);
          rotate(j + half, hi, lo);
        }
        continue;
      }
#endif
      for (int64_t j = 0; j < d; ++j) {
        const float x = bf16_to_float(row[j]);
        buf[j] = norm ? round_bf16(round_bf16(x * inv) * bf16_to_float(w[j])) : x;
      }
      for (int64_t j = 0; j < d; ++j) {
        const float a = round_bf16(buf[j] * bf16_to_float(cr[j]));
        const float t = buf[j < half ? j + half : j - half] * bf16_to_float(sr[j]);
        orow[j] = float_to_bf16(a + t);
      }
    }
  });
  return out;
}

// ---- causal attention on AMX tiles (flash attention: scores never leave the core's caches) ----
#ifdef LBNL_AMX
inline __mmask16 first_lanes(int64_t count) {  // the first min(16, max(0, count)) lanes
  return count >= 16 ? static_cast<__mmask16>(0xFFFF) : count <= 0 ? 0 : static_cast<__mmask16>((1u << count) - 1);
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// ldtilecfg with the whole 64-byte configuration as its input: GCC 12's _tile_loadconfig tells the compiler it
// reads only the first 8 bytes, so the stores of the rows and column widths may be dropped as dead (seen in a
// scratch kernel: the tiles were then configured empty and the first tile instruction faulted).
inline void load_tile_config(const TileConfig& config) { asm volatile("ldtilecfg %0" : : "m"(config)); }

// tileloadd that tells the compiler it reads memory: GCC 12's _tile_loadd declares no memory operand at all, so the
// ordinary stores a tile is meant to read (queries copied in, probabilities, zeroed outputs) could legally be
// moved after it or kept in registers. The clobber puts every earlier store before the load.
#define LBNL_TILE_LOAD(tile, base, stride) \
  asm volatile("tileloadd (%0,%1,1), %%tmm" #tile : : "r"(base), "r"(static_cast<long>(stride)) : "memory")

bool amx_attention_ready() {  // Linux hands out AMX tile state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA)
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
}

constexpr int64_t kAttnQ = 64;    // query positions per block (times the heads of a key/value group)
constexpr int64_t kAttnKV = 256;  // keys per block

// Keys as the B operand of Q K^T: per 16 keys and 32 dims a tile of 16 dim pairs (rows) by 16 keys, i.e. a
// 16x16 transpose of 32-bit dim pairs, gathered a row at a time; keys past L are zeros. Key i's dims start at
// k + i * stride (an even stride).
void pack_keys(const uint16_t* k, int64_t L, int64_t dim, int64_t stride, int64_t padded, uint32_t* out) {
  const int32_t* k32 = reinterpret_cast<const int32_t*>(k);
  const int64_t chunks = dim / 32, half = stride / 2;
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int32_t>(half)));
  for (int64_t kt = 0; kt < padded / 16; ++kt) {
    const __mmask16 keys = first_lanes(L - kt * 16);
    for (int64_t c = 0; c < chunks; ++c) {
      uint32_t* tile = out + (kt * chunks + c) * 256;
      for (int64_t r = 0; r < 16; ++r)
        _mm512_storeu_si512(tile + r * 16, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), keys, rows,
                                                                       k32 + kt * 16 * half + c * 16 + r, 4));
    }
  }
}

// Values as the B operand of P V: per 32 keys and 16 dims a tile of 16 key pairs (rows) by 16 dims, each
// element the two keys' bf16 values side by side; keys past L are zeros (their probabilities are 0 too). Key
// i's values start at v + i * stride.
void pack_values(const uint16_t* v, int64_t L, int64_t dim, int64_t stride, int64_t padded, uint32_t* out) {
  const int64_t chunks = dim / 16;
  auto row16 = [&](int64_t key, int64_t c) {
    if (key >= L) return _mm512_setzero_si512();
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + key * stride + c * 16)));
  };
  for (int64_t kc = 0; kc < padded / 32; ++kc)
    for (int64_t c = 0; c < chunks; ++c) {
      uint32_t* tile = out + (kc * chunks + c) * 256;
      for (int64_t r = 0; r < 16; ++r) {
        const int64_t key = kc * 32 + 2 * r;
        _mm512_storeu_si512(tile + r * 16, _mm512_or_si512(row16(key, c), _mm512_slli_epi32(row16(key + 1, c), 16)));
      }
    }
}

// Tiles 0-3 accumulate a 32x32 float block; 4-5 hold A's two 16-row halves, 6-7 B's two 16-column halves.
inline void dot_2x2() {
  _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
}

inline void store_2x2(float* c, int64_t ld) {  // ld in floats
  _tile_stored(0, c, ld * 4); _tile_stored(1, c + 16, ld * 4);
  _tile_stored(2, c + 16 * ld, ld * 4); _tile_stored(3, c + 16 * ld + 16, ld * 4);
}

// One 32x32 block of scores, S[rt*16 .. +32, kt*16 .. +32) = Q K^T over keys from kb (packed keys `kh`);
// `between()` (the vector work that overlaps the tiles) runs with each group of four tile products, after their
// loads and before the products: its stores, placed after a product, would hold the next group's tile loads
// until that product retired.
template <typename F>
inline void score_tile(const uint16_t* qb, const uint32_t* kh, int64_t dim, int64_t kb, int64_t rt, int64_t kt,
                       float* sb, F&& between) {
  const int64_t chunks = dim / 32;
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  for (int64_t c = 0; c < chunks; ++c) {
    LBNL_TILE_LOAD(4, qb + rt * 16 * dim + c * 32, dim * 2);
    LBNL_TILE_LOAD(5, qb + (rt * 16 + 16) * dim + c * 32, dim * 2);
    LBNL_TILE_LOAD(6, kh + ((kb / 16 + kt) * chunks + c) * 256, 64);
    LBNL_TILE_LOAD(7, kh + ((kb / 16 + kt + 1) * chunks + c) * 256, 64);
    between();
    dot_2x2();
  }
  store_2x2(sb + rt * 16 * kAttnKV + kt * 16, kAttnKV);
}

// One 32x32 block of the output, O[rt*16 .. +32, dc*16 .. +32) += P V over `width` keys from kb (packed `vh`);
// `between()` as for score_tile.
template <typename F>
inline void value_tile(const uint16_t* pb, const uint32_t* vh, int64_t dim, int64_t kb, int64_t width, int64_t rt,
                       int64_t dc, float* ob, F&& between) {
  const int64_t chunks = dim / 16;
  float* o = ob + rt * 16 * dim + dc * 16;
  LBNL_TILE_LOAD(0, o, dim * 4); LBNL_TILE_LOAD(1, o + 16, dim * 4);
  LBNL_TILE_LOAD(2, o + 16 * dim, dim * 4); LBNL_TILE_LOAD(3, o + 16 * dim + 16, dim * 4);
  for (int64_t kc = 0; kc < width / 32; ++kc) {
    LBNL_TILE_LOAD(4, pb + rt * 16 * kAttnKV + kc * 32, kAttnKV * 2);
    LBNL_TILE_LOAD(5, pb + (rt * 16 + 16) * kAttnKV + kc * 32, kAttnKV * 2);
    LBNL_TILE_LOAD(6, vh + ((kb / 32 + kc) * chunks + dc) * 256, 64);
    LBNL_TILE_LOAD(7, vh + ((kb / 32 + kc) * chunks + dc + 1) * 256, 64);
    between();
    dot_2x2();
  }
  store_2x2(o, dim);
}

// 2^t at bf16 accuracy with no rounding step: f = t - floor(t) in [0, 1) (vreduceps), 2^f by a degree-4 minimax
// polynomial (relative error 2.7e-6, against bf16's 4e-3), times 2^floor(t) by scalef (which floors its exponent
// itself and flushes very negative t to 0).
constexpr float kM0 = 1.0000026f, kM1 = 0.69300383f, kM2 = 0.2414428f, kM3 = 0.05201148f, kM4 = 0.01353412f;
inline __m512 exp2x16(__m512 t) {
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_fmadd_ps(f, _mm512_set1_ps(kM4), _mm512_set1_ps(kM3));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(kM2));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(kM1));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(kM0));
  return _mm512_scalef_ps(p, t);
}

// 2^((s - mx) c) of one row's block of scores as bf16 probabilities in pr (0 from `visible` to `width`, a multiple
// of 32): returns their float32 sum. Full vectors unmasked, two at a time (one bf16 conversion per 32).
inline float exponentiate_row(const float* sr, int64_t visible, int64_t width, float c, float mx, uint16_t* pr) {
  const __m512 vc = _mm512_set1_ps(c), off = _mm512_set1_ps(mx * c);
  __m512 vs = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= visible; j += 32) {
    const __m512 a = exp2x16(_mm512_fmsub_ps(_mm512_loadu_ps(sr + j), vc, off));
    const __m512 b = exp2x16(_mm512_fmsub_ps(_mm512_loadu_ps(sr + j + 16), vc, off));
    vs = _mm512_add_ps(vs, _mm512_add_ps(a, b));
    _mm512_storeu_si512(pr + j, (__m512i)_mm512_cvtne2ps_pbh(b, a));
  }
  if (j < visible) {  // the last visible keys; lanes past them are 0
    auto part = [&](int64_t at, __mmask16 keep) {
      return _mm512_maskz_mov_ps(keep, exp2x16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(keep, sr + at), vc, off)));
    };
    const __m512 a = part(j, first_lanes(visible - j)), b = part(j + 16, first_lanes(visible - j - 16));
    vs = _mm512_add_ps(vs, _mm512_add_ps(a, b));
    _mm512_storeu_si512(pr + j, (__m512i)_mm512_cvtne2ps_pbh(b, a));
    j += 32;
  }
  for (; j < width; j += 32) _mm512_storeu_si512(pr + j, _mm512_setzero_si512());
  return _mm512_reduce_add_ps(vs);
}

inline float row_max(const float* sr, int64_t visible) {
  __m512 vm = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < visible; j += 16)
    vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), first_lanes(visible - j), sr + j));
  return _mm512_reduce_max_ps(vm);
}

// A block is kept against a stale running max while its probabilities sum to at most this: no probability, and so
// no accumulator, can grow past it (bf16 and float32 keep their relative precision at any such size).
constexpr float kStaleSum = 65536.0f;

// The online softmax of one row's block of scores: updates its running max m and sum l, returns the factor its
// output accumulator must be scaled by, and writes the block's unnormalised probabilities (bf16, 0 past
// `visible`). Once a row has a max, a block is exponentiated against it in one pass and kept unless its
// probabilities sum past kStaleSum (a score far above the max, rare after the first blocks): then the max moves
// to the block's and the block is exponentiated again. A row's first block needs a pass for its max first.
inline float softmax_block_row(const float* sr, int64_t visible, int64_t width, float c, float& m, float& l,
                               uint16_t* pr) {
  if (visible <= 0) {
    std::memset(pr, 0, width * 2);
    return 1.0f;
  }
  if (m != -INFINITY) {
    const float sum = exponentiate_row(sr, visible, width, c, m, pr);
    if (sum <= kStaleSum) {
      l += sum;
      return 1.0f;
    }
  }
  const float mn = std::max(m, row_max(sr, visible));
  const float sum = exponentiate_row(sr, visible, width, c, mn, pr);
  const float alpha = m == -INFINITY ? 0.0f : std::exp2((m - mn) * c);
  l = l * alpha + sum;
  m = mn;
  return alpha;
}

// Scratch memory starting on a cache line (malloc aligns to 16 bytes only): a tile row of 64 bytes that straddles
// two lines loads and stores several times slower, and whether it did depended on the heap's state.
template <typename T>
std::unique_ptr<T[], decltype(&std::free)> line_aligned(int64_t count) {
  void* p = std::aligned_alloc(64, (count * sizeof(T) + 63) / 64 * 64);
  TORCH_CHECK(p != nullptr, "out of memory");
  return {static_cast<T*>(p), &std::free};
}

torch::Tensor causal_attention_amx(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   double scale) {
  TORCH_CHECK(amx_attention_ready(), "the OS does not let this process use AMX tiles");
  TORCH_CHECK(q.scalar_type() == torch::kBFloat16 && k.scalar_type() == torch::kBFloat16 &&
              v.scalar_type() == torch::kBFloat16, "bf16 only");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && q.stride(2) == 1 && k.stride(2) == 1 &&
              v.stride(2) == 1 && k.stride(1) % 2 == 0, "q [n, heads, dim], k and v [kv_heads, L, dim], each "
              "head's dims contiguous");
  const int64_t n = q.size(0), heads = q.size(1), dim = q.size(2), kv_heads = k.size(0), L = k.size(1);
  TORCH_CHECK(dim % 32 == 0 && k.size(2) == dim && v.sizes() == k.sizes(), "head size a multiple of 32");
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0 && L >= n, "grouped heads and L >= n keys");
  const int64_t group = heads / kv_heads, start = L - n, qs0 = q.stride(0), qs1 = q.stride(1);
  const int64_t padded = (L + kAttnKV - 1) / kAttnKV * kAttnKV, packed = padded * dim / 2;
  auto kp = torch::empty({kv_heads, packed}, torch::kInt);
  auto vp = torch::empty({kv_heads, packed}, torch::kInt);
  const uint16_t* kd = reinterpret_cast<const uint16_t*>(k.data_ptr());
  const uint16_t* vd = reinterpret_cast<const uint16_t*>(v.data_ptr());
  uint32_t* kpd = reinterpret_cast<uint32_t*>(kp.data_ptr());
  uint32_t* vpd = reinterpret_cast<uint32_t*>(vp.data_ptr());
  at::parallel_for(0, kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) {
      pack_keys(kd + h * k.stride(0), L, dim, k.stride(1), padded, kpd + h * packed);
      pack_values(vd + h * v.stride(0), L, dim, v.stride(1), padded, vpd + h * packed);
    }
  });
  auto out = torch::empty({n, heads, dim}, q.options());
  if (n == 0) return out;
  const uint16_t* qd = reinterpret_cast<const uint16_t*>(q.data_ptr());
  uint16_t* od = reinterpret_cast<uint16_t*>(out.data_ptr());
  const int64_t blocks = (n + kAttnQ - 1) / kAttnQ, rows = group * kAttnQ;
  const float c = static_cast<float>(scale) * kLog2e;
  at::parallel_for(0, kv_heads * blocks, 1, [&](int64_t begin, int64_t end) {
    TileConfig config;
    for (int t = 0; t < 8; ++t) {
      config.rows[t] = 16;
      config.colsb[t] = 64;
    }
    load_tile_config(config);
    // Scores and probabilities of two key blocks at a time: while the tiles compute one block's values and
    // the scores of the block after next, the vector units run the softmax of the block in between.
    auto qb = line_aligned<uint16_t>(rows * dim), pb = line_aligned<uint16_t>(2 * rows * kAttnKV);
    auto sb = line_aligned<float>(2 * rows * kAttnKV), ob = line_aligned<float>(rows * dim);
    std::vector<float> m(rows), l(rows), alpha(rows);
    for (int64_t item = begin; item < end; ++item) {
      // within a head, light and heavy blocks alternate (the first, the last, the second, ...), so that the
      // threads' contiguous ranges of items carry equal work
      const int64_t h = item / blocks, pair = item % blocks;
      const int64_t s = (pair % 2 == 0 ? pair / 2 : blocks - 1 - pair / 2) * kAttnQ;
      for (int64_t i = 0; i < rows; ++i) {  // row i: head h * group + i / kAttnQ at position s + i % kAttnQ
        const int64_t pos = s + i % kAttnQ;
        if (pos < n) std::memcpy(&qb[i * dim], qd + pos * qs0 + (h * group + i / kAttnQ) * qs1, dim * 2);
        else std::memset(&qb[i * dim], 0, dim * 2);
      }
      std::fill_n(ob.get(), rows * dim, 0.0f);
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), 0.0f);
      const uint32_t* kh = kpd + h * packed;
      const uint32_t* vh = vpd + h * packed;
      const int64_t last = std::min(L, start + s + kAttnQ);  // the block's rows see keys [0, last) at most
      const int64_t kv_blocks = (last + kAttnKV - 1) / kAttnKV;
      auto width = [&](int64_t b) { return (std::min(kAttnKV, last - b * kAttnKV) + 31) / 32 * 32; };
      auto scores = [&](int64_t b) { return &sb[(b % 2) * rows * kAttnKV]; };
      auto probs = [&](int64_t b) { return &pb[(b % 2) * rows * kAttnKV]; };
      // Step b (from -2): tiles run block b's values and block b + 2's scores, vectors block b + 1's softmax.
      for (int64_t b = -2; b < kv_blocks; ++b) {
        const int64_t sm = b + 1, sc = b + 2;
        const int64_t value_jobs = b >= 0 ? (rows / 32) * (dim / 32) : 0;
        const int64_t score_jobs = sc < kv_blocks ? (rows / 32) * (width(sc) / 32) : 0;
        const int64_t jobs = value_jobs + score_jobs;
        const bool softmax = sm >= 0 && sm < kv_blocks;
        int64_t row = 0;
        auto softmax_rows = [&](int64_t upto) {
          for (; softmax && row < upto; ++row) {
            const int64_t pos = s + row % kAttnQ, kb = sm * kAttnKV, w = width(sm);
            const int64_t visible = pos < n ? std::min(start + pos + 1 - kb, w) : 0;
            alpha[row] = softmax_block_row(scores(sm) + row * kAttnKV, visible, w, c, m[row], l[row],
                                           probs(sm) + row * kAttnKV);
          }
        };
        // the softmax rows are spread over the tile products: a few rows with each group of four products
        const int64_t products = value_jobs * (b >= 0 ? width(b) / 32 : 0) + score_jobs * (dim / 32);
        int64_t done = 0;
        auto between = [&]() { softmax_rows(rows * ++done / products); };
        for (int64_t j = 0; j < jobs; ++j) {
          if (j < value_jobs) {
            const int64_t per = dim / 32;
            value_tile(probs(b), vh, dim, b * kAttnKV, width(b), (j / per) * 2, (j % per) * 2, ob.get(), between);
          } else {
            const int64_t per = width(sc) / 32, t = j - value_jobs;
            score_tile(qb.get(), kh, dim, sc * kAttnKV, (t / per) * 2, (t % per) * 2, scores(sc), between);
          }
        }
        softmax_rows(rows);
        if (softmax)  // block sm's values go onto outputs scaled to its running max
          for (int64_t i = 0; i < rows; ++i) {
            if (alpha[i] == 1.0f) continue;
            float* orow = &ob[i * dim];
            const __m512 va = _mm512_set1_ps(alpha[i]);
            for (int64_t j = 0; j < dim; j += 16)
              _mm512_storeu_ps(orow + j, _mm512_mul_ps(_mm512_loadu_ps(orow + j), va));
          }
      }
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t pos = s + i % kAttnQ;
        if (pos >= n) continue;
        const __m512 inv = _mm512_set1_ps(1.0f / l[i]);
        uint16_t* orow = od + (pos * heads + h * group + i / kAttnQ) * dim;
        for (int64_t j = 0; j < dim; j += 16)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(orow + j),
                              (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(&ob[i * dim + j]), inv)));
      }
    }
    _tile_release();
  });
  return out;
}
#else
bool amx_attention_ready() { return false; }

torch::Tensor causal_attention_amx(const torch::Tensor& q, const torch::Tensor&, const torch::Tensor&, double) {
  TORCH_CHECK(false, "lbnl's AMX attention kernel was not compiled on this CPU");
  return q;
}
#endif

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("amx_attention_ready", &amx_attention_ready);
  m.def("causal_attention_amx", &causal_attention_amx);
  m.def("causal_softmax_bf16", &causal_softmax_bf16);
  m.def("causal_softmax_int32", &causal_softmax_int32);
  m.def("quantize_rows_bf16", &quantize_rows_bf16);
  m.def("dequantize_bf16", &dequantize_bf16);
  m.def("silu_mul_quantize_bf16", &silu_mul_quantize_bf16);
  m.def("rms_norm_bf16", &rms_norm_bf16);
  m.def("silu_mul_bf16", &silu_mul_bf16);
  m.def("norm_rotate_bf16", &norm_rotate_bf16);
}
"""

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return ""


#: Compiler flags of the kernels; OpenMP makes ``at::parallel_for`` run on torch's threads (without it every
#: kernel here runs on one thread), and the ``libgomp.so.1`` it links is the copy torch has already loaded.
_CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math")
_OPENMP = ("-fopenmp",)


def _build() -> Any:
    """Compile (or load the cached build of) the kernels with OpenMP, or without it where the compiler lacks it."""
    try:
        return _compile(_OPENMP)
    except Exception:  # noqa: BLE001 - a compiler without OpenMP: the same kernels on one thread
        return _compile(())


def _build_dir(openmp: tuple[str, ...], text: str = _SOURCE) -> tuple[str, str]:
    """The extension's name and build directory for the C++ ``text`` built with ``openmp``: keyed by the text,
    the compiler flags, torch's version and this CPU's flags."""
    cflags = " ".join(_CFLAGS + openmp)
    key = hashlib.sha256((text + _cpu_flags() + torch.__version__ + cflags).encode()).hexdigest()[:16]
    name = f"lbnl_native_{key}"
    return name, os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions"), name)


@contextlib.contextmanager
def _one_build_at_a_time(root: str) -> Iterator[None]:
    """Hold an OS lock on ``root`` while torch builds or loads there. torch's own lock is a file that a build
    killed midway (``kill``, a timeout, a container stopping) leaves behind, and every later process would then
    wait on it forever; the OS lock dies with its process, so whoever holds it knows no lbnl build is running and
    removes such a leftover first. Without ``fcntl`` (Windows) or file locks, torch's lock file alone."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(os.path.join(root, "lbnl-build.lock"), "a", encoding="utf-8") as guard:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: torch's lock file alone
            yield
            return
        try:
            leftover = os.path.join(root, "lock")
            if os.path.exists(leftover):
                os.remove(leftover)
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def _compile(openmp: tuple[str, ...], text: str = _SOURCE) -> Any:
    """Build (or load the cached build of) the C++ ``text``, this module's kernels by default (see
    :func:`_build_dir`). A first build says so on stderr: it takes about a minute."""
    from torch.utils.cpp_extension import LIB_EXT, load

    name, root = _build_dir(openmp, text)
    os.makedirs(root, exist_ok=True)
    source = os.path.join(root, "lbnl_native.cpp")
    if not os.path.exists(source):
        with open(source + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(source + ".tmp", source)
    with _one_build_at_a_time(root):
        if not any(entry.endswith(LIB_EXT) for entry in os.listdir(root)):
            print("lbnl: compiling its native CPU kernels for this machine (once, about a minute)...",
                  file=sys.stderr, flush=True)
        return load(name=name, sources=[source], build_directory=root, extra_cflags=list(_CFLAGS + openmp),
                    extra_ldflags=list(openmp), verbose=False)


def module() -> Any | None:
    """The compiled kernels, built on first use (``None`` when disabled or the build failed, with a warning)."""
    with _LOCK:
        if "module" not in _STATE:
            _STATE["module"] = None
            if os.environ.get("LBNL_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off"):
                try:
                    _STATE["module"] = _build()
                except Exception as exc:  # noqa: BLE001 - no compiler, no ninja: torch's operations instead
                    warnings.warn(f"lbnl's native attention kernels are unavailable ({exc}); using torch's softmax",
                                  RuntimeWarning, stacklevel=2)
        return _STATE["module"]


def available() -> bool:
    """Whether the native kernels can run here (builds them on the first call)."""
    return module() is not None


def amx_attention_available() -> bool:
    """Whether :func:`causal_attention_amx` runs here: the kernels were built for a CPU with AMX-BF16 and the OS
    grants this process AMX tile state (builds the kernels on the first call)."""
    mod = module()
    return mod is not None and bool(mod.amx_attention_ready())


def causal_attention_amx(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of ``n`` new bf16 queries [n, heads, dim] over ``L >= n`` keys and values
    [kv_heads, L, dim] (the first ``L - n`` a cached prefix), as :func:`lbnl.attention.causal_attention_chunked`
    takes them, in one pass on AMX tiles: per block of 64 positions of a key/value group's heads, scores of
    256 keys at a time in float32, an online softmax (running max and sum, probabilities rounded to bf16 for
    the value product) and the float32 output normalised once at the end. ``dim`` must be a multiple of 32;
    ``k`` and ``v`` may be views (each head's dims contiguous, e.g. heads-first views of token-major
    projections), so no copy is made. Returns a contiguous [n, heads, dim]: token-major, as the output
    projection takes it."""
    return module().causal_attention_amx(q, k, v, scale)


def causal_softmax(scores: torch.Tensor, out: torch.Tensor, base: int, period: int) -> torch.Tensor:
    """``out`` = softmax over each row of the bf16 ``scores`` [rows, width] where row ``r`` sees the keys up to
    ``base + r % period`` (later ones get probability 0): the causal mask of ``period`` query rows, repeated
    for each query head of a group. Float32 inside, bf16 out."""
    module().causal_softmax_bf16(scores, out, base, period)
    return out


def causal_softmax_int32(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, out: torch.Tensor,
                         base: int, period: int) -> torch.Tensor:
    """:func:`causal_softmax` of int32 scores ``acc * row_scale[r] * col_scale[c]`` (float32 scales)."""
    module().causal_softmax_int32(acc, row_scale, col_scale, out, base, period)
    return out


def quantize_rows(x: torch.Tensor, inverse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 of bf16 ``x`` [..., k] (times ``inverse`` per column first, when given):
    ``(int8 [..., k], float32 scale [..., 1])``, as :func:`lbnl.int8.quantize_rows` computes it."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    empty = flat.new_empty(0, dtype=torch.float32)
    q, scale = module().quantize_rows_bf16(flat, empty if inverse is None else inverse)
    return q.view(x.shape), scale.view(*x.shape[:-1], 1)


def dequantize(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor) -> torch.Tensor:
    """bf16 ``bf16(acc * col_scale[c]) * row_scale[r]`` of int32 products [rows, n], or of bf16 products
    already multiplied by their column scales (then ``col_scale`` is 1s); float32 scales."""
    return module().dequantize_bf16(acc.contiguous(), row_scale.reshape(-1).contiguous(), col_scale.contiguous())


def silu_mul_quantize(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, inverse: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 gated MLP's middle (:func:`lbnl.int8._silu_mul_quantize` in bf16): int32 (or column-scaled bf16,
    as :func:`dequantize` reads them) gate/up products [rows, 2i] to the down projection's int8 input [rows, i]
    and its per-row scale [rows, 1]."""
    return tuple(module().silu_mul_quantize_bf16(acc.contiguous(), row_scale.reshape(-1).contiguous(),
                                                 col_scale.contiguous(), inverse.contiguous()))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The RMSNorm of Llama-family models on bf16 ``x`` [..., d] with a bf16 ``weight``, as
    :func:`lbnl.engine._rms` computes it (normalised in float32, rounded, times the weight, rounded)."""
    return module().rms_norm_bf16(x.reshape(-1, x.shape[-1]), weight, eps).view(x.shape)


def norm_rotate(x: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor,
                signed_sin: torch.Tensor) -> torch.Tensor:
    """Query or key heads made ready for attention in one pass: bf16 ``x`` [tokens, heads, d], each head
    RMS-normed with ``weight`` (Qwen3's per-head norm; ``None``: no norm), then rotated by the rotary
    embedding's ``cos`` and ``signed_sin`` [tokens, d] (the rotate-half form), each step rounded as
    :func:`lbnl.engine._norm` and :func:`lbnl.engine._rotate` round it."""
    empty = x.new_empty(0)
    return module().norm_rotate_bf16(x, empty if weight is None else weight, eps, cos.reshape(x.shape[0], -1),
                                     signed_sin.reshape(x.shape[0], -1))


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a joined bf16 [..., 2i] gate/up output, each product rounded as torch rounds it."""
    flat = gate_up.reshape(-1, gate_up.shape[-1])
    return module().silu_mul_bf16(flat).view(*gate_up.shape[:-1], gate_up.shape[-1] // 2)
