// Integer q·k over a q8_0 KV cache (contract: include/AttentionKernels.h, "q8_0 keys").
//
// As the quantised weight kernels do (quantdot.c), each query row is quantised once to 8-bit
// blocks of 32 with a float scale (d = max|q| / 127, q = round(x / d), zero-padded past the row),
// and each 32-value key block meets each query block in an integer dot product, exact in int32:
//   - portable C: plain integer loops;
//   - AVX2: vpsignb moves k's signs onto q, then vpmaddubsw (|k| · ±q, pair sums < 2^15: no
//     saturation) and vpmaddwd by ones;
//   - AVX-512 VNNI (on 256-bit vectors): vpdpbusd of (k + 128) as unsigned bytes against q, its
//     accumulator started at -128·Σq (stored with the query block), which leaves Σ k·q.
// The eight int32 lanes (four columns each) are converted to float and added into eight float
// lanes per (row, key) as lanes += (d_k · d_q) · lanes_int, one block after another, rounded at
// every step (no contraction), then folded in one fixed tree. Every path computes the same
// integers and the same float operations in the same order, so all give the same bits, and a
// row's score does not depend on which rows or keys it is computed with.

#include "vector.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#pragma STDC FP_CONTRACT OFF

typedef float kq_f8 __attribute__((ext_vector_type(8)));
typedef int32_t kq_i8 __attribute__((ext_vector_type(8)));
typedef float kq_f4 __attribute__((ext_vector_type(4)));

enum { KQ_BLOCK = 32, KQ_KEY_BLOCK_BYTES = 34, KQ_PREFETCH_ROWS = 16 };

/// One quantised query block: the quants, the VNNI path's correction lanes (-128 · the sum of
/// each lane's four quants) and the scale.
typedef struct {
    int8_t q[KQ_BLOCK];
    int32_t corr[8];
    float d;
    float pad[7];
} kq_block;

long ak_kv_q8_query_bytes(long d) { return (d + KQ_BLOCK - 1) / KQ_BLOCK * (long)sizeof(kq_block); }

static inline float kq_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/// f16 → f32, exact (the q8_0 block scale).
static inline float kq_half(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | (uint16_t)p[1] << 8);
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = h & 0x7c00u, m = h & 0x3ffu;
    if (e == 0x7c00u) return kq_bits_f32(sign | 0x7f800000u | m << 13 | (m ? 0x00400000u : 0u));
    if (e == 0) return sign ? -((float)m * 0x1p-24f) : (float)m * 0x1p-24f;
    return kq_bits_f32(sign | ((((uint32_t)h & 0x7fffu) << 13) + 0x38000000u));
}

void ak_kv_q8_quantize_queries(const float *q, long ldq, long rows, long d, void *dst) {
    const long nb = (d + KQ_BLOCK - 1) / KQ_BLOCK;
    for (long r = 0; r < rows; r++) {
        const float *x = q + r * ldq;
        kq_block *out = (kq_block *)dst + r * nb;
        for (long b = 0; b < nb; b++) {
            const long c0 = b * KQ_BLOCK, n = d - c0 < KQ_BLOCK ? d - c0 : KQ_BLOCK;
            float amax = 0;
            for (long i = 0; i < n; i++) amax = fabsf(x[c0 + i]) > amax ? fabsf(x[c0 + i]) : amax;
            const float scale = amax / 127.0f, inv = scale != 0 ? 1.0f / scale : 0.0f;
            kq_block *blk = out + b;
            memset(blk, 0, sizeof *blk);
            for (long i = 0; i < n; i++) {
                float v = roundf(x[c0 + i] * inv);
                blk->q[i] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
            }
            for (int j = 0; j < 8; j++) {
                int s = 0;
                for (int e = 4 * j; e < 4 * j + 4; e++) s += blk->q[e];
                blk->corr[j] = -128 * s;
            }
            blk->d = scale;
        }
    }
}

/// The fixed fold of eight lanes: (l0+l4, l1+l5, l2+l6, l3+l7), then ((a0 + a1) + a2) + a3.
#define KQ_FOLD(v) ({ kq_f8 v_ = (v); kq_f4 a_ = v_.lo + v_.hi; ((a_.x + a_.y) + a_.z) + a_.w; })

/// Portable: the eight lane sums of one key block against one query block.
#define KQ_DOT_PORTABLE(kb, qb) ({                                                          \
    kq_i8 s_;                                                                               \
    for (int j_ = 0; j_ < 8; j_++) {                                                        \
        int t_ = 0;                                                                         \
        for (int e_ = 4 * j_; e_ < 4 * j_ + 4; e_++) t_ += (int8_t)(kb)[e_] * (qb)->q[e_];   \
        s_[j_] = t_;                                                                        \
    }                                                                                       \
    s_; })

