import AttentionTensor
import Foundation
import LongAttention
@testable import LongContextModel
import XCTest

/// ``CausalLM/stepwiseLogits(tokens:firstRow:rowsPerStep:cacheType:threads:)``: logits as decoding
/// computes them (through a KV cache a few tokens at a time), the instrument behind `attn lm ppl
/// --matmul fast` and `attn lm eval --matmul fast`.
extension GGUFModelTests {
    func testStepwiseLogitsEqualTheForwardPassUnderExact() throws {
        let (_, url) = try q8Model()
        let exact = try CausalLM(gguf: url.path)
        let V = exact.config.vocabSize
        let ids = (0..<37).map { Int32(($0 * 17 + 3) % V) }   // 37: not a multiple of any step
        let forward = try exact.forward(tokens: ids, batch: 1, length: ids.count).logits.scalars
        for rows in [1, 7, 16, 37] {
            for first in [0, 20, 36] {
                let z = try exact.stepwiseLogits(tokens: ids, firstRow: first, rowsPerStep: rows).scalars
                XCTAssertEqual(z.count, (ids.count - first) * V)
                let err = relativeError(Array(forward[(first * V)...]), z)
                XCTAssertLessThanOrEqual(err, 1e-5, "\(rows) rows per step from row \(first)")
            }
        }
        // One row per step is the decoding step itself, bit for bit.
        var cache = try exact.makeCache(positions: ids.count, chunk: 1)
        var decoded = [Float]()
        for t in ids { decoded += try exact.step([t], cache: &cache, threads: nil) }
        XCTAssertEqual(try exact.stepwiseLogits(tokens: ids, rowsPerStep: 1).scalars.map(\.bitPattern), decoded.map(\.bitPattern))
    }

    func testStepwiseLogitsUnderFastTakeTheIntegerKernels() throws {
        let (_, url) = try q8Model()
        let exact = try CausalLM(gguf: url.path)
        let fast = try exact.withMatmul(.fast)
        let V = exact.config.vocabSize
        let ids = (0..<40).map { Int32(($0 * 11 + 5) % V) }
        let a = try exact.stepwiseLogits(tokens: ids).scalars
        let b = try fast.stepwiseLogits(tokens: ids).scalars
        let err = relativeError(a, b)
        // 8-bit activations: visibly different from exact (so the integer kernels ran), and as close
        // as testFastLogitsAreCloseToExactAndBatchInvariant bounds this random model (0.2).
        XCTAssertGreaterThan(err, 1e-5)
        XCTAssertLessThanOrEqual(err, 0.2)
        // Sixteen tokens in one step against the forward pass of the same 16 rows (both on the
        // integer kernels; only attention's rounding differs, and it flips no 8-bit rounding here).
        let head = Array(ids.prefix(16))
        let f16 = try fast.forward(tokens: head, batch: 1, length: 16).logits.scalars
        let s16 = try fast.stepwiseLogits(tokens: head).scalars
        print("fast stepwise vs fast forward, 16 rows: \(relativeError(f16, s16)); fast vs exact \(err)")
        XCTAssertLessThanOrEqual(relativeError(f16, s16), 1e-5)   // measured 2.5e-7
        // The whole sequence in one forward pass under fast is more than 16 rows: the exact path.
        let whole = try fast.forward(tokens: ids, batch: 1, length: ids.count).logits.scalars
        XCTAssertLessThanOrEqual(relativeError(a, whole), 1e-5)
        // Perplexity through the stepwise logits: under exact the same as in one pass.
        let text = (0..<96).map { Int32(($0 * 13 + 1) % V) }
        let one = try exact.perplexity(tokens: text, context: 48, bos: nil)
        let stepped = try exact.perplexity(tokens: text, context: 48, bos: nil, rowsPerStep: 16)
        XCTAssertEqual(stepped.scored, one.scored)
        XCTAssertEqual(stepped.perplexity, one.perplexity, accuracy: 1e-5 * one.perplexity)
        let fastPPL = try fast.perplexity(tokens: text, context: 48, bos: nil, rowsPerStep: 16)
        XCTAssertNotEqual(fastPPL.perplexity, one.perplexity)
        print("ppl exact \(one.perplexity), fast stepwise \(fastPPL.perplexity)")
        XCTAssertEqual(fastPPL.perplexity, one.perplexity, accuracy: 0.05 * one.perplexity)
    }

    func testStepwiseLogitsRefuseBadArguments() throws {
        let (_, url) = try q8Model()
        let m = try CausalLM(gguf: url.path)
        let ids: [Int32] = [1, 2, 3]
        XCTAssertThrowsError(try m.stepwiseLogits(tokens: []))
        XCTAssertThrowsError(try m.stepwiseLogits(tokens: ids, firstRow: 3))
        XCTAssertThrowsError(try m.stepwiseLogits(tokens: ids, firstRow: -1))
        XCTAssertThrowsError(try m.stepwiseLogits(tokens: ids, rowsPerStep: 0))
        XCTAssertThrowsError(try m.stepwiseLogits(tokens: ids, rowsPerStep: CausalLM.prefillChunk + 1))
        XCTAssertThrowsError(try m.stepwiseLogits(tokens: [1, Int32(m.config.vocabSize)]))
    }
}
