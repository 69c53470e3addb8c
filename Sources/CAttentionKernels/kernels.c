// Vectorised elementwise kernels. See include/AttentionKernels.h for the contracts.
//
// The code is written once on 16-lane clang vectors; `target_clones` compiles each public
// function for AVX-512 (one zmm per vector), AVX2+FMA (two ymm) and baseline SSE2 (four xmm),
// and an ifunc resolver picks the clone when the library loads.

#include "AttentionKernels.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define AK_NO_CLONES 1   // ifunc resolvers run before ThreadSanitizer's runtime exists: baseline only
#endif
#endif
#if defined(__x86_64__) && defined(__linux__) && defined(__clang__) && !defined(AK_NO_CLONES)
#define AK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define AK_CLONES
#endif
#define AK_INLINE static inline __attribute__((always_inline))

typedef float vf __attribute__((ext_vector_type(16)));
typedef int vi __attribute__((ext_vector_type(16)));
typedef float v8 __attribute__((ext_vector_type(8)));
typedef float v4 __attribute__((ext_vector_type(4)));
enum { W = 16 };

const char *ak_kernel_isa(void) {
#if defined(__x86_64__) && defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma"))
        return "x86-64-v4";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("bmi2"))
        return "x86-64-v3";
#endif
    return "baseline";
}

// The helpers below are macros, not functions: a call passing a 16-lane vector by value from the
// AVX2 or baseline clone would change the calling convention (clang rejects it), while a macro
// expands into each clone and compiles for that clone's instruction set.

/// Lane-wise max/min by compare and bit-select. For VMAX a NaN in `a` yields `b`.
#define VSELECT(m, a, b) ((vf)(((m) & (vi)(a)) | (~(m) & (vi)(b))))
#define VMAX(a, b) ({ vf a_ = (a), b_ = (b); VSELECT(a_ > b_, a_, b_); })
#define VMIN(a, b) ({ vf a_ = (a), b_ = (b); VSELECT(a_ < b_, a_, b_); })
#define LOAD(p) ({ vf v_; memcpy(&v_, (p), sizeof v_); v_; })
#define STORE(p, v) do { vf v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
/// Loads the first n < W lanes, the rest set to `fill`.
#define LOAD_PARTIAL(p, n, fill) ({ float t_[W]; for (int i_ = 0; i_ < W; i_++) t_[i_] = (fill); \
    memcpy(t_, (p), (size_t)(n) * sizeof(float)); LOAD(t_); })
#define STORE_PARTIAL(p, v, n) do { float t_[W]; STORE(t_, (v)); memcpy((p), t_, (size_t)(n) * sizeof(float)); } while (0)
#define HMAX(v) ({ float t_[W], m_ = -INFINITY; STORE(t_, (v)); \
    for (int i_ = 0; i_ < W; i_++) m_ = t_[i_] > m_ ? t_[i_] : m_; m_; })
#define HSUM(v) ({ vf v_ = (v); __attribute__((ext_vector_type(8))) float a_ = v_.lo + v_.hi; \
    __attribute__((ext_vector_type(4))) float b_ = a_.lo + a_.hi; b_.x + b_.y + b_.z + b_.w; })

