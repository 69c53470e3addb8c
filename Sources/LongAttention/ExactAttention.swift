import AttentionTensor

/// How exact attention is computed. Both give the same result to float32 rounding.
public enum ExactAttentionImplementation: String, Sendable, CaseIterable {
    /// Chosen from the shapes (see ``ExactAttentionPlan``).
    case automatic
    /// A block of query rows at a time: scores `[rows, M]`, softmax, then `P·V`.
    case materialized
    /// FlashAttention-style: online softmax over key tiles; workspace independent of N and M.
    case tiled
}

/// The shape of an attention problem. Symbols:
/// - `B` batch, `H` query heads, `Hkv` key/value heads (`H % Hkv == 0`),
/// - `N` queries, `M` keys, `d` query/key head dimension, `dv` value head dimension.
public struct AttentionShape: Sendable, Equatable, CustomStringConvertible {
    public var B: Int, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int
    public init(B: Int, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int) {
        (self.B, self.H, self.Hkv, self.N, self.M, self.d, self.dv) = (B, H, Hkv, N, M, d, dv)
    }
    /// Query heads sharing one KV head.
    public var group: Int { H / Hkv }
    public var description: String { "B=\(B) H=\(H) Hkv=\(Hkv) N=\(N) M=\(M) d=\(d) dv=\(dv)" }
}

/// How one exact-attention call is cut into work: the implementation, the query rows per block
/// (per head; the `H/Hkv` heads of a group are stacked, so a block's GEMMs have
/// `group · queryBlock` rows), the key tile, the threads, and the workspace that implies.
public struct ExactAttentionPlan: Sendable, Equatable {
    public let shape: AttentionShape
    public let implementation: ExactAttentionImplementation
    /// Query positions per block, per head.
    public let queryBlock: Int
    /// Keys per tile (tiled), or `M` (materialized).
    public let keyTile: Int
    public let threads: Int
    /// Tiled: contiguous key ranges per query block run as separate work items and merged (the
    /// associative (max, sum, output) rule), so a decode step keeps every core busy even when
    /// `B·Hkv` is small. 1 unless there are fewer than 8 blocks; a function of the shape only.
    public let keySplits: Int

    /// Rows of a block's GEMMs: the group's heads stacked.
    public var stackedRows: Int { shape.group * queryBlock }
    /// Number of independent work items (batch × KV head × query block).
    public var workItems: Int { shape.B * shape.Hkv * ((shape.N + queryBlock - 1) / queryBlock) }
    /// Bytes of scratch one worker thread allocates (once, for all its work items).
    public var workspaceBytesPerThread: Int {
        let r = stackedRows
        switch implementation {
        case .tiled:
            return (r * shape.d + r * keyTile + r * shape.dv + 3 * r) * 4
        default:
            return (r * shape.d + r * keyTile + r) * 4
        }
    }
    /// Bytes of scratch for the whole call, beyond inputs and output (workers' scratch, plus the
    /// split results when keys are split).
    public var workspaceBytes: Int {
        let splitResults = keySplits > 1 ? workItems * keySplits * stackedRows * (shape.dv + 2) * 4 : 0
        return workspaceBytesPerThread * min(threads, max(workItems * keySplits, 1)) + splitResults
    }

    /// Score rows a materialized block may hold: its `[rows, M]` buffer stays under 16 MiB.
    static let materializedScoreBudget = 4 << 20

    /// Chooses block sizes for `shape`.
    ///
    /// Tiled blocks stack about 256 rows (queries × group) against 512-key tiles: the score tile
    /// (512 KiB) stays in L2, and OpenBLAS runs these GEMMs (inner dimension d = 64) at about 80%
    /// of its single-thread peak; 128-row or 256-key tiles measured 5–15% slower.
    /// Materialized blocks hold about 256 stacked rows of `M` scores, fewer when `M` is large.
    /// `automatic` takes the tiled path once `M` exceeds 1024 keys, where the materialized score
    /// block stops fitting in cache (measured: see the README's benchmark table).
    public init(shape: AttentionShape, implementation: ExactAttentionImplementation = .automatic,
                threads: Int = Parallel.defaultThreads, queryBlock: Int? = nil, keyTile: Int? = nil,
                keySplits: Int? = nil) {
        let impl: ExactAttentionImplementation =
            implementation == .automatic ? (shape.M > 1024 ? .tiled : .materialized) : implementation
        let g = max(1, shape.group)
        let targetRows = 256
        var rows = max(1, targetRows / g)
        if impl == .materialized {
            rows = max(1, min(rows, Self.materializedScoreBudget / max(1, shape.M * g)))
        }
        rows = min(rows, max(1, shape.N))
        // Enough items (8) to keep the cores busy when the batch and head count are small. The
        // rule looks at the shape only, never the thread count, so 1 and 2 threads compute the
        // same blocks and give bitwise the same result.
        while rows > 8, shape.B * shape.Hkv * ((shape.N + rows - 1) / rows) < 8 { rows /= 2 }
        self.shape = shape
        self.implementation = impl
        self.queryBlock = max(1, queryBlock ?? rows)
        self.keyTile = impl == .tiled ? max(1, min(keyTile ?? 512, max(1, shape.M))) : max(1, shape.M)
        self.threads = max(1, threads)
        let items = shape.B * shape.Hkv * ((shape.N + self.queryBlock - 1) / self.queryBlock)
        let automaticSplits = items > 0 && items < 8 ? max(1, min((8 + items - 1) / items, shape.M / (4 * self.keyTile))) : 1
        self.keySplits = impl == .tiled ? max(1, keySplits ?? automaticSplits) : 1
    }
}

