// The vector path of quantdot.c, included once per instruction set with QD_TARGET (the target
// attribute), QD_NAME (the suffix), QD_DOT4 (8 int32 lanes, each the sum of 4 byte products
// u8 · s8) and QD_DOT4_SCALED (the same times per-lane scales from QD_SCALES, or for q6_K from
// QD_Q6_SCALES). Both instruction sets compute the same integers as the portable path: the
// products never saturate.

/// f16 → f32 with F16C from memory (vector.h's ak_f16x4_at, which says why not `_cvtsh_ss`):
/// HALFV(p) needs p + 8 inside the block (the halves at offsets 0 and 2 of every block here do);
/// HALFV_LAST(p) converts the last 2 bytes of a block through the 8 bytes that end there.
#define HALFV(p) AK_HALF_AT(p)
#define HALFV_LAST(p) _mm_cvtss_f32(_mm_permute_ps(ak_f16x4_at((p) - 6), 3))

QD_TARGET static inline int QD_NAME(hsum)(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/// Software prefetch of the weight row QD_AHEAD rows past row `i`, when this call holds it, with
/// the non-temporal hint (each weight byte is read once a token). The hardware prefetchers follow
/// a stream within a 4 KiB page only, and a decoding step is a few hundred short streams (one
/// per item of each matrix); asking four rows ahead kept the line fill buffers busy: measured on
/// Zen 3 (2 cores), SmolLM2-shaped Q4_1/Q8_0 products at 96 MB a token, 5.3-5.6 ms a token
/// without, 4.5-5.0 with (2 threads), 9.5 → 8.5-9.0 (1 thread); T0 and NTA hints alike there.
/// Prefetches never fault: the bound only keeps a chunk from fetching its neighbour's rows.
#define QD_AHEAD 4
QD_TARGET static inline void QD_NAME(prefetch_row)(const void *w, long rowBytes, long wrows, long i) {
    if (i + QD_AHEAD >= wrows) return;
    const char *p = (const char *)w + (i + QD_AHEAD) * rowBytes;
    for (long o = 0; o < rowBytes; o += 64) _mm_prefetch(p + o, _MM_HINT_NTA);
}

/// Bit e of `bits` as byte e (0 or 0x10), for e < 32: q5's fifth bits.
QD_TARGET static inline __m256i QD_NAME(high_bits)(uint32_t bits) {
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    const __m256i mask = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/// One 32-block against every activation row: adds to set `set` of each row's lane sums.
#define QD_BLOCK32(set)                                                                                      \
    do {                                                                                                     \
        const uint8_t *blk = row + (b + (set)) * bs;                                                         \
        const float dw = HALFV(blk);                                                                         \
        float mw = 0;                                                                                        \
        __m256i wq;                                                                                          \
        if (type == T_Q8_0) {                                                                                \
            wq = _mm256_loadu_si256((const __m256i *)(blk + 2));                                             \
        } else {                                                                                             \
            const uint8_t *q;                                                                                \
            uint32_t qh = 0;                                                                                 \
            if (type == T_Q4_0) q = blk + 2;                                                                 \
            else if (type == T_Q4_1) { mw = HALFV(blk + 2); q = blk + 4; }                                    \
            else if (type == T_Q5_0) { qh = rd32(blk + 2); q = blk + 6; }                                     \
            else { mw = HALFV(blk + 2); qh = rd32(blk + 4); q = blk + 8; }                                    \
            const __m128i q16 = _mm_loadu_si128((const __m128i *)q);                                         \
            wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q16, 4), q16), m4);                        \
            if (type == T_Q5_0 || type == T_Q5_1) wq = _mm256_or_si256(wq, QD_NAME(high_bits)(qh));          \
            wq = _mm256_sub_epi8(wq, offset);                                                                \
        }                                                                                                    \
        /* q4_1 and q5_1 quants are unsigned (0..31): |w|·sign(a, w) is w·a already. */                  \
        const __m256i u = unsignedW ? wq : _mm256_sign_epi8(wq, wq);                                         \
        const __m256 dwv = _mm256_set1_ps(dw);                                                               \
        for (long r = 0; r < nx; r++) {                                                                      \
            const act32 *a = (const act32 *)xa + r * nb + b + (set);                                         \
            const __m256i av = _mm256_loadu_si256((const __m256i *)a->q);                                    \
            const __m256i s = unsignedW ? av : _mm256_sign_epi8(av, wq);                                     \
            const __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(QD_DOT4(u, s)), _mm256_broadcast_ss(&a->d));    \
            lanes[r][set] = _mm256_fmadd_ps(p, dwv, lanes[r][set]);                                          \
            if (hasMin) mins[r][set] = fmaf(mw, a->ds, mins[r][set]);                                        \
        }                                                                                                    \
    } while (0)

