// The decode products over stored KV rows, included twice by kvtypes.c with these defined:
//   KV_FN(name)   the function's name for this path (name_f16c, name_portable)
//   KV_TARGET     its target attribute (empty for the portable path)
//   KV_F16X8(p)   eight f16 at p as a y8;  KV_H2F_AT(p)  the f16 at p (a q8_0 block's scale) as a float
// The kind K and the row count R are constants at every call of the inline bodies, so each
// (K, R) pair compiles to its own loop with the other branches and accumulators gone.
//
// K = AK_KV_F32 is float32 rows (4 bytes a value, no scale): decode.c's 8-lane AVX2 kernels are
// these bodies at that kind (ak_f32_dot_keys_y8 and ak_f32_times_values_y8 in kvtypes.c), so the
// blocking exists once. At K = AK_KV_F32 the sums are taken in the same order as a flat loop over
// 8-column chunks (the 32-column blocks only group the chunks), and the second accumulator set of
// R <= 2 is not used: the float32 loop is not conversion-bound.

/// Where the values of the 32-column block starting at column cb (a multiple of 32) of stored
/// row `r` begin: past the f16 scale for q8_0. Loads inside a block then address from this
/// pointer, so the loop does no division per load.
#define KV_BLOCKPTR(K, r, cb) ((K) == AK_KV_Q8_0 ? (r) + (cb) / KV_BLOCK * KV_BLOCK_BYTES + 2 \
                              : (K) == AK_KV_F32 ? (r) + 4 * (cb) : (r) + 2 * (cb))
/// Eight values at offset i (a multiple of 8) inside a block starting at `bp`; q8_0 values unscaled.
#define KV_LOAD8_AT(K, bp, i) ((K) == AK_KV_F32 ? Y8LOAD((bp) + 4 * (i)) : (K) == AK_KV_BF16 ? KV_BF16X8((bp) + 2 * (i)) \
                               : (K) == AK_KV_F16 ? KV_F16X8((bp) + 2 * (i)) : KV_I8X8((bp) + (i)))
/// Eight values of stored row `r` from column c, a multiple of 8 (outside the block loops).
#define KV_LOAD8(K, r, c) KV_LOAD8_AT(K, KV_BLOCKPTR(K, r, (c) / KV_BLOCK * KV_BLOCK), (c) % KV_BLOCK)
/// The scale of the 32-value block holding column c: q8_0's f16 `d`, 1 for bf16 and f16 (folded away).
#define KV_SCALE(K, r, c) ((K) == AK_KV_Q8_0 ? KV_H2F_AT((r) + (c) / KV_BLOCK * KV_BLOCK_BYTES) : 1.0f)

