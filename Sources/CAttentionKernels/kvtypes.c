// Low-precision KV cache rows: conversions, and the decode products reading bf16, f16 and q8_0
// directly. Contracts: include/AttentionKernels.h; vector macros: vector.h.
//
// The products are the 8-lane kernels of decode.c (R ≤ 4 rows × 2 keys of accumulators) with the
// loads replaced by conversions. The bodies live in kvtypes_body.h, compiled twice:
//
// - `_f16c`: target AVX2 + FMA + F16C (every x86-64-v3 and v4 CPU: Haswell and later, every Zen),
//   converting with vcvtph2ps (f16), vpmovzxwd + vpslld (bf16) and vpmovsxbd + vcvtdq2ps (int8).
//   AVX-512 CPUs run it too: with 1–4 rows the stored types are read at memory speed with 8 lanes
//   (a q8_0 row is 4× fewer bytes per value than the f32 kernels read, so the loop has 4× more
//   time per byte), and Zen 4 splits 16-lane instructions into two 8-lane halves anyway. AVX-512's
//   BF16 dot product (vdpbf16ps) is not used: it needs the query in bf16 as well, rounding it.
// - `_portable`: generic vector code; f16 is decoded with integer bit operations (exact, subnormals
//   included), so any x86-64 or other CPU computes the same values.
//
// q8_0 keys' scores are not computed here: ak_kv_rows_dot_keys hands them to kvq8.c's integer
// kernels (the query quantised to 8-bit blocks). q8_0 values (P·V) still take the float path below.
//
// Both decode every stored value to the same float exactly and sum in the same order; they differ
// only where the F16C path fuses a multiply and add (FMA), so they agree to float32 rounding.

#include "vector.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef float y8 __attribute__((ext_vector_type(8)));
typedef uint32_t u8x __attribute__((ext_vector_type(8)));
typedef uint16_t h8x __attribute__((ext_vector_type(8)));
typedef int8_t i8x __attribute__((ext_vector_type(8)));
typedef int32_t s8x __attribute__((ext_vector_type(8)));

enum { KV_BLOCK = 32, KV_BLOCK_BYTES = 34, KV_KB = 32, KV_PREFETCH_ROWS = 16 };

long ak_kv_row_bytes(int kind, long d) {
    switch (kind) {
    case AK_KV_BF16: case AK_KV_F16: return 2 * d;
    case AK_KV_Q8_0: return (d + KV_BLOCK - 1) / KV_BLOCK * KV_BLOCK_BYTES;
    default: return 4 * d;
    }
}

// ---- Scalar conversions (exact decoding; round-to-nearest-even encoding) ----

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/// f32 → bf16, round to nearest even (inputs are finite: NaN needs no quieting here).
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/// f32 → f16, round to nearest even, subnormals kept, overflow to ±inf (F. Giesen's
/// float_to_half_fast3_rtne: subnormal results come from a float addition that rounds at the
/// right bit; normal ones add the rounding bias and the odd bit before truncating).
static inline uint16_t f32_to_f16(float f) {
    uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000u;
    u &= 0x7fffffffu;
    uint16_t o;
    if (u >= (uint32_t)(127 + 16) << 23) {                  // ≥ 65536: inf (NaN cannot occur)
        o = u > 0x7f800000u ? 0x7e00 : 0x7c00;
    } else if (u < (uint32_t)113 << 23) {                   // below 2^-14: f16 subnormal or zero
        const uint32_t magic = (uint32_t)((127 - 15) + (23 - 10) + 1) << 23;
        o = (uint16_t)(f32_bits(bits_f32(u) + bits_f32(magic)) - magic);
    } else {
        uint32_t odd = (u >> 13) & 1u;
        u += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd;
        o = (uint16_t)(u >> 13);                            // 65520 ≤ x < 65536 carries into inf
    }
    return (uint16_t)(o | sign);
}

/// f16 → f32, exact.
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, o = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t exp = o & (0x7c00u << 13);
    o += (uint32_t)(127 - 15) << 23;
    if (exp == 0x7c00u << 13) o += (uint32_t)(128 - 16) << 23;                  // inf, NaN
    else if (exp == 0) o = f32_bits(bits_f32(o + (1u << 23)) - bits_f32(113u << 23));   // subnormal
    return bits_f32(o | sign);
}

