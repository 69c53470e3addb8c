import Foundation
import LongAttention
@testable import LongContextModel
import XCTest

/// RoPE context extension at load time (``ContextExtension``): the inverse frequencies (and YaRN's
/// attention factor) against transformers' formulas evaluated in float64 by Tools/rope_reference.py
/// (Tests/ReferenceData/rope_transformers.json), Gemma 3's sliding layers left alone, bad options refused.
final class ContextExtensionTests: XCTestCase {
    struct Case: Decodable {
        let name: String, type: String, dim: Int, base: Double
        let factor: Double?, max_position_embeddings: Int?, seq_len: Int?, original_max_position_embeddings: Int?
        let low_freq_factor: Double?, high_freq_factor: Double?
        let inv_freq: [Double], attention_factor: Double
    }
    struct Fixture: Decodable { let cases: [Case] }

    func fixture() throws -> [Case] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("ReferenceData/rope_transformers.json")
        return try JSONDecoder().decode(Fixture.self, from: try Data(contentsOf: url)).cases
    }

    /// Every case to 1e-12 relative (float64 on both sides; the formulas are the same up to rounding).
    func testInverseFrequenciesMatchTransformers() throws {
        let cases = try fixture()
        XCTAssertEqual(cases.count, 28)
        for c in cases {
            let scaling: RotaryEmbedding.Scaling
            var positions = 1
            switch c.type {
            case "default": scaling = .none
            case "linear": scaling = .linear(factor: c.factor!)
            case "dynamic":
                scaling = .dynamicNTK(factor: c.factor!, originalContext: c.max_position_embeddings!)
                positions = c.seq_len!
            case "yarn":
                // What ContextExtension builds for `yarn F` from the model's own context.
                let config = try ModelConfig(vocabSize: 8, hiddenSize: c.dim, intermediateSize: 8, layers: 1, heads: 1, kvHeads: 1,
                                             headDim: c.dim, positions: .rope(theta: c.base, scaling: .none),
                                             maxPositionEmbeddings: c.original_max_position_embeddings!)
                let applied = try ContextExtension(method: "yarn", factor: c.factor!).apply(to: config)
                guard case .rope(_, let s) = applied.positions else { return XCTFail("no RoPE") }
                scaling = s.rotary(applied.maxPositionEmbeddings)
            case "llama3":
                scaling = .llama3(factor: c.factor!, lowFrequencyFactor: c.low_freq_factor!, highFrequencyFactor: c.high_freq_factor!,
                                  originalContext: c.original_max_position_embeddings!)
            default: return XCTFail("unknown case type \(c.type)")
            }
            let (inv, factor) = try RotaryEmbedding.frequencies(dimension: c.dim, base: c.base, scaling: scaling, maxPositions: positions)
            XCTAssertEqual(inv.count, c.inv_freq.count, c.name)
            for (i, (a, b)) in zip(inv, c.inv_freq).enumerated() {
                XCTAssertEqual(a, b, accuracy: 1e-12 * abs(b), "\(c.name) [\(i)]")
            }
            XCTAssertEqual(factor, c.attention_factor, accuracy: 1e-12, c.name)
        }
    }

    /// Dynamic NTK inside the model: the table a forward of L tokens uses is built for L (the base
    /// recomputed from the sequence length); cos of position 1 equals cos(θ_i) of the fixture to float32.
    func testDynamicTableFollowsTheSequenceLength() throws {
        for c in try fixture() where c.type == "dynamic" && c.dim == 64 {
            let cache = RopeCache(headDim: c.dim, theta: c.base, scaling: .dynamic(factor: c.factor!),
                                  maxPositionEmbeddings: c.max_position_embeddings!)
            let table = try cache.embedding(positions: c.seq_len!)
            XCTAssertEqual(table.maxPositions, c.seq_len!)
            // Rotate e_i at position 1: x[i] becomes cos θ_i (times 1), x[i + d/2] sin θ_i.
            for i in [0, 7, 20, 31] {
                var x = [Float](repeating: 0, count: 2 * c.dim)
                x[c.dim + i] = 1
                try x.withUnsafeMutableBufferPointer { try table.rotate($0.baseAddress!, rows: 2, stride: c.dim, firstPosition: 0) }
                XCTAssertEqual(Double(x[c.dim + i]), cos(c.inv_freq[i]), accuracy: 2e-7, "\(c.name) [\(i)]")
                XCTAssertEqual(Double(x[c.dim + i + c.dim / 2]), sin(c.inv_freq[i]), accuracy: 2e-7, "\(c.name) [\(i)]")
            }
        }
    }

    func gemmaLike() throws -> ModelConfig {
        var c = try ModelConfig(architecture: .gemma3, vocabSize: 16, hiddenSize: 16, intermediateSize: 16, layers: 6, heads: 2, kvHeads: 1,
                                headDim: 8, positions: .rope(theta: 1_000_000, scaling: .none), maxPositionEmbeddings: 32768)
        c.layerKinds = [.sliding, .sliding, .sliding, .sliding, .sliding, .full]
        c.slidingWindow = 512
        try c.validate()
        return c
    }

    /// Gemma 3: the scaling goes to the full layers; sliding layers keep the base they had.
    func testScalingAppliesToFullLayersOnly() throws {
        let c = try gemmaLike()
        for name in ["linear", "ntk", "dynamic", "yarn"] {
            let a = try ContextExtension(method: name, factor: 4).apply(to: c)
            XCTAssertEqual(a.positions(of: 0), .rope(theta: 1_000_000, scaling: .none), name)
            XCTAssertNotEqual(a.positions(of: 5), .rope(theta: 1_000_000, scaling: .none), name)
            XCTAssertEqual(a.maxPositionEmbeddings, 32768, "the original context is kept (\(name))")
        }
        var local = c
        local.slidingPositions = .rope(theta: 10000, scaling: .none)
        let a = try ContextExtension(method: "linear", factor: 2).apply(to: local)
        XCTAssertEqual(a.positions(of: 0), .rope(theta: 10000, scaling: .none))
        XCTAssertEqual(a.positions(of: 5), .rope(theta: 1_000_000, scaling: .linear(factor: 2)))
        // Streaming goes to full layers only.
        let s = try ContextExtension(sinks: 4, window: 2044).apply(to: c)
        XCTAssertEqual(s.sinks(of: 0), 0)
        XCTAssertEqual(s.window(of: 0), 512)
        XCTAssertEqual(s.sinks(of: 5), 4)
        XCTAssertEqual(s.window(of: 5), 2044)
    }

    /// Bad options: typed errors naming the option.
    func testBadOptionsAreRefused() throws {
        func refused(_ body: () throws -> Any, _ words: [String], line: UInt = #line) {
            XCTAssertThrowsError(try body(), line: line) { e in
                switch e as? ModelError {
                case .invalidOption?, .unsupportedModel?: break
                default: return XCTFail("\(e) is not invalidOption or unsupportedModel", line: line)
                }
                let s = "\(e)"
                for w in words { XCTAssertTrue(s.contains(w), "\(s) lacks \(w)", line: line) }
            }
        }
        refused({ try ContextExtension(method: "linear", factor: 0) }, ["> 0"])
        refused({ try ContextExtension(method: "yarn", factor: -2) }, ["> 0"])
        refused({ try ContextExtension(method: "ntk", factor: .nan) }, ["> 0"])
        refused({ try ContextExtension(method: "linear", factor: 0.5) }, ["at least 1"])
        refused({ try ContextExtension(method: "rope2", factor: 2) }, ["--rope-scaling", "rope2"])
        refused({ try ContextExtension(sinks: 4, window: nil) }, ["--attention-window", "--sinks"])
        refused({ try ContextExtension(sinks: -1, window: 8) }, ["--sinks"])
        refused({ try ContextExtension(sinks: 4, window: 0) }, ["--attention-window"])
        let c = try gemmaLike()
        refused({ try ContextExtension(sinks: 4, window: 32765).apply(to: c) }, ["trained context of 32768", "4 + 32765"])
        XCTAssertNoThrow(try ContextExtension(sinks: 4, window: 32764).apply(to: c))
        var alibi = c
        alibi.positions = .alibi
        alibi.slidingPositions = nil
        alibi.layerKinds = []
        refused({ try ContextExtension(method: "linear", factor: 2).apply(to: alibi) }, ["RoPE"])
    }
}
