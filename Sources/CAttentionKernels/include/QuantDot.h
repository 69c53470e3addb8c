#ifndef AK_QUANT_DOT_H
#define AK_QUANT_DOT_H
// Matrix-vector products that read ggml's quantised blocks in place (quantdot.c), for decoding:
// `y [nx, wrows] (+)= x [nx, k] · Wᵀ` with `W [wrows, k]` stored row by row in a GGUF block type.
//
// The activation rows are first quantised once per matrix (ak_qdot_quantize) to 8-bit blocks of
// 32 columns, each with a float scale d = max|x| / 127, the float d·Σq and 32 int8 quants
// q = round(x / d):
//   - for the 32-element types (q4_0, q4_1, q5_0, q5_1, q8_0): block by block (40 bytes each);
//   - for the K-quants (q4_K, q5_K, q6_K): the same blocks eight to a superblock of 256 columns,
//     as arrays (8 scales, 8 sums, 256 quants: 320 bytes), so that they load as vectors. Not
//     ggml's q8_K (one scale per 256 columns): with per-32 scales an outlier costs only its own
//     block's resolution. Gemma 3 270M's attention-output and MLP-down inputs carry such
//     outliers; with these blocks its fast path's logit error against the float path fell by a
//     third (RMS 0.52 → 0.34 over 700 positions; llama.cpp's own 0.52), and the kernels got
//     faster, not slower;
//   - for f32, f16 and bf16 the rows are kept as float32 (4·k bytes).
// Each weight block then meets each activation block in integer dot products (exact in int32),
// and the scales (and mins) are applied in float in a fixed order with every product, fma and sum
// rounded on its own: into four sets of eight lane sums of four columns' products each (block b
// of a 32-element type to set b mod 4; a K-quant superblock's eight sub-blocks combined first,
// superblock b to set b mod 4), folded in a fixed tree at the end, with the min sums. The integer
// sums are the same on every path (portable C, AVX2 `vpmaddubsw`/`vpmaddwd`, AVX-512 VNNI
// `vpdpbusd` on 256-bit vectors), and the float steps are the same operations on all of them
// (fma as `fmaf` in C, `vfmadd` in the vector paths), so every path gives the same bits. Activation
// rows are independent: a row's result is bitwise the same whether it is computed alone or with
// up to 15 others (batch-invariant), while each weight block is unpacked once for all of them.

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The most activation rows one ak_qdot call takes.
enum { AK_QDOT_MAX_ROWS = 16 };

/// 1 when `type` (ggml's type number: 0 f32, 1 f16, 2 q4_0, 3 q4_1, 6 q5_0, 7 q5_1, 8 q8_0,
/// 12 q4_K, 13 q5_K, 14 q6_K, 30 bf16) has a kernel and `k` columns are whole blocks of it.
int ak_qdot_supports(int type, long k);
/// Bytes of one quantised activation row of `k` columns for weights of `type`.
long ak_qdot_activation_bytes(int type, long k);
/// The activation format `type` takes: 0 float32 rows, 1 the 32-element types' blocks, 2 the
/// K-quants' superblocks. Matrices of types with the same format can share one quantised copy of x.
int ak_qdot_activation_format(int type);
/// Quantises rows `x [n, k]` (row stride `ldx` floats) into `dst`, `n` rows of
/// ak_qdot_activation_bytes(type, k) bytes each. Scalar code: the same bits on every CPU.
void ak_qdot_quantize(int type, const float *x, long ldx, long n, long k, void *dst);
/// For `i < wrows`, `r < nx` (1 ≤ nx ≤ AK_QDOT_MAX_ROWS): `y[r·ldy + i] = W_i · x_r` (plus the old
/// value when `accumulate`), where row `W_i` starts at `w + i·rowBytes` and `xa` holds the `nx`
/// rows from ak_qdot_quantize (consecutive).
void ak_qdot(int type, const void *w, long rowBytes, long wrows, long k, const void *xa, long nx, float *y, long ldy,
             int accumulate);
/// Chooses the integer path: -1 the best the CPU has (the default), 0 portable C, 1 AVX2,
/// 2 AVX-512 VNNI. Returns the path then in effect (a path the CPU lacks falls back to the next).
int ak_qdot_set_path(int path);
/// The path in effect, as ak_qdot_set_path numbers it.
int ak_qdot_path(void);

#ifdef __cplusplus
}
#endif

#endif
