#ifndef ATTENTION_KERNELS_H
#define ATTENTION_KERNELS_H
// Vectorised kernels for attention, one source file per family: elementwise.c (exp, scaled copies,
// the finite-value scan), softmax.c (row softmax, FlashAttention's online softmax, normalisation),
// merge.c (the (max, sum, output) merge of partial results), linear.c (feature maps and chunk
// sums), decode.c (few query rows against streamed keys and values), kvtypes.c (the same
// products over bf16, f16 and q8_0 cache rows, and their conversions), infini.c (memory read blend,
// delta rule), positions.c (RoPE, ALiBi); vector.h holds their private vector macros.
//
// Every kernel is compiled three times (x86-64-v4 = AVX-512, x86-64-v3 = AVX2+FMA, baseline
// x86-64) and the loader picks the best for the running CPU (`target_clones`, resolved once
// through an ifunc). No compiler flag is needed, so a package depending on this one builds it.
// Row-major throughout; `ld*` is a leading dimension (elements between consecutive rows).

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Name of the clone the loader selected on this CPU: "x86-64-v4", "x86-64-v3" or "baseline".
const char *ak_kernel_isa(void);

/// y[i] = exp(x[i]) for i < n (x and y may alias). Inputs below -87.3365 give 0 (subnormal
/// results are flushed); inputs above 88.72 give +inf. Max error under 1 ULP (0.97 measured over 224k points: see the tests).
void ak_exp(const float *x, float *y, long n);

/// Row softmax in place over a rows × cols block (leading dimension lds). `valid` (may be NULL)
/// gives per row how many leading columns are unmasked; columns at or past it get probability 0.
/// A row with no unmasked column, or whose unmasked scores are all -inf, becomes all zeros.
void ak_softmax_rows(float *s, long rows, long cols, long lds, const int *valid);

/// ak_softmax_rows that also writes each row's log-sum-exp, lse[r] = max + log Σ exp(s - max)
/// over its unmasked scores (-inf for a fully masked row): what a backward pass recomputes
/// probabilities from.
void ak_softmax_rows_lse(float *s, long rows, long cols, long lds, const int *valid, float *lse);

/// One key tile of FlashAttention's online softmax. On entry `s` holds the tile's scores; `m` and
/// `l` the running row max and row sum (start with -inf and 0); `o` the unnormalised output
/// accumulator (rows × dv, leading dimension ldo, start at 0). On return `s` holds
/// p = exp(s - m_new) (0 where masked), `o` rows are rescaled by exp(m_old - m_new), and m, l are
/// updated; the caller then adds p·V_tile into `o`. Rows still fully masked stay untouched (p = 0).
void ak_online_softmax_tile(float *s, long rows, long cols, long lds, const int *valid,
                            float *m, float *l, float *o, long ldo, long dv);

/// dst[r, :] = src[r, :] / l[r] for a rows × cols block; rows with l[r] == 0 become zeros.
void ak_divide_rows(const float *src, long lds, float *dst, long ldd, long rows, long cols,
                    const float *l);

/// dst[r, :] = alpha · src[r, :] for a rows × cols block (packing with a scale folded in).
void ak_copy_scaled(const float *src, long lds, float *dst, long ldd, long rows, long cols,
                    float alpha);

/// Index of the first NaN or ±Inf among x[0 ..< n], or -1 when all are finite.
long ak_find_nonfinite(const float *x, long n);

/// Index of the first NaN or +Inf among x[0 ..< n] (and -Inf unless allow_negative_infinity),
/// or -1; *max_abs (if not NULL) is raised to the largest |x[i]| among the accepted finite
/// values. One pass: the finite check and the magnitudes the overflow bounds need.
long ak_scan_values(const float *x, long n, int allow_negative_infinity, float *max_abs);

/// x[i] = value for i < n.
void ak_fill(float *x, long n, float value);

/// x[i] *= alpha.
void ak_scale(float *x, long n, float alpha);
/// y[i] += x[i].
void ak_add(float *y, const float *x, long n);
/// y[i] = elu(x[i]) + 1 (= x + 1 for x > 0, exp(x) otherwise); x and y may alias.
void ak_elu1(const float *x, float *y, long n);
/// y[i] = max(x[i], 0); x and y may alias.
void ak_relu(const float *x, float *y, long n);

// ---- Linear attention helpers (2-D blocks, row-major, leading dimensions in elements) ----

