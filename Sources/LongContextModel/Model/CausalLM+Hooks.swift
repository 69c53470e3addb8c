import AttentionTensor
import Foundation
import LongAttention

/// One output of a group of products with a layer's weights: `output [rows, width] (+)= input · Wᵀ`
/// for the weight matrix named `weight` (`[width, in]`, a transformers name).
public struct ProjectionOutput {
    public let weight: String
    public let output: UnsafeMutablePointer<Float>
    public let width: Int
    public init(weight: String, output: UnsafeMutablePointer<Float>, width: Int) {
        (self.weight, self.output, self.width) = (weight, output, width)
    }
}

/// The products of a decoder layer, a group at a time (q/k/v; o; gate/up; down), all from the
/// same `input [rows, in]`: the group's `outputs` written (or, with `accumulate`, added to).
/// ``CausalLM/runLayer(_:x:positions:threads:projections:attention:)`` takes one to replace its
/// products (a tensor-parallel caller computes a share of every output's rows and gathers them).
public typealias ProjectionGroup = (_ input: UnsafePointer<Float>, _ rows: Int, _ in: Int, _ outputs: [ProjectionOutput],
                                    _ accumulate: Bool) throws -> Void

/// The pieces of the decoder that a caller running the model its own way (across processes: the
/// `DistributedModel` target) reuses: the layer itself with its attention and products replaced,
/// the embedding, the final norm, the weights and the product with them. Nothing here changes
/// what ``CausalLM/forward(tokens:batch:length:keepForBackward:threads:logitRows:)`` computes.
extension CausalLM {
    /// The products as the forward pass computes them (``project`` with this model's ``matmul``).
    func defaultProjections(threads: Int) -> ProjectionGroup {
        { [self] input, rows, k, outputs, accumulate in
            // Under `fast`, a group of quantised matrices is one parallel region (the same bits).
            if matmul == .fast, outputs.count > 1, rows >= 1, rows <= WeightMatrix.fastRowLimit {
                let parts = outputs.compactMap { o -> (matrix: QuantizedMatrix, y: UnsafeMutablePointer<Float>)? in
                    guard case .blocks(let b) = matrix(o.weight), let q = b.quantized,
                          q.columns == k, q.rows == o.width else { return nil }
                    return (q, o.output)
                }
                if parts.count == outputs.count {
                    QuantizedMatrix.multiply(parts, input, rows: rows, accumulate: accumulate, threads: threads)
                    for o in outputs { lora?.addProduct(o.weight, input, o.output, rows: rows, in: k, out: o.width) }
                    return
                }
            }
            for o in outputs {
                // The attached LoRA adapter's product, when it adapts the weight, is added (projectWeight).
                projectWeight(input, o.weight, o.output, rows: rows, in: k, out: o.width, accumulate: accumulate, threads: threads)
            }
        }
    }

    /// Runs decoder layer `layer` (inference) on `x [N, D]`, rows of one sequence at `positions`
    /// (runs of consecutive positions covering the `N` rows in order: RoPE rotates each from its
    /// own start). `attention` maps q `[N, H·hd]`, k, v `[N, Hkv·hd]` (token-major, after the
    /// q/k norms and RoPE) to the output rows `[N, H·hd]`; `projections` replaces the products.
    public func runLayer(_ layer: Int, x: inout Tensor, positions: [Range<Int>], threads: Int, projections: ProjectionGroup? = nil,
                         attention: (_ q: Tensor, _ k: Tensor, _ v: Tensor) throws -> Tensor) throws {
        try requireOption((0..<config.layers).contains(layer), "layer", layer, "in 0..<\(config.layers)")
        try requireOption(x.rank == 2 && x.shape[1] == config.hiddenSize, "x", x.shape, "of shape [N, \(config.hiddenSize)]")
        try requireOption(positions.reduce(0, { $0 + $1.count }) == x.shape[0], "positions", positions, "ranges covering the \(x.shape[0]) rows of x")
        let N = x.shape[0]
        let pass = ForwardPass(batch: 1, length: N, tokens: [], logits: try Tensor(zeros: [1]))
        _ = try decoderLayer(layer, x: &x, batch: 1, length: N, firstPosition: 0, keep: false, pass: pass, threads: threads,
                             segments: positions, projections: projections) { q, k, v in
            (try attention(q, k, v), .none)
        }
    }

    /// The embedding rows of `tokens` `[n, D]` (times the family's embedding scale); ids checked.
    public func embedTokens(_ tokens: [Int32]) throws -> Tensor {
        try checkTokens(tokens, batch: 1, length: tokens.count)
        return try embed(tokens)
    }

    /// The final RMSNorm of `rows` rows of `x` into `y` (`[rows, D]` each).
    public func finalNorm(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, rows: Int) {
        norm("model.norm.weight", x, y, rstd: nil, rows: rows, width: config.hiddenSize)
    }

    /// The LM head's weight name (`lm_head.weight`, or the embedding when tied).
    public var headWeightName: String { headName }

    /// The weight matrix `name` (a GGUF tensor read in place, or a float32 parameter).
    public func weightMatrix(_ name: String) -> WeightMatrix { matrix(name) }

    /// `y [rows, out] (+)= x [rows, in] · Wᵀ` as the model multiplies (its ``matmul`` mode).
    public func multiply(_ x: UnsafePointer<Float>, by w: WeightMatrix, into y: UnsafeMutablePointer<Float>, rows: Int, in k: Int,
                         out n: Int, accumulate: Bool = false, threads: Int) {
        project(x, w, y, rows: rows, in: k, out: n, accumulate: accumulate, threads: threads, matmul: matmul)
    }

    /// The mask of `layer`'s attention (causal; ALiBi; the sliding window on sliding layers).
    public func layerMask(_ layer: Int) -> AttentionMask { attentionMask(layer: layer) }

    /// The score scale of every layer (nil: `1/√hd`).
    public var scoreScale: Float? { attentionScale }

    /// Whether every layer decodes through a KV cache (exact attention).
    public var decodesThroughCache: Bool { decodesWithCache }

    /// Whether every layer is exact attention and the MLPs are dense (what a distributed run takes).
    public var isDenseExact: Bool { decodesWithCache && config.architecture != .mixtral }
}

extension WeightMatrix {
    /// Rows `range` of the matrix (`columns` wide) as a matrix of their own, read in place.
    /// The quantised kernels' view is kept when the rows' storage is the same rows (no row map, or
    /// a map that keeps `range` within itself: llama's Q/K permutation within whole heads).
    public func rows(_ range: Range<Int>, columns: Int) -> WeightMatrix {
        switch self {
        case .dense(let p): return .dense(p + range.lowerBound * columns)
        case .blocks(let b):
            let r0 = range.lowerBound
            var q: QuantizedMatrix? = nil
            if let full = b.quantized {
                if let order = full.rowOrder {
                    let sub = order[range].map { $0 - r0 }
                    if sub.allSatisfy({ (0..<range.count).contains($0) }) {
                        q = QuantizedMatrix(type: full.type, base: full.base + r0 * full.rowBytes, rows: range.count, columns: columns,
                                            rowOrder: sub)
                    }
                } else {
                    q = QuantizedMatrix(type: full.type, base: full.base + r0 * full.rowBytes, rows: range.count, columns: columns)
                }
            }
            let source = b.dequantize
            return .blocks(BlockRows(rows: range.count, columns: columns, bytes: b.bytes / max(1, b.rows) * range.count, quantized: q) { r, out in
                source((r.lowerBound + r0)..<(r.upperBound + r0), out)
            })
        }
    }
}
