// Decode: products of few query rows with streamed keys and values. Contracts: include/AttentionKernels.h; vector macros: vector.h.

#include "vector.h"

// The decode kernels read each key and value row once. Query rows go in groups of four (the
// query heads of one GQA group): every key or value vector loaded feeds all four rows, so the
// arithmetic per byte grows with the group while the bytes read do not. Keys go in blocks of KB
// rows, done for every row group before the next block, so a second group (8 rows) finds the
// block in L1. Rows past a multiple of four take a one-row path.
//
// The hardware prefetchers stop at 4 KiB pages (8 keys at d = 128), and the arithmetic of a
// four-row group leaves the memory idle between loads unless requests are already in flight:
// the first row group therefore prefetches the row PREFETCH_KEYS ahead. Measured at 128K keys,
// Hkv = 8: 60–64 ms per step without, 44–55 with; distances from 8 to 64 keys were alike within
// this VM's noise.
enum { KB = 32, PREFETCH_KEYS = 16 };

/// Prefetches the `n` floats at `p` (address arithmetic on integers: the row may lie past the
/// end of the buffer, which a prefetch tolerates and C pointer arithmetic does not).
AK_INLINE void prefetch_floats(const float *p, long offsetFloats, long n) {
    uintptr_t a = (uintptr_t)p + (uintptr_t)(offsetFloats * (long)sizeof(float));
    for (long b = 0; b < n * (long)sizeof(float); b += 64) __builtin_prefetch((const void *)(a + (uintptr_t)b), 0, 3);
}

// One step of the reduction tree that turns 16 accumulators into one vector of their 16 sums:
// lanes of a and b interleaved in runs of n (n = 8, 4, 2, 1), the two halves added. After the
// four levels, output lane L holds the sum of the input at tree position bitreverse4(L).
#define RED8(a, b) (__builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) + \
                    __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
#define RED4(a, b) (__builtin_shufflevector(a, b, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) + \
                    __builtin_shufflevector(a, b, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31))
#define RED2(a, b) (__builtin_shufflevector(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) + \
                    __builtin_shufflevector(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31))
#define RED1(a, b) (__builtin_shufflevector(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) + \
                    __builtin_shufflevector(a, b, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31))