/// s[r·lds + j] = q_r · k_j for R rows (1 ≤ R ≤ 4) and keys j0 ..< j1, two keys at a time. Each
/// block of 32 columns loads its two scales once; a converted key vector (exact: q·d has at most
/// 18 significant bits) feeds all R rows.
static inline __attribute__((always_inline)) KV_TARGET
void KV_FN(kv_dot_keys)(const int K, const float *q, long ldq, const int R, long d, const uint8_t *k, long ldkb,
                        long j0, long j1, float *s, long lds, int prefetch, long rowBytes) {
    const long d8 = d & ~7L;
    long j = j0;
    for (; j + 2 <= j1; j += 2) {
        const uint8_t *k0 = k + j * ldkb, *k1 = k0 + ldkb;
        if (prefetch) {
            kv_prefetch(k0, KV_PREFETCH_ROWS * ldkb, rowBytes);
            kv_prefetch(k1, KV_PREFETCH_ROWS * ldkb, rowBytes);
        }
        y8 a00 = 0, a01 = 0, a10 = 0, a11 = 0, a20 = 0, a21 = 0, a30 = 0, a31 = 0;
        // With one or two rows, 2R accumulators are too few chains to hide the FMA latency (the
        // conversions leave the loop otherwise short): odd chunks go to a second set.
        y8 e00 = 0, e01 = 0, e10 = 0, e11 = 0;
        for (long cb = 0; cb < d8; cb += KV_BLOCK) {
            const float sc0 = KV_SCALE(K, k0, cb), sc1 = KV_SCALE(K, k1, cb);
            const uint8_t *p0 = KV_BLOCKPTR(K, k0, cb), *p1 = KV_BLOCKPTR(K, k1, cb);
            const long ce = cb + KV_BLOCK < d8 ? cb + KV_BLOCK : d8;
            long c = cb;
            if (R <= 2 && K != AK_KV_F32) {
                for (; c + 16 <= ce; c += 16) {
                    y8 b0 = KV_LOAD8_AT(K, p0, c - cb) * sc0, b1 = KV_LOAD8_AT(K, p1, c - cb) * sc1;
                    y8 f0 = KV_LOAD8_AT(K, p0, c - cb + 8) * sc0, f1 = KV_LOAD8_AT(K, p1, c - cb + 8) * sc1, x, y;
                    x = Y8LOAD(q + c); y = Y8LOAD(q + c + 8);
                    a00 += x * b0; a01 += x * b1; e00 += y * f0; e01 += y * f1;
                    if (R > 1) {
                        x = Y8LOAD(q + ldq + c); y = Y8LOAD(q + ldq + c + 8);
                        a10 += x * b0; a11 += x * b1; e10 += y * f0; e11 += y * f1;
                    }
                }
            }
            for (; c < ce; c += 8) {
                y8 b0 = KV_LOAD8_AT(K, p0, c - cb) * sc0, b1 = KV_LOAD8_AT(K, p1, c - cb) * sc1, x;
                x = Y8LOAD(q + c); a00 += x * b0; a01 += x * b1;
                if (R > 1) { x = Y8LOAD(q + ldq + c); a10 += x * b0; a11 += x * b1; }
                if (R > 2) { x = Y8LOAD(q + 2 * ldq + c); a20 += x * b0; a21 += x * b1; }
                if (R > 3) { x = Y8LOAD(q + 3 * ldq + c); a30 += x * b0; a31 += x * b1; }
            }
        }
        float t00 = 0, t01 = 0, t10 = 0, t11 = 0, t20 = 0, t21 = 0, t30 = 0, t31 = 0;
        for (long c = d8; c < d; c++) {   // the last d % 8 columns
            float b0 = kv_value(K, k0, c), b1 = kv_value(K, k1, c);
            t00 += q[c] * b0; t01 += q[c] * b1;
            if (R > 1) { t10 += q[ldq + c] * b0; t11 += q[ldq + c] * b1; }
            if (R > 2) { t20 += q[2 * ldq + c] * b0; t21 += q[2 * ldq + c] * b1; }
            if (R > 3) { t30 += q[3 * ldq + c] * b0; t31 += q[3 * ldq + c] * b1; }
        }
        s[j] = Y8SUM(a00 + e00) + t00; s[j + 1] = Y8SUM(a01 + e01) + t01;
        if (R > 1) { s[lds + j] = Y8SUM(a10 + e10) + t10; s[lds + j + 1] = Y8SUM(a11 + e11) + t11; }
        if (R > 2) { s[2 * lds + j] = Y8SUM(a20) + t20; s[2 * lds + j + 1] = Y8SUM(a21) + t21; }
        if (R > 3) { s[3 * lds + j] = Y8SUM(a30) + t30; s[3 * lds + j + 1] = Y8SUM(a31) + t31; }
    }
    for (; j < j1; j++) {   // the last key of an odd count
        const uint8_t *kj = k + j * ldkb;
        for (int r = 0; r < R; r++) {
            y8 acc = 0;
            for (long cb = 0; cb < d8; cb += KV_BLOCK) {
                const float sc = KV_SCALE(K, kj, cb);
                const uint8_t *pj = KV_BLOCKPTR(K, kj, cb);
                const long ce = cb + KV_BLOCK < d8 ? cb + KV_BLOCK : d8;
                for (long c = cb; c < ce; c += 8) acc += Y8LOAD(q + r * ldq + c) * (KV_LOAD8_AT(K, pj, c - cb) * sc);
            }
            float t = 0;
            for (long c = d8; c < d; c++) t += q[r * ldq + c] * kv_value(K, kj, c);
            s[r * lds + j] = Y8SUM(acc) + t;
        }
    }
}