/// exp on 16 lanes. Range reduction x = n·ln2 + r with |r| <= ln2/2 (ln2 split in two so n·ln2_hi
/// is exact), a degree-6 polynomial for e^r (Cephes' expf coefficients), then 2^n built in the
/// exponent bits, in two halves so n = -126 and n = 128 stay representable. Inputs below
/// -87.3365 (results below the smallest normal float) give 0.
#define EXP16(xin) ({                                                                  \
    vf x_ = (xin);                                                                     \
    vi under_ = x_ < -87.33654475f;                                                    \
    x_ = VMAX(VMIN(x_, (vf)88.72283906f), (vf)-87.33654475f);                          \
    const float magic_ = 12582912.0f; /* 1.5·2^23: adding it rounds to an integer */   \
    vf fn_ = (x_ * 1.44269504088896341f + magic_) - magic_;                            \
    vf r_ = x_ - fn_ * 0.693359375f; /* ln2_hi has 9 significant bits: exact */        \
    r_ = r_ - fn_ * -2.12194440e-4f; /* ln2_lo */                                      \
    vf p_ = 1.9875691500e-4f;                                                          \
    p_ = p_ * r_ + 1.3981999507e-3f;                                                   \
    p_ = p_ * r_ + 8.3334519073e-3f;                                                   \
    p_ = p_ * r_ + 4.1665795894e-2f;                                                   \
    p_ = p_ * r_ + 1.6666665459e-1f;                                                   \
    p_ = p_ * r_ + 5.0000001201e-1f;                                                   \
    p_ = p_ * (r_ * r_) + r_ + 1.0f;                                                   \
    vi n_ = __builtin_convertvector(fn_, vi);                                          \
    vi n1_ = n_ >> 1, n2_ = n_ - n1_;                                                  \
    vf y_ = (p_ * (vf)((n1_ + 127) << 23)) * (vf)((n2_ + 127) << 23);                  \
    (vf)((vi)y_ & ~under_);                                                            \
})

AK_CLONES void ak_exp(const float *x, float *y, long n) {
    long i = 0;
    for (; i + W <= n; i += W) STORE(y + i, EXP16(LOAD(x + i)));
    if (i < n) STORE_PARTIAL(y + i, EXP16(LOAD_PARTIAL(x + i, n - i, 0.0f)), n - i);
}

AK_INLINE float row_max(const float *s, long c) {
    vf m = -INFINITY;
    long j = 0;
    for (; j + W <= c; j += W) m = VMAX(LOAD(s + j), m);
    if (j < c) m = VMAX(LOAD_PARTIAL(s + j, c - j, -INFINITY), m);
    return HMAX(m);
}

/// s[j] = exp(s[j] - mx) for j < c, returns their sum (mx finite).
AK_INLINE float exp_shift_sum(float *s, long c, float mx) {
    vf acc = 0.0f, shift = mx;
    long j = 0;
    for (; j + W <= c; j += W) {
        vf e = EXP16(LOAD(s + j) - shift);
        STORE(s + j, e);
        acc += e;
    }
    if (j < c) {
        vf e = EXP16(LOAD_PARTIAL(s + j, c - j, -INFINITY) - shift);   // padding lanes give 0
        STORE_PARTIAL(s + j, e, c - j);
        acc += e;
    }
    return HSUM(acc);
}

AK_INLINE void scale_row(float *x, long n, float a) {
    vf va = a;
    long j = 0;
    for (; j + W <= n; j += W) STORE(x + j, LOAD(x + j) * va);
    for (; j < n; j++) x[j] *= a;
}

AK_INLINE long clamp_valid(const int *valid, long r, long cols) {
    if (!valid) return cols;
    long c = valid[r];
    return c < 0 ? 0 : (c > cols ? cols : c);
}

AK_CLONES void ak_softmax_rows(float *s, long rows, long cols, long lds, const int *valid) {
    for (long r = 0; r < rows; r++) {
        float *row = s + r * lds;
        long c = clamp_valid(valid, r, cols);
        float mx = c > 0 ? row_max(row, c) : -INFINITY;
        if (mx == -INFINITY) {              // fully masked row: zeros, never NaN
            memset(row, 0, (size_t)cols * sizeof(float));
            continue;
        }
        float sum = exp_shift_sum(row, c, mx);   // sum >= 1: the max contributes exp(0)
        scale_row(row, c, 1.0f / sum);
        if (c < cols) memset(row + c, 0, (size_t)(cols - c) * sizeof(float));
    }
}