/// Scores of one query row against keys j0 ..< j1.
AK_INLINE void dot_keys_1row(const float *qr, long d, const float *k, long ldk, long j0, long j1, float *sr) {
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
        return;
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

/// Scores of four query rows against keys j0 ..< j1: a 4 × 4 block of dot products per step, in
/// 16 accumulators a_rk (row r, key k) reduced together by one tree.
AK_INLINE void dot_keys_4rows(const float *q, long ldq, long d, const float *k, long ldk, long j0, long j1,
                              float *s, long lds, int prefetch) {
    const float *q0 = q, *q1 = q0 + ldq, *q2 = q1 + ldq, *q3 = q2 + ldq;
    long j = j0;
    for (; j + 4 <= j1; j += 4) {
        const float *k0 = k + j * ldk, *k1 = k0 + ldk, *k2 = k1 + ldk, *k3 = k2 + ldk;
        if (prefetch) {
            for (int t = 0; t < 4; t++) prefetch_floats(k0, (t + PREFETCH_KEYS) * ldk, d);
        }
        vf a00 = 0.0f, a01 = 0.0f, a02 = 0.0f, a03 = 0.0f, a10 = 0.0f, a11 = 0.0f, a12 = 0.0f, a13 = 0.0f;
        vf a20 = 0.0f, a21 = 0.0f, a22 = 0.0f, a23 = 0.0f, a30 = 0.0f, a31 = 0.0f, a32 = 0.0f, a33 = 0.0f;
#define DOT_STEP(b0, b1, b2, b3, x0, x1, x2, x3) do { vf x_;                             \
            x_ = (x0); a00 += x_ * (b0); a01 += x_ * (b1); a02 += x_ * (b2); a03 += x_ * (b3); \
            x_ = (x1); a10 += x_ * (b0); a11 += x_ * (b1); a12 += x_ * (b2); a13 += x_ * (b3); \
            x_ = (x2); a20 += x_ * (b0); a21 += x_ * (b1); a22 += x_ * (b2); a23 += x_ * (b3); \
            x_ = (x3); a30 += x_ * (b0); a31 += x_ * (b1); a32 += x_ * (b2); a33 += x_ * (b3); } while (0)
        long c = 0;
        for (; c + W <= d; c += W) {
            vf b0 = LOAD(k0 + c), b1 = LOAD(k1 + c), b2 = LOAD(k2 + c), b3 = LOAD(k3 + c);
            DOT_STEP(b0, b1, b2, b3, LOAD(q0 + c), LOAD(q1 + c), LOAD(q2 + c), LOAD(q3 + c));
        }
        if (c < d) {
            long n = d - c;
            vf b0 = LOAD_PARTIAL(k0 + c, n, 0.0f), b1 = LOAD_PARTIAL(k1 + c, n, 0.0f);
            vf b2 = LOAD_PARTIAL(k2 + c, n, 0.0f), b3 = LOAD_PARTIAL(k3 + c, n, 0.0f);
            DOT_STEP(b0, b1, b2, b3, LOAD_PARTIAL(q0 + c, n, 0.0f), LOAD_PARTIAL(q1 + c, n, 0.0f),
                     LOAD_PARTIAL(q2 + c, n, 0.0f), LOAD_PARTIAL(q3 + c, n, 0.0f));
        }
#undef DOT_STEP
        // Accumulator i = 4·row + key enters at tree position bitreverse4(i), so output lane i
        // holds its sum: lanes 4r ..< 4r + 4 are row r's four scores.
        vf u0 = RED8(a00, a20), u1 = RED8(a10, a30), u2 = RED8(a02, a22), u3 = RED8(a12, a32);
        vf u4 = RED8(a01, a21), u5 = RED8(a11, a31), u6 = RED8(a03, a23), u7 = RED8(a13, a33);
        vf y = RED1(RED2(RED4(u0, u1), RED4(u2, u3)), RED2(RED4(u4, u5), RED4(u6, u7)));
        v4 y0 = y.s0123, y1 = y.s4567, y2 = y.s89ab, y3 = y.scdef;
        float *sr = s + j;
        memcpy(sr, &y0, sizeof y0); memcpy(sr + lds, &y1, sizeof y1);
        memcpy(sr + 2 * lds, &y2, sizeof y2); memcpy(sr + 3 * lds, &y3, sizeof y3);
    }
    for (long r = 0; r < 4; r++) dot_keys_1row(q + r * ldq, d, k, ldk, j, j1, s + r * lds);   // the last w % 4 keys
}

AK_CLONES static void rows_dot_keys_wide(const float *q, long ldq, long rows, long d, const float *k, long ldk,
                                         long w, float *s, long lds) {
    for (long j0 = 0; j0 < w; j0 += KB) {
        long j1 = j0 + KB < w ? j0 + KB : w;
        long r = 0;
        for (; r + 4 <= rows; r += 4) dot_keys_4rows(q + r * ldq, ldq, d, k, ldk, j0, j1, s + r * lds, lds, r == 0);
        for (; r < rows; r++) dot_keys_1row(q + r * ldq, d, k, ldk, j0, j1, s + r * lds);
    }
}