/// Feature maps applied row by row: dst[r, :] = φ(src[r, :]).
typedef enum { AK_FEATURE_ELU1 = 0, AK_FEATURE_RELU = 1 } ak_feature_kind;
void ak_feature_rows(ak_feature_kind kind, const float *src, long lds, float *dst, long ldd,
                     long rows, long cols);

/// The feature map's backward: dst[r, c] = g[r, c] · φ'(x[r, c]) (elu + 1: 1 for x > 0, e^x
/// otherwise; relu: 1 for x > 0, else 0). dst may alias g.
void ak_feature_grad_rows(ak_feature_kind kind, const float *x, long ldx, const float *g, long ldg,
                          float *dst, long ldd, long rows, long cols);

/// y[i] *= x[i].
void ak_mul(float *y, const float *x, long n);

/// Zeroes s[r, c] for c >= valid[r] (c < cols): the causal mask of linear attention.
void ak_zero_after(float *s, long rows, long cols, long lds, const int *valid);

/// out[r] += sum_c s[r, c].
void ak_row_sums_add(const float *s, long rows, long cols, long lds, float *out);

/// acc[c] += sum_r x[r, c].
void ak_col_sums_add(const float *x, long rows, long cols, long ldx, float *acc);

/// colmax[c] = max(colmax[c], max_r x[r, c]).
void ak_col_max(const float *x, long rows, long cols, long ldx, float *colmax);

/// dst[r, c] = exp(x[r, c] - colmax[c]); colsum[c] += dst[r, c]. (Efficient Attention's key
/// softmax over positions, accumulated chunk by chunk.)
void ak_exp_sub_cols(const float *x, long rows, long cols, long ldx, const float *colmax,
                     float *dst, long ldd, float *colsum);

/// out[r] = sum_c x[r, c]^2 · alpha.
void ak_row_sumsq(const float *x, long rows, long cols, long ldx, float alpha, float *out);

/// out[r] = max_c x[r, c].
void ak_row_max(const float *x, long rows, long cols, long ldx, float *out);

/// p[r, c] = exp(p[r, c] - shift[r]) in place (FAVOR+ features once shifts are known).
void ak_exp_sub_rows(float *p, long rows, long cols, long ldp, const float *shift);

// ---- Decode: products with few query rows, streaming the keys and values once ----

/// s[r·lds + j] = q[r·ldq ...] · k[j·ldk ...] (length d) for r < rows, j < w. For a handful of
/// query rows (decoding; up to 32 in practice) this reads each key row once from memory, feeds it
/// to four rows at a time and reuses it from L1 for the next four. Columns past w are not written.
void ak_rows_dot_keys(const float *q, long ldq, long rows, long d, const float *k, long ldk, long w,
                      float *s, long lds);

/// o[r·ldo + t] += Σ_j p[r·ldp + j] · v[j·ldv + t] for r < rows, t < dv, j < w (each value row read
/// once). Values must be finite: masked keys (p = 0) are skipped by the one-row path but multiplied
/// by 0 in the four-row one.
void ak_rows_times_values(const float *p, long ldp, long rows, const float *v, long ldv, long w, long dv,
                          float *o, long ldo);

// ---- Low-precision KV cache: bf16, f16 and ggml's q8_0 rows (kvtypes.c) ----
//
// A stored row holds d values: bf16 and f16 take 2·d bytes; q8_0 takes ceil(d / 32) blocks of
// 34 bytes (an f16 scale, then 32 int8 values; the last block zero-padded). `ldb` arguments are
// byte strides between stored rows. The product kernels read the stored type directly (F16C and
// AVX2 conversions where the CPU has them, integer bit operations elsewhere): there is no float32
// copy of the cache.

enum { AK_KV_F32 = 0, AK_KV_BF16 = 1, AK_KV_F16 = 2, AK_KV_Q8_0 = 3 };

/// The path the stored-type products take on this CPU: "f16c" (AVX2, FMA, F16C) or "portable".
const char *ak_kv_kernel_path(void);

/// Tests: nonzero forces the portable path, zero returns to the CPU's choice.
void ak_kv_force_portable(int portable);

/// Bytes of one stored row of d values.
long ak_kv_row_bytes(int kind, long d);

/// Stores rows × d floats (leading dimension lds) as `kind` rows (byte stride ldb): bf16 and f16
/// round to nearest even; q8_0 as ggml's reference quantiser (d = max|x| / 127 rounded to f16,
/// q = roundf(x · 127 / max|x|)). Values must be finite and representable (the caller checks).
void ak_kv_encode_rows(int kind, const float *src, long lds, long rows, long d, void *dst, long ldb);

