#ifndef GGML_QUANTS_H
#define GGML_QUANTS_H
// Dequantisation of ggml's tensor types (the block formats of GGUF files), in quants.c.
//
// Each function converts `n` elements (a whole number of blocks: the caller checks it) from
// `src`, the packed little-endian blocks, to float32 in `dst`. The results are the values of
// ggml's reference code (dequantize_row_* in ggml-quants.c) bit for bit, which are also those
// of `gguf.quants.dequantize` in Python's `gguf` package: every product and sum is rounded on its
// own (no fused multiply-add), in the same order. Block layouts (QK_K = 256 elements):
//
//   type   elements  bytes  layout
//   q4_0   32        18     f16 d; 16 bytes of 4-bit q (low nibbles: elements 0-15, high: 16-31); x = (q - 8)·d
//   q4_1   32        20     f16 d, f16 m; 16 bytes of 4-bit q as q4_0; x = q·d + m
//   q5_0   32        22     f16 d; u32 high bits; 16 bytes of low nibbles; x = (q - 16)·d
//   q5_1   32        24     f16 d, f16 m; u32 high bits; 16 bytes of low nibbles; x = q·d + m
//   q8_0   32        34     f16 d; 32 int8 q; x = q·d
//   q2_K   256       84     16 bytes of 4-bit scale | 4-bit min; 64 bytes of 2-bit q; f16 d, f16 dmin
//   q3_K   256       110    32 bytes of high bits; 64 bytes of 2-bit low q; 12 bytes of 6-bit scales; f16 d
//   q4_K   256       144    f16 d, f16 dmin; 12 bytes of 6-bit scales and mins; 128 bytes of 4-bit q
//   q5_K   256       176    f16 d, f16 dmin; 12 bytes of scales and mins; 32 bytes of high bits; 128 bytes of 4-bit q
//   q6_K   256       210    128 bytes of low 4 bits; 64 bytes of high 2 bits; 16 int8 scales; f16 d
//
// `src` need not be aligned. The kernels are compiled for AVX-512, AVX2 and baseline x86-64 and
// picked at load time, like the other kernels; every clone computes the same bits.

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// IEEE half → float, exactly: subnormals, ±0 and ±inf kept; NaNs keep sign and payload, quieted
/// (as F16C's vcvtph2ps and ggml's conversion give).
float ak_fp16_to_fp32(uint16_t h);
/// bfloat16 → float: the 16 bits become the high half (NaNs unchanged).
float ak_bf16_to_fp32(uint16_t h);

/// float → IEEE half, rounded to nearest even (subnormals kept, overflow to ±inf): ggml's
/// GGML_FP32_TO_FP16 and numpy's astype(float16).
uint16_t ak_fp32_to_fp16(float f);

/// ggml's reference q4_0 quantisation (quantize_row_q4_0_ref; gguf-py's `quantize`): `n` floats
/// (a multiple of 32) into n/32 blocks of 18 bytes. Per block: m = the value of largest magnitude
/// (the first on ties), d = m / −8, q = min(15, trunc(x · (1/d) + 8.5)) (0 when d = 0), d stored as f16.
void ak_quantize_q4_0(const float *src, void *dst, long n);

void ak_dequantize_f16(const void *src, float *dst, long n);
void ak_dequantize_bf16(const void *src, float *dst, long n);
void ak_dequantize_q4_0(const void *src, float *dst, long n);
void ak_dequantize_q4_1(const void *src, float *dst, long n);
void ak_dequantize_q5_0(const void *src, float *dst, long n);
void ak_dequantize_q5_1(const void *src, float *dst, long n);
void ak_dequantize_q8_0(const void *src, float *dst, long n);
void ak_dequantize_q2_K(const void *src, float *dst, long n);
void ak_dequantize_q3_K(const void *src, float *dst, long n);
void ak_dequantize_q4_K(const void *src, float *dst, long n);
void ak_dequantize_q5_K(const void *src, float *dst, long n);
void ak_dequantize_q6_K(const void *src, float *dst, long n);

#ifdef __cplusplus
}
#endif

#endif