/// Exact scaled dot-product attention, `O = softmax(scale · Q Kᵀ + mask) V`, per batch and head.
///
/// Shapes (row-major Float32; views are read through their strides, never copied):
/// - `queries`: `[B, H, N, d]` — `B` batch, `H` query heads, `N` query positions, `d` head dim;
/// - `keys`: `[B, Hkv, M, d]` — `Hkv` key/value heads (`H % Hkv == 0`), `M` key positions;
/// - `values`: `[B, Hkv, M, dv]` — `dv` value head dim;
/// - result: `[B, H, N, dv]`.
///
/// Query head `h` reads KV head `h / (H / Hkv)` (multi-head when `Hkv == H`, multi-query when
/// `Hkv == 1`); the query heads of a group are stacked into one GEMM against their shared K/V.
/// A query whose keys are all masked gets a zero row.
///
/// - Parameters:
///   - scale: multiplies `Q Kᵀ`; default `1 / sqrt(d)`.
///   - mask: causal (bottom-right: query `i` sees key `j` iff `j <= i + M - N`), per-batch key
///     lengths, an additive bias, or a combination.
///   - implementation: `.materialized`, `.tiled` or `.automatic` (chosen from the shapes).
///   - threads: worker threads (default: all cores); OpenBLAS runs single-threaded inside them.
///     The result does not depend on the thread count.
/// - Throws: ``AttentionError`` for inputs that disagree; ``AttentionTensor/TensorError`` when
///   the output cannot be allocated.
public func scaledDotProductAttention(
    queries: Tensor, keys: Tensor, values: Tensor, scale: Float? = nil, mask: AttentionMask = .none,
    implementation: ExactAttentionImplementation = .automatic, threads: Int? = nil
) throws -> Tensor {
    let shape = try attentionShape(queries: queries, keys: keys, values: values)
    if let threads, threads < 1 { throw AttentionError.invalidArgument("threads must be at least 1, got \(threads)") }
    let plan = ExactAttentionPlan(shape: shape, implementation: implementation,
                                  threads: threads ?? Parallel.defaultThreads)
    return try exactAttention(queries: queries, keys: keys, values: values, scale: scale, mask: mask, plan: plan)
}

/// Exact attention with an explicit ``ExactAttentionPlan`` (block sizes, threads); see
/// ``scaledDotProductAttention(queries:keys:values:scale:mask:implementation:threads:)``.
public func exactAttention(
    queries: Tensor, keys: Tensor, values: Tensor, scale: Float? = nil, mask: AttentionMask = .none,
    plan: ExactAttentionPlan
) throws -> Tensor {
    _ = try attentionShape(queries: queries, keys: keys, values: values)
    try checkFinite([("queries", queries), ("keys", keys), ("values", values)])
    return try exactAttention(queries: queries, keys: keys, values: values, scale: scale, mask: mask, plan: plan, queryOffset: nil)
}

/// Exact attention where query row 0 sits at key position `queryOffset` (nil: `M - N`).
func exactAttention(
    queries: Tensor, keys: Tensor, values: Tensor, scale: Float?, mask: AttentionMask,
    plan: ExactAttentionPlan, queryOffset: Int?
) throws -> Tensor {
    let shape = try attentionShape(queries: queries, keys: keys, values: values)
    guard shape == plan.shape else {
        throw AttentionError.shapeMismatch("plan is for \(plan.shape), inputs are \(shape)")
    }
    let scale = scale ?? 1 / Float(shape.d).squareRoot()
    guard scale.isFinite else { throw AttentionError.invalidArgument("scale must be finite, got \(scale)") }
    try validate(mask: mask, shape: shape)
    var out = try Tensor(uninitialized: [shape.B, shape.H, shape.N, shape.dv])
    if out.count == 0 { return out }
    let q = queries.lastAxisContiguous(), k = keys.lastAxisContiguous(), v = values.lastAxisContiguous()
    let bias = try mask.bias.map { try broadcastBias($0, shape: shape) }
    out.withUnsafeMutableBufferPointer { o in
        q.withUnsafePointer { pq in
            k.withUnsafePointer { pk in
                v.withUnsafePointer { pv in
                    withOptionalPointer(bias?.tensor) { pb in
                      withOptionalArray(mask.alibi?.slopes) { pa in
                        var layout = AttentionLayout(
                            B: shape.B, H: shape.H, Hkv: shape.Hkv, N: shape.N, M: shape.M, d: shape.d, dv: shape.dv,
                            q: pq, qStride: (q.strides[0], q.strides[1], q.strides[2]),
                            k: pk, kStride: (k.strides[0], k.strides[1], k.strides[2]),
                            v: pv, vStride: (v.strides[0], v.strides[1], v.strides[2]),
                            out: o.baseAddress!, scale: scale, causal: mask.isCausal,
                            keyLengths: mask.keyLengths, bias: pb, biasStride: bias?.strides ?? (0, 0, 0))
                        layout.alibi = pa
                        layout.queryOffsetOverride = queryOffset
                        if shape.M == 0 {
                            o.initialize(repeating: 0)   // no keys: every row is fully masked
                        } else if plan.implementation == .tiled {
                            runTiled(layout, plan: plan)
                        } else {
                            runMaterialized(layout, plan: plan)
                        }
                      }
                    }
                }
            }
        }
    }
    return out
}

