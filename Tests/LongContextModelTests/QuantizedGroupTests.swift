import AttentionTensor
import Foundation
@testable import LongContextModel
import XCTest

/// ``QuantizedMatrix/multiply(_:_:rows:accumulate:threads:)`` of a group (a layer's q/k/v, gate/up)
/// is, output by output, the bits of each matrix multiplied alone: on the real models' matrices
/// (SmolLM2: q4_1; Gemma 3: q4_K, q6_K, q5_0, q8_0 — several activation formats in one group), for
/// 1, 3, 5 and 16 rows, written and accumulated, on 1 and 2 threads.
final class QuantizedGroupTests: XCTestCase {
    func testAGroupIsEachMatrixAlone() throws {
        var found = false
        for file in ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"] {
            let path = ReadmePretrainedExampleTests.modelsDirectory + "/" + file
            guard FileManager.default.fileExists(atPath: path) else { continue }
            found = true
            let m = try CausalLM(gguf: path, matmul: .fast)
            let groups = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["mlp.gate_proj", "mlp.up_proj"]]
            var types = Set<GGMLType>()
            for layer in [0, m.config.layers - 1] {
                for group in groups {
                    let qs = try group.map { name -> QuantizedMatrix in
                        guard case .blocks(let b) = m.matrix("model.layers.\(layer).\(name).weight") else {
                            throw XCTSkip("\(file) layer \(layer) \(name) is not stored in blocks")
                        }
                        return try XCTUnwrap(b.quantized, "\(file) layer \(layer) \(name): no quantised kernels")
                    }
                    types.formUnion(qs.map(\.type))
                    let k = qs[0].columns
                    for n in [1, 3, 5, 16] {
                        let x = try Tensor.randomUniform([n, k], seed: UInt64(31 * n + layer), bound: 2).scalars
                        for accumulate in [false, true] {
                            for threads in [1, 2] {
                                let starts = qs.map { q in (0..<(n * q.rows)).map { Float($0 % 7) - 3 } }
                                var alone = starts, together = starts
                                x.withUnsafeBufferPointer { xp in
                                    for (i, q) in qs.enumerated() {
                                        alone[i].withUnsafeMutableBufferPointer {
                                            q.multiply(xp.baseAddress!, $0.baseAddress!, rows: n, accumulate: accumulate, threads: threads)
                                        }
                                    }
                                    let buffers = together.map { b -> UnsafeMutablePointer<Float> in
                                        let p = UnsafeMutablePointer<Float>.allocate(capacity: b.count)
                                        p.initialize(from: b, count: b.count)
                                        return p
                                    }
                                    defer { buffers.forEach { $0.deallocate() } }
                                    QuantizedMatrix.multiply(zip(qs, buffers).map { (matrix: $0.0, y: $0.1) }, xp.baseAddress!,
                                                             rows: n, accumulate: accumulate, threads: threads)
                                    for i in qs.indices { together[i] = Array(UnsafeBufferPointer(start: buffers[i], count: together[i].count)) }
                                }
                                for i in qs.indices {
                                    let same = zip(alone[i], together[i]).allSatisfy { $0.bitPattern == $1.bitPattern }
                                    XCTAssertTrue(same, "\(file) layer \(layer) \(group[i]) rows \(n) accumulate \(accumulate) threads \(threads)")
                                }
                            }
                        }
                    }
                }
            }
            print("\(file): group products checked on types \(types.map(\.rawValue).sorted())")
        }
        if !found { throw XCTSkip("no models in data/models") }
    }
}