QD_TARGET static inline __attribute__((always_inline)) void QD_NAME(qdot32_body)(int type, const void *w, long rowBytes, long wrows,
        long k, const void *xa, long nx, float *y, long ldy, int accumulate) {
    const long nb = k / QK, bs = block_bytes(type);
    const int hasMin = type == T_Q4_1 || type == T_Q5_1, unsignedW = hasMin;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i offset = _mm256_set1_epi8((char)(type == T_Q4_0 ? 8 : type == T_Q5_0 ? 16 : 0));
    for (long i = 0; i < wrows; i++) {
        const uint8_t *row = (const uint8_t *)w + i * rowBytes;
        QD_NAME(prefetch_row)(w, rowBytes, wrows, i);
        __m256 lanes[AK_QDOT_MAX_ROWS][4];
        float mins[AK_QDOT_MAX_ROWS][4], acc[AK_QDOT_MAX_ROWS];
        for (long r = 0; r < nx; r++) {
            for (int t = 0; t < 4; t++) lanes[r][t] = _mm256_setzero_ps(), mins[r][t] = 0;
        }
        long b = 0;
        for (; b + 4 <= nb; b += 4) {
            QD_BLOCK32(0); QD_BLOCK32(1); QD_BLOCK32(2); QD_BLOCK32(3);
        }
        if (b + 0 < nb) QD_BLOCK32(0);
        if (b + 1 < nb) QD_BLOCK32(1);
        if (b + 2 < nb) QD_BLOCK32(2);
        for (long r = 0; r < nx; r++) {
            // fold_lanes in registers, in its order: sets (0 + 1) + (2 + 3), lanes (j, j+4),
            // (j, j+2), (0, 1), then the min sums.
            const __m256 l = _mm256_add_ps(_mm256_add_ps(lanes[r][0], lanes[r][1]), _mm256_add_ps(lanes[r][2], lanes[r][3]));
            const __m128 t = _mm_add_ps(_mm256_castps256_ps128(l), _mm256_extractf128_ps(l, 1));
            const __m128 u2 = _mm_add_ps(t, _mm_movehl_ps(t, t));
            acc[r] = _mm_cvtss_f32(_mm_add_ss(u2, _mm_shuffle_ps(u2, u2, 1))) + ((mins[r][0] + mins[r][1]) + (mins[r][2] + mins[r][3]));
        }
        store_rows(acc, nx, y, ldy, i, accumulate);
    }
}
#undef QD_BLOCK32

/// Sub-block j of a superblock against activation superblock `a` (qdotK_portable's steps): `u` the
/// unsigned quants (|q| for q6_K, whose activations take q's sign from `wq`), `sc` the lanes'
/// scales; even j into e, odd into o. The rows are the outer loop, so e and o stay in registers
/// (the superblock's unpacked quants are reloaded from the stack instead, cheaper than a
/// round trip of each row's sums).
#define QD_SUBK(j)                                                                                            \
    do {                                                                                                      \
        __m256i av = _mm256_loadu_si256((const __m256i *)(a->q + QK * (j)));                                 \
        if (type == T_Q6_K) av = _mm256_sign_epi8(av, wq[j]);                                                \
        const __m256 f = _mm256_cvtepi32_ps(QD_DOT4_SCALED(u[j], av, sc[j]));                                \
        const __m256 dj = _mm256_broadcast_ss(&a->d[j]);                                                     \
        if ((j) % 2) o = (j) < 2 ? _mm256_mul_ps(f, dj) : _mm256_fmadd_ps(f, dj, o);                         \
        else e = (j) < 2 ? _mm256_mul_ps(f, dj) : _mm256_fmadd_ps(f, dj, e);                                 \
    } while (0)