/// o_r += Σ_j p_r[j] · v_j for four rows over keys j0 ..< j1, 64 output columns at a time in 16
/// accumulators; the first 64-column pass prefetches whole value rows ahead, later passes read
/// the block from L1. Masked keys have p = 0 and finite values (inputs are checked), adding 0.
AK_INLINE void times_values_4rows(const float *p, long ldp, const float *v, long ldv, long j0, long j1,
                                  long dv, float *o, long ldo, int prefetch) {
    const float *p0 = p, *p1 = p0 + ldp, *p2 = p1 + ldp, *p3 = p2 + ldp;
    float *o0 = o, *o1 = o0 + ldo, *o2 = o1 + ldo, *o3 = o2 + ldo;
    long c = 0;
    for (; c + 4 * W <= dv; c += 4 * W) {
        vf a00 = LOAD(o0 + c), a01 = LOAD(o0 + c + 16), a02 = LOAD(o0 + c + 32), a03 = LOAD(o0 + c + 48);
        vf a10 = LOAD(o1 + c), a11 = LOAD(o1 + c + 16), a12 = LOAD(o1 + c + 32), a13 = LOAD(o1 + c + 48);
        vf a20 = LOAD(o2 + c), a21 = LOAD(o2 + c + 16), a22 = LOAD(o2 + c + 32), a23 = LOAD(o2 + c + 48);
        vf a30 = LOAD(o3 + c), a31 = LOAD(o3 + c + 16), a32 = LOAD(o3 + c + 32), a33 = LOAD(o3 + c + 48);
        for (long j = j0; j < j1; j++) {
            const float *vj = v + j * ldv + c;
            if (prefetch && c == 0) prefetch_floats(v + j * ldv, PREFETCH_KEYS * ldv, dv);
            vf b0 = LOAD(vj), b1 = LOAD(vj + 16), b2 = LOAD(vj + 32), b3 = LOAD(vj + 48), x;
            x = p0[j]; a00 += x * b0; a01 += x * b1; a02 += x * b2; a03 += x * b3;
            x = p1[j]; a10 += x * b0; a11 += x * b1; a12 += x * b2; a13 += x * b3;
            x = p2[j]; a20 += x * b0; a21 += x * b1; a22 += x * b2; a23 += x * b3;
            x = p3[j]; a30 += x * b0; a31 += x * b1; a32 += x * b2; a33 += x * b3;
        }
        STORE(o0 + c, a00); STORE(o0 + c + 16, a01); STORE(o0 + c + 32, a02); STORE(o0 + c + 48, a03);
        STORE(o1 + c, a10); STORE(o1 + c + 16, a11); STORE(o1 + c + 32, a12); STORE(o1 + c + 48, a13);
        STORE(o2 + c, a20); STORE(o2 + c + 16, a21); STORE(o2 + c + 32, a22); STORE(o2 + c + 48, a23);
        STORE(o3 + c, a30); STORE(o3 + c + 16, a31); STORE(o3 + c + 32, a32); STORE(o3 + c + 48, a33);
    }
    for (; c + W <= dv; c += W) {
        vf a0 = LOAD(o0 + c), a1 = LOAD(o1 + c), a2 = LOAD(o2 + c), a3 = LOAD(o3 + c);
        for (long j = j0; j < j1; j++) {
            vf b = LOAD(v + j * ldv + c);
            a0 += p0[j] * b; a1 += p1[j] * b; a2 += p2[j] * b; a3 += p3[j] * b;
        }
        STORE(o0 + c, a0); STORE(o1 + c, a1); STORE(o2 + c, a2); STORE(o3 + c, a3);
    }
    for (; c < dv; c++) {
        float a0 = o0[c], a1 = o1[c], a2 = o2[c], a3 = o3[c];
        for (long j = j0; j < j1; j++) {
            float b = v[j * ldv + c];
            a0 += p0[j] * b; a1 += p1[j] * b; a2 += p2[j] * b; a3 += p3[j] * b;
        }
        o0[c] = a0; o1[c] = a1; o2[c] = a2; o3[c] = a3;
    }
}