AK_CLONES void ak_online_softmax_tile(float *s, long rows, long cols, long lds, const int *valid,
                                      float *m, float *l, float *o, long ldo, long dv) {
    for (long r = 0; r < rows; r++) {
        float *row = s + r * lds;
        long c = clamp_valid(valid, r, cols);
        float tile_max = c > 0 ? row_max(row, c) : -INFINITY;
        float m_old = m[r];
        float m_new = tile_max > m_old ? tile_max : m_old;
        if (m_new == -INFINITY) {           // nothing seen yet for this row: contribute nothing
            memset(row, 0, (size_t)cols * sizeof(float));
            continue;
        }
        float sum = c > 0 ? exp_shift_sum(row, c, m_new) : 0.0f;
        if (c < cols) memset(row + c, 0, (size_t)(cols - c) * sizeof(float));
        if (m_new != m_old) {
            // m_old = -inf means o and l are still 0: alpha = 0 keeps them 0 without exp(-inf).
            float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
            scale_row(o + r * ldo, dv, alpha);
            l[r] = l[r] * alpha + sum;
            m[r] = m_new;
        } else {
            l[r] += sum;
        }
    }
}

AK_CLONES void ak_divide_rows(const float *src, long lds, float *dst, long ldd, long rows,
                              long cols, const float *l) {
    for (long r = 0; r < rows; r++) {
        const float *a = src + r * lds;
        float *b = dst + r * ldd;
        float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        if (inv == INFINITY) {   // a subnormal normaliser: divide, so 0/l stays 0 and x/l stays exact
            for (long j = 0; j < cols; j++) b[j] = a[j] / l[r];
            continue;
        }
        vf vinv = inv;
        long j = 0;
        for (; j + W <= cols; j += W) STORE(b + j, LOAD(a + j) * vinv);
        for (; j < cols; j++) b[j] = a[j] * inv;
    }
}

AK_CLONES void ak_copy_scaled(const float *src, long lds, float *dst, long ldd, long rows,
                              long cols, float alpha) {
    vf va = alpha;
    for (long r = 0; r < rows; r++) {
        const float *a = src + r * lds;
        float *b = dst + r * ldd;
        long j = 0;
        for (; j + W <= cols; j += W) STORE(b + j, LOAD(a + j) * va);
        for (; j < cols; j++) b[j] = a[j] * alpha;
    }
}

AK_CLONES long ak_find_nonfinite(const float *x, long n) {
    // x - x is 0 for finite x and NaN for NaN or ±Inf; the sum of those is NaN iff one is.
    vf acc = 0.0f;
    long i = 0;
    for (; i + W <= n; i += W) { vf v = LOAD(x + i); acc += v - v; }
    float tail = 0.0f;
    for (long j = i; j < n; j++) tail += x[j] - x[j];
    float total = HSUM(acc) + tail;
    if (total == 0.0f) return -1;
    for (long j = 0; j < n; j++) if (!(x[j] - x[j] == 0.0f)) return j;
    return -1;
}

void ak_fill(float *x, long n, float value) { for (long i = 0; i < n; i++) x[i] = value; }

AK_CLONES void ak_scale(float *x, long n, float alpha) { scale_row(x, n, alpha); }

AK_CLONES void ak_add(float *y, const float *x, long n) {
    long i = 0;
    for (; i + W <= n; i += W) STORE(y + i, LOAD(y + i) + LOAD(x + i));
    for (; i < n; i++) y[i] += x[i];
}



// ---- Linear attention helpers ----

AK_CLONES void ak_feature_rows(ak_feature_kind kind, const float *src, long lds, float *dst,
                               long ldd, long rows, long cols) {
    for (long r = 0; r < rows; r++) {
        const float *x = src + r * lds;
        float *y = dst + r * ldd;
        long i = 0;
        if (kind == AK_FEATURE_ELU1) {
            for (; i + W <= cols; i += W) {
                vf v = LOAD(x + i);
                vi pos = v > 0.0f;
                vf e = EXP16(VMIN(v, (vf)0.0f));
                STORE(y + i, VSELECT(pos, v + 1.0f, e));
            }
            if (i < cols) {
                vf v = LOAD_PARTIAL(x + i, cols - i, 0.0f);
                vi pos = v > 0.0f;
                vf e = EXP16(VMIN(v, (vf)0.0f));
                STORE_PARTIAL(y + i, VSELECT(pos, v + 1.0f, e), cols - i);
            }
        } else {
            for (; i + W <= cols; i += W) STORE(y + i, VMAX(LOAD(x + i), (vf)0.0f));
            for (; i < cols; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        }
    }
}

AK_CLONES void ak_zero_after(float *s, long rows, long cols, long lds, const int *valid) {
    for (long r = 0; r < rows; r++) {
        long c = clamp_valid(valid, r, cols);
        if (c < cols) memset(s + r * lds + c, 0, (size_t)(cols - c) * sizeof(float));
    }
}

AK_CLONES void ak_row_sums_add(const float *s, long rows, long cols, long lds, float *out) {
    for (long r = 0; r < rows; r++) {
        const float *x = s + r * lds;
        vf acc = 0.0f;
        long i = 0;
        for (; i + W <= cols; i += W) acc += LOAD(x + i);
        float t = HSUM(acc);
        for (; i < cols; i++) t += x[i];
        out[r] += t;
    }
}

AK_CLONES void ak_col_sums_add(const float *x, long rows, long cols, long ldx, float *acc) {
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * ldx;
        long c = 0;
        for (; c + W <= cols; c += W) STORE(acc + c, LOAD(acc + c) + LOAD(row + c));
        for (; c < cols; c++) acc[c] += row[c];
    }
}