/// o_r += Σ_j p_r[j] · v_j for R rows (1 ≤ R ≤ 4), four value rows at a time, front to back: each
/// 8-column chunk of the four rows is converted once and added into every row's output chunk (in
/// L1), as decode.c's 8-lane kernel does (see there for why this order streams from memory).
static inline __attribute__((always_inline)) KV_TARGET
void KV_FN(kv_times_values)(const int K, const float *p, long ldp, const int R, const uint8_t *v, long ldvb,
                            long j0, long j1, long dv, float *o, long ldo, int prefetch, long rowBytes) {
    const long dv8 = dv & ~7L;
    long j = j0;
    for (; j + 4 <= j1; j += 4) {
        const uint8_t *v0 = v + j * ldvb, *v1 = v0 + ldvb, *v2 = v1 + ldvb, *v3 = v2 + ldvb;
        if (prefetch) {
            for (int t = 0; t < 4; t++) kv_prefetch(v0, (t + KV_PREFETCH_ROWS) * ldvb, rowBytes);
        }
        y8 x[4][4];
        for (int r = 0; r < R; r++) {
            for (int t = 0; t < 4; t++) x[r][t] = p[r * ldp + j + t];
        }
        for (long cb = 0; cb < dv8; cb += KV_BLOCK) {
            const float s0 = KV_SCALE(K, v0, cb), s1 = KV_SCALE(K, v1, cb), s2 = KV_SCALE(K, v2, cb), s3 = KV_SCALE(K, v3, cb);
            const uint8_t *p0 = KV_BLOCKPTR(K, v0, cb), *p1 = KV_BLOCKPTR(K, v1, cb);
            const uint8_t *p2 = KV_BLOCKPTR(K, v2, cb), *p3 = KV_BLOCKPTR(K, v3, cb);
            const long ce = cb + KV_BLOCK < dv8 ? cb + KV_BLOCK : dv8;
            // q8_0: the block's scale goes into each row's weight once per block, (p·d)·q, not
            // into every converted chunk, p·(d·q): 4R multiplies a block instead of 16 (the loop
            // is bound by the int8 → float conversions and these), one more rounding (2⁻²⁴ of
            // the term, far below the int8 rounding). bf16 and f16 (scale 1) are unchanged. The
            // leftover rows below take the same order; a tile converted to float32 first (more
            // than four stacked rows) multiplies p by the exact d·q instead, a rounding apart.
            y8 xs[4][4];
            for (int r = 0; r < R; r++) {
                if (K == AK_KV_Q8_0) { xs[r][0] = x[r][0] * s0; xs[r][1] = x[r][1] * s1; xs[r][2] = x[r][2] * s2; xs[r][3] = x[r][3] * s3; }
                else for (int t = 0; t < 4; t++) xs[r][t] = x[r][t];
            }
            for (long c = cb; c < ce; c += 8) {
                y8 b0 = KV_LOAD8_AT(K, p0, c - cb), b1 = KV_LOAD8_AT(K, p1, c - cb);
                y8 b2 = KV_LOAD8_AT(K, p2, c - cb), b3 = KV_LOAD8_AT(K, p3, c - cb);
                for (int r = 0; r < R; r++) {
                    y8 a = Y8LOAD(o + r * ldo + c);
                    a += xs[r][0] * b0; a += xs[r][1] * b1; a += xs[r][2] * b2; a += xs[r][3] * b3;
                    Y8STORE(o + r * ldo + c, a);
                }
            }
        }
        for (long c = dv8; c < dv; c++) {   // the last dv % 8 columns
            float b0 = kv_value(K, v0, c), b1 = kv_value(K, v1, c), b2 = kv_value(K, v2, c), b3 = kv_value(K, v3, c);
            for (int r = 0; r < R; r++) {
                const float *pr = p + r * ldp + j;
                o[r * ldo + c] += pr[0] * b0 + pr[1] * b1 + pr[2] * b2 + pr[3] * b3;
            }
        }
    }
    for (; j < j1; j++) {   // the last w % 4 value rows
        const uint8_t *vj = v + j * ldvb;
        for (int r = 0; r < R; r++) {
            y8 x = p[r * ldp + j];
            for (long cb = 0; cb < dv8; cb += KV_BLOCK) {
                const float sc = KV_SCALE(K, vj, cb);
                const uint8_t *pj = KV_BLOCKPTR(K, vj, cb);
                const long ce = cb + KV_BLOCK < dv8 ? cb + KV_BLOCK : dv8;
                // (p·d)·q, as the groups of four (the same bits for scale 1: bf16, f16, f32).
                const y8 xs = x * sc;
                for (long c = cb; c < ce; c += 8) Y8STORE(o + r * ldo + c, Y8LOAD(o + r * ldo + c) + xs * KV_LOAD8_AT(K, pj, c - cb));
            }
            for (long c = dv8; c < dv; c++) o[r * ldo + c] += p[r * ldp + j] * kv_value(K, vj, c);
        }
    }
}

