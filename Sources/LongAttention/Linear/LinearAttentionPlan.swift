import AttentionTensor

/// How linear attention is cut into work.
public struct LinearAttentionPlan: Sendable, Equatable {
    public let shape: AttentionShape
    public let featureMap: LinearFeatureMap
    public let causal: Bool
    /// Query positions per chunk of the causal form (intra-chunk masked GEMM, carried state
    /// across chunks). Default 64: measured fastest of 32…256 at d = 64 (the intra-chunk work
    /// grows with the chunk, the per-chunk GEMM overhead shrinks).
    public let chunkSize: Int
    /// Rows per chunk when accumulating the non-causal state and applying it (default 2048:
    /// measured 20–40% faster than 512 at N = 64K, d = 64; 8192 was slower again).
    public let stateChunk: Int
    public let threads: Int
    /// Query-head parts per (batch, KV head): more than one only when `B·Hkv` is too small to
    /// occupy the cores (each part then carries its own copy of the state). A function of the
    /// shape alone, so results do not depend on the thread count.
    public let parts: Int

    /// Feature dimension: `d`, or `m` for FAVOR+.
    public var featureDimension: Int {
        if case .favor(let m, _) = featureMap { return m }
        return shape.d
    }

    var rowsPerChunk: Int { causal ? chunkSize : stateChunk }
    var headsPerPart: Int { (shape.group + parts - 1) / parts }

    /// Floating-point operations in the call's GEMMs and GEMVs (features, state, intra-chunk),
    /// as the benchmark counts them.
    public var gemmFlops: Double {
        let (B, H, Hkv, N, M, d, dv) = (Double(shape.B), Double(shape.H), Double(shape.Hkv), Double(shape.N),
                                        Double(shape.M), Double(shape.d), Double(shape.dv))
        let F = Double(featureDimension), parts = Double(self.parts)
        var flops = B * Hkv * parts * M * 2 * F * dv           // state: φ(K)ᵀV
        flops += B * H * N * 2 * F * (dv + 1)                  // φ(Q)·S and φ(Q)·z
        if causal { flops += B * H * N * 2 * Double(chunkSize) * (F + dv) }   // intra-chunk A and A·V
        if case .favor = featureMap { flops += 2 * d * F * (B * H * N + B * Hkv * parts * M) }
        return flops
    }

    /// Floats of scratch one worker allocates: features of a key chunk and of the stacked query
    /// chunk, the intra-chunk scores (causal), numerator and normaliser, the state `S`, `z`, a
    /// per-feature column max, and two per-row scratch vectors.
    var workspaceFloats: Int {
        let c = rowsPerChunk, f = featureDimension, gq = headsPerPart * c
        return c * f + gq * f + (causal ? gq * c : 0) + gq * shape.dv + gq + f * shape.dv + 2 * f + 2 * max(c, gq)
    }

    /// Bytes of scratch one worker allocates (independent of N and M).
    public var workspaceBytesPerThread: Int { (workspaceFloats + headsPerPart * rowsPerChunk) * 4 }
    /// Bytes of scratch for the call (plus the FAVOR+ projection `m·d` floats).
    public var workspaceBytes: Int {
        let items = shape.B * shape.Hkv * parts
        var extra = 0
        if case .favor(let m, _) = featureMap { extra = m * shape.d * 4 }
        return workspaceBytesPerThread * min(threads, max(1, items)) + extra
    }

    public init(shape: AttentionShape, featureMap: LinearFeatureMap = .elu, causal: Bool = false,
                chunkSize: Int = 64, stateChunk: Int = 2048, threads: Int = Parallel.defaultThreads) {
        self.shape = shape
        self.featureMap = featureMap
        self.causal = causal
        self.chunkSize = max(1, chunkSize)
        self.stateChunk = max(1, stateChunk)
        self.threads = max(1, threads)
        let sequences = shape.B * shape.Hkv
        self.parts = sequences >= 4 ? 1 : max(1, min(shape.group, (4 + sequences - 1) / sequences))
    }

    /// The plan the entry points build from their options, after checking them.
    static func checked(shape: AttentionShape, featureMap: LinearFeatureMap, causal: Bool, chunkSize: Int,
                        threads: Int?) throws -> LinearAttentionPlan {
        if let threads, threads < 1 { throw AttentionError.invalidArgument(name: "threads", value: "\(threads)", expected: "at least 1") }
        guard chunkSize >= 1 else { throw AttentionError.invalidArgument(name: "chunkSize", value: "\(chunkSize)", expected: "at least 1") }
        return LinearAttentionPlan(shape: shape, featureMap: featureMap, causal: causal, chunkSize: chunkSize,
                                   threads: threads ?? Parallel.defaultThreads)
    }
}