AK_CLONES void ak_col_max(const float *x, long rows, long cols, long ldx, float *colmax) {
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * ldx;
        long c = 0;
        for (; c + W <= cols; c += W) STORE(colmax + c, VMAX(LOAD(row + c), LOAD(colmax + c)));
        for (; c < cols; c++) colmax[c] = row[c] > colmax[c] ? row[c] : colmax[c];
    }
}

AK_CLONES void ak_exp_sub_cols(const float *x, long rows, long cols, long ldx, const float *colmax,
                               float *dst, long ldd, float *colsum) {
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * ldx;
        float *out = dst + r * ldd;
        long c = 0;
        for (; c + W <= cols; c += W) {
            vf e = EXP16(LOAD(row + c) - LOAD(colmax + c));
            STORE(out + c, e);
            STORE(colsum + c, LOAD(colsum + c) + e);
        }
        if (c < cols) {
            long n = cols - c;
            vf e = EXP16(LOAD_PARTIAL(row + c, n, 0.0f) - LOAD_PARTIAL(colmax + c, n, 0.0f));
            STORE_PARTIAL(out + c, e, n);
            for (long i = 0; i < n; i++) colsum[c + i] += out[c + i];
        }
    }
}

AK_CLONES void ak_row_sumsq(const float *x, long rows, long cols, long ldx, float alpha, float *out) {
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * ldx;
        vf acc = 0.0f;
        long i = 0;
        for (; i + W <= cols; i += W) { vf v = LOAD(row + i); acc += v * v; }
        float t = HSUM(acc);
        for (; i < cols; i++) t += row[i] * row[i];
        out[r] = t * alpha;
    }
}

AK_CLONES void ak_row_max(const float *x, long rows, long cols, long ldx, float *out) {
    for (long r = 0; r < rows; r++) out[r] = cols > 0 ? row_max(x + r * ldx, cols) : -INFINITY;
}

AK_CLONES void ak_exp_sub_rows(float *p, long rows, long cols, long ldp, const float *shift) {
    for (long r = 0; r < rows; r++) {
        float *row = p + r * ldp;
        vf sh = shift[r];
        long i = 0;
        for (; i + W <= cols; i += W) STORE(row + i, EXP16(LOAD(row + i) - sh));
        if (i < cols) STORE_PARTIAL(row + i, EXP16(LOAD_PARTIAL(row + i, cols - i, 0.0f) - sh), cols - i);
    }
}

void ak_elu1(const float *x, float *y, long n) { ak_feature_rows(AK_FEATURE_ELU1, x, n, y, n, 1, n); }
void ak_relu(const float *x, float *y, long n) { ak_feature_rows(AK_FEATURE_RELU, x, n, y, n, 1, n); }

// ---- Decode ----

// Both decode kernels walk the keys in blocks of KB rows: the first query row streams the block
// from memory, the others find it in L1; each query row's operands stay in registers across the
// block (q_r for the dot products, o_r for the value sums).
enum { KB = 32 };

