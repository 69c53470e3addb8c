import AttentionTensor

/// Which keys each query may attend to, and additive biases on the scores.
///
/// The parts combine: `.causal`, `.slidingWindow(W)`, `.keyLengths([...])`, `.bias(t)` and
/// `.alibi(a)` each set one part, and ``combined(with:)`` joins two masks without dropping
/// anything (for example causal decoding over padded batches with a learned bias). A query row
/// whose keys are all masked outputs zeros.
public struct AttentionMask: Sendable {
    /// Bottom-right aligned causal mask: query `i` sees key `j` iff `j <= i + (M - N)`.
    public var isCausal: Bool
    /// Sliding-window attention (Mistral, Gemma 2/3, transformers' `sliding_window`): with query
    /// `i` at position `p = i + M - N` (bottom-right), key `j` is visible iff `p - W < j <= p`,
    /// i.e. the query sees itself and its `W - 1` predecessors. `W >= 1`, and only together with
    /// ``isCausal`` (transformers' sliding mask is always causal; a window without it is refused
    /// with ``AttentionError/invalidWindow(window:layer:reason:)``, as is `W < 1`). The exact kernels skip every key
    /// tile outside the band: O(N·W·d) work instead of O(N·M·d).
    public var slidingWindow: Int?
    /// Per batch entry `b`, only keys `j < keyLengths[b]` are attended (right padding).
    public var keyLengths: [Int]?
    /// Added to `scale · QKᵀ` before the softmax: shape `[N, M]`, `[H, N, M]` or `[B, H, N, M]`,
    /// where any leading axis may be 1 (broadcast). `-infinity` masks an entry; NaN and `+infinity`
    /// are refused (``AttentionError/invalidBias(index:)``).
    public var bias: Tensor?
    /// ALiBi position penalties, computed per score tile (never an N×M tensor). Slopes must be finite.
    public var alibi: ALiBi?

    public init(isCausal: Bool = false, slidingWindow: Int? = nil, keyLengths: [Int]? = nil, bias: Tensor? = nil,
                alibi: ALiBi? = nil) {
        self.isCausal = isCausal
        self.slidingWindow = slidingWindow
        self.keyLengths = keyLengths
        self.bias = bias
        self.alibi = alibi
    }

    /// Every query sees every key.
    public static let none = AttentionMask()
    /// Bottom-right causal.
    public static let causal = AttentionMask(isCausal: true)
    /// Bottom-right causal within a sliding window of `W` positions: query at position `p` sees
    /// keys `p - W < j <= p` (see ``slidingWindow``).
    public static func slidingWindow(_ window: Int) -> AttentionMask { AttentionMask(isCausal: true, slidingWindow: window) }
    /// Per-batch key lengths (padding mask).
    public static func keyLengths(_ lengths: [Int]) -> AttentionMask { AttentionMask(keyLengths: lengths) }
    /// An additive bias broadcast over batch and heads.
    public static func bias(_ bias: Tensor) -> AttentionMask { AttentionMask(bias: bias) }
    /// ALiBi penalties with the given slopes.
    public static func alibi(_ alibi: ALiBi) -> AttentionMask { AttentionMask(alibi: alibi) }

    /// Both masks at once, nothing dropped: causal if either is; the smaller sliding window; key
    /// lengths the elementwise minimum; biases added (broadcast against each other: `[N, M]` + `[H, N, M]` gives
    /// `[H, N, M]`); two ALiBi sets add their slopes (penalties add).
    ///
    /// - Throws: ``AttentionError/shapeMismatch(tensor:shape:expected:)`` when key-length counts, bias shapes or slope
    ///   counts cannot be combined.
    public func combined(with other: AttentionMask) throws -> AttentionMask {
        var lengths = keyLengths ?? other.keyLengths
        if let a = keyLengths, let b = other.keyLengths {
            guard a.count == b.count else {
                throw AttentionError.shapeMismatch(tensor: "keyLengths", shape: [b.count], expected: "\(a.count) lengths, as the other mask has")
            }
            lengths = zip(a, b).map { Swift.min($0, $1) }
        }
        var sum = bias ?? other.bias
        if let a = bias, let b = other.bias { sum = try Self.addBiases(a, b) }
        var slopes = alibi ?? other.alibi
        if let a = alibi, let b = other.alibi {
            guard a.slopes.count == b.slopes.count else {
                throw AttentionError.shapeMismatch(tensor: "ALiBi slopes", shape: [b.slopes.count], expected: "\(a.slopes.count) slopes, as the other mask has")
            }
            slopes = ALiBi(slopes: zip(a.slopes, b.slopes).map { $0 + $1 })
        }
        var window = slidingWindow ?? other.slidingWindow
        if let a = slidingWindow, let b = other.slidingWindow { window = Swift.min(a, b) }
        return AttentionMask(isCausal: isCausal || other.isCausal, slidingWindow: window, keyLengths: lengths, bias: sum,
                             alibi: slopes)
    }