static inline uint16_t load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void store_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

void ak_kv_encode_rows(int kind, const float *src, long lds, long rows, long d, void *dst, long ldb) {
    for (long r = 0; r < rows; r++) {
        const float *x = src + r * lds;
        uint8_t *o = (uint8_t *)dst + r * ldb;
        switch (kind) {
        case AK_KV_BF16: for (long c = 0; c < d; c++) store_u16(o + 2 * c, f32_to_bf16(x[c])); break;
        case AK_KV_F16: for (long c = 0; c < d; c++) store_u16(o + 2 * c, f32_to_f16(x[c])); break;
        case AK_KV_Q8_0:
            // ggml's quantize_row_q8_0_ref, so a block here is a q8_0 block there bit for bit.
            for (long c0 = 0; c0 < d; c0 += KV_BLOCK) {
                uint8_t *blk = o + c0 / KV_BLOCK * KV_BLOCK_BYTES;
                long n = d - c0 < KV_BLOCK ? d - c0 : KV_BLOCK;
                float amax = 0;
                for (long i = 0; i < n; i++) amax = fabsf(x[c0 + i]) > amax ? fabsf(x[c0 + i]) : amax;
                float scale = amax / 127.0f, inv = scale != 0 ? 1.0f / scale : 0.0f;
                store_u16(blk, f32_to_f16(scale));
                for (long i = 0; i < KV_BLOCK; i++) {
                    float q = i < n ? roundf(x[c0 + i] * inv) : 0.0f;
                    blk[2 + i] = (uint8_t)(int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
                }
            }
            break;
        default: memcpy(o, x, (size_t)d * 4); break;
        }
    }
}

static void kv_decode_rows_scalar(int kind, const void *src, long ldb, long rows, long d, float *dst, long ldd) {
    for (long r = 0; r < rows; r++) {
        const uint8_t *x = (const uint8_t *)src + r * ldb;
        float *o = dst + r * ldd;
        switch (kind) {
        case AK_KV_BF16: for (long c = 0; c < d; c++) o[c] = bits_f32((uint32_t)load_u16(x + 2 * c) << 16); break;
        case AK_KV_F16: for (long c = 0; c < d; c++) o[c] = f16_to_f32(load_u16(x + 2 * c)); break;
        case AK_KV_Q8_0:
            for (long c = 0; c < d; c++) {
                const uint8_t *blk = x + c / KV_BLOCK * KV_BLOCK_BYTES;
                o[c] = f16_to_f32(load_u16(blk)) * (float)(int8_t)blk[2 + c % KV_BLOCK];
            }
            break;
        default: memcpy(o, x, (size_t)d * 4); break;
        }
    }
}

/// Prefetches `bytes` bytes at p + offset (integer arithmetic: the row may lie past the buffer).
static inline __attribute__((always_inline)) void kv_prefetch(const uint8_t *p, long offset, long bytes) {
    uintptr_t a = (uintptr_t)p + (uintptr_t)offset;
    for (long b = 0; b < bytes; b += 64) __builtin_prefetch((const void *)(a + (uintptr_t)b), 0, 3);
}

#define Y8LOAD(p) ({ y8 v_; memcpy(&v_, (p), sizeof v_); v_; })
#define Y8STORE(p, v) do { y8 v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
#define Y8SUM(v) ({ y8 v_ = (v); v4 a_ = v_.lo + v_.hi; a_.x + a_.y + a_.z + a_.w; })

// One stored value, for the columns past the last multiple of 8.
static inline __attribute__((always_inline)) float kv_value(int K, const uint8_t *row, long c) {
    switch (K) {
    case AK_KV_F32: { float f; memcpy(&f, row + 4 * c, 4); return f; }
    case AK_KV_BF16: return bits_f32((uint32_t)load_u16(row + 2 * c) << 16);
    case AK_KV_F16: return f16_to_f32(load_u16(row + 2 * c));
    default: {
        const uint8_t *blk = row + c / KV_BLOCK * KV_BLOCK_BYTES;
        return f16_to_f32(load_u16(blk)) * (float)(int8_t)blk[2 + c % KV_BLOCK];
    }
    }
}

// Eight int8 values (unscaled) and eight bf16 values: the same code for both paths.
#define KV_I8X8(p) ({ i8x v_; memcpy(&v_, (p), 8); __builtin_convertvector(__builtin_convertvector(v_, s8x), y8); })
#define KV_BF16X8(p) ({ h8x v_; memcpy(&v_, (p), 16); (y8)(__builtin_convertvector(v_, u8x) << 16); })

// ---- F16C + AVX2 + FMA ----
#if defined(__x86_64__) && defined(__clang__) && !defined(AK_NO_CLONES)
#define KV_HAVE_F16C_PATH 1
#define KV_FN(name) name##_f16c
#define KV_TARGET __attribute__((target("avx2,fma,f16c")))
#define KV_F16X8(p) ((y8)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p))))
/// vector.h's F16C conversion from memory (8 bytes: a q8_0 block of 34 holds them).
#define KV_H2F_AT(p) AK_HALF_AT(p)
#include "kvtypes_body.h"

// decode.c's 8-lane float32 kernels (its AVX2 path): the bodies above at K = AK_KV_F32, for R
// rows (1 ≤ R ≤ 4; a constant in each case) of q against keys (values) j0 ..< j1 of one block.
// Declared in decode.c.
KV_TARGET void ak_f32_dot_keys_y8(const float *q, long ldq, int R, long d, const float *k, long ldk, long j0, long j1,
                                  float *s, long lds, int prefetch) {
    const uint8_t *kb = (const uint8_t *)k;
    const long ldkb = ldk * 4, rowBytes = d * 4;
    switch (R) {
    case 4: KV_FN(kv_dot_keys)(AK_KV_F32, q, ldq, 4, d, kb, ldkb, j0, j1, s, lds, prefetch, rowBytes); break;
    case 3: KV_FN(kv_dot_keys)(AK_KV_F32, q, ldq, 3, d, kb, ldkb, j0, j1, s, lds, prefetch, rowBytes); break;
    case 2: KV_FN(kv_dot_keys)(AK_KV_F32, q, ldq, 2, d, kb, ldkb, j0, j1, s, lds, prefetch, rowBytes); break;
    default: KV_FN(kv_dot_keys)(AK_KV_F32, q, ldq, 1, d, kb, ldkb, j0, j1, s, lds, prefetch, rowBytes); break;
    }
}

KV_TARGET void ak_f32_times_values_y8(const float *p, long ldp, int R, const float *v, long ldv, long j0, long j1, long dv,
                                      float *o, long ldo, int prefetch) {
    const uint8_t *vb = (const uint8_t *)v;
    const long ldvb = ldv * 4, rowBytes = dv * 4;
    switch (R) {
    case 4: KV_FN(kv_times_values)(AK_KV_F32, p, ldp, 4, vb, ldvb, j0, j1, dv, o, ldo, prefetch, rowBytes); break;
    case 3: KV_FN(kv_times_values)(AK_KV_F32, p, ldp, 3, vb, ldvb, j0, j1, dv, o, ldo, prefetch, rowBytes); break;
    case 2: KV_FN(kv_times_values)(AK_KV_F32, p, ldp, 2, vb, ldvb, j0, j1, dv, o, ldo, prefetch, rowBytes); break;
    default: KV_FN(kv_times_values)(AK_KV_F32, p, ldp, 1, vb, ldvb, j0, j1, dv, o, ldo, prefetch, rowBytes); break;
    }
}

#undef KV_FN
#undef KV_TARGET
#undef KV_F16X8
#undef KV_H2F_AT
#endif

// ---- Portable: f16 decoded by integer operations ----

/// Eight f16 → f32, exact: the scalar f16_to_f32 on lanes (masks select the inf/NaN and the
/// subnormal cases).
#define KV_F16X8_PORTABLE(p) ({                                                             \
    h8x h_; memcpy(&h_, (p), 16);                                                          \
    u8x x_ = __builtin_convertvector(h_, u8x);                                             \
    u8x sign_ = (x_ & 0x8000u) << 16, o_ = (x_ & 0x7fffu) << 13, e_ = o_ & (0x7c00u << 13); \
    o_ += (u8x)((uint32_t)(127 - 15) << 23);                                               \
    u8x inf_ = (u8x)(e_ == (0x7c00u << 13)), sub_ = (u8x)(e_ == 0);                        \
    o_ += inf_ & ((uint32_t)(128 - 16) << 23);                                             \
    u8x s_ = (u8x)((y8)(o_ + (1u << 23)) - (y8)(u8x)(113u << 23));                         \
    o_ = (sub_ & s_) | (~sub_ & o_);                                                       \
    (y8)(o_ | sign_); })