AK_CLONES void ak_rows_dot_keys(const float *q, long ldq, long rows, long d, const float *k, long ldk,
                                long w, float *s, long lds) {
    for (long j0 = 0; j0 < w; j0 += KB) {
        long j1 = j0 + KB < w ? j0 + KB : w;
        for (long r = 0; r < rows; r++) {
            const float *qr = q + r * ldq;
            float *sr = s + r * lds;
            if (d == 128) {   // the common head size: q_r held in 8 registers
                vf q0 = LOAD(qr), q1 = LOAD(qr + 16), q2 = LOAD(qr + 32), q3 = LOAD(qr + 48);
                vf q4 = LOAD(qr + 64), q5 = LOAD(qr + 80), q6 = LOAD(qr + 96), q7 = LOAD(qr + 112);
#define DOT128(kj) ({ const float *k_ = (kj); \
                    vf a_ = q0 * LOAD(k_) + q1 * LOAD(k_ + 16), b_ = q2 * LOAD(k_ + 32) + q3 * LOAD(k_ + 48); \
                    a_ += q4 * LOAD(k_ + 64) + q5 * LOAD(k_ + 80); b_ += q6 * LOAD(k_ + 96) + q7 * LOAD(k_ + 112); a_ + b_; })
                long j = j0;
                // Four keys at a time, their four horizontal sums done together in one shuffle tree.
                for (; j + 4 <= j1; j += 4) {
                    vf a0 = DOT128(k + j * ldk), a1 = DOT128(k + (j + 1) * ldk);
                    vf a2 = DOT128(k + (j + 2) * ldk), a3 = DOT128(k + (j + 3) * ldk);
                    v8 x0 = a0.lo + a0.hi, x1 = a1.lo + a1.hi, x2 = a2.lo + a2.hi, x3 = a3.lo + a3.hi;
                    v8 y01 = __builtin_shufflevector(x0, x1, 0, 1, 2, 3, 8, 9, 10, 11) + __builtin_shufflevector(x0, x1, 4, 5, 6, 7, 12, 13, 14, 15);
                    v8 y23 = __builtin_shufflevector(x2, x3, 0, 1, 2, 3, 8, 9, 10, 11) + __builtin_shufflevector(x2, x3, 4, 5, 6, 7, 12, 13, 14, 15);
                    v8 z = __builtin_shufflevector(y01, y23, 0, 1, 8, 9, 4, 5, 12, 13) + __builtin_shufflevector(y01, y23, 2, 3, 10, 11, 6, 7, 14, 15);
                    v4 t = __builtin_shufflevector(z, z, 0, 2, 4, 6) + __builtin_shufflevector(z, z, 1, 3, 5, 7);   // a0 a2 a1 a3
                    sr[j] = t.x; sr[j + 1] = t.z; sr[j + 2] = t.y; sr[j + 3] = t.w;
                }
                for (; j < j1; j++) sr[j] = HSUM(DOT128(k + j * ldk));
#undef DOT128
                continue;
            }
            for (long j = j0; j < j1; j++) {
                const float *kj = k + j * ldk;
                vf acc = 0.0f;
                long t = 0;
                for (; t + W <= d; t += W) acc += LOAD(qr + t) * LOAD(kj + t);
                float sum = HSUM(acc);
                for (; t < d; t++) sum += qr[t] * kj[t];
                sr[j] = sum;
            }
        }
    }
}