    /// The sliding window's own rule: `W >= 1`, and only with a causal mask.
    func validateWindow() throws {
        guard let w = slidingWindow else { return }
        guard w >= 1 else { throw AttentionError.invalidWindow(window: w, layer: nil, reason: "a window must be at least 1 position") }
        guard isCausal else {
            throw AttentionError.invalidWindow(window: w, layer: nil, reason: "a window needs a causal mask (use .slidingWindow(W) or isCausal: true)")
        }
    }

    /// `a + b` broadcast over their leading axes (ranks 2–4, the last two equal).
    static func addBiases(_ a: Tensor, _ b: Tensor) throws -> Tensor {
        guard (2...4).contains(a.rank), (2...4).contains(b.rank) else {
            throw AttentionError.shapeMismatch(tensor: "bias", shape: (2...4).contains(a.rank) ? b.shape : a.shape, expected: "rank 2 to 4")
        }
        let pa = [Int](repeating: 1, count: 4 - a.rank) + a.shape, pb = [Int](repeating: 1, count: 4 - b.rank) + b.shape
        var shape = [Int](repeating: 0, count: 4)
        for axis in 0..<4 {
            guard pa[axis] == pb[axis] || (axis < 2 && (pa[axis] == 1 || pb[axis] == 1)) else {
                throw AttentionError.shapeMismatch(tensor: "bias", shape: b.shape, expected: "a shape that broadcasts against the other bias \(a.shape)")
            }
            shape[axis] = Swift.max(pa[axis], pb[axis])
        }
        let ca = a.contiguous(), cb = b.contiguous()
        let (N, M) = (shape[2], shape[3])
        var out = try Tensor(uninitialized: Array(shape.suffix(Swift.max(a.rank, b.rank))))
        // -inf + finite stays -inf; -inf + -inf stays -inf (neither input holds +inf once validated).
        out.withUnsafeMutableBufferPointer { o in
            ca.withUnsafePointer { x in
                cb.withUnsafePointer { y in
                    for i in 0..<shape[0] { for h in 0..<shape[1] {
                        let xa = ((pa[0] == 1 ? 0 : i) * pa[1] + (pa[1] == 1 ? 0 : h)) * N * M
                        let yb = ((pb[0] == 1 ? 0 : i) * pb[1] + (pb[1] == 1 ? 0 : h)) * N * M
                        let dst = o.baseAddress! + (i * shape[1] + h) * N * M
                        for e in 0..<(N * M) { dst[e] = x[xa + e] + y[yb + e] }
                    } }
                }
            }
        }
        return out
    }

    /// Checks every part against the problem: key-length count and range, ALiBi slope count and
    /// finiteness, the bias shape and values (NaN and +Inf refused, -Inf allowed). Returns the bias
    /// ready for the kernels, and the largest finite |bias|.
    func validated(for s: AttentionShape) throws -> (bias: BroadcastBias?, maxBias: Float) {
        try validateWindow()
        if let alibi {
            guard alibi.slopes.count == s.H else {
                throw AttentionError.shapeMismatch(tensor: "ALiBi slopes", shape: [alibi.slopes.count], expected: "one slope per query head (H = \(s.H))")
            }
            if let h = alibi.slopes.firstIndex(where: { !$0.isFinite }) {
                throw AttentionError.invalidArgument(name: "ALiBi slope \(h)", value: "\(alibi.slopes[h])", expected: "a finite number")
            }
        }
        if let lengths = keyLengths {
            guard lengths.count == s.B else {
                throw AttentionError.shapeMismatch(tensor: "keyLengths", shape: [lengths.count], expected: "one length per sequence (B = \(s.B))")
            }
            if let bad = lengths.first(where: { $0 < 0 || $0 > s.M }) {
                throw AttentionError.invalidArgument(name: "keyLengths", value: "\(bad)", expected: "a length in 0...\(s.M)")
            }
        }
        guard let bias else { return (nil, 0) }
        let broadcast = try BroadcastBias(bias, shape: s)
        let scan = bias.scanValues(allowNegativeInfinity: true)
        if let index = scan.invalidIndex { throw AttentionError.invalidBias(index: index) }
        return (broadcast, scan.maxMagnitude)
    }
}

/// A bias as the kernels read it: `[B', H', N, M]` with the last axis contiguous and broadcast
/// axes given stride 0.
struct BroadcastBias {
    let tensor: Tensor
    let strides: (b: Int, h: Int, n: Int)

    init(_ bias: Tensor, shape s: AttentionShape) throws {
        guard (2...4).contains(bias.rank) else {
            throw AttentionError.shapeMismatch(tensor: "bias", shape: bias.shape, expected: "[N, M], [H, N, M] or [B, H, N, M]")
        }
        let full = [s.B, s.H, s.N, s.M]
        let padded = [Int](repeating: 1, count: 4 - bias.rank) + bias.shape
        for axis in 0..<4 where padded[axis] != full[axis] && !(axis < 2 && padded[axis] == 1) {
            throw AttentionError.shapeMismatch(tensor: "bias", shape: bias.shape, expected: "a shape that broadcasts to [B, H, N, M] = \(full)")
        }
        tensor = bias.contiguous()
        let st = rowMajorStrides(padded)
        strides = (padded[0] == 1 ? 0 : st[0], padded[1] == 1 ? 0 : st[1], st[2])
    }
}
