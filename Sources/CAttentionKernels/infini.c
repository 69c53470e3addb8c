// Infini-Attention: the gated blend of memory read and local attention, the delta rule. Contracts: include/AttentionKernels.h; vector macros: vector.h.

#include "vector.h"

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
