// Merging partial softmax results. Contracts: include/AttentionKernels.h; vector macros: vector.h.
//
// Attention over a key set split into parts (split-KV decode, ring attention's blocks, the
// backward pass's log-sum-exp) leaves per part and row a running max m_s, a sum l_s = Σ e^(s - m_s)
// and an unnormalised output o_s = Σ e^(s - m_s) v. The parts combine associatively:
//     m = max_s m_s,   l = Σ_s l_s e^(m_s - m),   o = Σ_s o_s e^(m_s - m),
// and a part that saw no key (m_s = -inf) contributes nothing.

#include "vector.h"

AK_CLONES void ak_merge_partials(long parts, const float *o, long ldo, long o_part_stride, const float *m,
                                 const float *l, long ml_part_stride, long rows, long dv, float *o_out,
                                 long ldo_out, float *m_out, float *l_out) {
    for (long r = 0; r < rows; r++) {
        float mx = -INFINITY;
        for (long s = 0; s < parts; s++) {
            float ms = m[s * ml_part_stride + r];
            mx = ms > mx ? ms : mx;
        }
        float *orow = o_out + r * ldo_out;
        memset(orow, 0, (size_t)dv * sizeof(float));
        float lsum = 0.0f;
        if (mx > -INFINITY) {
            for (long s = 0; s < parts; s++) {
                float ms = m[s * ml_part_stride + r];
                if (ms == -INFINITY) continue;
                float f = expf(ms - mx);
                lsum += l[s * ml_part_stride + r] * f;
                const float *src = o + s * o_part_stride + r * ldo;
                vf vfac = f;
                long t = 0;
                for (; t + W <= dv; t += W) STORE(orow + t, LOAD(orow + t) + LOAD(src + t) * vfac);
                for (; t < dv; t++) orow[t] += src[t] * f;
            }
        }
        m_out[r] = mx;
        l_out[r] = lsum;
    }
}