/// Row groups of four (then three, two, one) over key blocks of KV_KB rows: the block is read from
/// memory by the first group and from L1 by the others.
#define KV_ROW_GROUPS(CALL)                                                                          \
    for (long j0 = 0; j0 < w; j0 += KV_KB) {                                                        \
        long j1 = j0 + KV_KB < w ? j0 + KV_KB : w;                                                   \
        for (long r = 0; r < rows; r += 4) {                                                          \
            long n = rows - r < 4 ? rows - r : 4;                                                     \
            switch (kind) {                                                                           \
            case AK_KV_BF16:                                                                          \
                switch (n) { case 4: CALL(AK_KV_BF16, 4); break; case 3: CALL(AK_KV_BF16, 3); break;  \
                             case 2: CALL(AK_KV_BF16, 2); break; default: CALL(AK_KV_BF16, 1); }       \
                break;                                                                                \
            case AK_KV_F16:                                                                           \
                switch (n) { case 4: CALL(AK_KV_F16, 4); break; case 3: CALL(AK_KV_F16, 3); break;    \
                             case 2: CALL(AK_KV_F16, 2); break; default: CALL(AK_KV_F16, 1); }         \
                break;                                                                                \
            default:                                                                                  \
                switch (n) { case 4: CALL(AK_KV_Q8_0, 4); break; case 3: CALL(AK_KV_Q8_0, 3); break;  \
                             case 2: CALL(AK_KV_Q8_0, 2); break; default: CALL(AK_KV_Q8_0, 1); }       \
            }                                                                                         \
        }                                                                                             \
    }

static KV_TARGET void KV_FN(kv_rows_dot_keys)(int kind, const float *q, long ldq, long rows, long d, const uint8_t *k,
                                              long ldkb, long w, float *s, long lds) {
    const long rowBytes = ak_kv_row_bytes(kind, d);
#define KV_DOT(K, R) KV_FN(kv_dot_keys)(K, q + r * ldq, ldq, R, d, k, ldkb, j0, j1, s + r * lds, lds, r == 0, rowBytes)
    KV_ROW_GROUPS(KV_DOT)
#undef KV_DOT
}

static KV_TARGET void KV_FN(kv_rows_times_values)(int kind, const float *p, long ldp, long rows, const uint8_t *v,
                                                  long ldvb, long w, long dv, float *o, long ldo) {
    const long rowBytes = ak_kv_row_bytes(kind, dv);
#define KV_PV(K, R) KV_FN(kv_times_values)(K, p + r * ldp, ldp, R, v, ldvb, j0, j1, dv, o + r * ldo, ldo, r == 0, rowBytes)
    KV_ROW_GROUPS(KV_PV)
#undef KV_PV
}

/// Rows of `kind` to floats (a tile of a many-row product): the same conversions as the products.
static KV_TARGET void KV_FN(kv_decode_rows)(int kind, const uint8_t *src, long ldb, long rows, long d, float *dst, long ldd) {
    const long d8 = d & ~7L;
#define KV_DECODE(K) do {                                                                          \
        for (long r = 0; r < rows; r++) {                                                          \
            const uint8_t *x = src + r * ldb;                                                      \
            float *o = dst + r * ldd;                                                              \
            for (long cb = 0; cb < d8; cb += KV_BLOCK) {                                           \
                const float sc = KV_SCALE(K, x, cb);                                               \
                const uint8_t *p = KV_BLOCKPTR(K, x, cb);                                          \
                const long ce = cb + KV_BLOCK < d8 ? cb + KV_BLOCK : d8;                           \
                for (long c = cb; c < ce; c += 8) Y8STORE(o + c, KV_LOAD8_AT(K, p, c - cb) * sc);   \
            }                                                                                      \
            for (long c = d8; c < d; c++) o[c] = kv_value(K, x, c);                                \
        }                                                                                          \
    } while (0)
    switch (kind) {
    case AK_KV_BF16: KV_DECODE(AK_KV_BF16); break;
    case AK_KV_F16: KV_DECODE(AK_KV_F16); break;
    default: KV_DECODE(AK_KV_Q8_0); break;
    }
#undef KV_DECODE
}

#undef KV_ROW_GROUPS
#undef KV_LOAD8
#undef KV_LOAD8_AT
#undef KV_BLOCKPTR
#undef KV_SCALE
