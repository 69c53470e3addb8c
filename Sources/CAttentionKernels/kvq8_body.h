// The integer q·k kernel over q8_0 keys, included by kvq8.c once per path with:
//   KQ_FN(name)      the function's name for this path
//   KQ_TARGET        its target attribute (empty for the portable path)
//   KQ_KEYTYPE       what KQ_KEYVEC gives (a pointer on the portable path, a vector otherwise)
//   KQ_KEYVEC(p)     the 32 quants of a key block at p, prepared for KQ_DOT
//   KQ_HALF(p)       the f16 block scale at p as a float (exact)
//   KQ_DOT(kv, qb)   eight int32 lanes: lane j = Σ_{e = 4j}^{4j+3} k[e] · q[e] for query block qb
// R (rows, 1–4) is a constant at every call of the inline body, so each R compiles to its own loop.

/// s[r·lds + j] = q_r · k_j for R query rows (quantised blocks `qa`, nb per row) and keys
/// j0 ..< j1, two keys at a time; each key block is loaded once for all R rows.
static inline __attribute__((always_inline)) KQ_TARGET
void KQ_FN(kq_dot_keys)(const kq_block *qa, const int R, long nb, const uint8_t *k, long ldkb, long j0, long j1,
                        float *s, long lds, int prefetch, long rowBytes) {
    long j = j0;
    for (; j + 2 <= j1; j += 2) {
        const uint8_t *k0 = k + j * ldkb, *k1 = k0 + ldkb;
        if (prefetch) {
            for (long b = 0; b < rowBytes; b += 64) {
                __builtin_prefetch((const void *)((uintptr_t)k0 + (uintptr_t)(KQ_PREFETCH_ROWS * ldkb + b)), 0, 3);
                __builtin_prefetch((const void *)((uintptr_t)k1 + (uintptr_t)(KQ_PREFETCH_ROWS * ldkb + b)), 0, 3);
            }
        }
        kq_f8 a00 = 0, a01 = 0, a10 = 0, a11 = 0, a20 = 0, a21 = 0, a30 = 0, a31 = 0;
        for (long b = 0; b < nb; b++) {
            const uint8_t *b0 = k0 + b * KQ_KEY_BLOCK_BYTES, *b1 = k1 + b * KQ_KEY_BLOCK_BYTES;
            const float d0 = KQ_HALF(b0), d1 = KQ_HALF(b1);
            KQ_KEYTYPE v0 = KQ_KEYVEC(b0 + 2);
            KQ_KEYTYPE v1 = KQ_KEYVEC(b1 + 2);
#define KQ_ROW(r, x0, x1) do {                                                                      \
                const kq_block *qb = qa + (r) * nb + b;                                             \
                const kq_i8 i0 = KQ_DOT(v0, qb), i1 = KQ_DOT(v1, qb);                               \
                x0 += (kq_f8)(d0 * qb->d) * __builtin_convertvector(i0, kq_f8);                     \
                x1 += (kq_f8)(d1 * qb->d) * __builtin_convertvector(i1, kq_f8);                     \
            } while (0)
            KQ_ROW(0, a00, a01);
            if (R > 1) KQ_ROW(1, a10, a11);
            if (R > 2) KQ_ROW(2, a20, a21);
            if (R > 3) KQ_ROW(3, a30, a31);
#undef KQ_ROW
        }
        s[j] = KQ_FOLD(a00); s[j + 1] = KQ_FOLD(a01);
        if (R > 1) { s[lds + j] = KQ_FOLD(a10); s[lds + j + 1] = KQ_FOLD(a11); }
        if (R > 2) { s[2 * lds + j] = KQ_FOLD(a20); s[2 * lds + j + 1] = KQ_FOLD(a21); }
        if (R > 3) { s[3 * lds + j] = KQ_FOLD(a30); s[3 * lds + j + 1] = KQ_FOLD(a31); }
    }
    for (; j < j1; j++) {   // the last key of an odd count
        const uint8_t *kj = k + j * ldkb;
        for (int r = 0; r < R; r++) {
            kq_f8 acc = 0;
            for (long b = 0; b < nb; b++) {
                const uint8_t *bj = kj + b * KQ_KEY_BLOCK_BYTES;
                const kq_block *qb = qa + r * nb + b;
                KQ_KEYTYPE v = KQ_KEYVEC(bj + 2);
                const kq_i8 i = KQ_DOT(v, qb);
                acc += (kq_f8)(KQ_HALF(bj) * qb->d) * __builtin_convertvector(i, kq_f8);
            }
            s[r * lds + j] = KQ_FOLD(acc);
        }
    }
}

/// Rows in groups of four over key blocks of 32: the block is read from memory by the first
/// group and from L1 by the others.
static KQ_TARGET void KQ_FN(kq_rows_dot_keys)(const void *qa, long rows, long d, const uint8_t *k, long ldkb, long w,
                                              float *s, long lds) {
    const long nb = (d + KQ_BLOCK - 1) / KQ_BLOCK, rowBytes = nb * KQ_KEY_BLOCK_BYTES;
    const kq_block *q = (const kq_block *)qa;
    for (long j0 = 0; j0 < w; j0 += 32) {
        const long j1 = j0 + 32 < w ? j0 + 32 : w;
        for (long r = 0; r < rows; r += 4) {
            const long n = rows - r < 4 ? rows - r : 4;
            const kq_block *qr = q + r * nb;
            float *sr = s + r * lds;
            switch (n) {
            case 4: KQ_FN(kq_dot_keys)(qr, 4, nb, k, ldkb, j0, j1, sr, lds, r == 0, rowBytes); break;
            case 3: KQ_FN(kq_dot_keys)(qr, 3, nb, k, ldkb, j0, j1, sr, lds, r == 0, rowBytes); break;
            case 2: KQ_FN(kq_dot_keys)(qr, 2, nb, k, ldkb, j0, j1, sr, lds, r == 0, rowBytes); break;
            default: KQ_FN(kq_dot_keys)(qr, 1, nb, k, ldkb, j0, j1, sr, lds, r == 0, rowBytes); break;
            }
        }
    }
}
