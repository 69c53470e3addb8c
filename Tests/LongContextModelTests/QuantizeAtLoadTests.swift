import AttentionTensor
import Foundation
import LongAttention
@testable import LongContextModel
import XCTest

/// ``CausalLM/quantizing(to:)`` (`--quantize`): a float32 model's matrices become q8_0 / q4_0
/// blocks that ``MatmulMode/fast`` reads in place.
extension GGUFModelTests {
    func testQuantizingAFloatModel() throws {
        let base = try model(try llamaConfig(D: 64, F: 96, tied: false))
        let ids: [Int32] = [3, 1, 4, 1, 5, 9, 2]
        let reference = try base.forward(tokens: ids, batch: 1, length: ids.count).logits.scalars
        for type in [GGMLType.q8_0, .q4_0] {
            let q = try base.quantizing(to: type)
            // Every matrix frozen as blocks; the embedding and head at q8_0 under q4_0; norms float32.
            for e in base.parameters.entries where e.shape.count == 2 && e.shape[1] % 32 == 0 {
                guard case .blocks(let b) = q.weightMatrix(e.name), let m = b.quantized else {
                    XCTFail("\(type.name): \(e.name) is not quantised"); continue
                }
                let expected = (type == .q4_0 && (e.name == "model.embed_tokens.weight" || e.name == "lm_head.weight")) ? GGMLType.q8_0 : type
                XCTAssertEqual(m.type, expected, e.name)
                // The blocks dequantise to what quantising the float rows gives.
                let (rows, cols) = (e.shape[0], e.shape[1])
                var blocks = [UInt8](repeating: 0, count: expected.byteCount(elements: rows * cols)!)
                try blocks.withUnsafeMutableBytes { try expected.quantize(base.parameters.pointer(e.name), count: rows * cols, into: $0.baseAddress!) }
                let stored = UnsafeRawBufferPointer(start: m.base, count: blocks.count)
                XCTAssertEqual(Array(stored), blocks, "\(type.name) \(e.name)")
            }
            // What stays a parameter: vectors, and matrices whose rows are not whole blocks (o_proj's H·hd = 48).
            XCTAssertTrue(q.parameters.entries.allSatisfy { $0.shape.count == 1 || $0.shape[1] % 32 != 0 }, "only vectors stay parameters")
            XCTAssertTrue(base.parameters.entries.contains { $0.shape.count == 2 && $0.shape[1] % 32 != 0 })
            // Logits near the float model's, fast near exact. Measured on this random model (weights of
            // std 0.3, which amplify errors more than trained ones): q8_0 0.020, q4_0 0.45 of the
            // largest logit; fast against exact 0.031.
            let exact = try q.forward(tokens: ids, batch: 1, length: ids.count).logits.scalars
            let fast = try q.withMatmul(.fast).forward(tokens: ids, batch: 1, length: ids.count).logits.scalars
            let err = relativeError(reference, exact), fastErr = relativeError(exact, fast)
            print("\(type.name) at load: logits vs float32 \(err), fast vs exact \(fastErr)")
            XCTAssertGreaterThan(err, 0)
            XCTAssertLessThanOrEqual(err, type == .q8_0 ? 0.03 : 0.6, type.name)
            XCTAssertGreaterThan(fastErr, 0, "fast took the integer kernels")
            XCTAssertLessThanOrEqual(fastErr, 0.06, type.name)
        }
        // Columns that are not whole blocks stay float32 (D = 12 here); other types are refused.
        let small = try model(try llamaConfig(D: 12, F: 7, tied: true))
        let s = try small.quantizing(to: .q8_0)
        guard case .dense = s.weightMatrix("model.layers.0.self_attn.q_proj.weight") else { return XCTFail("12 columns were quantised") }
        XCTAssertThrowsError(try base.quantizing(to: .q4_K))
        XCTAssertThrowsError(try base.quantizing(to: .f16))
        // A GGUF file is quantised already: asking again is refused, by name.
        let (_, url) = try q8Model()
        XCTAssertThrowsError(try LanguageModel(path: url.path, quantize: .q8_0)) { error in
            XCTAssertTrue("\(error)".contains("quantised already"), "\(error)")
        }
    }
}
