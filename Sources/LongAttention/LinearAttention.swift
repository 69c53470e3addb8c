import AttentionTensor

/// The feature map φ of linear attention.
public enum LinearFeatureMap: Sendable, Equatable {
    /// φ(x) = elu(x) + 1 (Katharopoulos et al. 2020).
    case elu
    /// φ(x) = max(x, 0).
    case relu
    /// Efficient Attention (Shen et al. 2021): softmax over each query's `d` features and over the
    /// `M` positions for each key feature; `O = ρq(Q) (ρk(K)ᵀ V)`, no normaliser. Non-causal only.
    case softmax
    /// Performer FAVOR+ with `features` positive orthogonal random features drawn from `seed`,
    /// approximating exact softmax attention with scale `1/sqrt(d)`.
    case favor(features: Int, seed: UInt64)

    /// The name used by the command line and the benchmark.
    public var name: String {
        switch self {
        case .elu: "elu"
        case .relu: "relu"
        case .softmax: "softmax"
        case .favor: "favor"
        }
    }
}

/// How linear attention is cut into work.
public struct LinearAttentionPlan: Sendable, Equatable {
    public let shape: AttentionShape
    public let featureMap: LinearFeatureMap
    public let causal: Bool
    /// Query positions per chunk of the causal form (intra-chunk masked GEMM, carried state
    /// across chunks). Default 64: measured fastest of 32…256 at d = 64 (the intra-chunk work
    /// grows with the chunk, the per-chunk GEMM overhead shrinks).
    public let chunkSize: Int
    /// Rows per chunk when accumulating the non-causal state and applying it (2048: measured
    /// 20–40% faster than 512 at N = 64K, d = 64; 8192 was slower again).
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
                chunkSize: Int = 64, threads: Int = Parallel.defaultThreads) {
        self.shape = shape
        self.featureMap = featureMap
        self.causal = causal
        self.chunkSize = max(1, chunkSize)
        self.stateChunk = 2048
        self.threads = max(1, threads)
        let sequences = shape.B * shape.Hkv
        self.parts = sequences >= 4 ? 1 : max(1, min(shape.group, (4 + sequences - 1) / sequences))
    }
}

/// Linear attention: `O_i = φ(q_i)ᵀ S / (φ(q_i)·z + ε)` with `S = Σ_j φ(k_j) v_jᵀ`,
/// `z = Σ_j φ(k_j)`, in O(N) time and memory — no N×M matrix exists.
///
/// Shapes: `queries [B, H, N, d]`, `keys [B, Hkv, M, d]`, `values [B, Hkv, M, dv]` →
/// `[B, H, N, dv]`; `H % Hkv == 0`, and the query heads of a group share their KV head's state
/// `S [F, dv]`, `z [F]` (`F = d`, or `m` for FAVOR+), applied to them in one stacked GEMM.
///
/// - Parameters:
///   - featureMap: `.elu` (default), `.relu`, `.softmax` (Efficient Attention) or `.favor`.
///   - causal: sums over keys `j <= i + M - N` only (bottom-right). Computed in chunks: a masked
///     GEMM inside each chunk and the carried state across chunks; equal to the token-by-token
///     recurrence. `.softmax` cannot be causal.
///   - epsilon: added to the normaliser (elu, relu); SPEC.md's 1e-6 by default. FAVOR+ divides
///     by its normaliser as is (a row with no keys gives zeros).
/// - Throws: ``AttentionError`` on shapes that disagree or a causal `.softmax`.
public func linearAttention(
    queries: Tensor, keys: Tensor, values: Tensor, featureMap: LinearFeatureMap = .elu,
    causal: Bool = false, epsilon: Float = 1e-6, chunkSize: Int = 64, threads: Int? = nil
) throws -> Tensor {
    let shape = try attentionShape(queries: queries, keys: keys, values: values)
    if let threads, threads < 1 { throw AttentionError.invalidArgument("threads must be at least 1, got \(threads)") }
    guard chunkSize >= 1 else { throw AttentionError.invalidArgument("chunk size must be at least 1, got \(chunkSize)") }
    let plan = LinearAttentionPlan(shape: shape, featureMap: featureMap, causal: causal, chunkSize: chunkSize,
                                   threads: threads ?? Parallel.defaultThreads)
    return try linearAttention(queries: queries, keys: keys, values: values, epsilon: epsilon, plan: plan)
}

/// Linear attention with an explicit ``LinearAttentionPlan``.
public func linearAttention(queries: Tensor, keys: Tensor, values: Tensor, epsilon: Float = 1e-6,
                            plan: LinearAttentionPlan) throws -> Tensor {
    let shape = try attentionShape(queries: queries, keys: keys, values: values)
    var out = try Tensor(uninitialized: [shape.B, shape.H, shape.N, shape.dv])
    try linearAttention(queries: queries, keys: keys, values: values, epsilon: epsilon, plan: plan, into: &out)
    return out
}

/// Linear attention into an existing `[B, H, N, dv]` output (overwritten). For streams and loops
/// that reuse their output: at a million tokens, faulting in a fresh multi-GiB output each call
/// can cost as much as the attention itself.
public func linearAttention(queries: Tensor, keys: Tensor, values: Tensor, epsilon: Float = 1e-6,
                            plan: LinearAttentionPlan, into out: inout Tensor) throws {
    let shape = try attentionShape(queries: queries, keys: keys, values: values)
    guard out.shape == [shape.B, shape.H, shape.N, shape.dv] else {
        throw AttentionError.shapeMismatch("output is \(out.shape), attention gives \([shape.B, shape.H, shape.N, shape.dv])")
    }
    guard shape == plan.shape else {
        throw AttentionError.shapeMismatch("plan is for \(plan.shape), inputs are \(shape)")
    }
    try checkFinite([("queries", queries), ("keys", keys), ("values", values)])
    guard epsilon.isFinite, epsilon >= 0 else { throw AttentionError.invalidArgument("epsilon must be finite and >= 0") }
    if plan.causal, plan.featureMap == .softmax {
        throw AttentionError.invalidArgument("the softmax feature map (Efficient Attention) is non-causal only")
    }
    var favor: FavorFeatures?
    if case .favor(let m, let seed) = plan.featureMap {
        favor = try FavorFeatures(dimension: shape.d, features: m, seed: seed)
    }
    if out.count == 0 { return }
    let q = queries.lastAxisContiguous(), k = keys.lastAxisContiguous(), v = values.lastAxisContiguous()
    out.withUnsafeMutableBufferPointer { o in
        q.withUnsafePointer { pq in
            k.withUnsafePointer { pk in
                v.withUnsafePointer { pv in
                    let layout = AttentionLayout(
                        B: shape.B, H: shape.H, Hkv: shape.Hkv, N: shape.N, M: shape.M, d: shape.d, dv: shape.dv,
                        q: pq, qStride: (q.strides[0], q.strides[1], q.strides[2]),
                        k: pk, kStride: (k.strides[0], k.strides[1], k.strides[2]),
                        v: pv, vStride: (v.strides[0], v.strides[1], v.strides[2]),
                        out: o.baseAddress!, scale: 1, causal: plan.causal, keyLengths: nil,
                        bias: nil, biasStride: (0, 0, 0))
                    runLinear(layout, plan: plan, favor: favor, epsilon: favor == nil ? epsilon : 0)
                }
            }
        }
    }
}