/// Reads rows of `kind` back as floats (exact: every stored value is a float).
void ak_kv_decode_rows(int kind, const void *src, long ldb, long rows, long d, float *dst, long ldd);

/// ak_rows_dot_keys with keys stored as `kind` (byte stride ldkb): s[r·lds + j] = q_r · k_j. For
/// q8_0 keys, q_r is first rounded to 8-bit blocks of 32 (integer q·k; see "q8_0 keys" below).
void ak_kv_rows_dot_keys(int kind, const float *q, long ldq, long rows, long d, const void *k, long ldkb, long w,
                         float *s, long lds);

/// ak_rows_times_values with values stored as `kind` (byte stride ldvb): o_r += Σ_j p_r[j] · v_j.
void ak_kv_rows_times_values(int kind, const float *p, long ldp, long rows, const void *v, long ldvb, long w,
                             long dv, float *o, long ldo);

// ---- q8_0 keys: integer q·k (kvq8.c) ----
//
// For a q8_0 cache, ak_kv_rows_dot_keys quantises the query rows to 8-bit blocks of 32 (scale
// d = max|q| / 127, q = round(x / d)) and takes integer dot products against the key blocks, the
// block scales applied per block in float (as the quantised weight kernels do): portable C, AVX2
// (vpmaddubsw) and AVX-512 VNNI (vpdpbusd) give the same bits, and each row's scores do not
// depend on the rows or keys computed with it. Callers that visit many key tiles quantise once:

/// Bytes of one quantised query row of d values.
long ak_kv_q8_query_bytes(long d);
/// Quantises query rows `q [rows, d]` (stride ldq) into `dst`: rows of ak_kv_q8_query_bytes(d), consecutive.
void ak_kv_q8_quantize_queries(const float *q, long ldq, long rows, long d, void *dst);
/// s[r·lds + j] = q̂_r · k_j for the quantised rows `qa` (from ak_kv_q8_quantize_queries) and q8_0 keys.
void ak_kv_q8_rows_dot_keys(const void *qa, long rows, long d, const void *k, long ldkb, long w, float *s, long lds);
/// ak_kv_q8_quantize_queries then ak_kv_q8_rows_dot_keys, four rows at a time.
void ak_kv_q8_dot_keys_float(const float *q, long ldq, long rows, long d, const void *k, long ldkb, long w, float *s, long lds);
/// Tests: the integer path, -1 the best the CPU has (the default), 0 portable, 1 AVX2, 2 AVX-512
/// VNNI; returns the path then in effect. ak_kv_force_portable(1) forces 0 as well.
int ak_kv_q8_set_path(int path);
/// The path in effect, numbered as ak_kv_q8_set_path.
int ak_kv_q8_path(void);
/// Part of ak_kv_force_portable.
void ak_kv_q8_force_portable(int portable);

// ---- Language-model rows (model.c) ----

/// RMSNorm (Hugging Face's LlamaRMSNorm): y_r = w ∘ x_r · s_r with s_r = 1/sqrt(mean(x_r²) + eps)
/// (the mean accumulated in float64); rstd (may be NULL) receives s_r. Rows of n values.
void ak_rmsnorm_rows(const float *x, long ldx, const float *w, float *y, long ldy, float *rstd, long rows, long n, float eps);

/// RMSNorm's backward, accumulated into dx (a residual stream's gradient): dx_r += s_r (w ∘ dy_r)
/// − s_r³/n · x_r · Σ(w ∘ dy_r ∘ x_r), and (dw may be NULL) dw += Σ_r dy_r ∘ x_r s_r. dx may not
/// alias x or dy.
void ak_rmsnorm_backward_rows(const float *x, long ldx, const float *w, const float *rstd, const float *dy, long lddy,
                              float *dx, long lddx, float *dw, long rows, long n);

/// SwiGLU's gate: h = silu(g) ∘ u = g σ(g) u, over n values.
void ak_swiglu(const float *g, const float *u, float *h, long n);

/// Its backward: du = dh ∘ g σ(g); dg = dh ∘ u ∘ σ(g)(1 + g(1 − σ(g))).
void ak_swiglu_backward(const float *g, const float *u, const float *dh, float *dg, float *du, long n);
/// GeGLU with tanh-GELU (Gemma): h = gelu_tanh(g) · u over n values, and its backward (dg, du overwritten).
void ak_geglu_tanh(const float *g, const float *u, float *h, long n);
void ak_geglu_tanh_backward(const float *g, const float *u, const float *dh, float *dg, float *du, long n);

