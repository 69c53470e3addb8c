// Positions: RoPE rotation and ALiBi penalties. Contracts: include/AttentionKernels.h; vector macros: vector.h.

#include "vector.h"

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