AK_CLONES void ak_rows_times_values(const float *p, long ldp, long rows, const float *v, long ldv, long w,
                                    long dv, float *o, long ldo) {
    for (long j0 = 0; j0 < w; j0 += KB) {
        long j1 = j0 + KB < w ? j0 + KB : w;
        for (long r = 0; r < rows; r++) {
            const float *pr = p + r * ldp;
            float *orow = o + r * ldo;
            if (dv == 128) {   // o_r held in 8 registers across the block
                vf o0 = LOAD(orow), o1 = LOAD(orow + 16), o2 = LOAD(orow + 32), o3 = LOAD(orow + 48);
                vf o4 = LOAD(orow + 64), o5 = LOAD(orow + 80), o6 = LOAD(orow + 96), o7 = LOAD(orow + 112);
                for (long j = j0; j < j1; j++) {
                    float pj = pr[j];
                    if (pj == 0.0f) continue;   // masked keys
                    const float *vj = v + j * ldv;
                    vf b = pj;
                    o0 += b * LOAD(vj); o1 += b * LOAD(vj + 16); o2 += b * LOAD(vj + 32); o3 += b * LOAD(vj + 48);
                    o4 += b * LOAD(vj + 64); o5 += b * LOAD(vj + 80); o6 += b * LOAD(vj + 96); o7 += b * LOAD(vj + 112);
                }
                STORE(orow, o0); STORE(orow + 16, o1); STORE(orow + 32, o2); STORE(orow + 48, o3);
                STORE(orow + 64, o4); STORE(orow + 80, o5); STORE(orow + 96, o6); STORE(orow + 112, o7);
                continue;
            }
            for (long j = j0; j < j1; j++) {
                float pj = pr[j];
                if (pj == 0.0f) continue;
                const float *vj = v + j * ldv;
                vf vp = pj;
                long t = 0;
                for (; t + W <= dv; t += W) STORE(orow + t, LOAD(orow + t) + vp * LOAD(vj + t));
                for (; t < dv; t++) orow[t] += pj * vj[t];
            }
        }
    }
}

// ---- Infini-Attention ----

AK_CLONES void ak_blend_rows(float *a, long lda, const float *num, long ldn, const float *den, long rows,
                             long cols, float gate) {
    for (long r = 0; r < rows; r++) {
        float *ar = a + r * lda;
        const float *nr = num + r * ldn;
        float wm = den[r] > 0.0f ? gate / den[r] : 0.0f, wd = 1.0f - gate;
        if (!(wm < INFINITY)) wm = 0.0f;   // a subnormal normaliser: treat the memory as empty
        vf vm = wm, vd = wd;
        long c = 0;
        for (; c + W <= cols; c += W) STORE(ar + c, LOAD(ar + c) * vd + LOAD(nr + c) * vm);
        for (; c < cols; c++) ar[c] = ar[c] * wd + nr[c] * wm;
    }
}

AK_CLONES void ak_subtract_ratio_rows(float *v, long ldv, const float *num, long ldn, const float *den,
                                      long rows, long cols) {
    for (long r = 0; r < rows; r++) {
        if (!(den[r] > 0.0f)) continue;
        float inv = 1.0f / den[r];
        if (!(inv < INFINITY)) continue;
        float *vr = v + r * ldv;
        const float *nr = num + r * ldn;
        vf vi_ = inv;
        long c = 0;
        for (; c + W <= cols; c += W) STORE(vr + c, LOAD(vr + c) - LOAD(nr + c) * vi_);
        for (; c < cols; c++) vr[c] -= nr[c] * inv;
    }
}

// ---- Positions ----

AK_CLONES void ak_rope_rows(float *x, long rows, long d, long ldx, const float *cosv, const float *sinv,
                            long ldt) {
    long h = d / 2;
    for (long r = 0; r < rows; r++) {
        float *a = x + r * ldx, *b = a + h;
        const float *c = cosv + r * ldt, *s = sinv + r * ldt;
        long i = 0;
        for (; i + W <= h; i += W) {
            vf va = LOAD(a + i), vb = LOAD(b + i), vc = LOAD(c + i), vs = LOAD(s + i);
            STORE(a + i, va * vc - vb * vs);
            STORE(b + i, vb * vc + va * vs);
        }
        for (; i < h; i++) {
            float va = a[i], vb = b[i];
            a[i] = va * c[i] - vb * s[i];
            b[i] = vb * c[i] + va * s[i];
        }
    }
}

AK_CLONES void ak_alibi_row(float *s, long n, float slope, long p) {
    vf lane;
    for (int i = 0; i < W; i++) lane[i] = (float)i;
    long c = 0;
    for (; c + W <= n; c += W) {
        vf dist = (float)(p - c) - lane;
        vi neg = dist < 0.0f;
        dist = VSELECT(neg, -dist, dist);
        STORE(s + c, LOAD(s + c) - dist * slope);
    }
    for (; c < n; c++) s[c] -= slope * (float)labs(p - c);
}
