import AttentionTensor

/// Which keys each query may attend to, and additive biases on the scores.
///
/// The parts combine: `.causal`, `.keyLengths([...])` and `.bias(t)` each set one part, and
/// ``combined(with:)`` joins them (for example causal decoding over padded batches).
/// A query row whose keys are all masked outputs zeros.
public struct AttentionMask: Sendable {
    /// Bottom-right aligned causal mask: query `i` sees key `j` iff `j <= i + (M - N)`.
    public var isCausal: Bool
    /// Per batch entry `b`, only keys `j < keyLengths[b]` are attended (right padding).
    public var keyLengths: [Int]?
    /// Added to `scale · QKᵀ` before the softmax: shape `[N, M]`, `[H, N, M]` or `[B, H, N, M]`,
    /// where any leading axis may be 1 (broadcast). `-infinity` masks an entry.
    public var bias: Tensor?

    /// ALiBi position penalties, computed per score tile (never an N×M tensor).
    public var alibi: ALiBi?

    public init(isCausal: Bool = false, keyLengths: [Int]? = nil, bias: Tensor? = nil, alibi: ALiBi? = nil) {
        self.isCausal = isCausal
        self.keyLengths = keyLengths
        self.bias = bias
        self.alibi = alibi
    }

    /// Every query sees every key.
    public static let none = AttentionMask()
    /// Bottom-right causal.
    public static let causal = AttentionMask(isCausal: true)
    /// Per-batch key lengths (padding mask).
    public static func keyLengths(_ lengths: [Int]) -> AttentionMask { AttentionMask(keyLengths: lengths) }
    /// An additive bias broadcast over batch and heads.
    public static func bias(_ bias: Tensor) -> AttentionMask { AttentionMask(bias: bias) }

    /// ALiBi penalties with the given slopes.
    public static func alibi(_ alibi: ALiBi) -> AttentionMask { AttentionMask(alibi: alibi) }

    /// Both masks at once (causal if either is; the other's lengths or bias where this has none).
    public func combined(with other: AttentionMask) -> AttentionMask {
        AttentionMask(isCausal: isCausal || other.isCausal,
                      keyLengths: keyLengths ?? other.keyLengths,
                      bias: bias ?? other.bias,
                      alibi: alibi ?? other.alibi)
    }
}