#define KQ_FN(name) name##_portable
#define KQ_TARGET
#define KQ_KEYVEC(p) (p)
#define KQ_DOT(kv, qb) KQ_DOT_PORTABLE(kv, qb)
#define KQ_KEYTYPE const uint8_t *
#define KQ_HALF(p) kq_half(p)
#include "kvq8_body.h"
#undef KQ_FN
#undef KQ_TARGET
#undef KQ_KEYVEC
#undef KQ_DOT
#undef KQ_KEYTYPE
#undef KQ_HALF

#if defined(__x86_64__) && defined(__clang__) && !defined(AK_NO_CLONES)
#define KQ_HAVE_SIMD 1
#define KQ_FN(name) name##_avx2
#define KQ_TARGET __attribute__((target("avx2,fma,f16c")))
#define KQ_KEYTYPE __m256i
/// F16C's conversion from memory (vector.h): exact, as kq_half (the scales are finite).
#define KQ_HALF(p) AK_HALF_AT(p)   // the 34-byte key block holds the 8 bytes read
#define KQ_KEYVEC(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define KQ_DOT(kv, qb) ({                                                                                   \
    const __m256i qv_ = _mm256_loadu_si256((const __m256i *)(const void *)(qb)->q);                         \
    const __m256i p_ = _mm256_maddubs_epi16(_mm256_sign_epi8((kv), (kv)), _mm256_sign_epi8(qv_, (kv)));     \
    (kq_i8)_mm256_madd_epi16(p_, _mm256_set1_epi16(1)); })
#include "kvq8_body.h"
#undef KQ_FN
#undef KQ_TARGET
#undef KQ_KEYVEC
#undef KQ_DOT
#undef KQ_KEYTYPE
#undef KQ_HALF

#define KQ_FN(name) name##_vnni
#define KQ_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
#define KQ_KEYTYPE __m256i
#define KQ_HALF(p) AK_HALF_AT(p)   // the 34-byte key block holds the 8 bytes read
/// k + 128 as unsigned bytes (the sign bit flipped).
#define KQ_KEYVEC(p) _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(p)), _mm256_set1_epi8((char)0x80))
#define KQ_DOT(kv, qb) ((kq_i8)_mm256_dpbusd_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(qb)->corr), (kv), \
                                                   _mm256_loadu_si256((const __m256i *)(const void *)(qb)->q)))
#include "kvq8_body.h"
#undef KQ_FN
#undef KQ_TARGET
#undef KQ_KEYVEC
#undef KQ_DOT
#undef KQ_KEYTYPE
#undef KQ_HALF
#endif

/// -1 not chosen yet; 0 portable, 1 AVX2, 2 AVX-512 VNNI. ak_kv_force_portable resets it.
// _Atomic: worker threads read these while the first call (or a test switching paths) writes them.
static _Atomic int kq_path = -1;
static _Atomic int kq_forced_portable = 0;

static int kq_best(void) {
#ifdef KQ_HAVE_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return 1;
#endif
    return 0;
}

int ak_kv_q8_set_path(int path) {
    int best = kq_forced_portable ? 0 : kq_best();
    kq_path = path < 0 || path > best ? best : path;
    return kq_path;
}

int ak_kv_q8_path(void) {
    if (kq_path < 0) ak_kv_q8_set_path(-1);
    return kq_path;
}

/// Called by ak_kv_force_portable: the q8_0 keys follow the same switch.
void ak_kv_q8_force_portable(int portable) {
    kq_forced_portable = portable != 0;
    kq_path = -1;
}

void ak_kv_q8_rows_dot_keys(const void *qa, long rows, long d, const void *k, long ldkb, long w, float *s, long lds) {
    const int path = ak_kv_q8_path();
#ifdef KQ_HAVE_SIMD
    if (path == 2) { kq_rows_dot_keys_vnni(qa, rows, d, (const uint8_t *)k, ldkb, w, s, lds); return; }
    if (path == 1) { kq_rows_dot_keys_avx2(qa, rows, d, (const uint8_t *)k, ldkb, w, s, lds); return; }
#endif
    (void)path;
    kq_rows_dot_keys_portable(qa, rows, d, (const uint8_t *)k, ldkb, w, s, lds);
}

void ak_kv_q8_dot_keys_float(const float *q, long ldq, long rows, long d, const void *k, long ldkb, long w, float *s, long lds) {
    const long qb = ak_kv_q8_query_bytes(d);
    _Alignas(64) unsigned char local[4 * 8 * sizeof(kq_block)];
    void *buf = 4 * qb <= (long)sizeof local ? (void *)local : malloc((size_t)(4 * qb));
    for (long r = 0; r < rows; r += 4) {
        const long n = rows - r < 4 ? rows - r : 4;
        ak_kv_q8_quantize_queries(q + r * ldq, ldq, n, d, buf);
        ak_kv_q8_rows_dot_keys(buf, n, d, k, ldkb, w, s + r * lds, lds);
    }
    if (buf != (void *)local) free(buf);
}
