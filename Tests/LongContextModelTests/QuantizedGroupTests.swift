import AttentionTensor
import Foundation
@testable import LongContextModel
import XCTest

/// ``QuantizedMatrix/multiply(_:_:rows:accumulate:threads:)`` of a group (a layer's q/k/v, gate/up)
/// is, output by output, the bits of each matrix multiplied alone: on the real models' matrices
/// (SmolLM2: q4_1; Gemma 3: q4_K, q6_K, q5_0, q8_0 — several activation formats in one group), for
/// 1, 3, 5 and 16 rows, written and accumulated; and both are the bits of one thread's product on
/// 2, 3 and 8 threads, whose work items differ (``QuantizedMatrix/chunkRows(rows:threads:)``).
final class QuantizedGroupTests: XCTestCase {
    func testChunksAreWholeLinesAndCoverTheRows() {
        for rows in [1, 63, 64, 65, 192, 576, 960, 1536, 2049, 49_152, 262_144] {
            for threads in [1, 2, 3, 8, 64] {
                let c = QuantizedMatrix.chunkRows(rows: rows, threads: threads)
                XCTAssertTrue(c % 64 == 0 && (64...512).contains(c), "rows \(rows) threads \(threads): chunk \(c)")
                let items = (rows + c - 1) / c
                // Two to four items a worker (the share rounded up to whole lines), unless the
                // 64-row floor or the 512-row ceiling binds.
                if c > 64 && c < 512 { XCTAssertTrue((2 * threads...4 * threads).contains(items), "rows \(rows) threads \(threads): \(items) items of \(c)") }
            }
        }
        // SmolLM2 on 2 threads: q 576 rows in 128-row items, gate 1536 in 192, its LM head 49,152 in 512.
        XCTAssertEqual([576, 1536, 49_152].map { QuantizedMatrix.chunkRows(rows: $0, threads: 2) }, [128, 192, 512])
    }

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
                            let starts = qs.map { q in (0..<(n * q.rows)).map { Float($0 % 7) - 3 } }
                            var oneThread = starts
                            x.withUnsafeBufferPointer { xp in
                                for (i, q) in qs.enumerated() {
                                    oneThread[i].withUnsafeMutableBufferPointer {
                                        q.multiply(xp.baseAddress!, $0.baseAddress!, rows: n, accumulate: accumulate, threads: 1)
                                    }
                                }
                            }
                            for threads in [1, 2, 3, 8] {
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
                                    let asOne = zip(alone[i], oneThread[i]).allSatisfy { $0.bitPattern == $1.bitPattern }
                                    XCTAssertTrue(asOne, "\(file) layer \(layer) \(group[i]) rows \(n) accumulate \(accumulate): \(threads) threads differ from 1")
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