#define KV_FN(name) name##_portable
#define KV_TARGET
#define KV_F16X8(p) KV_F16X8_PORTABLE(p)
#define KV_H2F_AT(p) f16_to_f32(load_u16(p))
#include "kvtypes_body.h"
#undef KV_FN
#undef KV_TARGET
#undef KV_F16X8
#undef KV_H2F_AT

/// 1 when the CPU runs the F16C path (AVX2, FMA and F16C present), else 0; 2 forces the portable
/// path (set by ak_kv_force_portable, for tests).
// _Atomic: worker threads read it while the first call (or a test switching paths) writes it.
static _Atomic int kv_path = -1;

static int use_f16c_path(void) {
    if (kv_path < 0) {
#ifdef KV_HAVE_F16C_PATH
        __builtin_cpu_init();
        kv_path = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
        kv_path = 0;
#endif
    }
    return kv_path == 1;
}

void ak_kv_force_portable(int portable) {
    ak_kv_q8_force_portable(portable);
    kv_path = -1;
    if (portable) kv_path = 2;
}

const char *ak_kv_kernel_path(void) { return use_f16c_path() ? "f16c" : "portable"; }

void ak_kv_decode_rows(int kind, const void *src, long ldb, long rows, long d, float *dst, long ldd) {
    if (kind == AK_KV_F32) { kv_decode_rows_scalar(kind, src, ldb, rows, d, dst, ldd); return; }
#ifdef KV_HAVE_F16C_PATH
    if (use_f16c_path()) { kv_decode_rows_f16c(kind, (const uint8_t *)src, ldb, rows, d, dst, ldd); return; }
#endif
    kv_decode_rows_portable(kind, (const uint8_t *)src, ldb, rows, d, dst, ldd);
}