/// Cross-entropy of rows of logits z (leading dimension ldz) against targets (−1: no target, no
/// loss): returns Σ_r (logsumexp(z_r) − z_r[t_r]). With writeGradient, z_r is replaced by
/// gradScale · (softmax(z_r) − onehot(t_r)) (zeros for rows without a target).
double ak_cross_entropy_rows(float *z, long ldz, long rows, long vocab, const int *targets, float gradScale, int writeGradient);

/// Which float32 decode kernels run here: "8-lane (AVX2)" (AVX2 CPUs, and AMD's AVX-512, which
/// executes 512-bit operations as two halves) or "16-lane" (Intel's AVX-512, and the portable clones).
const char *ak_decode_kernel_path(void);

/// Tests: nonzero forces the 16-lane kernels (the path of CPUs without the 8-lane one), zero
/// returns to the CPU's choice.
void ak_decode_force_wide(int wide);

// ---- Softmax backward (FlashAttention-2's recomputation) ----

/// Scores to probabilities with a known log-sum-exp: s[r, c] = exp(s[r, c] - lse[r]) for
/// c < valid[r] (all columns when valid is NULL), 0 past it; a row with lse[r] = -inf becomes 0.
void ak_probs_from_lse(float *s, long rows, long cols, long lds, const int *valid, const float *lse);

/// The softmax's vector-Jacobian product in place: p[r, c] = p[r, c] · (dp[r, c] - D[r]), with
/// D[r] = Σ_c p[r, c] dp[r, c] = dO_r · O_r supplied by the caller. Masked entries (p = 0) stay 0.
void ak_softmax_grad(float *p, long ldp, const float *dp, long lddp, long rows, long cols, const float *D);

/// out[r] = Σ_c a[r, c] · b[r, c] (D = rowsum(dO ∘ O) of the backward pass).
void ak_row_dots(const float *a, long lda, const float *b, long ldb, long rows, long cols, float *out);

// ---- Merging partial softmax results ----

/// Merges `parts` partial results of one row block: part s has unnormalised outputs
/// o[s·o_part_stride + r·ldo + t], running maxima m[s·ml_part_stride + r] and sums
/// l[s·ml_part_stride + r]. Writes m = max_s m_s, l = Σ l_s e^(m_s - m) and the unnormalised
/// o = Σ o_s e^(m_s - m) to o_out (rows × dv, leading dimension ldo_out), m_out, l_out (parts with
/// m_s = -inf contribute nothing; a row no part saw gets m = -inf, l = 0, o = 0). Normalise with
/// ak_divide_rows(o_out, ..., l_out).
void ak_merge_partials(long parts, const float *o, long ldo, long o_part_stride, const float *m,
                       const float *l, long ml_part_stride, long rows, long dv, float *o_out,
                       long ldo_out, float *m_out, float *l_out);

// ---- Infini-Attention ----

/// a[r, :] = (1 - gate) · a[r, :] + gate · num[r, :] / den[r] for r < rows (the memory read is 0
/// where den[r] <= 0, i.e. while the memory is empty).
void ak_blend_rows(float *a, long lda, const float *num, long ldn, const float *den, long rows, long cols,
                   float gate);

/// v[r, :] -= num[r, :] / den[r] where den[r] > 0 (the delta rule's correction).
void ak_subtract_ratio_rows(float *v, long ldv, const float *num, long ldn, const float *den, long rows,
                            long cols);

// ---- Positions ----

/// RoPE, rotate-half layout, in place: for each row r and i < d/2, with c = cosv[r·ldt + i] and
/// s = sinv[r·ldt + i]: (x[i], x[i + d/2]) <- (x[i]·c - x[i + d/2]·s, x[i + d/2]·c + x[i]·s).
void ak_rope_rows(float *x, long rows, long d, long ldx, const float *cosv, const float *sinv, long ldt);

/// ALiBi on a score row: s[c] -= slope · |p - c| for c < n (p = the query's aligned position
/// minus the first key of the row, i.e. i + M - N - j0).
void ak_alibi_row(float *s, long n, float slope, long p);

/// A hint that the calling thread is spin-waiting (x86 `pause`, Arm `yield`): the worker pool's spin loops.
static inline void ak_spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#ifdef __cplusplus
}
#endif
#endif