/// o_r += Σ_j p_r[j] · v_j for one row over keys j0 ..< j1 (masked keys, p = 0, skipped).
AK_INLINE void times_values_1row(const float *pr, const float *v, long ldv, long j0, long j1, long dv, float *orow) {
    if (dv == 128) {   // o_r held in 8 registers across the block
        vf o0 = LOAD(orow), o1 = LOAD(orow + 16), o2 = LOAD(orow + 32), o3 = LOAD(orow + 48);
        vf o4 = LOAD(orow + 64), o5 = LOAD(orow + 80), o6 = LOAD(orow + 96), o7 = LOAD(orow + 112);
        for (long j = j0; j < j1; j++) {
            float pj = pr[j];
            if (pj == 0.0f) continue;
            const float *vj = v + j * ldv;
            vf b = pj;
            o0 += b * LOAD(vj); o1 += b * LOAD(vj + 16); o2 += b * LOAD(vj + 32); o3 += b * LOAD(vj + 48);
            o4 += b * LOAD(vj + 64); o5 += b * LOAD(vj + 80); o6 += b * LOAD(vj + 96); o7 += b * LOAD(vj + 112);
        }
        STORE(orow, o0); STORE(orow + 16, o1); STORE(orow + 32, o2); STORE(orow + 48, o3);
        STORE(orow + 64, o4); STORE(orow + 80, o5); STORE(orow + 96, o6); STORE(orow + 112, o7);
        return;
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

AK_CLONES static void rows_times_values_wide(const float *p, long ldp, long rows, const float *v, long ldv, long w,
                                             long dv, float *o, long ldo) {
    for (long j0 = 0; j0 < w; j0 += KB) {
        long j1 = j0 + KB < w ? j0 + KB : w;
        long r = 0;
        for (; r + 4 <= rows; r += 4) times_values_4rows(p + r * ldp, ldp, v, ldv, j0, j1, dv, o + r * ldo, ldo, r == 0);
        for (; r < rows; r++) times_values_1row(p + r * ldp, v, ldv, j0, j1, dv, o + r * ldo);
    }
}

// ---- AVX2 (no AVX-512): the same blocking on 8-lane vectors ----
//
// On a CPU without AVX-512 each 16-lane vector above is two ymm registers, and the four-row
// kernels' 16 accumulators need 32 of the 16 ymm registers: they spill, and the decode step turns
// compute-bound (measured on a Zen 3 EPYC, 128K keys, H = 32, d = 128: Hkv = 8 read K/V at 42% of
// the copy bandwidth, Hkv = 1 at 11%). These kernels keep R ≤ 4 rows × 2 keys of 8-lane
// accumulators (8 ymm) plus two key vectors and one query vector in registers, and take groups of
// 2 and 3 rows whole instead of row by row. A single row keeps the one-row paths (four keys per
// reduction tree), which measured faster for it (Hkv = H).
//
// The 8-lane kernels are kvtypes_body.h's (the typed caches' bodies) at the float32 kind: one
// blocking for every storage type. Their order of work, per R-row group and key block:
// - q·k: two keys at a time, R × 2 accumulators of 8 lanes over 8-column chunks (the tail
//   columns scalar), the last key of an odd count alone;
// - p·v: four value rows at a time, front to back: each 8-column chunk of the four rows loaded
//   once and added into every row's output chunk, which lives in L1 (loaded and stored per chunk:
//   R stores per 4R FMAs); whole rows prefetched PREFETCH_KEYS ahead. The column-pass order (keys
//   inner, output in registers) measured 5.0–5.4 GB/s from memory on one Zen 3 core at R = 2–4,
//   against 20–27 GB/s from L1: it reads a block line by line across 32 rows, which the memory
//   pipeline does not stream. This order measured 6.4–8.1 GB/s (R = 2–4), and 30–49 GB/s from L1.
#if defined(__x86_64__) && defined(__clang__) && !defined(AK_NO_CLONES)
#define DECODE_HAVE_Y8 1
#define Y8_TARGET __attribute__((target("avx2,fma")))
// In kvtypes.c (target avx2, fma, f16c: every x86-64-v3 CPU, the only ones this path runs on).
void ak_f32_dot_keys_y8(const float *q, long ldq, int R, long d, const float *k, long ldk, long j0, long j1,
                        float *s, long lds, int prefetch);
void ak_f32_times_values_y8(const float *p, long ldp, int R, const float *v, long ldv, long j0, long j1, long dv,
                            float *o, long ldo, int prefetch);

static Y8_TARGET void rows_dot_keys_avx2(const float *q, long ldq, long rows, long d, const float *k, long ldk,
                                         long w, float *s, long lds) {
    for (long j0 = 0; j0 < w; j0 += KB) {
        long j1 = j0 + KB < w ? j0 + KB : w;
        for (long r = 0; r < rows; r += 4) {
            long n = rows - r < 4 ? rows - r : 4;
            const float *qr = q + r * ldq;
            float *sr = s + r * lds;
            switch (n) {   // constant R: the unused accumulators disappear
            case 4: ak_f32_dot_keys_y8(qr, ldq, 4, d, k, ldk, j0, j1, sr, lds, r == 0); break;
            case 3: ak_f32_dot_keys_y8(qr, ldq, 3, d, k, ldk, j0, j1, sr, lds, r == 0); break;
            case 2: ak_f32_dot_keys_y8(qr, ldq, 2, d, k, ldk, j0, j1, sr, lds, r == 0); break;
            default: dot_keys_1row(qr, d, k, ldk, j0, j1, sr); break;   // one row: four keys per reduction tree
            }
        }
    }
}

static Y8_TARGET void rows_times_values_avx2(const float *p, long ldp, long rows, const float *v, long ldv, long w,
                                             long dv, float *o, long ldo) {
    for (long j0 = 0; j0 < w; j0 += KB) {
        long j1 = j0 + KB < w ? j0 + KB : w;
        for (long r = 0; r < rows; r += 4) {
            long n = rows - r < 4 ? rows - r : 4;
            const float *pr = p + r * ldp;
            float *or_ = o + r * ldo;
            switch (n) {
            case 4: ak_f32_times_values_y8(pr, ldp, 4, v, ldv, j0, j1, dv, or_, ldo, r == 0); break;
            case 3: ak_f32_times_values_y8(pr, ldp, 3, v, ldv, j0, j1, dv, or_, ldo, r == 0); break;
            case 2: ak_f32_times_values_y8(pr, ldp, 2, v, ldv, j0, j1, dv, or_, ldo, r == 0); break;
            default: times_values_1row(pr, v, ldv, j0, j1, dv, or_); break;   // one row: masked keys skipped
            }
        }
    }
}

#endif

/// 1 for the 8-lane kernels: on CPUs with AVX2 and FMA but not AVX-512, and on AMD CPUs with
/// AVX-512 (Zen 4 and 5), else 0 (Intel's AVX-512 takes the 16-lane kernels).
///
/// Why AMD's AVX-512 takes the 8-lane path: Zen 4 executes a 512-bit FMA, load or shuffle as two
/// 256-bit halves, so a 16-lane kernel issues as many µops as an 8-lane one doing the same work
/// (four rows × d = 128: 64 FMA halves per key either way) and gains nothing from the width, while
/// the 8-lane kernels keep their accumulators in registers with no reduction tree per 4 × 4 block
/// and stream value rows front to back. Measured on Zen 3 (the 8-lane code is the same there):
/// P·V for four rows read value rows at 6.4–8.1 GB/s per core against 5.0–5.4 for the column-pass
/// order the 16-lane kernel uses; the Zen 4 report of this project (2.2× from Hkv = 32 to 8, the
/// four-row kernels at about 39 GFLOP/s, a fraction of the FMA rate) points at the same loop
/// structure, not the vector width. Intel's cores with two 512-bit FMA ports do halve the µops
/// with 16 lanes, and measured 3.1–3.6× there.
/// -1 until chosen; then 1 for the 8-lane kernels, 0 for the 16-lane ones; 2 forces the 16-lane
/// kernels (set by ak_decode_force_wide, for tests).
// _Atomic: worker threads read it while the first call (or a test switching paths) writes it.
static _Atomic int decode_path = -1;

static int use_avx2_kernels(void) {
    if (decode_path < 0) {
#if defined(__x86_64__) && defined(__clang__) && !defined(AK_NO_CLONES)
        const char *isa = ak_kernel_isa();
        __builtin_cpu_init();
        decode_path = strcmp(isa, "x86-64-v3") == 0 || (strcmp(isa, "x86-64-v4") == 0 && __builtin_cpu_is("amd"));
#else
        decode_path = 0;
#endif
    }
    return decode_path == 1;
}

void ak_decode_force_wide(int wide) {
    decode_path = -1;
    if (wide) decode_path = 2;
}

const char *ak_decode_kernel_path(void) { return use_avx2_kernels() ? "8-lane (AVX2)" : "16-lane"; }

void ak_rows_dot_keys(const float *q, long ldq, long rows, long d, const float *k, long ldk, long w, float *s, long lds) {
#ifdef DECODE_HAVE_Y8
    if (use_avx2_kernels()) { rows_dot_keys_avx2(q, ldq, rows, d, k, ldk, w, s, lds); return; }
#endif
    rows_dot_keys_wide(q, ldq, rows, d, k, ldk, w, s, lds);
}

void ak_rows_times_values(const float *p, long ldp, long rows, const float *v, long ldv, long w, long dv, float *o, long ldo) {
#ifdef DECODE_HAVE_Y8
    if (use_avx2_kernels()) { rows_times_values_avx2(p, ldp, rows, v, ldv, w, dv, o, ldo); return; }
#endif
    rows_times_values_wide(p, ldp, rows, v, ldv, w, dv, o, ldo);
}