void ak_kv_rows_dot_keys(int kind, const float *q, long ldq, long rows, long d, const void *k, long ldkb, long w,
                         float *s, long lds) {
    if (kind == AK_KV_F32) { ak_rows_dot_keys(q, ldq, rows, d, (const float *)k, ldkb / 4, w, s, lds); return; }
    if (kind == AK_KV_Q8_0) { ak_kv_q8_dot_keys_float(q, ldq, rows, d, k, ldkb, w, s, lds); return; }
#ifdef KV_HAVE_F16C_PATH
    if (use_f16c_path()) { kv_rows_dot_keys_f16c(kind, q, ldq, rows, d, (const uint8_t *)k, ldkb, w, s, lds); return; }
#endif
    kv_rows_dot_keys_portable(kind, q, ldq, rows, d, (const uint8_t *)k, ldkb, w, s, lds);
}

void ak_kv_rows_times_values(int kind, const float *p, long ldp, long rows, const void *v, long ldvb, long w,
                             long dv, float *o, long ldo) {
    if (kind == AK_KV_F32) { ak_rows_times_values(p, ldp, rows, (const float *)v, ldvb / 4, w, dv, o, ldo); return; }
#ifdef KV_HAVE_F16C_PATH
    if (use_f16c_path()) { kv_rows_times_values_f16c(kind, p, ldp, rows, (const uint8_t *)v, ldvb, w, dv, o, ldo); return; }
#endif
    kv_rows_times_values_portable(kind, p, ldp, rows, (const uint8_t *)v, ldvb, w, dv, o, ldo);
}

uint16_t ak_fp32_to_fp16(float f) { return f32_to_f16(f); }
