import AttentionTensor
import CAttentionKernels
import MixtureOfExperts

/// Mixture-of-experts rows (variant `moe`): T tokens of width D = 512 through E experts, top-2.
/// `routed` (E = 8, F = 1408, Mixtral's shape scaled down; and E = 32 at the same F: time should
/// follow the routed FLOPs, not E), `routed-hetero` (sizes 352 … 2816, mean 1408) and `dense`, a
/// SwiGLU MLP of F = k · 1408 = 2816 doing the same FLOPs as the routed layer with even routing.
/// GFLOP/s count the FLOPs actually spent (``MoEForward/flops``: the expert GEMMs of the slots
/// computed, and the router). Row keys: H = E, Hkv = k, N = M = T, d = D.
func benchMoE(threads: Int, peak: Double?, quick: Bool, backward: Bool) throws -> [Row] {
    let T = quick ? 1024 : 4096, D = 512, k = 2, F = 1408
    var rows = [Row]()
    let x = try Tensor.randomNormal([T, D], seed: 1)
    let dout = try Tensor.randomNormal([T, D], seed: 2)
    let heterogeneous = [352, 528, 704, 1056, 1408, 2112, 2288, 2816]
    var shapes: [(impl: String, sizes: [Int])] = [("routed", Array(repeating: F, count: 8)), ("routed-hetero", heterogeneous)]
    if !quick { shapes.append(("routed", Array(repeating: F, count: 32))) }

    for (impl, sizes) in shapes {
        let E = sizes.count
        progress("moe \(impl) T=\(T) E=\(E) top-\(k)")
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: sizes, seed: 3)
        let config = try layer.config(topK: k, renormalize: true)
        var output = try Tensor(zeros: [T, D])
        var routing: MoEForward?
        let t = try layer.withWeights { w in
            try x.withUnsafePointer { px in
                try output.withUnsafeMutableBufferPointer { po in
                    try measure(budget: quick ? 0.3 : 1.5) {
                        routing = try moeForward(config, weights: w, x: px, tokens: T, output: po.baseAddress!, keepForBackward: false,
                                                 threads: threads)
                    }
                }
            }
        }
        let r = routing!
        let g = Double(r.flops) / t.median * 1e-9
        let counts = r.expertTokenCounts
        rows.append(Row(variant: "moe", impl: impl, B: 1, H: E, Hkv: k, N: T, M: T, d: D, threads: threads, seconds: t.median, gflops: g,
                        peakFraction: peak.map { g / $0 }, workspaceBytes: r.workspaceBytes, relError: nil, runs: t.runs, minSeconds: t.min,
                        note: "E=\(E) sizes \(sizes.count > 8 ? "\(sizes.count)×\(sizes[0])" : "\(sizes)"), slots per expert \(counts.min()!)…\(counts.max()!), "
                            + String(format: "%.1f GFLOP routed, %.0f tokens/s", Double(r.flops) * 1e-9, Double(T) / t.median)))
        if backward {
            rows.append(try benchMoEBackward(layer: layer, config: config, impl: impl, x: x, dout: dout, threads: threads, peak: peak, quick: quick))
        }
    }

    // The dense SwiGLU MLP at F = k · 1408: two ways, the faster is the row (whole-matrix GEMMs on
    // OpenBLAS's threads, or blocks of 256 rows on the package's workers with one-thread GEMMs).
    let Fd = k * F
    progress("moe dense T=\(T) F=\(Fd)")
    let dense = try MixtureOfExperts.random(hidden: D, expertSizes: [Fd], seed: 4)
    let flops = 6.0 * Double(T) * Double(D) * Double(Fd)
    var g = try Tensor(zeros: [T, Fd]), u = try Tensor(zeros: [T, Fd]), h = try Tensor(zeros: [T, Fd])
    var y = try Tensor(zeros: [T, D])
    var times: [(String, (median: Double, min: Double, runs: Int))] = []
    for mode in ["openblas-threads", "row-blocks"] {
        let t = try dense.withWeights { w in
            try x.withUnsafePointer { px in
                try g.withUnsafeMutableBufferPointer { pg in
                    try u.withUnsafeMutableBufferPointer { pu in
                        try h.withUnsafeMutableBufferPointer { ph in
                            try y.withUnsafeMutableBufferPointer { py in
                                measure(budget: quick ? 0.3 : 1.5) {
                                    denseSwiGLU(x: px, w1: w.w1[0], w2: w.w2[0], w3: w.w3[0], T: T, D: D, F: Fd, g: pg.baseAddress!,
                                                u: pu.baseAddress!, h: ph.baseAddress!, y: py.baseAddress!, threads: threads,
                                                rowBlocks: mode == "row-blocks")
                                }
                            }
                        }
                    }
                }
            }
        }
        times.append((mode, t))
    }
    let best = times.min { $0.1.median < $1.1.median }!
    let gd = flops / best.1.median * 1e-9
    rows.append(Row(variant: "moe", impl: "dense", B: 1, H: 1, Hkv: 1, N: T, M: T, d: D, threads: threads, seconds: best.1.median, gflops: gd,
                    peakFraction: peak.map { gd / $0 }, workspaceBytes: 3 * T * Fd * 4, relError: nil, runs: best.1.runs, minSeconds: best.1.min,
                    note: "SwiGLU F=\(Fd), " + times.map { String(format: "%@ %.1f ms", $0.0, $0.1.median * 1e3) }.joined(separator: ", ")))
    if backward {
        progress("moe dense backward T=\(T) F=\(Fd)")
        var dx = try Tensor(zeros: [T, D]), dw = try Tensor(zeros: [dense.layout.count])
        var dg = try Tensor(zeros: [T, Fd]), du = try Tensor(zeros: [T, Fd]), dh = try Tensor(zeros: [T, Fd])
        let t = try dense.withWeights { w in
            try x.withUnsafePointer { px in
                try dout.withUnsafePointer { pd in
                    try g.withUnsafeMutableBufferPointer { pg in
                        try u.withUnsafeMutableBufferPointer { pu in
                            try h.withUnsafeMutableBufferPointer { ph in
                                try dg.withUnsafeMutableBufferPointer { pdg in
                                    try du.withUnsafeMutableBufferPointer { pdu in
                                        try dh.withUnsafeMutableBufferPointer { pdh in
                                            try dx.withUnsafeMutableBufferPointer { pdx in
                                                try dw.withUnsafeMutableBufferPointer { pdw in
                                                    let grads = dense.layout.gradients(pdw.baseAddress!)
                                                    return measure(budget: quick ? 0.3 : 1.5) {
                                                        denseSwiGLUBackward(
                                                            x: px, dy: pd, w1: w.w1[0], w2: w.w2[0], w3: w.w3[0], T: T, D: D, F: Fd,
                                                            g: pg.baseAddress!, u: pu.baseAddress!, h: ph.baseAddress!, dh: pdh.baseAddress!,
                                                            dg: pdg.baseAddress!, du: pdu.baseAddress!, dx: pdx.baseAddress!,
                                                            dw1: grads.w1[0], dw2: grads.w2[0], dw3: grads.w3[0], threads: threads)
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let gb = 2 * flops / t.median * 1e-9
        var row = Row(variant: "moe", impl: "dense", B: 1, H: 1, Hkv: 1, N: T, M: T, d: D, threads: threads, seconds: t.median, gflops: gb,
                      peakFraction: peak.map { gb / $0 }, workspaceBytes: 6 * T * Fd * 4, relError: nil, runs: t.runs, minSeconds: t.min,
                      note: "SwiGLU F=\(Fd), whole-matrix GEMMs on OpenBLAS's threads (forward's G, U kept)")
        row.pass = "backward"
        row.backwardForwardRatio = t.median / times[0].1.median
        rows.append(row)
    }
    return rows
}

/// The backward row of a routed layer: the forward that keeps its activations, then the backward.
func benchMoEBackward(layer: MixtureOfExperts, config: MoEConfig, impl: String, x: Tensor, dout: Tensor, threads: Int, peak: Double?,
                      quick: Bool) throws -> Row {
    let T = x.shape[0], D = layer.hidden
    progress("moe \(impl) backward T=\(T) E=\(layer.experts)")
    var output = try Tensor(zeros: [T, D])
    var dx = try Tensor(zeros: [T, D]), dw = try Tensor(zeros: [layer.layout.count])
    var routing: MoEForward?
    var report: MoEBackwardReport?
    let (forward, backward) = try layer.withWeights { w in
        try x.withUnsafePointer { px in
            try dout.withUnsafePointer { pd in
                try output.withUnsafeMutableBufferPointer { po in
                    try dx.withUnsafeMutableBufferPointer { pdx in
                        try dw.withUnsafeMutableBufferPointer { pdw in
                            let grads = layer.layout.gradients(pdw.baseAddress!)
                            let f = try measure(budget: quick ? 0.3 : 1.0) {
                                routing = try moeForward(config, weights: w, x: px, tokens: T, output: po.baseAddress!, keepForBackward: true,
                                                         threads: threads)
                            }
                            let b = try measure(budget: quick ? 0.3 : 1.5) {
                                report = try moeBackward(config, weights: w, x: px, tokens: T, forward: routing!, outputGradient: pd,
                                                         inputGradient: pdx.baseAddress!, gradients: grads, loadBalancingWeight: 0.01,
                                                         zLossWeight: 0.001, threads: threads)
                            }
                            return (f, b)
                        }
                    }
                }
            }
        }
    }
    let g = Double(report!.flops) / backward.median * 1e-9
    var row = Row(variant: "moe", impl: impl, B: 1, H: layer.experts, Hkv: config.topK, N: T, M: T, d: D, threads: threads,
                  seconds: backward.median, gflops: g, peakFraction: peak.map { g / $0 },
                  workspaceBytes: report!.workspaceBytes + routing!.workspaceBytes, relError: nil, runs: backward.runs,
                  minSeconds: backward.min, note: String(format: "%.1f GFLOP; forward keeping activations %.1f ms", Double(report!.flops) * 1e-9,
                                                         forward.median * 1e3))
    row.pass = "backward"
    row.backwardForwardRatio = backward.median / forward.median
    return row
}

/// A dense SwiGLU MLP `y = w2 · (silu(w1 · x) ⊙ (w3 · x))` over T rows: whole-matrix GEMMs on
/// OpenBLAS's threads (`rowBlocks` false) or blocks of 256 rows on the package's workers.
func denseSwiGLU(x: UnsafePointer<Float>, w1: UnsafePointer<Float>, w2: UnsafePointer<Float>, w3: UnsafePointer<Float>,
                 T: Int, D: Int, F: Int, g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>,
                 h: UnsafeMutablePointer<Float>, y: UnsafeMutablePointer<Float>, threads: Int, rowBlocks: Bool) {
    if rowBlocks {
        Parallel.run(items: (T + 255) / 256, threads: threads) { _, queue in
            while let i = queue.next() {
                let r0 = i * 256, n = min(256, T - r0)
                BLAS.sgemm(.none, .transpose, m: n, n: F, k: D, a: x + r0 * D, lda: D, b: w1, ldb: D, c: g + r0 * F, ldc: F)
                BLAS.sgemm(.none, .transpose, m: n, n: F, k: D, a: x + r0 * D, lda: D, b: w3, ldb: D, c: u + r0 * F, ldc: F)
                ak_swiglu(g + r0 * F, u + r0 * F, h + r0 * F, n * F)
                BLAS.sgemm(.none, .transpose, m: n, n: D, k: F, a: h + r0 * F, lda: F, b: w2, ldb: F, c: y + r0 * D, ldc: D)
            }
        }
        return
    }
    let saved = BLAS.threads
    BLAS.threads = threads
    defer { BLAS.threads = saved }
    BLAS.sgemm(.none, .transpose, m: T, n: F, k: D, a: x, lda: D, b: w1, ldb: D, c: g, ldc: F)
    BLAS.sgemm(.none, .transpose, m: T, n: F, k: D, a: x, lda: D, b: w3, ldb: D, c: u, ldc: F)
    swigluRows(g, u, h, T: T, F: F, threads: threads)
    BLAS.sgemm(.none, .transpose, m: T, n: D, k: F, a: h, lda: F, b: w2, ldb: F, c: y, ldc: D)
}

/// SwiGLU over T rows of F on the package's workers.
func swigluRows(_ g: UnsafeMutablePointer<Float>, _ u: UnsafeMutablePointer<Float>, _ h: UnsafeMutablePointer<Float>, T: Int, F: Int,
                threads: Int) {
    Parallel.run(items: (T + 255) / 256, threads: threads) { _, queue in
        while let i = queue.next() {
            let r0 = i * 256, n = min(256, T - r0)
            ak_swiglu(g + r0 * F, u + r0 * F, h + r0 * F, n * F)
        }
    }
}

/// The dense MLP's backward from the forward's kept G and U: H again, dH = dY · w2, SwiGLU's
/// backward, dx = dG · w1 + dU · w3, dw1 += dGᵀ x, dw3 += dUᵀ x, dw2 += dYᵀ H (OpenBLAS's threads).
func denseSwiGLUBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, w1: UnsafePointer<Float>, w2: UnsafePointer<Float>,
                         w3: UnsafePointer<Float>, T: Int, D: Int, F: Int, g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>,
                         h: UnsafeMutablePointer<Float>, dh: UnsafeMutablePointer<Float>, dg: UnsafeMutablePointer<Float>,
                         du: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>, dw1: UnsafeMutablePointer<Float>,
                         dw2: UnsafeMutablePointer<Float>, dw3: UnsafeMutablePointer<Float>, threads: Int) {
    swigluRows(g, u, h, T: T, F: F, threads: threads)
    let saved = BLAS.threads
    BLAS.threads = threads
    defer { BLAS.threads = saved }
    BLAS.sgemm(.none, .none, m: T, n: F, k: D, a: dy, lda: D, b: w2, ldb: F, c: dh, ldc: F)
    BLAS.threads = saved
    Parallel.run(items: (T + 255) / 256, threads: threads) { _, queue in
        while let i = queue.next() {
            let r0 = i * 256, n = min(256, T - r0)
            ak_swiglu_backward(g + r0 * F, u + r0 * F, dh + r0 * F, dg + r0 * F, du + r0 * F, n * F)
        }
    }
    BLAS.threads = threads
    BLAS.sgemm(.none, .none, m: T, n: D, k: F, a: dg, lda: F, b: w1, ldb: D, c: dx, ldc: D)
    BLAS.sgemm(.none, .none, m: T, n: D, k: F, a: du, lda: F, b: w3, ldb: D, beta: 1, c: dx, ldc: D)
    BLAS.sgemm(.transpose, .none, m: F, n: D, k: T, a: dg, lda: F, b: x, ldb: D, beta: 1, c: dw1, ldc: D)
    BLAS.sgemm(.transpose, .none, m: F, n: D, k: T, a: du, lda: F, b: x, ldb: D, beta: 1, c: dw3, ldc: D)
    BLAS.sgemm(.transpose, .none, m: D, n: F, k: T, a: dy, lda: D, b: h, ldb: F, beta: 1, c: dw2, ldc: F)
}

