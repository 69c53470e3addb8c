// Quantised matrix-vector products (contract: include/QuantDot.h). Written from ggml's block
// layouts (the table in include/GGMLQuants.h).
//
// Every path computes, per weight block and activation row, the same exact int32 sums; the float
// steps that follow (scales, mins, the lane sums in four sets, their fold) are spelled out once
// per path, operation for operation the same (stated above qdot32_portable and qdotK_portable;
// no contraction, fma only where written: fmaf here, vfmadd in quantdot_simd.h), so the bits do
// not depend on the path or on how many activation rows are computed together.

#include "QuantDot.h"
#include "GGMLQuants.h"
#include "vector.h"

#pragma STDC FP_CONTRACT OFF

enum { QK = 32, QK_K = 256 };
enum { T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q4_K = 12, T_Q5_K = 13,
       T_Q6_K = 14, T_BF16 = 30 };

/// An activation block of 32 (the 32-element types): scale d, ds = d · Σq (the activation's block
/// sum in q4_1's and q5_1's min term: w = d_w·q + m_w gives Σ w·a = d_w·d·Σ q·q_a + m_w·ds), quants.
/// ds is formed once per block here rather than once per weight row: the same float operations,
/// so the same bits, and about 10% off those types' per-row cost on AVX2 (Zen 3).
typedef struct { float d; float ds; int8_t q[QK]; } act32;
/// An activation superblock of 256 (the K-quants): the same per-32 scales and sums as act32 (not
/// ggml's q8_K, one scale per 256: an outlier then costs only its own 32 columns' resolution),
/// laid out so that a superblock's eight scales and eight sums load as vectors.
typedef struct { float d[8]; float ds[8]; int8_t q[QK_K]; } act256;

AK_INLINE uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (uint16_t)p[1] << 8); }
AK_INLINE uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
AK_INLINE float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
/// Half → float, exactly (as quants.c's conversion; inf and NaN do not occur in scales that matter).
AK_INLINE float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = h & 0x7c00u, m = h & 0x3ffu;
    if (e == 0x7c00u) return from_bits(sign | 0x7f800000u | m << 13 | (m ? 0x00400000u : 0u));
    if (e == 0) return sign ? -((float)m * 0x1p-24f) : (float)m * 0x1p-24f;
    return from_bits(sign | ((((uint32_t)h & 0x7fffu) << 13) + 0x38000000u));
}
#define HALF(p) half_to_float(rd16(p))

static long block_bytes(int type) {
    switch (type) {
    case T_Q4_0: return 18;
    case T_Q4_1: return 20;
    case T_Q5_0: return 22;
    case T_Q5_1: return 24;
    case T_Q8_0: return 34;
    case T_Q4_K: return 144;
    case T_Q5_K: return 176;
    case T_Q6_K: return 210;
    default: return 0;
    }
}
static int is_k(int type) { return type == T_Q4_K || type == T_Q5_K || type == T_Q6_K; }
static int is_float(int type) { return type == T_F32 || type == T_F16 || type == T_BF16; }

int ak_qdot_supports(int type, long k) {
    if (k <= 0) return 0;
    if (is_float(type)) return 1;
    if (!block_bytes(type)) return 0;
    return k % (is_k(type) ? QK_K : QK) == 0;
}

long ak_qdot_activation_bytes(int type, long k) {
    if (is_float(type)) return 4 * k;
    if (is_k(type)) return (k / QK_K) * (long)sizeof(act256);
    return (k / QK) * (long)sizeof(act32);
}

int ak_qdot_activation_format(int type) { return is_float(type) ? 0 : is_k(type) ? 2 : 1; }

/// roundf (halves away from zero) without the libm call, so the loop below vectorises: v − trunc(v)
/// is exact for |v| < 2^23. Equal to roundf on every float of [−128, 128] (checked exhaustively)
/// except the sign of a zero result, which the int8 conversion drops.
AK_INLINE float round_half_away(float v) {
    const float t = truncf(v);
    return t + (fabsf(v - t) >= 0.5f ? copysignf(1.0f, v) : 0.0f);
}

/// Quants of `n` floats with d = max|x| / 127 (0 for an all-zero block): q = round(x · (1/d)).
AK_INLINE float quantize_block(const float *x, int n, int8_t *q) {
    float amax = 0;
    for (int j = 0; j < n; j++) {
        float a = fabsf(x[j]);
        amax = a > amax ? a : amax;
    }
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    for (int j = 0; j < n; j++) {
        float v = round_half_away(x[j] * id);
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        q[j] = (int8_t)v;
    }
    return d;
}