/// Checks ranks and the agreements the contract needs; returns the shape symbols.
/// Throws ``AttentionError/nonFinite(name:index:)`` for the first input holding NaN or ±Inf.
func checkFinite(_ inputs: [(String, Tensor)]) throws {
    for (name, t) in inputs {
        if let i = t.firstNonFiniteIndex() { throw AttentionError.nonFinite(name: name, index: i) }
    }
}

func attentionShape(queries q: Tensor, keys k: Tensor, values v: Tensor) throws -> AttentionShape {
    for (name, t) in [("queries", q), ("keys", k), ("values", v)] where t.rank != 4 {
        throw AttentionError.wrongRank(name: name, expected: 4, shape: t.shape)
    }
    let s = AttentionShape(B: q.shape[0], H: q.shape[1], Hkv: k.shape[1], N: q.shape[2], M: k.shape[2],
                           d: q.shape[3], dv: v.shape[3])
    guard k.shape[0] == s.B, v.shape[0] == s.B else {
        throw AttentionError.shapeMismatch("batch sizes differ: queries \(q.shape), keys \(k.shape), values \(v.shape)")
    }
    guard k.shape[3] == s.d else {
        throw AttentionError.shapeMismatch("queries have d = \(s.d) but keys have d = \(k.shape[3])")
    }
    guard v.shape[1] == s.Hkv, v.shape[2] == s.M else {
        throw AttentionError.shapeMismatch("keys \(k.shape) and values \(v.shape) differ in heads or length")
    }
    guard s.Hkv > 0, s.H % s.Hkv == 0 else { throw AttentionError.headsNotGrouped(H: s.H, Hkv: s.Hkv) }
    guard s.d > 0 else { throw AttentionError.invalidArgument("head dimension d must be positive") }
    return s
}

func validate(mask: AttentionMask, shape s: AttentionShape) throws {
    if let alibi = mask.alibi, alibi.slopes.count != s.H {
        throw AttentionError.shapeMismatch("ALiBi has \(alibi.slopes.count) slopes for H = \(s.H) heads")
    }
    if let lengths = mask.keyLengths {
        guard lengths.count == s.B else {
            throw AttentionError.shapeMismatch("\(lengths.count) key lengths for batch size \(s.B)")
        }
        if let bad = lengths.first(where: { $0 < 0 || $0 > s.M }) {
            throw AttentionError.invalidArgument("key length \(bad) outside 0...\(s.M)")
        }
    }
}

/// The bias as a `[B', H', N, M]` tensor with the last axis contiguous and broadcast axes given
/// stride 0.
func broadcastBias(_ bias: Tensor, shape s: AttentionShape) throws -> (tensor: Tensor, strides: (b: Int, h: Int, n: Int)) {
    guard (2...4).contains(bias.rank) else {
        throw AttentionError.shapeMismatch("bias \(bias.shape) must be [N, M], [H, N, M] or [B, H, N, M]")
    }
    let full = [s.B, s.H, s.N, s.M]
    let padded = [Int](repeating: 1, count: 4 - bias.rank) + bias.shape
    for axis in 0..<4 where padded[axis] != full[axis] && !(axis < 2 && padded[axis] == 1) {
        throw AttentionError.shapeMismatch("bias \(bias.shape) does not broadcast to [B, H, N, M] = \(full)")
    }
    let t = bias.contiguous()
    let st = rowMajorStrides(padded)
    return (t, (padded[0] == 1 ? 0 : st[0], padded[1] == 1 ? 0 : st[1], st[2]))
}

func withOptionalArray<R>(_ a: [Float]?, _ body: (UnsafePointer<Float>?) -> R) -> R {
    guard let a else { return body(nil) }
    return a.withUnsafeBufferPointer { body($0.baseAddress) }
}

func withOptionalPointer<R>(_ t: Tensor?, _ body: (UnsafePointer<Float>?) -> R) -> R {
    guard let t else { return body(nil) }
    return t.withUnsafePointer { body($0) }
}

extension Tensor {
    /// Self when the last axis is contiguous (BLAS can read it with a leading dimension),
    /// otherwise a contiguous copy.
    func lastAxisContiguous() -> Tensor {
        strides.last == 1 || shape.last == 1 ? self : contiguous()
    }
}
