import AttentionTensor
import Foundation
import LongAttention
@testable import LongContextModel
import XCTest

/// The hooks a distributed run uses (`runLayer` with runs of positions and a projection hook,
/// `WeightMatrix.rows`, `finalNorm`, `multiply`) give the forward pass's logits.
final class LayerHooksTests: XCTestCase {
    func testRunLayerWithSplitProductsEqualsForward() throws {
        let c = try ModelConfig(vocabSize: 13, hiddenSize: 12, intermediateSize: 7, layers: 2, heads: 4, kvHeads: 2, headDim: 4,
                                rmsNormEps: 1e-5, positions: .rope(theta: 10000, scaling: .none), attention: [.exact, .exact])
        let m = try CausalLM(config: c, seed: 5)
        let tokens: [Int32] = [1, 5, 12, 0, 7, 7, 3, 2, 9]
        let T = tokens.count, (D, V, H, Hkv, hd) = (c.hiddenSize, c.vocabSize, c.heads, c.kvHeads, c.headDim)
        let reference = try m.forward(tokens: tokens, batch: 1, length: T, threads: 1, logitRows: [T - 1])
        // Every product computed as two row blocks of the weight (what tensor parallelism does per rank).
        let split: ProjectionGroup = { input, rows, k, outputs, accumulate in
            for o in outputs {
                let cut = o.width / 2
                for r in [0..<cut, cut..<o.width] where !r.isEmpty {
                    let w = m.weightMatrix(o.weight).rows(r, columns: k)
                    var part = [Float](repeating: 0, count: rows * r.count)
                    m.multiply(input, by: w, into: &part, rows: rows, in: k, out: r.count, threads: 1)
                    for i in 0..<rows {
                        for j in 0..<r.count {
                            let y = o.output + i * o.width + r.lowerBound + j
                            y.pointee = (accumulate ? y.pointee : 0) + part[i * r.count + j]
                        }
                    }
                }
            }
        }
        var x = try m.embedTokens(tokens)
        for layer in 0..<c.layers {
            try m.runLayer(layer, x: &x, positions: [0..<4, 4..<T], threads: 1, projections: split) { q, k, v in
                let out = try scaledDotProductAttention(queries: try q.reshaped([1, T, H, hd]).permuted([0, 2, 1, 3]),
                                                        keys: try k.reshaped([1, T, Hkv, hd]).permuted([0, 2, 1, 3]),
                                                        values: try v.reshaped([1, T, Hkv, hd]).permuted([0, 2, 1, 3]),
                                                        scale: m.scoreScale, mask: m.layerMask(layer), outputLayout: .tokenMajor, threads: 1)
                return try out.reshaped([T, H * hd])
            }
        }
        var h = [Float](repeating: 0, count: D), z = [Float](repeating: 0, count: V)
        m.finalNorm(x.unsafeBaseAddress + (T - 1) * D, into: &h, rows: 1)
        m.multiply(h, by: m.weightMatrix(m.headWeightName), into: &z, rows: 1, in: D, out: V, threads: 1)
        let r = reference.logits.scalars
        for i in 0..<V { XCTAssertEqual(z[i], r[i], accuracy: 1e-5 * max(1, abs(r[i]))) }
    }
}
