import AttentionTensor

/// The shape of an attention problem. Symbols:
/// - `B` batch, `H` query heads, `Hkv` key/value heads (`H % Hkv == 0`),
/// - `N` queries, `M` keys, `d` query/key head dimension, `dv` value head dimension.
public struct AttentionShape: Sendable, Equatable, CustomStringConvertible {
    public var B: Int, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int
    public init(B: Int, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int) {
        (self.B, self.H, self.Hkv, self.N, self.M, self.d, self.dv) = (B, H, Hkv, N, M, d, dv)
    }

    /// The shape of `queries [B, H, N, d]`, `keys [B, Hkv, M, d]`, `values [B, Hkv, M, dv]`, after
    /// checking their ranks and the agreements the contract needs.
    public init(queries q: Tensor, keys k: Tensor, values v: Tensor) throws {
        for (name, t) in [("queries", q), ("keys", k), ("values", v)] where t.rank != 4 {
            throw AttentionError.wrongRank(name: name, expected: 4, shape: t.shape)
        }
        self.init(B: q.shape[0], H: q.shape[1], Hkv: k.shape[1], N: q.shape[2], M: k.shape[2], d: q.shape[3], dv: v.shape[3])
        guard k.shape[0] == B, v.shape[0] == B else {
            let (name, t) = k.shape[0] != B ? ("keys", k) : ("values", v)
            throw AttentionError.shapeMismatch(tensor: name, shape: t.shape, expected: "the queries' batch size B = \(B) (queries \(q.shape))")
        }
        guard k.shape[3] == d else {
            throw AttentionError.shapeMismatch(tensor: "keys", shape: k.shape, expected: "the queries' head dimension d = \(d)")
        }
        guard v.shape[1] == Hkv, v.shape[2] == M else {
            throw AttentionError.shapeMismatch(tensor: "values", shape: v.shape, expected: "the keys' heads and length (keys \(k.shape))")
        }
        guard Hkv > 0, H % Hkv == 0 else { throw AttentionError.headsNotGrouped(H: H, Hkv: Hkv) }
        guard d > 0 else { throw AttentionError.invalidArgument(name: "head dimension d", value: "\(d)", expected: "positive") }
    }

    /// Query heads sharing one KV head.
    public var group: Int { H / Hkv }
    /// Elements of the output `[B, H, N, dv]`.
    public var outputShape: [Int] { [B, H, N, dv] }
    public var description: String { "B=\(B) H=\(H) Hkv=\(Hkv) N=\(N) M=\(M) d=\(d) dv=\(dv)" }
}

func attentionShape(queries: Tensor, keys: Tensor, values: Tensor) throws -> AttentionShape {
    try AttentionShape(queries: queries, keys: keys, values: values)
}

/// How an attention output is laid out in memory.
///
/// - `headMajor`: `[B, H, N, dv]`, the layout of the inputs' `[B, H, N, d]` views;
/// - `tokenMajor`: `[B, N, H, dv]`, i.e. the token-major rows `[B·N, H·dv]` a model's output
///   projection reads (reshaping it is a view): written in place by the kernels, so no permute
///   and copy is needed after attention. Gradients in this layout are `dq [B, N, H, d]`,
///   `dk [B, M, Hkv, d]`, `dv [B, M, Hkv, dv]`.
public enum AttentionOutputLayout: String, Sendable, CaseIterable {
    case headMajor
    case tokenMajor

    /// The output's shape for a problem of shape `s`.
    public func outputShape(_ s: AttentionShape) -> [Int] {
        self == .headMajor ? [s.B, s.H, s.N, s.dv] : [s.B, s.N, s.H, s.dv]
    }
}