AK_CLONES void ak_qdot_quantize(int type, const float *x, long ldx, long n, long k, void *dst) {
    uint8_t *out = dst;
    const long rowBytes = ak_qdot_activation_bytes(type, k);
    for (long r = 0; r < n; r++, out += rowBytes) {
        const float *xr = x + r * ldx;
        if (is_float(type)) {
            memcpy(out, xr, (size_t)k * sizeof(float));
        } else {
            // The same blocks of 32 for both formats: act256 holds eight act32s' fields as arrays.
            for (long b = 0; b < k / QK; b++) {
                float *d, *ds;
                int8_t *q;
                if (is_k(type)) {
                    act256 *a = (act256 *)out + b / 8;
                    d = &a->d[b % 8], ds = &a->ds[b % 8], q = a->q + QK * (b % 8);
                } else {
                    act32 *a = (act32 *)out + b;
                    d = &a->d, ds = &a->ds, q = a->q;
                }
                *d = quantize_block(xr + b * QK, QK, q);
                int s = 0;
                for (int l = 0; l < QK; l++) s += q[l];
                *ds = *d * (float)s;
            }
        }
    }
}

// MARK: - The float steps every path shares

/// Scale and min j (< 8) of q4_K's and q5_K's 12 packed bytes (6 bits each).
AK_INLINE void scale_min_k4(int j, const uint8_t *q, int *sc, int *mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | (q[j - 4] >> 6) << 4;
        *mn = (q[j + 4] >> 4) | (q[j] >> 6) << 4;
    }
}

AK_INLINE void store_rows(const float *acc, long nx, float *y, long ldy, long i, int accumulate) {
    for (long r = 0; r < nx; r++) {
        float *p = y + r * ldy + i;
        *p = accumulate ? *p + acc[r] : acc[r];
    }
}

// MARK: - Portable path