QD_TARGET static inline __attribute__((always_inline)) void QD_NAME(qdotK_body)(int type, const void *w, long rowBytes, long wrows, long k, const void *xa, long nx,
                                     float *y, long ldy, int accumulate) {
    const long nb = k / QK_K, bs = block_bytes(type);
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    const __m256i off32 = _mm256_set1_epi8(32);
    for (long i = 0; i < wrows; i++) {
        const uint8_t *row = (const uint8_t *)w + i * rowBytes;
        QD_NAME(prefetch_row)(w, rowBytes, wrows, i);
        __m256 lanes[AK_QDOT_MAX_ROWS][4], mins[AK_QDOT_MAX_ROWS];
        float acc[AK_QDOT_MAX_ROWS];
        for (long r = 0; r < nx; r++) {
            for (int t = 0; t < 4; t++) lanes[r][t] = _mm256_setzero_ps();
            mins[r] = _mm256_setzero_ps();
        }
        for (long b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * bs;
            __m256i u[8], sc[8], wq[8];
            __m256 dm = _mm256_setzero_ps();
            float d;
            if (type == T_Q6_K) {
                const uint8_t *ql = blk, *qhp = blk + 128;
                d = HALFV_LAST(blk + 208);
                QD_Q6_SCALES(sc, blk + 192);
                for (int h = 0; h < 2; h++) {
                    const __m256i hv = _mm256_loadu_si256((const __m256i *)(qhp + 32 * h));
                    for (int c = 0; c < 4; c++) {
                        const __m256i lv = _mm256_loadu_si256((const __m256i *)(ql + 64 * h + 32 * (c % 2)));
                        const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(lv, 4 * (c / 2)), m4);
                        const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2 * c), m3), 4);
                        const int t = 4 * h + c;
                        wq[t] = _mm256_sub_epi8(_mm256_or_si256(lo, hi), off32);
                        u[t] = _mm256_sign_epi8(wq[t], wq[t]);
                    }
                }
            } else {
                d = HALFV(blk);
                const float dmin = HALFV(blk + 2);
                int scs[8], mn[8];
                for (int j = 0; j < 8; j++) {
                    scale_min_k4(j, blk + 4, &scs[j], &mn[j]);
                    sc[j] = QD_SCALES(scs[j], scs[j]);
                }
                dm = _mm256_mul_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)mn)));
                const uint8_t *qs = blk + (type == T_Q4_K ? 16 : 48);
                for (int p = 0; p < 4; p++) {
                    const __m256i qv = _mm256_loadu_si256((const __m256i *)(qs + 32 * p));
                    u[2 * p] = _mm256_and_si256(qv, m4);
                    u[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
                }
                if (type == T_Q5_K) {
                    const __m256i hv = _mm256_loadu_si256((const __m256i *)(blk + 16));
                    for (int j = 0; j < 8; j++) {
                        u[j] = _mm256_or_si256(u[j], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, j), one), 4));
                    }
                }
            }
            const __m256 dv = _mm256_set1_ps(d);
            for (long r = 0; r < nx; r++) {
                const act256 *a = (const act256 *)xa + r * nb + b;
                __m256 e, o;
                QD_SUBK(0); QD_SUBK(1); QD_SUBK(2); QD_SUBK(3); QD_SUBK(4); QD_SUBK(5); QD_SUBK(6); QD_SUBK(7);
                lanes[r][b % 4] = _mm256_fmadd_ps(dv, _mm256_add_ps(e, o), lanes[r][b % 4]);
                if (type != T_Q6_K) mins[r] = _mm256_fmadd_ps(dm, _mm256_loadu_ps(a->ds), mins[r]);
            }
        }
        for (long r = 0; r < nx; r++) {
            // fold_lanes in registers, in its order (as qdot32_body), minus the min lanes folded alike.
            const __m256 l = _mm256_add_ps(_mm256_add_ps(lanes[r][0], lanes[r][1]), _mm256_add_ps(lanes[r][2], lanes[r][3]));
            const __m128 t = _mm_add_ps(_mm256_castps256_ps128(l), _mm256_extractf128_ps(l, 1));
            const __m128 u2 = _mm_add_ps(t, _mm_movehl_ps(t, t));
            const __m128 mt = _mm_add_ps(_mm256_castps256_ps128(mins[r]), _mm256_extractf128_ps(mins[r], 1));
            const __m128 mu = _mm_add_ps(mt, _mm_movehl_ps(mt, mt));
            acc[r] = _mm_cvtss_f32(_mm_add_ss(u2, _mm_shuffle_ps(u2, u2, 1))) + -_mm_cvtss_f32(_mm_add_ss(mu, _mm_shuffle_ps(mu, mu, 1)));
        }
        store_rows(acc, nx, y, ldy, i, accumulate);
    }
}
#undef QD_SUBK

/// One activation row (decoding) compiled on its own, so its sums stay in registers.
QD_TARGET static void QD_NAME(qdot32)(int type, const void *w, long rowBytes, long wrows, long k, const void *xa, long nx,
                                      float *y, long ldy, int accumulate) {
#define QD_CASE(T)                                                                                       \
    case T:                                                                                              \
        if (nx == 1) QD_NAME(qdot32_body)(T, w, rowBytes, wrows, k, xa, 1, y, ldy, accumulate);          \
        else QD_NAME(qdot32_body)(T, w, rowBytes, wrows, k, xa, nx, y, ldy, accumulate);                 \
        break;
    switch (type) { QD_CASE(T_Q4_0) QD_CASE(T_Q4_1) QD_CASE(T_Q5_0) QD_CASE(T_Q5_1) QD_CASE(T_Q8_0) default: break; }
#undef QD_CASE
}

QD_TARGET static void QD_NAME(qdotK)(int type, const void *w, long rowBytes, long wrows, long k, const void *xa, long nx,
                                     float *y, long ldy, int accumulate) {
#define QD_CASE(T)                                                                                       \
    case T:                                                                                              \
        if (nx == 1) QD_NAME(qdotK_body)(T, w, rowBytes, wrows, k, xa, 1, y, ldy, accumulate);           \
        else QD_NAME(qdotK_body)(T, w, rowBytes, wrows, k, xa, nx, y, ldy, accumulate);                  \
        break;
    switch (type) { QD_CASE(T_Q4_K) QD_CASE(T_Q5_K) QD_CASE(T_Q6_K) default: break; }
#undef QD_CASE
}
