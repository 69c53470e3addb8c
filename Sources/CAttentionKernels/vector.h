// Private to CAttentionKernels: the 16-lane vector type, its helper macros, the vectorised exp
// and the small row helpers every family of kernels shares. Each .c file includes it and marks its
// public functions AK_CLONES, so `target_clones` compiles them for AVX-512 (one zmm per vector),
// AVX2+FMA (two ymm) and baseline SSE2 (four xmm), and an ifunc resolver picks the clone when the
// library loads. The helpers are macros or always-inline functions so that they expand inside
// each clone and compile for its instruction set.
#ifndef AK_VECTOR_H
#define AK_VECTOR_H

#include "AttentionKernels.h"
#include <math.h>
#include <stdint.h>
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

#if defined(__x86_64__) && defined(__clang__)
#include <immintrin.h>
/// Four f16 at `p` as floats by F16C's `vcvtph2ps` from memory (exact; reads 8 bytes, which must
/// be readable: every caller points inside a block that holds them). Not `_cvtsh_ss` of a loaded
/// 16-bit value, nor a load intrinsic: clang sees that only 16 bits matter and loads them with
/// `vpinsrw`, which merges into whatever register it picks, often one the loop writes (the
/// previous block's product, an output accumulator), so every block's scale waited for the block
/// before (q4_0 ran at half of q5_0's speed; the int8 cache's q·k 1.5x slower). `vcvtph2ps` from
/// memory writes the whole register. For the f16 block scales of the quantised weight and KV
/// kernels; callers need F16C (their AVX2 and AVX-512 paths).
__attribute__((target("f16c"))) static inline __m128 ak_f16x4_at(const void *p) {
    __m128 r;
    __asm__("vcvtph2ps %1, %0" : "=x"(r) : "m"(*(const uint8_t(*)[8])p));
    return r;
}
/// The f16 at `p` as a float (ak_f16x4_at's first lane).
#define AK_HALF_AT(p) _mm_cvtss_f32(ak_f16x4_at(p))
#endif

typedef float vf __attribute__((ext_vector_type(16)));
typedef int vi __attribute__((ext_vector_type(16)));
typedef float v8 __attribute__((ext_vector_type(8)));
typedef float v4 __attribute__((ext_vector_type(4)));
enum { W = 16 };

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

#endif