/// The weight quants of a 32-block, unsigned (signed for q8_0), and its scale and min.
static void unpack32(int type, const uint8_t *b, int *u, float *dw, float *mw) {
    *mw = 0;
    *dw = HALF(b);
    const uint8_t *q;
    uint32_t qh = 0;
    switch (type) {
    case T_Q4_0: q = b + 2; break;
    case T_Q4_1: *mw = HALF(b + 2); q = b + 4; break;
    case T_Q5_0: qh = rd32(b + 2); q = b + 6; break;
    case T_Q5_1: *mw = HALF(b + 2); qh = rd32(b + 4); q = b + 8; break;
    default:
        for (int j = 0; j < QK; j++) u[j] = (int8_t)b[2 + j];
        return;
    }
    for (int j = 0; j < QK / 2; j++) {
        u[j] = (q[j] & 0x0f) | (int)((qh >> j) & 1u) << 4;
        u[j + 16] = (q[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;
    }
}

/// The 32-block types' float steps, on every path: per activation row four sets of eight lane
/// sums, block b going to set b mod 4 (four independent chains), its lane j taking
/// fma((float)P_j · d_x, d_w, ·) with P_j the integer sum of elements 4j … 4j+3 of the block (the
/// weight quants signed: q − 8, q − 16, or as stored), and for q4_1/q5_1 four min sums (set b mod
/// 4 again) taking fma(m_w, d_x·Σq_x, ·); at the end the sets add as (0 + 1) + (2 + 3) lane by
/// lane, and the lanes fold as (j, j+4), then (j, j+2), then (0, 1), plus the min sums added as
/// (0 + 1) + (2 + 3). d_x · P and the fma take the activation's scale straight from its block and
/// the weight's once per block for all rows: two vector operations per row and block.
AK_INLINE float fold8(const float *l) {
    float t0 = l[0] + l[4], t1 = l[1] + l[5], t2 = l[2] + l[6], t3 = l[3] + l[7];
    float u0 = t0 + t2, u1 = t1 + t3;
    return u0 + u1;
}
AK_INLINE float fold_lanes(const float *s0, const float *s1, const float *s2, const float *s3, float m) {
    float l[8];
    for (int j = 0; j < 8; j++) l[j] = (s0[j] + s1[j]) + (s2[j] + s3[j]);
    return fold8(l) + m;
}

static void qdot32_portable(int type, const void *w, long rowBytes, long wrows, long k, const void *xa, long nx, float *y,
                            long ldy, int accumulate) {
    const long nb = k / QK, bs = block_bytes(type);
    const int off = type == T_Q4_0 ? 8 : type == T_Q5_0 ? 16 : 0, hasMin = type == T_Q4_1 || type == T_Q5_1;
    for (long i = 0; i < wrows; i++) {
        const uint8_t *row = (const uint8_t *)w + i * rowBytes;
        float lanes[AK_QDOT_MAX_ROWS][4][8] = {{{0}}}, mins[AK_QDOT_MAX_ROWS][4] = {{0}}, acc[AK_QDOT_MAX_ROWS];
        for (long b = 0; b < nb; b++) {
            int u[QK];
            float dw, mw;
            unpack32(type, row + b * bs, u, &dw, &mw);
            if (off) for (int j = 0; j < QK; j++) u[j] -= off;
            for (long r = 0; r < nx; r++) {
                const act32 *a = (const act32 *)xa + r * nb + b;
                for (int j = 0; j < 8; j++) {
                    int p = 0;
                    for (int e = 4 * j; e < 4 * j + 4; e++) p += u[e] * a->q[e];
                    lanes[r][b % 4][j] = fmaf((float)p * a->d, dw, lanes[r][b % 4][j]);
                }
                if (hasMin) mins[r][b % 4] = fmaf(mw, a->ds, mins[r][b % 4]);
            }
        }
        for (long r = 0; r < nx; r++) {
            const float *m = mins[r];
            acc[r] = fold_lanes(lanes[r][0], lanes[r][1], lanes[r][2], lanes[r][3], (m[0] + m[1]) + (m[2] + m[3]));
        }
        store_rows(acc, nx, y, ldy, i, accumulate);
    }
}

/// The 256 weight quants of a K-quant superblock (unsigned: q4_K 0-15, q5_K 0-31, q6_K 0-63)
/// in element order.
static void unpackK(int type, const uint8_t *b, uint8_t *u) {
    if (type == T_Q6_K) {
        const uint8_t *ql = b, *qh = b + 128;
        for (int h = 0; h < 2; h++)
            for (int r = 0; r < 128; r++) {
                int lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
                int hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
                u[128 * h + r] = (uint8_t)(lo | hi << 4);
            }
        return;
    }
    const uint8_t *qs = b + (type == T_Q4_K ? 16 : 48), *qh = b + 16;
    for (int s = 0; s < 8; s++)
        for (int l = 0; l < 32; l++) {
            int v = (qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0f;
            if (type == T_Q5_K) v |= ((qh[l] >> s) & 1) << 4;
            u[32 * s + l] = (uint8_t)v;
        }
}

/// The K-quants' float steps, on every path. Per activation row and superblock b: sub-block j
/// (32 columns, the activation superblock's block j, of scale d_j) gives eight int32 lane sums P_j (lane l: its
/// columns 4l … 4l+3, each product times the column's sub-block scale: q4_K/q5_K one per 32, q6_K
/// one per 16, so lanes 0-3 and 4-7; q6_K's quants signed, q − 32); in float, lane by lane,
/// E = P_0·d_0, then E = fma(P_j, d_j, E) for j = 2, 4, 6, O likewise over the odd j, and the
/// superblock adds d·(E + O) by fma into set b mod 4 of the row's lane sums. q4_K and q5_K
/// also add, lane j, fma(dmin·m_j, ds_j, ·) into eight min lanes. At the end the sets fold as
/// the 32-block types' (fold_lanes), minus the min lanes folded in the same tree. fma is one
/// rounding on every path (fmaf here, vfmadd there), so the paths agree bit for bit.
static void qdotK_portable(int type, const void *w, long rowBytes, long wrows, long k, const void *xa, long nx, float *y,
                           long ldy, int accumulate) {
    const long nb = k / QK_K, bs = block_bytes(type);
    for (long i = 0; i < wrows; i++) {
        const uint8_t *row = (const uint8_t *)w + i * rowBytes;
        float lanes[AK_QDOT_MAX_ROWS][4][8] = {{{0}}}, mins[AK_QDOT_MAX_ROWS][8] = {{0}}, acc[AK_QDOT_MAX_ROWS];
        for (long b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * bs;
            uint8_t u[QK_K];
            unpackK(type, blk, u);
            int wq[QK_K], scl[8][8];   // signed quants; scale of sub-block j's lane l
            float d, dm[8] = {0};      // dm: dmin · m_j
            if (type == T_Q6_K) {
                const int8_t *sc = (const int8_t *)(blk + 192);
                d = HALF(blk + 208);
                for (int e = 0; e < QK_K; e++) wq[e] = u[e] - 32;
                for (int j = 0; j < 8; j++)
                    for (int l = 0; l < 8; l++) scl[j][l] = sc[2 * j + l / 4];
            } else {
                d = HALF(blk);
                const float dmin = HALF(blk + 2);
                for (int e = 0; e < QK_K; e++) wq[e] = u[e];
                for (int j = 0; j < 8; j++) {
                    int sc, mn;
                    scale_min_k4(j, blk + 4, &sc, &mn);
                    for (int l = 0; l < 8; l++) scl[j][l] = sc;
                    dm[j] = dmin * (float)mn;
                }
            }
            for (long r = 0; r < nx; r++) {
                const act256 *a = (const act256 *)xa + r * nb + b;
                float e[8], o[8];
                for (int j = 0; j < 8; j++) {
                    const float dj = a->d[j];
                    const int8_t *q = a->q + QK * j;
                    float *t = j % 2 ? o : e;
                    for (int l = 0; l < 8; l++) {
                        int p = 0;
                        for (int c = 4 * l; c < 4 * l + 4; c++) p += wq[32 * j + c] * q[c];
                        const float f = (float)(scl[j][l] * p);
                        t[l] = j < 2 ? f * dj : fmaf(f, dj, t[l]);
                    }
                }
                for (int l = 0; l < 8; l++) lanes[r][b % 4][l] = fmaf(d, e[l] + o[l], lanes[r][b % 4][l]);
                if (type != T_Q6_K)
                    for (int j = 0; j < 8; j++) mins[r][j] = fmaf(dm[j], a->ds[j], mins[r][j]);
            }
        }
        for (long r = 0; r < nx; r++) acc[r] = fold_lanes(lanes[r][0], lanes[r][1], lanes[r][2], lanes[r][3], -fold8(mins[r]));
        store_rows(acc, nx, y, ldy, i, accumulate);
    }
}

// MARK: - Float weights (f32, f16, bf16)

/// 16-lane partial sums over columns (lane j takes columns ≡ j mod 16, a zero-filled tail), then
/// HSUM's fixed tree: elementwise vector code, so every clone gives the same bits. f16 and bf16
/// rows are dequantised QF_CHUNK columns at a time into a buffer on the stack (a multiple of the
/// vector width, so the lanes take the same columns in the same order as over a whole row).
enum { QF_CHUNK = 1024 };
AK_CLONES static void qdot_float(int type, const void *w, long rowBytes, long wrows, long k, const float *x, long nx,
                                 float *y, long ldy, int accumulate) {
    float buf[QF_CHUNK];
    for (long i = 0; i < wrows; i++) {
        const uint8_t *row = (const uint8_t *)w + i * rowBytes;
        vf s[AK_QDOT_MAX_ROWS];
        for (long r = 0; r < nx; r++) s[r] = 0;
        for (long c = 0; c < k; c += QF_CHUNK) {
            const long n = k - c < QF_CHUNK ? k - c : QF_CHUNK;
            const float *wr;
            if (type == T_F32) {
                wr = (const float *)row + c;
            } else {
                if (type == T_F16) ak_dequantize_f16(row + 2 * c, buf, n); else ak_dequantize_bf16(row + 2 * c, buf, n);
                wr = buf;
            }
            for (long r = 0; r < nx; r++) {
                const float *xr = x + r * k + c;
                long j = 0;
                for (; j + W <= n; j += W) s[r] += LOAD(wr + j) * LOAD(xr + j);
                if (j < n) s[r] += LOAD_PARTIAL(wr + j, n - j, 0.0f) * LOAD_PARTIAL(xr + j, n - j, 0.0f);
            }
        }
        float acc[AK_QDOT_MAX_ROWS];
        for (long r = 0; r < nx; r++) acc[r] = HSUM(s[r]);
        store_rows(acc, nx, y, ldy, i, accumulate);
    }
}

// MARK: - Vector paths

#if defined(__x86_64__) && defined(__clang__)
#include <immintrin.h>

#define QD_TARGET __attribute__((target("avx2,fma,f16c")))
#define QD_NAME(x) x##_avx2
/// Σ over each 4 bytes of u (unsigned) · s (signed) into 8 int32 lanes (no saturation: |u| ≤ 128
/// against |s| ≤ 127 keeps every pair sum below 2^15).
#define QD_DOT4(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1))
/// QD_DOT4 times the per-lane int16 scales `sc` (scale vectors are built by QD_SCALES and QD_Q6_SCALES).
#define QD_DOT4_SCALED(u, s, sc) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), (sc))
#define QD_SCALES(lo, hi) _mm256_set_m128i(_mm_set1_epi16((short)(hi)), _mm_set1_epi16((short)(lo)))
/// q6_K's sixteen int8 scales at `s8` as the eight sub-blocks' int16 lane scales (lanes 0-3 scale
/// 2t, lanes 4-7 scale 2t + 1): one widening load, then a byte shuffle per sub-block.
#define QD_Q6_SCALES(sc, s8)                                                                               \
    do {                                                                                                   \
        const __m256i s16_ = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(s8)));                \
        const __m256i lo_ = _mm256_permute2x128_si256(s16_, s16_, 0x00), hi_ = _mm256_permute2x128_si256(s16_, s16_, 0x11); \
        for (int t_ = 0; t_ < 8; t_++) {                                                                   \
            const int e0 = (2 * t_) % 8, e1 = (2 * t_ + 1) % 8;                                            \
            const __m256i ctl = _mm256_set_m128i(_mm_set1_epi16((short)(2 * e1 | (2 * e1 + 1) << 8)),      \
                                                 _mm_set1_epi16((short)(2 * e0 | (2 * e0 + 1) << 8)));     \
            (sc)[t_] = _mm256_shuffle_epi8(t_ < 4 ? lo_ : hi_, ctl);                                       \
        }                                                                                                  \
    } while (0)
#include "quantdot_simd.h"
#undef QD_TARGET
#undef QD_NAME
#undef QD_DOT4
#undef QD_DOT4_SCALED
#undef QD_SCALES
#undef QD_Q6_SCALES
#undef HALFV
#undef HALFV_LAST

#define QD_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
#define QD_NAME(x) x##_vnni
#define QD_DOT4(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (s))
#define QD_DOT4_SCALED(u, s, sc) _mm256_mullo_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (s)), (sc))
#define QD_SCALES(lo, hi) _mm256_set_m128i(_mm_set1_epi32((int)(hi)), _mm_set1_epi32((int)(lo)))
/// The same as int32 lane scales: a byte shuffle to [s(2t) × 4, s(2t+1) × 4], then widening.
#define QD_Q6_SCALES(sc, s8)                                                                               \
    do {                                                                                                   \
        const __m128i s8_ = _mm_loadu_si128((const __m128i *)(s8));                                        \
        for (int t_ = 0; t_ < 8; t_++) {                                                                   \
            const __m128i ctl = _mm_set_epi32(0, 0, (2 * t_ + 1) * 0x01010101, (2 * t_) * 0x01010101);     \
            (sc)[t_] = _mm256_cvtepi8_epi32(_mm_shuffle_epi8(s8_, ctl));                                   \
        }                                                                                                  \
    } while (0)
#include "quantdot_simd.h"
#define QD_HAVE_SIMD 1
#endif

// MARK: - Dispatch

// _Atomic: worker threads read it while the first call (or a test switching paths) writes it.
static _Atomic int qdot_path = -1;

static int best_path(void) {
#if defined(QD_HAVE_SIMD) && !defined(AK_NO_CLONES)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

int ak_qdot_set_path(int path) {
    int best = best_path();
    qdot_path = path < 0 || path > best ? best : path;
    return qdot_path;
}

int ak_qdot_path(void) {
    if (qdot_path < 0) qdot_path = best_path();
    return qdot_path;
}

void ak_qdot(int type, const void *w, long rowBytes, long wrows, long k, const void *xa, long nx, float *y, long ldy,
             int accumulate) {
    if (wrows <= 0 || nx <= 0) return;
    if (nx > AK_QDOT_MAX_ROWS) nx = AK_QDOT_MAX_ROWS;
    if (is_float(type)) {
        qdot_float(type, w, rowBytes, wrows, k, xa, nx, y, ldy, accumulate);
        return;
    }
    const int path = ak_qdot_path();
#ifdef QD_HAVE_SIMD
    if (path == 2) {
        if (is_k(type)) qdotK_vnni(type, w, rowBytes, wrows, k, xa, nx, y, ldy, accumulate);
        else qdot32_vnni(type, w, rowBytes, wrows, k, xa, nx, y, ldy, accumulate);
        return;
    }
    if (path == 1) {
        if (is_k(type)) qdotK_avx2(type, w, rowBytes, wrows, k, xa, nx, y, ldy, accumulate);
        else qdot32_avx2(type, w, rowBytes, wrows, k, xa, nx, y, ldy, accumulate);
        return;
    }
#endif
    (void)path;
    if (is_k(type)) qdotK_portable(type, w, rowBytes, wrows, k, xa, nx, y, ldy, accumulate);
    else qdot32_portable(type, w, rowBytes, wrows, k, xa, nx, y, ldy, accumulate);
}
